"""F-AD scoring pieces against hand-computed values: SSIM, block-averaged input, operating points."""

import types

import ml_collections
import numpy as np
import pytest

from fedgan_jax.evaluation import anomaly


def test_ssim_of_constant_images_matches_the_formula_away_from_the_border():
  a, b = 0.5, -0.25
  x, y = np.full((1, 16, 16), a, np.float32), np.full((1, 16, 16), b, np.float32)
  ssim = np.asarray(anomaly.ssim_map(x, y, 1.0))
  c1 = (0.01 * 2) ** 2
  # No variance or covariance: SSIM = (2ab + C1) / (a^2 + b^2 + C1).
  np.testing.assert_allclose(ssim[0, 8, 8], (2 * a * b + c1) / (a * a + b * b + c1), rtol=1e-4)
  same = np.asarray(anomaly.ssim_map(x, x, 1.0))
  np.testing.assert_allclose(same, 1.0, atol=1e-5)


def test_ssim_score_is_zero_for_a_perfect_reconstruction_and_needs_a_window():
  images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
  score = anomaly.ScoreConfig('ssim', 1.5, 100.0)
  np.testing.assert_allclose(anomaly.anomaly_score(images, images, score), 0.0, atol=1e-5)
  assert (np.asarray(anomaly.anomaly_score(images, images[::-1], score)) > 0.1).all()
  config = ml_collections.ConfigDict(dict(score='ssim', score_blur_sigma=0.0,
                                          score_percentile=99.0,
                                          variant=types.SimpleNamespace(score_border=0.0)))
  with pytest.raises(ValueError, match='score_blur_sigma'):
    anomaly.score_config(config)


def test_detector_input_averages_blocks_and_checks_the_size():
  images = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 17  # 0..255.
  pooled = np.asarray(anomaly.detector_input(images, 2))[0, ..., 0]
  # Block (0, 0) holds 0, 1, 4, 5 (x 17): mean 42.5 -> 42.5 / 127.5 - 1.
  np.testing.assert_allclose(pooled[0, 0], 42.5 / 127.5 - 1, rtol=1e-6)
  assert pooled.shape == (2, 2)
  config = ml_collections.ConfigDict(dict(input_size=32))
  assert anomaly.input_pool(config, 64) == 2 and anomaly.input_pool(config, 32) == 1
  config.input_size = 24
  with pytest.raises(ValueError, match='anomaly.input_size'):
    anomaly.input_pool(config, 64)


def test_sensitivity_at_specificity_reads_the_roc():
  scores = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.6, 0.05])
  abnormal = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
  # Specificity 1 (no normal above the threshold, i.e. > 0.4): 2 of 4 abnormal.
  assert anomaly.sensitivity_at_specificity(scores, abnormal, 1.0) == 0.5
  # Specificity 0.75 (one normal, 0.4, allowed above): 0.35 joins -> 3 of 4.
  assert anomaly.sensitivity_at_specificity(scores, abnormal, 0.75) == 0.75


def test_score_border_leaves_the_film_edges_out():
  images = np.zeros((1, 8, 8, 1), np.float32)
  reconstructions = images.copy()
  reconstructions[0, 0, :, 0] = 1.0   # An error along the top edge only.
  reconstructions[0, 4, 4, 0] = 2.0   # And one in the centre.
  whole = anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig('mse'))
  central = anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig('mse', border=0.25))
  # Whole: (8 * 1 + 4) / 64; central 4x4 (rows and columns 2-5): 4 / 16.
  np.testing.assert_allclose([float(whole[0]), float(central[0])], [12 / 64, 4 / 16])
  config = ml_collections.ConfigDict(dict(score='mse', variant=types.SimpleNamespace(
      score_border=0.5)))
  with pytest.raises(ValueError, match='score_border'):
    anomaly.score_config(config)
