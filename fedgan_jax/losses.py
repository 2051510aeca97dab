"""Losses as pure functions of arrays: GAN losses, the attribute loss, L_cond, AE loss.

`L_G = L_GAN + lambda * L_cond` with `L_cond = 1 - cos(a(G(c, z)), c)`, computed
over the entries of `c` that are present (mask 1): a missing attribute neither
helps nor hurts. `a(x)` is the discriminator's attribute head mapped to attribute
space: identity on standardized continuous columns, sigmoid on 0/1 columns.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

GAN_LOSSES = ('non_saturating', 'hinge')


def discriminator_real_loss(real_logits, kind: str):
  """Per-example D loss on real logits, shape `(B,)` (the term that reads real images)."""
  if kind == 'non_saturating':
    return jax.nn.softplus(-real_logits)
  if kind == 'hinge':
    return jax.nn.relu(1.0 - real_logits)
  raise ValueError(f'loss.gan: {kind!r} is not one of {GAN_LOSSES}.')


def discriminator_fake_loss(fake_logits, kind: str):
  """Per-example D loss on G's logits, shape `(B,)` (no real image enters it)."""
  if kind == 'non_saturating':
    return jax.nn.softplus(fake_logits)
  if kind == 'hinge':
    return jax.nn.relu(1.0 + fake_logits)
  raise ValueError(f'loss.gan: {kind!r} is not one of {GAN_LOSSES}.')


def discriminator_gan_loss(real_logits, fake_logits, kind: str):
  """Per-example D loss on paired real/fake logits, shape `(B,)`."""
  return discriminator_real_loss(real_logits, kind) + discriminator_fake_loss(fake_logits, kind)


def generator_gan_loss(fake_logits, kind: str):
  """Per-example G loss, shape `(B,)`."""
  if kind == 'non_saturating':
    return jax.nn.softplus(-fake_logits)
  if kind == 'hinge':
    return -fake_logits
  raise ValueError(f'loss.gan: {kind!r} is not one of {GAN_LOSSES}.')


def attribute_prediction(raw, continuous_columns):
  """Attribute-head outputs in attribute space (values on continuous, P(1) elsewhere)."""
  return jnp.where(continuous_columns, raw, jax.nn.sigmoid(raw))


def attribute_loss(raw, values, mask, continuous_columns):
  """Per-example masked loss of the attribute head: MSE on continuous, BCE on 0/1 columns."""
  squared = jnp.square(raw - values)
  binary = optax.sigmoid_binary_cross_entropy(raw, values)
  per_entry = jnp.where(continuous_columns, squared, binary) * mask
  return jnp.sum(per_entry, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def cosine_condition_loss(predicted, values, mask, binary_columns=None, eps: float = 1e-8):
  """Per-example `1 - cos(predicted * mask, values * mask)`, shape `(B,)`.

  With `binary_columns` (bool `(C,)`), each present 0/1 column also contributes its
  complement (`1 - p` against `1 - v`). Without it a lone binary attribute has no
  direction to match (the cosine of two positive scalars is 1), so a one-label schema
  such as PneumoniaMNIST's would give `L_cond = 0` whatever G draws.
  A record with nothing present (or an all-zero present part) has no direction to
  match; it contributes 0 rather than NaN.
  """
  p = predicted * mask
  v = values * mask
  if binary_columns is not None:
    complement = mask * binary_columns
    p = jnp.concatenate([p, (1.0 - predicted) * complement], axis=-1)
    v = jnp.concatenate([v, (1.0 - values) * complement], axis=-1)
  dot = jnp.sum(p * v, axis=-1)
  norms = jnp.linalg.norm(p, axis=-1) * jnp.linalg.norm(v, axis=-1)
  defined = norms > eps
  return jnp.where(defined, 1.0 - dot / jnp.where(defined, norms, 1.0), 0.0)


def mode_seeking_loss(fake, z, condition, eps: float = 1e-5):
  """MSGAN's diversity term (Mao et al. 2019) over the batch, a scalar.

  For every pair of G's images drawn for the *same* condition vector, the ratio of their
  mean absolute distance to that of their noise vectors; the loss is `1 / (mean ratio +
  eps)`, so G lowers it by letting z move the image (a collapsed conditional mode has ratio
  ~0). Pairs whose conditions differ are skipped: their images should differ anyway. A
  batch with no such pair (e.g. continuous conditions) contributes 0.
  """
  flat = fake.reshape(fake.shape[0], -1)
  image_distance = jnp.mean(jnp.abs(flat[:, None] - flat[None]), axis=-1)
  z_distance = jnp.mean(jnp.abs(z[:, None] - z[None]), axis=-1)
  same = jnp.all(condition[:, None] == condition[None], axis=-1)
  same = same & ~jnp.eye(fake.shape[0], dtype=bool)
  ratio = image_distance / jnp.maximum(z_distance, eps)
  pairs = jnp.sum(same)
  mean_ratio = jnp.sum(jnp.where(same, ratio, 0.0)) / jnp.maximum(pairs, 1)
  return jnp.where(pairs > 0, 1.0 / (mean_ratio + eps), 0.0)


def reconstruction_error(images, reconstructions):
  """Per-image mean squared error, shape `(B,)`."""
  return jnp.mean(jnp.square(images - reconstructions), axis=tuple(range(1, images.ndim)))
