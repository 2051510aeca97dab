"""F-AD: train the autoencoder on synthetic normal images, threshold, score real images.

The AE reads the image averaged over blocks down to `anomaly.input_size` pixels (0 = the
image as it is): pneumonia's opacities survive the average, while the fine texture that
a GAN trained on a few hundred films renders least faithfully does not (on ZhangLab
validation the same AE on real normals scores 0.87 at 64 px, 0.88 at 32 and 0.89 at 16).
An image's anomaly score is its mean squared reconstruction error
(`anomaly.score='mse'`) or a high percentile of a residual map blurred with a
Gaussian: findings such as nodules or a blunted costophrenic angle change a few
percent of the pixels, which the image mean dilutes and a local score keeps. The
map is either the blurred squared residual (`'local'`) or, by default
(`'signed'`), the square of the blurred *signed* residual: a detector trained on
synthetic films misplaces thin structures such as rib edges, whose residual
alternates in sign over a few pixels and cancels under the blur, while an opacity
or effusion leaves a residual of one sign that survives it (phantom, synthetic
and real-trained detectors alike; BENCHMARKS.md). `'ssim'` maps one minus the local
SSIM (Gaussian window of `score_blur_sigma` pixels), which weighs lost texture and
contrast, not only intensity.

Variants (issue 21, benchmarks/detector_variants.md): `anomaly.variant.features='discriminator'`
reconstructs the federated D's feature maps instead of pixels
(`evaluation/discriminator_view.py`); `anomaly.architecture='inpaint'` in-paints patches
from a memory of normal patterns (`models/inpainting.py`, SQUID-style), and
`anomaly.score='judge'` scores a reconstruction by D's logit on it; ensembles are
`evaluation/detectors.py`.

The threshold is the configured percentile of reconstruction errors on the
synthetic training set itself (no real image is used to set it); sensitivity and
specificity are reported at that threshold, AUC over all thresholds, on the real
test split (normal vs abnormal).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np
import optax
from sklearn import metrics as sk_metrics

from fedgan_jax import losses
from fedgan_jax.evaluation import discriminator_view
from fedgan_jax.models import autoencoder as autoencoder_lib
from fedgan_jax.models import inpainting


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
  """How a reconstruction becomes one anomaly score (hashable: a static jit argument)."""
  kind: str = 'mse'
  blur_sigma: float = 0.0     # Pixels; 0 = no blur.
  percentile: float = 100.0   # Of the blurred residual map's pixels.
  border: float = 0.0         # Fraction of the map's height/width left out on each side.


@dataclasses.dataclass(frozen=True)
class DiscriminatorFeatures:
  """`anomaly.variant.features='discriminator'`: D's block `block`, normalized by the training set's."""
  view: discriminator_view.DiscriminatorView
  block: int
  normalization: discriminator_view.FeatureNormalization

  def __call__(self, images: np.ndarray) -> np.ndarray:
    return self.normalization(discriminator_view.feature_maps(self.view, images, self.block))


@dataclasses.dataclass
class Detector:
  model: nn.Module
  params: dict
  final_loss: float
  score: ScoreConfig = ScoreConfig()
  # Images are averaged over `pool x pool` blocks before the AE (`anomaly.input_size`);
  # 0: the AE reads `features(images)` instead.
  pool: int = 1
  features: DiscriminatorFeatures | None = None
  # The D that judges reconstructions (`anomaly.score='judge'`).
  judge: discriminator_view.DiscriminatorView | None = None


ARCHITECTURES = ('dense', 'conv', 'inpaint')
FEATURES = ('pixels', 'discriminator')
SCORES = ('mse', 'local', 'signed', 'ssim', 'judge')
# SSIM's stabilizers for images in [-1, 1] (dynamic range L = 2): (0.01 L)^2, (0.03 L)^2.
_SSIM_C1, _SSIM_C2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2


def score_config(anomaly_config) -> ScoreConfig:
  kind = anomaly_config.score
  if kind not in SCORES:
    raise ValueError(f'anomaly.score: {kind!r} is not one of {SCORES}.')
  border = float(anomaly_config.variant.score_border)
  if not 0 <= border < 0.5:
    raise ValueError(f'anomaly.variant.score_border must be in [0, 0.5), got {border}.')
  if kind == 'judge':
    return ScoreConfig(kind)
  if kind == 'mse':
    return ScoreConfig(kind, border=border)
  sigma, percentile = float(anomaly_config.score_blur_sigma), float(anomaly_config.score_percentile)
  if kind == 'ssim' and sigma <= 0:
    raise ValueError(f'anomaly.score="ssim" needs anomaly.score_blur_sigma > 0 (its window), '
                     f'is {sigma}.')
  if sigma < 0 or not 0 < percentile <= 100:
    raise ValueError(f'anomaly.score_blur_sigma must be >= 0 (is {sigma}) and '
                     f'anomaly.score_percentile in (0, 100] (is {percentile}).')
  return ScoreConfig(kind, sigma, percentile, border)


def gaussian_blur(maps: jnp.ndarray, sigma: float) -> jnp.ndarray:
  """Separable Gaussian blur of `(B, H, W)` maps, zero padding, kernel radius ceil(3 sigma)."""
  if sigma == 0:
    return maps
  radius = int(np.ceil(3 * sigma))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  kernel = jnp.asarray(np.outer(taps, taps) / taps.sum() ** 2, maps.dtype)[:, :, None, None]
  blurred = jax.lax.conv_general_dilated(maps[..., None], kernel, (1, 1), 'SAME',
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return blurred[..., 0]


def ssim_map(x: jnp.ndarray, y: jnp.ndarray, sigma: float) -> jnp.ndarray:
  """Per-pixel SSIM (Wang et al. 2004) of `(B, H, W)` maps in [-1, 1], Gaussian window `sigma`.

  Structure and contrast, not only intensity: a reconstruction that keeps a film's
  brightness but loses its lung texture scores low.
  """
  mean_x, mean_y = gaussian_blur(x, sigma), gaussian_blur(y, sigma)
  var_x = gaussian_blur(x * x, sigma) - mean_x ** 2
  var_y = gaussian_blur(y * y, sigma) - mean_y ** 2
  covariance = gaussian_blur(x * y, sigma) - mean_x * mean_y
  return (((2 * mean_x * mean_y + _SSIM_C1) * (2 * covariance + _SSIM_C2))
          / ((mean_x ** 2 + mean_y ** 2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)))


def anomaly_score(images, reconstructions, score: ScoreConfig):
  """`(B,)` scores of images in [-1, 1] against their reconstructions."""
  if score.border:
    # The map's central part only: film borders, collimation edges and burnt-in labels vary
    # from scanner to scanner and carry no finding.
    h, w = images.shape[1:3]
    top, left = int(round(score.border * h)), int(round(score.border * w))
    images = images[:, top:h - top, left:w - left]
    reconstructions = reconstructions[:, top:h - top, left:w - left]
  if score.kind == 'mse':
    return losses.reconstruction_error(images, reconstructions)
  if score.kind == 'signed':
    residual = jnp.mean(images - reconstructions, axis=-1)
    local_map = jnp.square(gaussian_blur(residual, score.blur_sigma))
  elif score.kind == 'ssim':
    local_map = 1.0 - ssim_map(jnp.mean(images, axis=-1), jnp.mean(reconstructions, axis=-1),
                               score.blur_sigma)
  else:
    local_map = gaussian_blur(jnp.mean(jnp.square(images - reconstructions), axis=-1),
                              score.blur_sigma)
  return jnp.percentile(local_map.reshape(local_map.shape[0], -1), score.percentile, axis=1)


def input_pool(anomaly_config, image_size: int) -> int:
  """Block size that takes `image_size` images to `anomaly.input_size` (0 = as they are)."""
  size = int(anomaly_config.input_size)
  if size == 0 or size == image_size:
    return 1
  if size < 0 or size > image_size or image_size % size:
    raise ValueError(f'anomaly.input_size={size} must be 0 (the image size) or divide the image '
                     f'size {image_size}.')
  return image_size // size


def detector_input(images, pool: int):
  """uint8 `(B, H, W, C)` -> the AE's float input in [-1, 1], averaged over pool x pool blocks.

  Opacities are broad: the block average keeps them and drops the fine texture a GAN
  renders least faithfully (and real films differ in most from one scanner to the next).
  """
  if pool == 0:  # Already the detector's features (`anomaly.variant.features`).
    return jnp.asarray(images, jnp.float32)
  images = jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0
  if pool == 1:
    return images
  b, h, w, c = images.shape
  return images.reshape(b, h // pool, pool, w // pool, pool, c).mean(axis=(2, 4))


def build_autoencoder(anomaly_config, conditional: bool = False):
  """`anomaly.architecture`: 'dense' (fast on CPU, the default), 'conv' or 'inpaint'."""
  if anomaly_config.architecture == 'inpaint':
    return inpainting.MemoryInpainter(
        patch=anomaly_config.variant.inpaint_patch,
        embedding_dim=anomaly_config.variant.inpaint_embedding_dim,
        memory_slots=anomaly_config.variant.memory_slots, hidden=anomaly_config.hidden[0],
        conditional=conditional)
  if anomaly_config.architecture == 'dense':
    return autoencoder_lib.DenseAutoencoder(hidden=tuple(anomaly_config.hidden),
                                            latent_dim=anomaly_config.latent_dim,
                                            conditional=conditional)
  if anomaly_config.architecture == 'conv':
    return autoencoder_lib.Autoencoder(channels=tuple(anomaly_config.channels),
                                       latent_dim=anomaly_config.latent_dim,
                                       conditional=conditional,
                                       pixel_shuffle=anomaly_config.pixel_shuffle)
  raise ValueError(f'anomaly.architecture: {anomaly_config.architecture!r} is not one of '
                   f'{ARCHITECTURES}.')


@functools.partial(jax.jit, static_argnums=(0, 1, 6))
def _train_step(model, optimizer, params, opt_state, images, conditions, pool):
  def loss_fn(p):
    images_float = detector_input(images, pool)
    reconstructions = model.apply({'params': p}, images_float, conditions)
    return jnp.mean(losses.reconstruction_error(images_float, reconstructions))
  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def train_autoencoder(images: np.ndarray, anomaly_config, seed: int,
                      conditions: np.ndarray | None = None,
                      discriminator: discriminator_view.DiscriminatorView | None = None
                      ) -> Detector:
  """Fits the AE on uint8 images `(N, H, W, 1)` (and their conditions if personalized).

  `discriminator` (the federated D) is needed by `anomaly.variant.features='discriminator'` and
  `anomaly.score='judge'`.
  """
  if len(images) == 0:
    raise ValueError('anomaly: no images to train the autoencoder on.')
  score = score_config(anomaly_config)
  features_kind = anomaly_config.variant.features
  if features_kind not in FEATURES:
    raise ValueError(f'anomaly.variant.features: {features_kind!r} is not one of {FEATURES}.')
  needs_d = features_kind == 'discriminator' or score.kind == 'judge'
  if needs_d and discriminator is None:
    raise ValueError(f'anomaly.variant.features={features_kind!r} / anomaly.score={score.kind!r} need '
                     "the federated D's params, which this caller did not pass.")
  if score.kind == 'judge' and features_kind != 'pixels':
    raise ValueError("anomaly.score='judge' judges a film: it needs anomaly.variant.features='pixels'.")
  model = build_autoencoder(anomaly_config, conditional=conditions is not None)
  features = None
  if features_kind == 'discriminator':
    block = int(anomaly_config.variant.discriminator_block)
    raw = discriminator_view.feature_maps(discriminator, images, block)
    normalization = discriminator_view.FeatureNormalization.fit(raw)
    features = DiscriminatorFeatures(discriminator, block, normalization)
    images, pool = normalization(raw), 0
  else:
    pool = input_pool(anomaly_config, images.shape[1])
  rng = np.random.default_rng([seed, 7])
  example = detector_input(images[:1], pool)
  example_condition = None if conditions is None else conditions[:1]
  params = model.init(jax.random.key(seed), example, example_condition)['params']
  optimizer = optax.adam(anomaly_config.learning_rate)
  opt_state = optimizer.init(params)
  batch_size = min(anomaly_config.batch_size, len(images))
  loss = jnp.nan
  for _ in range(anomaly_config.steps):
    index = np.sort(rng.choice(len(images), batch_size, replace=False))
    batch_conditions = None if conditions is None else conditions[index]
    params, opt_state, loss = _train_step(model, optimizer, params, opt_state, images[index],
                                          batch_conditions, pool)
  final_loss = float(loss)
  if not np.isfinite(final_loss):
    raise FloatingPointError(f'anomaly: the autoencoder loss is {final_loss}; lower '
                             f'anomaly.learning_rate (now {anomaly_config.learning_rate}).')
  return Detector(model=model, params=params, final_loss=final_loss, score=score, pool=pool,
                  features=features, judge=discriminator if score.kind == 'judge' else None)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _scores(model, params, images, conditions, score, pool, judge_module, judge_inputs):
  images_float = detector_input(images, pool)
  reconstructions = model.apply({'params': params}, images_float, conditions)
  if score.kind == 'judge':
    # SQUID's second score: how implausible D finds the reconstruction (at D's resolution).
    full = jnp.repeat(jnp.repeat(reconstructions, pool, axis=1), pool, axis=2)
    d_params, condition = judge_inputs
    return -discriminator_view.judge_logits(d_params, judge_module, condition, full)
  return anomaly_score(images_float, reconstructions, score)


def anomaly_scores(detector: Detector, images: np.ndarray,
                   conditions: np.ndarray | None = None, batch_size: int = 256):
  """Per-image anomaly scores (the detector's `score`), numpy `(N,)`, fixed-size batches."""
  if detector.features is not None:
    images = detector.features(images)
  judge = detector.judge
  judge_module = None if judge is None else judge.module
  judge_inputs = None if judge is None else (judge.params, judge.condition)
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    pad = batch_size - len(chunk) if len(images) > batch_size else 0
    cond = None if conditions is None else conditions[start:start + batch_size]
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
      cond = None if cond is None else np.concatenate([cond, np.repeat(cond[-1:], pad, 0)])
    out.append(np.asarray(_scores(detector.model, detector.params, chunk, cond, detector.score,
                                  detector.pool, judge_module, judge_inputs))[:batch_size - pad])
  return np.concatenate(out)


def detection_report(synthetic_scores: np.ndarray, test_scores: np.ndarray,
                     test_abnormal: np.ndarray, percentile: float) -> dict:
  """AUC, threshold at the synthetic-score percentile, sensitivity/specificity, ROC."""
  labels = np.asarray(test_abnormal, bool)
  if labels.all() or not labels.any():
    raise ValueError('anomaly: the test split needs both normal and abnormal images to score; '
                     f'it has {labels.sum()} abnormal of {len(labels)}.')
  threshold = float(np.percentile(synthetic_scores, percentile))
  predicted = test_scores > threshold
  fpr, tpr, _ = sk_metrics.roc_curve(labels, test_scores)
  return {
      'auc': float(sk_metrics.roc_auc_score(labels, test_scores)),
      'threshold': threshold,
      'threshold_percentile': float(percentile),
      'sensitivity': float(np.mean(predicted[labels])),
      'specificity': float(np.mean(~predicted[~labels])),
      'test_normal': int((~labels).sum()),
      'test_abnormal': int(labels.sum()),
      'roc': {'fpr': fpr.tolist(), 'tpr': tpr.tolist()},
  }


def sensitivity_at_specificity(scores: np.ndarray, abnormal: np.ndarray,
                               specificity: float) -> float:
  """The highest sensitivity over thresholds that keep at least `specificity` (ROC read-off)."""
  labels = np.asarray(abnormal, bool)
  fpr, tpr, _ = sk_metrics.roc_curve(labels, scores)
  allowed = fpr <= 1.0 - specificity + 1e-12
  return float(tpr[allowed].max()) if allowed.any() else 0.0


def operating_point(scores: np.ndarray, abnormal: np.ndarray, threshold: float) -> dict:
  """Sensitivity and specificity of `scores > threshold`."""
  labels, predicted = np.asarray(abnormal, bool), np.asarray(scores) > threshold
  return {'threshold': float(threshold), 'sensitivity': float(np.mean(predicted[labels])),
          'specificity': float(np.mean(~predicted[~labels]))}
