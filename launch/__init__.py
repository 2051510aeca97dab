"""Launch scripts that run fedgan_jax on Cloud TPU VMs and GPU VMs from a laptop (see README.md)."""
