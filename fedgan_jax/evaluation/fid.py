"""Fréchet Inception Distance, computed exactly as pytorch-fid computes it.

Features come from the Flax port in `inception.py` (`load_inception(path)`); the
statistics and the distance are numpy/scipy in float64, matching
`pytorch_fid.fid_score.calculate_frechet_distance`:

  FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 sqrtm(S_1 S_2)),

with scipy's `sqrtm`, an `eps * I` offset added to both covariances when the product's root
is not finite, and a tiny imaginary part of the root (numerical noise) discarded.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
from absl import logging
from scipy import linalg

from fedgan_jax.data import dataset


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean `(D,)` and covariance `(D, D)` (unbiased, like `np.cov`) of `(N, D)` features."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f'features must be (N, D) with N >= 2 for a covariance, got shape '
                     f'{features.shape}.')
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6, imaginary_tolerance: float = 1e-3) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1, sigma1, mu2, sigma2: means `(D,)` and covariances `(D, D)`.
    eps: diagonal offset added to both covariances when `sqrtm(sigma1 @ sigma2)` is not
      finite (a near-singular product, e.g. fewer samples than feature dimensions).
    imaginary_tolerance: largest |imaginary part| on the root's diagonal that is treated as
      rounding noise and dropped; beyond it the covariances are not valid (e.g. not PSD).

  Returns:
    The squared Fréchet distance (what papers report as FID).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'frechet_distance: means {mu1.shape}, {mu2.shape} and covariances '
                     f'{sigma1.shape}, {sigma2.shape} must be (D,) and (D, D) for one D.')
  diff = mu1 - mu2
  covmean = _sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    logging.warning('FID: sqrtm(sigma1 @ sigma2) is not finite; adding %g to the diagonal of '
                    'both covariances, as pytorch-fid does.', eps)
    offset = np.eye(len(sigma1)) * eps
    covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=imaginary_tolerance):
      raise ValueError(f'FID: sqrtm(sigma1 @ sigma2) has an imaginary component of '
                       f'{np.max(np.abs(covmean.imag)):.3g} (> {imaginary_tolerance}); the '
                       'covariances are not positive semi-definite or the features are broken.')
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
  # scipy warns on singular input; the caller checks finiteness and retries instead.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', linalg.LinAlgWarning)
    return linalg.sqrtm(matrix)


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
  """FID between two `(N, D)` feature sets (N may differ between them)."""
  mu_a, sigma_a = feature_statistics(features_a)
  mu_b, sigma_b = feature_statistics(features_b)
  return frechet_distance(mu_a, sigma_a, mu_b, sigma_b, eps=eps)


def inception_features(apply_fn: Callable[..., Any], variables: Any, images: np.ndarray,
                       batch_size: int) -> np.ndarray:
  """Runs `apply_fn(variables, batch)` over `images` in batches -> float32 `(N, D)`.

  Args:
    apply_fn: from `inception.load_inception`; it resizes each image once to 299x299.
    variables: its variables.
    images: `(N, H, W, C)` float in [-1, 1], or uint8 in [0, 255] (converted to [-1, 1]).
      Passed at their own size: resizing here first would resize twice.
    batch_size: images per call. The last partial batch is padded to `batch_size` so one
      compiled function serves every call, and the padding rows are dropped.
  """
  if batch_size < 1:
    raise ValueError(f'inception_features: batch_size must be >= 1, got {batch_size}.')
  if len(images) == 0:
    raise ValueError('inception_features: no images given.')
  outputs = []
  for start in range(0, len(images), batch_size):
    batch = np.asarray(images[start:start + batch_size])
    if batch.dtype == np.uint8:
      batch = dataset.images_to_model(batch)
    count = len(batch)
    if count < batch_size:
      padding = np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)
      batch = np.concatenate([batch, padding])
    outputs.append(np.asarray(apply_fn(variables, batch), np.float32)[:count])
  return np.concatenate(outputs)
