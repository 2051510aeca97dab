"""A chest-radiograph feature space for FID/KID/precision/recall without external weights.

A small CNN is trained on the REAL training images to predict each image's condition
values (age, sex, view, history, clinical data, findings) with the masked attribute loss
the discriminator's head uses; its penultimate layer is the feature space. FID, KID and
the k-NN metrics computed there measure whether generated images carry the anatomy,
demographics and findings that distinguish real radiographs, which ImageNet features
see poorly at 64x64.

Numbers in this space are NOT comparable to ImageNet-Inception FID, nor across
datasets, seeds or encoder configs: the encoder is part of the metric. Compare methods
only when they were scored by the same encoder (same data, seed and
`eval.domain_features`), as `driver.evaluate_checkpoint` and
`benchmarks/compare_baselines.py` do.
"""

import dataclasses
import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedgan_jax import losses
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.models import generator as generator_lib


@dataclasses.dataclass
class EncoderSettings:
  """`eval.domain_features`: the encoder's network and training (numbers: configs/eval_common.py).

  Part of the metric's definition, not an experiment knob, so one typed config leaf; a field
  is still overridden by name, e.g. `--config.eval.domain_features.steps=800`.

  Attributes:
    channels: widths of the strided convolutions.
    feature_dim: width of the feature layer (the FID space).
    input_unshuffle: space-to-depth factor applied to the image first.
    steps, batch_size, learning_rate: Adam training on the real training images.
    feature_batch_size: images per forward pass when extracting features.
  """
  channels: tuple
  feature_dim: int
  input_unshuffle: int
  steps: int
  batch_size: int
  learning_rate: float
  feature_batch_size: int


class DomainEncoder(nn.Module):
  """`images -> (features, attribute outputs)`; features are the penultimate layer.

  Attributes:
    channels: widths of the strided convolutions (each halves the resolution).
    feature_dim: width of the feature layer (the FID space; keep it well under the number
      of images compared, so covariances are well estimated).
    value_dim: length of the condition value vector the head predicts.
    input_unshuffle: pixels folded into channels per side before the first convolution.
  """
  channels: Sequence[int] = (16, 32, 64)
  feature_dim: int = 64
  value_dim: int = 1
  input_unshuffle: int = 2

  @nn.compact
  def __call__(self, images):
    # Folding 2x2 pixels into channels first: a full-resolution convolution of a single
    # channel is the slowest operation on CPU, and this one would dominate training.
    h = generator_lib.space_to_depth(images, self.input_unshuffle)
    for features in self.channels:
      h = nn.leaky_relu(nn.Conv(features, (3, 3), strides=(2, 2))(h), 0.2)
    # Mean pooling keeps the feature layer's input independent of image size.
    pooled = jnp.concatenate([jnp.mean(h, axis=(1, 2)), jnp.std(h, axis=(1, 2))], axis=-1)
    # Linear features (before the nonlinearity): a ReLU layer would give many exact zeros
    # and a rank-deficient covariance.
    features = nn.Dense(self.feature_dim)(pooled)
    attributes = nn.Dense(self.value_dim)(nn.leaky_relu(features, 0.2))
    return features, attributes


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
  # One optimizer object per rate: jit caches on it, so refits reuse the compiled step.
  return optax.adam(learning_rate)


def _to_float(images_uint8):
  return images_uint8.astype(jnp.float32) / 127.5 - 1.0


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_step(model, optimizer, params, opt_state, images, conditions, continuous_columns):
  values, mask = conditions_lib.split_condition(conditions)

  def loss_fn(p):
    _, raw = model.apply({'params': p}, _to_float(images))
    return jnp.mean(losses.attribute_loss(raw, values, mask, continuous_columns))

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, images):
  return model.apply({'params': params}, _to_float(images))


@dataclasses.dataclass
class FittedEncoder:
  """A trained `DomainEncoder` with its parameters and training losses."""
  model: DomainEncoder
  params: dict
  initial_loss: float
  final_loss: float

  def outputs(self, images_uint8: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(features (N, feature_dim), attribute outputs (N, value_dim))`, float64.

    Batches are padded to `batch_size` (one compiled function for any N).
    """
    if len(images_uint8) == 0:
      raise ValueError('domain features: no images given.')
    features, attributes = [], []
    for start in range(0, len(images_uint8), batch_size):
      chunk = np.asarray(images_uint8[start:start + batch_size])
      count = len(chunk)
      if count < batch_size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, 0)])
      f, a = _apply(self.model, self.params, chunk)
      features.append(np.asarray(f, np.float64)[:count])
      attributes.append(np.asarray(a, np.float64)[:count])
    return np.concatenate(features), np.concatenate(attributes)

  def features(self, images_uint8: np.ndarray, batch_size: int) -> np.ndarray:
    return self.outputs(images_uint8, batch_size)[0]


def train_domain_encoder(images_uint8: np.ndarray, conditions: np.ndarray,
                         continuous_columns: np.ndarray, domain_config, seed: int) -> FittedEncoder:
  """Fits the encoder on real training images and their condition vectors.

  Args:
    images_uint8: `(N, H, W, 1)` real training images (all hospitals pooled).
    conditions: `(N, model_dim)` their condition vectors `[values * mask, mask]`.
    continuous_columns: bool `(value_dim,)`, from `schema.continuous_columns()`.
    domain_config: `eval.domain_features` (an `EncoderSettings`).
    seed: fixes the initialization and the batch order.
  """
  if len(images_uint8) != len(conditions):
    raise ValueError(f'domain features: {len(images_uint8)} images but {len(conditions)} '
                     'condition vectors.')
  if len(images_uint8) < 2:
    raise ValueError('domain features: need at least 2 real training images to fit on.')
  continuous_columns = np.asarray(continuous_columns, bool)
  model = DomainEncoder(channels=tuple(domain_config.channels),
                        feature_dim=int(domain_config.feature_dim),
                        value_dim=len(continuous_columns),
                        input_unshuffle=int(domain_config.input_unshuffle))
  params = model.init(jax.random.key(seed), _to_float(jnp.asarray(images_uint8[:1])))['params']
  optimizer = _adam(float(domain_config.learning_rate))
  opt_state = optimizer.init(params)
  rng = np.random.default_rng([seed, 11])
  batch_size = min(int(domain_config.batch_size), len(images_uint8))
  conditions = np.asarray(conditions, np.float32)
  step_losses = []
  for _ in range(int(domain_config.steps)):
    index = np.sort(rng.choice(len(images_uint8), batch_size, replace=False))
    params, opt_state, loss = _train_step(model, optimizer, params, opt_state,
                                          images_uint8[index], conditions[index],
                                          continuous_columns)
    step_losses.append(loss)
  step_losses = [float(v) for v in jax.device_get(step_losses)] or [float('nan')]
  if not np.isfinite(step_losses[-1]):
    raise FloatingPointError(f'domain features: the encoder loss is {step_losses[-1]}; lower '
                             f'eval.domain_features.learning_rate (now '
                             f'{domain_config.learning_rate}).')
  # Averages over a few steps: one batch's loss is noisy.
  window = max(1, len(step_losses) // 10)
  return FittedEncoder(model=model, params=params,
                       initial_loss=float(np.mean(step_losses[:window])),
                       final_loss=float(np.mean(step_losses[-window:])))
