"""fedgan_jax: federated conditional GANs for chest X-rays in JAX/Flax."""
