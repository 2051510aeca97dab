"""The federated discriminator as F-AD's feature space and judge (`anomaly.features`, 'judge').

D was trained by the hospitals on their real films (and G's fakes); no other network here
has seen real films, and no external pretrained weights exist. Its residual blocks'
feature maps are a space learned from real anatomy in which a detector can reconstruct
(`anomaly.features='discriminator'`, block `anomaly.discriminator_block`), and its logit
says how plausible a film looks, which SQUID (Xiang et al. 2023) uses to judge an
in-painted reconstruction (`anomaly.score='judge'`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedgan_jax.models import discriminator as discriminator_lib


@dataclasses.dataclass(frozen=True)
class DiscriminatorView:
  """A trained D, its params and the condition a normal film is judged under.

  `condition` is the mean of the synthetic normal profiles' condition vectors: D's logit is
  linear in the condition (projection), so this is the mean logit over normal profiles.
  """
  module: discriminator_lib.Discriminator
  params: Any
  condition: np.ndarray


def _trunk(module: discriminator_lib.Discriminator) -> discriminator_lib.Discriminator:
  # Without the minibatch-std layer (it comes after the blocks) a film's features never
  # depend on the films batched with it; the params it would read are simply unused.
  return module.clone(minibatch_std_group=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _block_output(trunk, block, params, condition, images):
  """Residual block `block`'s output for uint8 images (the blocks never read the condition)."""
  images = images.astype(jnp.float32) / 127.5 - 1.0
  conditions = jnp.broadcast_to(condition, (images.shape[0], condition.shape[-1]))
  _, state = trunk.apply({'params': params}, images, conditions, capture_intermediates=(
      lambda mdl, method: isinstance(mdl, discriminator_lib.DownBlock)))
  return state['intermediates'][f'DownBlock_{block}']['__call__'][0]


def feature_maps(view: DiscriminatorView, images: np.ndarray, block: int,
                 batch_size: int = 256) -> np.ndarray:
  """D's residual block `block`'s output for uint8 images `(N, H, W, C)`: float `(N, h, w, c)`."""
  trunk = _trunk(view.module)
  if not 0 <= block < len(trunk.channels):
    raise ValueError(f'anomaly.discriminator_block={block} must index one of D\'s '
                     f'{len(trunk.channels)} blocks (model.discriminator.channels).')
  return np.concatenate([np.asarray(_block_output(trunk, block, view.params, view.condition,
                                                  images[i:i + batch_size]))
                         for i in range(0, len(images), batch_size)])


@dataclasses.dataclass(frozen=True)
class FeatureNormalization:
  """Per-channel centring and one overall scale, from a detector's own training features.

  One scale (3 x the RMS of the centred features), not one per channel: at
  `sampling.noise_scale=0` every synthetic normal is the same film and a channel's spread
  over films is zero. Training features then lie mostly inside the AE's tanh range, and a
  film whose features leave it cannot be reconstructed, which is what should score high.
  """
  mean: np.ndarray
  scale: float

  @classmethod
  def fit(cls, features: np.ndarray) -> 'FeatureNormalization':
    mean = features.mean(axis=(0, 1, 2))
    rms = float(np.sqrt(np.mean(np.square(features - mean))))
    return cls(mean=mean, scale=3.0 * max(rms, 1e-6))

  def __call__(self, features: np.ndarray) -> np.ndarray:
    return ((features - self.mean) / self.scale).astype(np.float32)


def apply_padded(module: discriminator_lib.Discriminator, params, images: jnp.ndarray,
                 conditions: jnp.ndarray) -> dict:
  """D's outputs for float images in [-1, 1] `(B, H, W, C)` and conditions `(B, C)` (traceable).

  The batch is padded to a multiple of D's minibatch-std group (edge copies) so any batch
  size works; a film's outputs still depend on its group, as they did in training.
  """
  group = module.minibatch_std_group
  n = images.shape[0]
  pad = (-n) % group if group else 0
  if pad:
    images, conditions = (jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
                          for a in (images, conditions))
  outputs = module.apply({'params': params}, images, conditions)
  return {name: value[:n] for name, value in outputs.items()}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _finding_probability(module, params, images, conditions, columns):
  images = images.astype(jnp.float32) / 127.5 - 1.0
  attributes = apply_padded(module, params, images, conditions)['attributes']
  return jnp.max(jax.nn.sigmoid(attributes[:, columns[0]:columns[1]]), axis=1)


def finding_probability(module: discriminator_lib.Discriminator, params, images: np.ndarray,
                        conditions: np.ndarray, columns: slice,
                        batch_size: int = 256) -> np.ndarray:
  """`(N,)`: the largest probability D's attribute head gives any finding in `columns`.

  The head was trained on the hospitals' labelled real films, so this is the federation's
  own reading of "does this film show a finding".
  """
  bounds = (columns.start, columns.stop)
  return np.concatenate([
      np.asarray(_finding_probability(module, params, np.asarray(images[i:i + batch_size]),
                                      np.asarray(conditions[i:i + batch_size], np.float32),
                                      bounds))
      for i in range(0, len(images), batch_size)])


def judge_logits(view_params, module: discriminator_lib.Discriminator, condition,
                 images: jnp.ndarray) -> jnp.ndarray:
  """D's logit for float images in [-1, 1] `(B, H, W, C)` under `condition` (traceable)."""
  conditions = jnp.broadcast_to(condition, (images.shape[0], condition.shape[-1]))
  return apply_padded(module, view_params, images, conditions)['logit']
