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
    pixel_shuffle: the image is folded `pixel_shuffle**2` pixels per position on the way in
      and unfolded on the way out, so no convolution runs at full resolution with a handful
      of channels (the slowest operation on CPU).
  """
  channels: Sequence[int] = (32, 64)
  latent_dim: int = 32
  conditional: bool = False
  pixel_shuffle: int = 2

  @nn.compact
  def __call__(self, images, condition=None):
    if self.conditional and condition is None:
      raise ValueError('a conditional autoencoder needs the condition vector.')
    # The decoder doubles back exactly what the strided encoder halved.
    factor = self.pixel_shuffle * 2 ** len(self.channels)
    if images.shape[1] % factor or images.shape[2] % factor:
      raise ValueError(
          f'anomaly: the conv autoencoder needs an image side ({images.shape[1]}x'
          f'{images.shape[2]}) that is a multiple of pixel_shuffle ({self.pixel_shuffle}) * '
          f'2**len(channels) ({len(self.channels)}) = {factor}; change anomaly.channels, '
          "anomaly.pixel_shuffle, or use anomaly.architecture='dense'.")
    h = generator_lib.space_to_depth(images, self.pixel_shuffle)
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
    h = nn.Conv(images.shape[-1] * self.pixel_shuffle ** 2, (3, 3))(h)
    return jnp.tanh(generator_lib.depth_to_space(h, self.pixel_shuffle))


class DenseAutoencoder(nn.Module):
  """`AE(x[, c])` over flattened pixels: a nonlinear PCA with a narrow bottleneck.

  Its matrix products run near the CPU's peak, where small convolutions do not
  (BENCHMARKS.md), so it trains in seconds on a laptop; anomalies still stand out
  because a 32-d code cannot carry a nodule or an opacity it never saw.

  Attributes:
    hidden: widths of the encoder's hidden layers (mirrored by the decoder).
    latent_dim: bottleneck width.
    conditional: when True the decoder's hidden layers are FiLM-modulated by `c`.
  """
  hidden: Sequence[int] = (512,)
  latent_dim: int = 32
  conditional: bool = False

  @nn.compact
  def __call__(self, images, condition=None):
    if self.conditional and condition is None:
      raise ValueError('a conditional autoencoder needs the condition vector.')
    h = images.reshape(images.shape[0], -1)
    for features in self.hidden:
      h = nn.leaky_relu(nn.Dense(features)(h), 0.2)
    h = nn.Dense(self.latent_dim)(h)
    embedding = nn.leaky_relu(nn.Dense(64)(condition), 0.2) if self.conditional else None
    for features in reversed(self.hidden):
      h = nn.Dense(features)(h)
      if embedding is not None:
        h = generator_lib.FiLM(features)(h[:, None, None, :], embedding)[:, 0, 0, :]
      h = nn.leaky_relu(h, 0.2)
    return jnp.tanh(nn.Dense(images[0].size)(h)).reshape(images.shape)
