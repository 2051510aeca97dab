"""Tests for the FID statistics, the distance and batched feature extraction."""

from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import linalg

from fedgan_jax.evaluation import fid


def test_diagonal_covariances_match_hand_computed_distance():
  # ||mu1 - mu2||^2 = 9 + 16; per dim s1 + s2 - 2 sqrt(s1 s2) = (1 + 9 - 6) + (4 + 1 - 4).
  distance = fid.frechet_distance([0.0, 0.0], np.diag([1.0, 4.0]), [3.0, 4.0],
                                  np.diag([9.0, 1.0]))
  assert distance == pytest.approx(25.0 + 5.0, abs=1e-10)


def test_full_covariances_match_symmetric_scipy_reference():
  rng = np.random.default_rng(0)
  dim = 6
  a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
  sigma1, sigma2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  # Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD root taken by eigh.
  values1, vectors1 = linalg.eigh(sigma1)
  root1 = vectors1 @ np.diag(np.sqrt(values1)) @ vectors1.T
  eigenvalues = linalg.eigvalsh(root1 @ sigma2 @ root1)
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
              - 2.0 * np.sum(np.sqrt(eigenvalues)))
  assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)


def test_identical_feature_sets_have_zero_fid_and_shifted_ones_the_shift():
  features = np.random.default_rng(1).normal(size=(200, 8))
  assert fid.fid_from_features(features, features) == pytest.approx(0.0, abs=1e-8)
  shift = np.arange(8.0)
  # Translating every feature moves the mean only: FID = ||shift||^2 = 0 + 1 + ... + 49.
  assert fid.fid_from_features(features, features + shift) == pytest.approx(140.0, abs=1e-6)


def test_tiny_imaginary_root_is_discarded():
  # The product diag(1, -1e-8) has root diag(1, 1e-4 i): noise below the 1e-3 tolerance.
  distance = fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -1e-8]))
  assert distance == pytest.approx(2.0 + 1.0 - 1e-8 - 2.0, abs=1e-12)


def test_large_imaginary_root_raises():
  with pytest.raises(ValueError, match='imaginary component of 1'):
    fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))


def test_non_finite_root_retries_with_eps_offset():
  real_sqrtm = fid.linalg.sqrtm
  calls = []

  def sqrtm_singular_once(matrix):
    calls.append(matrix)
    return np.full_like(matrix, np.inf) if len(calls) == 1 else real_sqrtm(matrix)

  sigma1, sigma2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
  with mock.patch.object(fid.linalg, 'sqrtm', side_effect=sqrtm_singular_once):
    distance = fid.frechet_distance(np.zeros(2), sigma1, np.zeros(2), sigma2, eps=0.5)
  np.testing.assert_allclose(calls[1], np.diag([1.5 * 9.5, 4.5 * 1.5]))
  # Traces stay those of the unshifted covariances, as in pytorch-fid.
  expected = 10.0 + 5.0 - 2.0 * (np.sqrt(1.5 * 9.5) + np.sqrt(4.5 * 1.5))
  assert distance == pytest.approx(expected, abs=1e-12)


def test_mismatched_shapes_are_rejected():
  with pytest.raises(ValueError, match='must be'):
    fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match='N >= 2'):
    fid.fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


def test_inception_features_keeps_partial_batch_and_compiles_once():
  variables = {'scale': jnp.array([1.0, 2.0])}

  @jax.jit
  @chex.assert_max_traces(n=1)
  def apply_fn(variables, images):
    # Per-image mean and max as a 2-d "feature", scaled by a variable.
    flat = images.reshape(images.shape[0], -1)
    return jnp.stack([flat.mean(axis=1), flat.max(axis=1)], axis=1) * variables['scale']

  images = np.random.default_rng(2).uniform(-1, 1, (5, 7, 9, 1)).astype(np.float32)
  features = fid.inception_features(apply_fn, variables, images, batch_size=2)
  flat = images.reshape(5, -1)
  np.testing.assert_allclose(features, np.stack([flat.mean(1), 2 * flat.max(1)], axis=1),
                             rtol=1e-6)
  assert features.dtype == np.float32


def test_inception_features_maps_uint8_to_model_range():
  seen = []

  def apply_fn(variables, images):
    del variables
    seen.append(images)
    return images.reshape(images.shape[0], -1)[:, :2]

  images = np.array([[[[0]], [[255]]]], np.uint8)  # (1, 2, 1, 1)
  features = fid.inception_features(apply_fn, None, images, batch_size=4)
  np.testing.assert_allclose(features, [[-1.0, 1.0]])
  assert seen[0].shape == (4, 2, 1, 1)  # Not resized here: the network does it once.
