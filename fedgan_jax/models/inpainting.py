"""SQUID-style in-painting from a memory of normal patterns (Xiang et al., CVPR 2023), CPU-sized.

The input (block-averaged pixels or D's feature maps, `(B, H, W, C)`) is cut into a grid of
`patch x patch` patches. Each patch is embedded (shared weights plus a position embedding)
and replaced by what a learned memory of normal patterns holds nearest to it: an attention
read `softmax(q M^T / sqrt(d)) M` over the memory rows `M`. Each patch is then in-painted
from its eight neighbours' memory reads, its own one masked out, and decoded back to
pixels. Trained on normal films only, the memory holds normal patterns and the in-painting
normal anatomy, so an opacity is replaced by what a normal film would show there and leaves
a large reconstruction error. SQUID's transformer in-painting block and gated skip
connections are reduced here to a fixed neighbour average and dense layers; its
discriminator's judgment of the in-painted image is `anomaly.score='judge'`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def memory_read(queries: jnp.ndarray, memory: jnp.ndarray) -> jnp.ndarray:
  """`softmax(q M^T / sqrt(d)) M`: each query `(..., d)` as a mix of the memory rows `(S, d)`."""
  weights = jax.nn.softmax(queries @ memory.T / np.sqrt(memory.shape[-1]), axis=-1)
  return weights @ memory


def to_patches(x: jnp.ndarray, patch: int) -> jnp.ndarray:
  """`(B, H, W, C)` -> `(B, H/p, W/p, p*p*C)`."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // patch, w // patch, patch * patch * c)


def from_patches(x: jnp.ndarray, patch: int, channels: int) -> jnp.ndarray:
  """Inverse of `to_patches`."""
  b, gh, gw, _ = x.shape
  x = x.reshape(b, gh, gw, patch, patch, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * patch, gw * patch, channels)


def neighbour_mean(grid: jnp.ndarray) -> jnp.ndarray:
  """Mean over each cell's (up to 8) neighbours of a `(B, GH, GW, D)` grid, the cell excluded.

  The masked centre of SQUID's in-painting: a patch is predicted from its surroundings.
  """
  padded = jnp.pad(grid, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ones = jnp.pad(jnp.ones(grid.shape[1:3], grid.dtype), 1)
  gh, gw = grid.shape[1:3]
  total, count = 0.0, 0.0
  for dy in range(3):
    for dx in range(3):
      if (dy, dx) != (1, 1):
        total = total + padded[:, dy:dy + gh, dx:dx + gw]
        count = count + ones[dy:dy + gh, dx:dx + gw]
  return total / count[None, :, :, None]


class MemoryInpainter(nn.Module):
  """`AE(x) -> reconstruction` in [-1, 1] of `(B, H, W, C)`, patches in-painted from memory.

  Attributes:
    patch: patch side (must divide H and W).
    embedding_dim: width of a patch's embedding and of the memory rows.
    memory_slots: rows of the memory of normal patterns.
    hidden: width of the decoder's hidden layer.
    conditional: accepted for the common AE signature; must be False.
  """
  patch: int = 4
  embedding_dim: int = 64
  memory_slots: int = 64
  hidden: int = 256
  conditional: bool = False

  @nn.compact
  def __call__(self, images, condition=None):
    if self.conditional:
      raise ValueError("anomaly.architecture='inpaint' has no conditional form.")
    b, h, w, c = images.shape
    if h % self.patch or w % self.patch:
      raise ValueError(f'anomaly.variant.inpaint_patch={self.patch} must divide the detector input '
                       f'({h}x{w}).')
    patches = to_patches(images, self.patch)
    positions = self.param('positions', nn.initializers.normal(0.02),
                           patches.shape[1:3] + (self.embedding_dim,))
    queries = nn.Dense(self.embedding_dim)(patches) + positions
    memory = self.param('memory', nn.initializers.normal(1.0),
                        (self.memory_slots, self.embedding_dim))
    reads = memory_read(queries, memory)
    # A patch sees its own memory read (the nearest normal pattern, never its own pixels)
    # and its neighbours' (their context): what a normal film would show at that place.
    h_ = jnp.concatenate([reads, neighbour_mean(reads), jnp.broadcast_to(positions, reads.shape)],
                         axis=-1)
    h_ = nn.leaky_relu(nn.Dense(self.hidden)(h_), 0.2)
    out = jnp.tanh(nn.Dense(self.patch * self.patch * c)(h_))
    return from_patches(out, self.patch, c)
