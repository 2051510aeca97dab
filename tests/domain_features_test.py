"""Tests for the domain encoder behind FID/KID/precision/recall without external weights."""

import ml_collections
import numpy as np
import pytest

from fedgan_jax.evaluation import domain_features
from fedgan_jax.evaluation import fid

SETTINGS = ml_collections.ConfigDict(dict(channels=(8, 16), feature_dim=8, input_unshuffle=2,
                                          steps=60, batch_size=32, learning_rate=3e-3))


def _images_with_flag(num, seed, size=16):
  """Noisy images whose top-left quarter is bright exactly when the 0/1 attribute is 1.

  Condition vectors are `[values * mask, mask]` of one binary value.
  """
  rng = np.random.default_rng(seed)
  flag = rng.integers(0, 2, num).astype(np.float32)
  images = 90 + 25 * rng.standard_normal((num, size, size, 1))
  images[:, :size // 2, :size // 2] += 90 * flag[:, None, None, None]
  conditions = np.stack([flag, np.ones(num, np.float32)], axis=1)
  return np.clip(images, 0, 255).astype(np.uint8), conditions, flag


@pytest.fixture(scope='module')
def fitted():
  images, conditions, flag = _images_with_flag(192, seed=0)
  encoder = domain_features.train_domain_encoder(images, conditions, np.array([False]), SETTINGS,
                                                 seed=0)
  return encoder, images, flag


def test_training_lowers_the_attribute_loss(fitted):
  encoder, _, _ = fitted
  # Chance-level binary cross-entropy is log 2 ~ 0.69; the flag is easy to see.
  assert encoder.final_loss < 0.5 * encoder.initial_loss
  assert encoder.final_loss < 0.3


def test_features_do_not_depend_on_batching_or_padding(fitted):
  encoder, images, _ = fitted
  whole = encoder.features(images[:10], batch_size=16)  # One padded batch.
  pieces = encoder.features(images[:10], batch_size=4)  # Two full batches and a padded one.
  assert whole.shape == (10, SETTINGS.feature_dim) and whole.dtype == np.float64
  np.testing.assert_allclose(whole, pieces, rtol=1e-5, atol=1e-5)


def test_fid_in_the_domain_space_separates_what_the_encoder_learned(fitted):
  encoder, _, _ = fitted
  images, _, flag = _images_with_flag(256, seed=1)
  features = encoder.features(images, batch_size=64)
  flagged, plain = features[flag == 1], features[flag == 0]
  half = len(plain) // 2
  same = fid.fid_from_features(plain[:half], plain[half:])
  different = fid.fid_from_features(plain, flagged)
  assert different > 10 * same


def test_training_is_reproducible_and_checks_inputs():
  images, conditions, _ = _images_with_flag(40, seed=2)
  settings = ml_collections.ConfigDict(dict(SETTINGS.to_dict(), steps=3))
  first = domain_features.train_domain_encoder(images, conditions, np.array([False]), settings, 5)
  second = domain_features.train_domain_encoder(images, conditions, np.array([False]), settings, 5)
  np.testing.assert_array_equal(first.features(images, 16), second.features(images, 16))
  with pytest.raises(ValueError, match='condition vectors'):
    domain_features.train_domain_encoder(images, conditions[:3], np.array([False]), settings, 0)
