"""F-Disc: `D(x, c)` -> real/fake logit with projection conditioning, plus `a(x)`.

The trunk is a stack of strided residual blocks ending in a globally averaged
feature vector `h(x)`. The real/fake logit is `w . h(x) + <embed(c), h(x)>`
(Miyato & Koyama 2018's projection discriminator), so D judges whether the image
is plausible *for that patient*. The attribute head `a(x)` predicts the condition
values from `h(x)` alone; it is trained on real images only and gives the
generator's conditioning loss a target that does not depend on `c`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from fedgan_jax.models import generator as generator_lib


class DownBlock(nn.Module):
  """Strided conv3x3 -> act -> conv3x3 at half resolution, plus a pooled 1x1 shortcut.

  Striding the first convolution (rather than pooling after two full-resolution
  convolutions) cuts the block's cost ~4x, which is most of D's cost on CPU.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.features, (3, 3), strides=(2, 2), dtype=self.dtype)(nn.leaky_relu(x, 0.2))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(nn.leaky_relu(h, 0.2))
    shortcut = nn.avg_pool(x, (2, 2), strides=(2, 2))
    if shortcut.shape[-1] != self.features:
      # Dense == 1x1 conv; see generator.ConditionalResBlock for why not nn.Conv.
      shortcut = nn.Dense(self.features, dtype=self.dtype)(shortcut)
    return shortcut + h


def minibatch_std(h: jnp.ndarray, group: int) -> jnp.ndarray:
  """Appends one channel: the mean std of features across each group of examples."""
  n = h.shape[0]
  group = min(group, n)
  if n % group:
    raise ValueError(f'model.discriminator.minibatch_std_group={group} must divide the batch '
                     f'({n}); change one of them or set it to 0.')
  # In float32 whatever h's dtype: bfloat16's 8-bit mantissa cannot hold the 1e-8 floor.
  grouped = h.reshape((n // group, group) + h.shape[1:]).astype(jnp.float32)
  spread = jnp.mean(jnp.sqrt(jnp.var(grouped, axis=1) + 1e-8), axis=(1, 2, 3))
  spread = jnp.broadcast_to(jnp.repeat(spread, group)[:, None, None, None],
                            h.shape[:3] + (1,)).astype(h.dtype)
  return jnp.concatenate([h, spread], axis=-1)


class Discriminator(nn.Module):
  """Returns `{'logit': (B,), 'attributes': (B, value_dim)}`.

  Attributes:
    channels: widths of the downsampling blocks (each halves the resolution).
    value_dim: length of the condition *value* vector the attribute head predicts.
    input_unshuffle: the image is first folded `input_unshuffle**2` pixels per position
      (space-to-depth), so no convolution runs at full resolution with one channel.
    minibatch_std_group: size of the groups whose feature spread D sees (Karras et al.
      2018), which lets it notice a generator that ignores its noise; 0 turns it off (it
      couples the examples of a group, so per-example DP-SGD needs it off). Groups are
      consecutive examples: real and fake halves of a batch never share a group as long
      as the group size divides the half.
    dtype: what the layers compute in (`runtime.precision`); params stay float32 and the
      outputs come back float32, so the losses are float32.
  """
  channels: Sequence[int] = (32, 64, 128)
  value_dim: int = 1
  input_unshuffle: int = 2
  minibatch_std_group: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, condition):
    # Each DownBlock halves the side and its pooled shortcut must match the strided path.
    factor = self.input_unshuffle * 2 ** len(self.channels)
    if images.shape[1] % factor or images.shape[2] % factor:
      raise ValueError(
          f'model.discriminator: the image side ({images.shape[1]}x{images.shape[2]}) must be a '
          f'multiple of input_unshuffle ({self.input_unshuffle}) * 2**len(channels) '
          f'({len(self.channels)}) = {factor}; change data.image_size or those fields.')
    images = generator_lib.space_to_depth(images, self.input_unshuffle)
    h = nn.Conv(self.channels[0], (3, 3), dtype=self.dtype)(images)
    for features in self.channels:
      h = DownBlock(features, self.dtype)(h)
    if self.minibatch_std_group:
      h = nn.Conv(self.channels[-1], (3, 3), dtype=self.dtype)(
          minibatch_std(h, self.minibatch_std_group))
    # Mean (not sum) pooling keeps logits O(1) at any resolution without spectral norm. The
    # heads are tiny: float32 keeps the logits, and so the losses, at full precision.
    h = jnp.mean(nn.leaky_relu(h, 0.2).astype(jnp.float32), axis=(1, 2))
    unconditional = nn.Dense(1)(h)[:, 0]
    projection = jnp.sum(nn.Dense(h.shape[-1], use_bias=False)(condition) * h, axis=-1)
    attributes = nn.Dense(self.value_dim, name='attribute_head')(h)
    return {'logit': unconditional + projection, 'attributes': attributes}
