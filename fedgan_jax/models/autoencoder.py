"""F-AD: a convolutional autoencoder whose reconstruction error scores anomalies.

Trained on synthetic *normal* images only, it reconstructs normal anatomy well and
anything else (opacities, nodules, fluid, an enlarged heart) poorly. A narrow
bottleneck is what makes that so: it cannot copy arbitrary pixels through.

With `conditional=True` the decoder is FiLM-modulated by the patient's condition
vector: the personalized detector, which knows what this patient's normal image
should look like (age, sex, view, body habitus), so that a deviation explained by
the record does not count as an anomaly.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fedgan_jax.models import generator as generator_lib


class Autoencoder(nn.Module):
  """`AE(x[, c]) -> reconstruction` in [-1, 1], same shape as `x`.

  Attributes:
    channels: encoder widths, each stage halving the resolution (mirrored by the decoder).
    latent_dim: bottleneck width.
    conditional: when True the decoder takes a condition vector.
  """
  channels: Sequence[int] = (16, 32, 64)
  latent_dim: int = 32
  conditional: bool = False

  @nn.compact
  def __call__(self, images, condition=None):
    if self.conditional and condition is None:
      raise ValueError('a conditional autoencoder needs the condition vector.')
    h = images
    for features in self.channels:
      h = nn.leaky_relu(nn.Conv(features, (3, 3), strides=(2, 2))(h), 0.2)
    spatial = h.shape[1:]
    latent = nn.Dense(self.latent_dim)(h.reshape(h.shape[0], -1))

    h = nn.Dense(spatial[0] * spatial[1] * spatial[2])(latent)
    h = h.reshape((-1,) + tuple(spatial))
    embedding = None
    if self.conditional:
      embedding = nn.leaky_relu(nn.Dense(64)(condition), 0.2)
    for features in reversed(self.channels):
      h = generator_lib.upsample_nearest(h)
      h = nn.Conv(features, (3, 3))(h)
      if embedding is not None:
        h = generator_lib.FiLM(features)(h, embedding)
      h = nn.leaky_relu(h, 0.2)
    return jnp.tanh(nn.Conv(images.shape[-1], (3, 3))(h))
