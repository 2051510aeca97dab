"""What a hospital runs each round: client init, K local D/G steps, client final.

All functions are pure and take a `GanTask` (the static description of the models,
losses and optimizers) as their first argument; callers bind it with
`functools.partial` and jit at the call site (`GanTask`'s methods of the same names are
what the round engine, `execution.local_update`, calls). A local step is one discriminator
update on a batch of the hospital's real images followed by one generator update;
the generator only ever sees D's parameters, conditions and noise, never an image.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedgan_jax import losses
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.federated import sampling

Params = Any


@dataclasses.dataclass(frozen=True, eq=False)
class GanTask:
  """Everything static about a local update (closed over, never traced).

  Hashed by identity, so jit caches compiled functions per task object.
  """
  generator: nn.Module
  discriminator: nn.Module
  z_dim: int
  continuous_columns: np.ndarray
  gan_loss: str
  cond_weight: float
  attribute_weight: float
  d_optimizer: optax.GradientTransformation
  g_optimizer: optax.GradientTransformation
  # L_cond also matches the complement of every 0/1 attribute (see losses).
  cond_complement_binary: bool = False
  # `augment(images, rng) -> images`, applied to real and fake images alike before D
  # (differentiable, so G is not taught to produce augmented images). None = off.
  augment: Callable[[jnp.ndarray, jax.Array], jnp.ndarray] | None = None
  # `discriminator_gradient(loss_fn, d_params, batch, rng) -> (grads, metrics)` replaces
  # the plain mean gradient of D's loss (example-level DP-SGD plugs in here). None = plain.
  discriminator_gradient: Callable[..., Any] | None = None
  # Standard deviation of z when sampling a trained G (`synthesis`); training always draws
  # z ~ N(0, I). Below 1 trades diversity for fidelity (the "truncation trick").
  sample_noise_scale: float = 1.0
  # G's images are drawn for `batch[FAKE_CONDITION_KEY]`, conditions from a public prior,
  # instead of the real batch's records. Then D's loss on them reads nothing private, and
  # DP-SGD clips and noises only the real-image term (`client_step`).
  public_fake_conditions: bool = False
  # With public fake conditions and DP-SGD: `(loss_fn, d_params, fake_batch, rng)` giving the
  # fake term's gradient with per-example clipping and no noise; None = the plain mean.
  fake_term_gradient: Callable[..., Any] | None = None
  # gamma of the R1 penalty (gamma / 2) |grad_x D(x)|^2 on D's real inputs (Mescheder et al.
  # 2018): it keeps D smooth around the few hundred real films a hospital holds. 0 = off.
  r1_gamma: float = 0.0
  # Weight of MSGAN's mode-seeking term in G's loss (`losses.mode_seeking_loss`): it keeps a
  # condition shared by many films (ZhangLab's "normal") from collapsing to one image. 0 = off.
  mode_seeking_weight: float = 0.0

  # The client functions the round engine runs (`execution.ClientTask`); the module-level
  # functions of the same names below do the work.
  def client_init(self, server_params: Params) -> 'ClientState':
    return client_init(self, server_params)

  def client_step(self, state: 'ClientState', batch, rng):
    return client_step(self, state, batch, rng)

  def client_final(self, state: 'ClientState', server_params: Params) -> Params:
    return client_final(state, server_params)


# Batch key of the public-prior conditions G's images are drawn for (`sampling.client_batches`).
FAKE_CONDITION_KEY = sampling.FAKE_CONDITION_KEY


@flax.struct.dataclass
class ClientState:
  params: Params  # {'generator': ..., 'discriminator': ...}
  d_opt_state: Any
  g_opt_state: Any


def images_to_float(images):
  """uint8 batches travel to the device (4x less traffic) and become [-1, 1] here."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def init_params(task: GanTask, rng: jax.Array, image_shape, condition_dim: int) -> Params:
  g_rng, d_rng = jax.random.split(rng)
  condition = jnp.zeros((1, condition_dim), jnp.float32)
  z = jnp.zeros((1, task.z_dim), jnp.float32)
  images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  return {'generator': task.generator.init(g_rng, condition, z)['params'],
          'discriminator': task.discriminator.init(d_rng, images, condition)['params']}


def sample_z(task: GanTask, condition, rng, noise_scale: float = 1.0):
  return noise_scale * jax.random.normal(rng, (condition.shape[0], task.z_dim), jnp.float32)


def generate(task: GanTask, g_params, condition, rng, noise_scale: float = 1.0):
  z = sample_z(task, condition, rng, noise_scale)
  return task.generator.apply({'params': g_params}, condition, z)


def discriminator_loss(task: GanTask, d_params, batch, rng):
  """Per-example D loss `(B,)` (GAN loss on a real/fake pair + attribute loss on the real).

  `batch['fake']` holds G's images (no gradient flows to G), drawn for
  `batch[FAKE_CONDITION_KEY]` when present, else for the batch's own conditions.
  """
  real_rng, fake_rng = jax.random.split(rng)
  condition = batch['condition']
  fake_condition = batch.get(FAKE_CONDITION_KEY, condition)
  real = images_to_float(batch['image'])
  fake = jax.lax.stop_gradient(batch['fake'])
  if task.augment is not None:
    real, fake = task.augment(real, real_rng), task.augment(fake, fake_rng)
  outputs, r1 = _apply_with_r1(
      task, lambda r: task.discriminator.apply({'params': d_params}, jnp.concatenate([r, fake]),
                                               jnp.concatenate([condition, fake_condition])),
      real)
  real_logits, fake_logits = jnp.split(outputs['logit'], 2)
  real_attributes = jnp.split(outputs['attributes'], 2)[0]
  values, mask = conditions_lib.split_condition(condition)
  gan = losses.discriminator_gan_loss(real_logits, fake_logits, task.gan_loss)
  attribute = losses.attribute_loss(real_attributes, values, mask, task.continuous_columns)
  aux = {'d_gan_loss': gan, 'attribute_loss': attribute,
         'd_real': jax.nn.sigmoid(real_logits), 'd_fake': jax.nn.sigmoid(fake_logits)}
  if r1 is not None:
    aux['r1_penalty'] = r1
    return gan + task.attribute_weight * attribute + r1, aux
  return gan + task.attribute_weight * attribute, aux


def _apply_with_r1(task: GanTask, apply_fn, real):
  """`(apply_fn(real), per-example R1 penalty or None)`; the first `len(real)` logits are
  the real images' (D may see fakes in the same call)."""
  if not task.r1_gamma:
    return apply_fn(real), None

  def real_logit_sum(images):
    outputs = apply_fn(images)
    return jnp.sum(outputs['logit'][:images.shape[0]]), outputs

  logit_sum, vjp_fn, outputs = jax.vjp(real_logit_sum, real, has_aux=True)
  (grad_real,) = vjp_fn(jnp.ones_like(logit_sum))
  squared_norm = jnp.sum(jnp.square(grad_real), axis=tuple(range(1, grad_real.ndim)))
  return outputs, 0.5 * task.r1_gamma * squared_norm


def discriminator_real_loss(task: GanTask, d_params, batch, rng):
  """Per-example D loss `(B,)` of the terms that read real images: GAN loss on the real
  image and the attribute head's loss on it. The part DP-SGD clips when fakes are public."""
  real = images_to_float(batch['image'])
  if task.augment is not None:
    real = task.augment(real, rng)
  condition = batch['condition']
  outputs, r1 = _apply_with_r1(
      task, lambda r: task.discriminator.apply({'params': d_params}, r, condition), real)
  values, mask = conditions_lib.split_condition(condition)
  gan = losses.discriminator_real_loss(outputs['logit'], task.gan_loss)
  attribute = losses.attribute_loss(outputs['attributes'], values, mask,
                                    task.continuous_columns)
  aux = {'d_real_gan_loss': gan, 'attribute_loss': attribute,
         'd_real': jax.nn.sigmoid(outputs['logit'])}
  if r1 is not None:
    aux['r1_penalty'] = r1
    return gan + task.attribute_weight * attribute + r1, aux
  return gan + task.attribute_weight * attribute, aux


def discriminator_fake_loss(task: GanTask, d_params, batch, rng):
  """Per-example D loss `(B,)` on G's images `batch['fake']` for `batch[FAKE_CONDITION_KEY]`.

  With public-prior conditions no real image or record enters, so its gradient is
  post-processing of what D and G already released.
  """
  fake = jax.lax.stop_gradient(batch['fake'])
  if task.augment is not None:
    fake = task.augment(fake, rng)
  outputs = task.discriminator.apply({'params': d_params}, fake, batch[FAKE_CONDITION_KEY])
  gan = losses.discriminator_fake_loss(outputs['logit'], task.gan_loss)
  return gan, {'d_fake_gan_loss': gan, 'd_fake': jax.nn.sigmoid(outputs['logit'])}


def private_split_discriminator_gradient(task: GanTask, d_params, batch, fake, fake_condition,
                                         rng):
  """D's gradient with DP-SGD on the real-image term only, plus the fake term's gradient.

  Adding or removing one real example changes only the clipped real sum (by at most the clip
  norm); the fake term depends on the current parameters and public conditions and noise,
  so the sensitivity and the accounting are those of the real term alone. The fake term is
  the plain mean gradient, or with `task.fake_term_gradient` each fake example's gradient
  clipped like a real one (no noise), which keeps the two terms on one scale.
  """
  real_rng, fake_rng = jax.random.split(rng)
  real_batch = {k: v for k, v in batch.items() if k != FAKE_CONDITION_KEY}
  real_grads, metrics = task.discriminator_gradient(
      functools.partial(discriminator_real_loss, task), d_params, real_batch, real_rng)
  fake_loss = functools.partial(discriminator_fake_loss, task)
  fake_batch = {'fake': fake, FAKE_CONDITION_KEY: fake_condition}
  if task.fake_term_gradient is None:

    def mean_fake_loss(params, batch, rng):
      example_losses, aux = fake_loss(params, batch, rng)
      return jnp.mean(example_losses), jax.tree.map(jnp.mean, aux)

    fake_grads, fake_metrics = jax.grad(mean_fake_loss, has_aux=True)(d_params, fake_batch,
                                                                       fake_rng)
  else:
    fake_grads, fake_metrics = task.fake_term_gradient(fake_loss, d_params, fake_batch,
                                                       fake_rng)
    fake_metrics = {k: v for k, v in fake_metrics.items() if k.startswith('d_fake')}
  metrics = dict(metrics, **fake_metrics)
  metrics['d_gan_loss'] = metrics['d_real_gan_loss'] + metrics['d_fake_gan_loss']
  return jax.tree.map(jnp.add, real_grads, fake_grads), metrics


def generator_loss(task: GanTask, fake, d_params, condition, rng, z=None):
  """Mean G loss of G's images `fake` (drawn from noise `z`): GAN loss + lambda * L_cond
  (+ the mode-seeking term when weighted). No real image enters."""
  metrics = {}
  mode_seeking = 0.0
  if task.mode_seeking_weight:
    mode_seeking = task.mode_seeking_weight * losses.mode_seeking_loss(fake, z, condition)
    metrics['mode_seeking_loss'] = mode_seeking
  if task.augment is not None:
    fake = task.augment(fake, rng)
  outputs = task.discriminator.apply({'params': d_params}, fake, condition)
  values, mask = conditions_lib.split_condition(condition)
  predicted = losses.attribute_prediction(outputs['attributes'], task.continuous_columns)
  binary = None if not task.cond_complement_binary else ~task.continuous_columns
  cond = losses.cosine_condition_loss(predicted, values, mask, binary)
  gan = losses.generator_gan_loss(outputs['logit'], task.gan_loss)
  loss = jnp.mean(gan + task.cond_weight * cond) + mode_seeking
  return loss, dict(metrics, g_gan_loss=jnp.mean(gan), cond_loss=jnp.mean(cond))


def client_init(task: GanTask, server_params: Params) -> ClientState:
  return ClientState(params=server_params,
                     d_opt_state=task.d_optimizer.init(server_params['discriminator']),
                     g_opt_state=task.g_optimizer.init(server_params['generator']))


def client_step(task: GanTask, state: ClientState, batch, rng):
  """One D update on the real batch, then one G update. Returns `(state, metrics)`.

  G runs forward once: its images are D's fakes and, through the saved VJP, what the G
  update differentiates (G's params do not change in between), as in the usual DCGAN
  loop; a second forward pass with fresh noise would cost ~15% of the step.
  """
  z_rng, d_rng, g_rng = jax.random.split(rng, 3)
  g_params, d_params = state.params['generator'], state.params['discriminator']
  fake_condition = (batch[FAKE_CONDITION_KEY] if task.public_fake_conditions
                    else batch['condition'])
  z = sample_z(task, fake_condition, z_rng)
  fake, generator_vjp = jax.vjp(
      lambda p: task.generator.apply({'params': p}, fake_condition, z), g_params)
  d_batch = dict(batch, fake=fake, **{FAKE_CONDITION_KEY: fake_condition})
  per_example = functools.partial(discriminator_loss, task)

  def mean_d_loss(params, batch, rng):
    example_losses, aux = per_example(params, batch, rng)
    return jnp.mean(example_losses), jax.tree.map(jnp.mean, aux)

  if task.discriminator_gradient is None:
    d_grads, d_metrics = jax.grad(mean_d_loss, has_aux=True)(d_params, d_batch, d_rng)
  elif task.public_fake_conditions:
    d_grads, d_metrics = private_split_discriminator_gradient(
        task, d_params, batch, fake, fake_condition, d_rng)
  else:
    d_grads, d_metrics = task.discriminator_gradient(per_example, d_params, d_batch, d_rng)
  d_updates, d_opt_state = task.d_optimizer.update(d_grads, state.d_opt_state, d_params)
  d_params = optax.apply_updates(d_params, d_updates)

  (g_loss, g_metrics), fake_grads = jax.value_and_grad(
      lambda f: generator_loss(task, f, d_params, fake_condition, g_rng, z), has_aux=True)(fake)
  (g_grads,) = generator_vjp(fake_grads)
  g_updates, g_opt_state = task.g_optimizer.update(g_grads, state.g_opt_state, g_params)
  g_params = optax.apply_updates(g_params, g_updates)

  metrics = dict(d_metrics, **g_metrics)
  metrics['d_loss'] = metrics['d_gan_loss'] + task.attribute_weight * metrics['attribute_loss']
  metrics['g_loss'] = g_loss
  new_state = ClientState(params={'generator': g_params, 'discriminator': d_params},
                          d_opt_state=d_opt_state, g_opt_state=g_opt_state)
  return new_state, metrics


def client_final(state: ClientState, server_params: Params) -> Params:
  """The only thing that leaves the hospital: the parameter delta."""
  return jax.tree.map(jnp.subtract, state.params, server_params)
