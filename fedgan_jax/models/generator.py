"""F-Gen: a conditional U-Net-like generator `G(c, z)` with FiLM at every scale.

The condition vector `c = [values * mask, mask]` and the noise `z` are embedded
once; every residual block is modulated by a per-sample scale and shift predicted
from that embedding (FiLM over a parameter-free group norm), so the patient record
reaches every resolution. The network is U-shaped: the embedding is projected to
a coarse "seed" map, an encoder halves it down to a bottleneck, and the decoder
climbs back to full resolution with skip connections from the encoder at each
matching scale, then continues upsampling to the image size.

Upsampling is nearest-neighbour repeat followed by a 3x3 convolution: on XLA's CPU
backend its gradient is ~6x cheaper than a transposed convolution (see BENCHMARKS.md)
and it avoids checkerboard artifacts. The last doubling(s) are a pixel shuffle
(`output_shuffle`): the final convolution runs at half resolution with 4x the
channels, because full-resolution convolutions with a handful of channels are the
least efficient operation on CPU (a 64x64 8->1 conv gradient runs at ~2 GFLOP/s,
a 16x16 64->32 one at ~30).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def upsample_nearest(x: jnp.ndarray) -> jnp.ndarray:
  """2x nearest-neighbour upsampling of an NHWC tensor."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def depth_to_space(x: jnp.ndarray, factor: int) -> jnp.ndarray:
  """Pixel shuffle: `(B, H, W, C * f * f) -> (B, H * f, W * f, C)`."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  c_out = c // (factor * factor)
  x = x.reshape(b, h, w, factor, factor, c_out)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * factor, w * factor, c_out)


def space_to_depth(x: jnp.ndarray, factor: int) -> jnp.ndarray:
  """Inverse of `depth_to_space`: `(B, H * f, W * f, C) -> (B, H, W, C * f * f)`."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  x = x.reshape(b, h // factor, factor, w // factor, factor, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // factor, w // factor, factor * factor * c)


def blur(x: jnp.ndarray) -> jnp.ndarray:
  """Separable [1, 2, 1] / 4 blur with edge padding (adds and shifts, no convolution)."""
  def along(x, axis):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    p = jnp.pad(x, pad, mode='edge')
    size = x.shape[axis]
    take = lambda start: jax.lax.slice_in_dim(p, start, start + size, axis=axis)
    return 0.25 * take(0) + 0.5 * take(1) + 0.25 * take(2)
  return along(along(x, 1), 2)


def downsample_average(x: jnp.ndarray) -> jnp.ndarray:
  """2x average pooling of an NHWC tensor."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def norm_groups(channels: int, max_groups: int = 8) -> int:
  """Group count for GroupNorm with at least 2 channels per group.

  With one channel per group, a per-channel bias upstream is normalized away exactly:
  its gradient is zero, and Adam turns the rounding noise of a zero gradient into
  full-size steps, so runs stop being reproducible across device layouts.
  """
  return max(1, min(max_groups, channels // 2))


class FiLM(nn.Module):
  """Feature-wise affine modulation from an embedding: `x * (1 + scale) + shift`."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, embedding):
    params = nn.Dense(2 * self.features, kernel_init=nn.initializers.zeros,
                      dtype=self.dtype)(embedding)
    scale, shift = jnp.split(params[:, None, None, :], 2, axis=-1)
    return x * (1.0 + scale) + shift


class ConditionalResBlock(nn.Module):
  """Pre-activation residual block: (norm -> FiLM -> act -> conv) x 2 plus a 1x1 shortcut."""
  features: int
  groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, embedding):
    def norm_film_act(h):
      h = nn.GroupNorm(num_groups=norm_groups(h.shape[-1], self.groups), use_scale=False,
                       use_bias=False, dtype=self.dtype)(h)
      h = FiLM(h.shape[-1], self.dtype)(h, embedding)
      return nn.leaky_relu(h, 0.2)

    h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(norm_film_act(x))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(norm_film_act(h))
    # A 1x1 projection as Dense, not Conv: XLA's SPMD partitioner computes wrong kernel
    # gradients for vmapped 1x1 convolutions when the client axis is sharded (seen with
    # jax 0.10.2 on CPU), and the two are the same function.
    shortcut = (x if x.shape[-1] == self.features else
                nn.Dense(self.features, dtype=self.dtype)(x))
    return shortcut + h


class Generator(nn.Module):
  """`G(c, z) -> image` in [-1, 1], shape `(B, image_size, image_size, channels)`.

  Attributes:
    image_size: output height and width; must be
      seed_size * 2**len(decoder_channels) * output_shuffle.
    seed_size: side of the coarse map the embedding is projected to.
    encoder_channels: widths of the U-Net encoder, from the seed resolution down to the
      bottleneck; each entry after the first halves the resolution.
    decoder_channels: widths of the upsampling stages after the U-Net, one per doubling.
    embedding_dim: width of the (c, z) embedding that drives FiLM.
    channels: image channels (1 for radiographs).
    output_shuffle: the final convolution predicts `output_shuffle**2` pixels per position.
    output_blur: smooth the shuffled output with a fixed [1, 2, 1] blur, which removes the
      2-pixel checkerboard a pixel shuffle starts with.
    smooth_upsampling: which nearest-neighbour upsamplings are followed by the same blur
      (the [1, 3, 3, 1]-like low-pass of StyleGAN's upsampling), so block edges of a coarse
      grid do not reach the image as texture: 'none', 'all', 'coarse' (all but the last)
      or 'last'.
    dtype: what the layers compute in (`runtime.precision`); params stay float32 and the
      image comes back float32.
  """
  image_size: int = 64
  seed_size: int = 16
  encoder_channels: Sequence[int] = (64, 128, 128)
  decoder_channels: Sequence[int] = (32, 16)
  embedding_dim: int = 128
  channels: int = 1
  output_shuffle: int = 2
  output_blur: bool = True
  smooth_upsampling: str = 'none'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, condition, z):
    reach = self.seed_size * 2 ** len(self.decoder_channels) * self.output_shuffle
    if reach != self.image_size:
      raise ValueError(
          f'model.generator: seed_size ({self.seed_size}) * 2**len(decoder_channels) '
          f'({2 ** len(self.decoder_channels)}) * output_shuffle ({self.output_shuffle}) = {reach} '
          f'must equal the image size ({self.image_size}).')
    if self.seed_size % 2 ** (len(self.encoder_channels) - 1):
      raise ValueError(f'model.generator: seed_size {self.seed_size} cannot be halved '
                       f'{len(self.encoder_channels) - 1} times by the encoder.')
    embedding = jnp.concatenate([condition, z], axis=-1)
    dense = lambda features: nn.Dense(features, dtype=self.dtype)
    embedding = nn.leaky_relu(dense(self.embedding_dim)(embedding), 0.2)
    embedding = nn.leaky_relu(dense(self.embedding_dim)(embedding), 0.2)

    h = dense(self.seed_size * self.seed_size * self.encoder_channels[0])(embedding)
    h = h.reshape(-1, self.seed_size, self.seed_size, self.encoder_channels[0])

    skips = []
    for i, features in enumerate(self.encoder_channels):
      if i:
        h = downsample_average(h)
      h = ConditionalResBlock(features, dtype=self.dtype)(h, embedding)
      skips.append(h)
    skips.pop()  # The bottleneck output is `h` itself.
    stages = len(self.encoder_channels) - 1 + len(self.decoder_channels)
    smoothed = {'none': (), 'all': range(stages), 'coarse': range(stages - 1),
                'last': (stages - 1,)}
    if self.smooth_upsampling not in smoothed:
      raise ValueError(f'model.generator.smooth_upsampling: {self.smooth_upsampling!r} is not one '
                       f'of {sorted(smoothed)}.')
    stage = iter(range(stages))

    def upsample(x):
      x = upsample_nearest(x)
      return blur(x) if next(stage) in smoothed[self.smooth_upsampling] else x

    for features in reversed(self.encoder_channels[:-1]):
      h = upsample(h)
      h = jnp.concatenate([h, skips.pop()], axis=-1)
      h = ConditionalResBlock(features, dtype=self.dtype)(h, embedding)
    for features in self.decoder_channels:
      h = upsample(h)
      h = ConditionalResBlock(features, dtype=self.dtype)(h, embedding)

    h = nn.GroupNorm(num_groups=norm_groups(h.shape[-1]), dtype=self.dtype)(h)
    h = nn.leaky_relu(h, 0.2)
    h = nn.Conv(self.channels * self.output_shuffle ** 2, (3, 3), dtype=self.dtype)(h)
    h = depth_to_space(h, self.output_shuffle)
    if self.output_blur and self.output_shuffle > 1:
      h = blur(h)
    return jnp.tanh(h.astype(jnp.float32))
