"""Tests for KID, improved precision/recall and density/coverage."""

import numpy as np
import pytest

from fedgan_jax.evaluation import sample_quality

# 1-D sets whose k = 1 radii are all 1 (neighbours one apart).
REAL_LINE = np.array([[0.0], [1.0], [2.0], [3.0]])


def test_polynomial_kernel_divides_by_dimension():
  # (x.y / d + 1)^3 with x.y = 2, d = 2 -> 2^3; with x.y = 0 -> 1.
  np.testing.assert_allclose(
      sample_quality.polynomial_kernel(np.array([[1.0, 1.0]]), np.array([[1.0, 1.0], [1.0, -1.0]])),
      [[8.0, 1.0]])


def test_kid_matches_hand_computed_one_dimensional_case():
  # d = 1, k(x, y) = (xy + 1)^3. Real {0, 1}: off-diagonal k(0, 1) = 1 -> 2 / (2 * 1) = 1.
  # Fake {1, 2}: k(1, 2) = 27 -> 27. Cross: k(0,1) + k(0,2) + k(1,1) + k(1,2) = 1 + 1 + 8 + 27
  # = 37, mean 9.25. MMD^2 = 1 + 27 - 2 * 9.25 = 9.5 for every subset (each is the whole set).
  mean, std = sample_quality.kid(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]),
                                 num_subsets=3, subset_size=2, seed=0)
  assert mean == pytest.approx(9.5)
  assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(400, 16))
  results = [sample_quality.kid(real, rng.normal(size=(400, 16)) + shift, num_subsets=20,
                                subset_size=100, seed=0) for shift in (0.0, 0.25, 0.5, 1.0)]
  same_mean, same_std = results[0]
  assert abs(same_mean) < 2 * same_std  # Unbiased: no positive floor as FID has.
  means = [mean for mean, _ in results]
  assert means == sorted(means) and means[1] > 3 * results[1][1]


def test_kid_subsets_follow_the_seed():
  rng = np.random.default_rng(1)
  real, fake = rng.normal(size=(50, 4)), rng.normal(size=(60, 4)) + 0.3
  first = sample_quality.kid(real, fake, num_subsets=4, subset_size=10, seed=7)
  assert sample_quality.kid(real, fake, num_subsets=4, subset_size=10, seed=7) == first
  assert sample_quality.kid(real, fake, num_subsets=4, subset_size=10, seed=8) != first


def test_kid_rejects_subsets_larger_than_a_set():
  with pytest.raises(ValueError, match='subset_size must be in \\[2, 3\\]'):
    sample_quality.kid(np.zeros((3, 2)), np.zeros((9, 2)), num_subsets=1, subset_size=4, seed=0)
  with pytest.raises(ValueError, match='same extractor'):
    sample_quality.kid(np.zeros((3, 2)), np.zeros((3, 5)), num_subsets=1, subset_size=2, seed=0)


def test_precision_recall_hand_computed_line():
  # Fake 0.5 lies in the radius-1 ball of real 0; fake 10 in none: precision 1/2. The fakes'
  # k = 1 radii are both 9.5 (they are each other's neighbour), so the ball around 0.5 holds
  # every real point: recall 1 (the outlier inflating recall is the known k-NN weakness).
  precision, recall = sample_quality.precision_recall(REAL_LINE, np.array([[0.5], [10.0]]), k=1)
  assert (precision, recall) == (0.5, 1.0)


def test_identical_sets_are_perfect_and_far_sets_score_zero():
  features = np.random.default_rng(2).normal(size=(60, 5))
  assert sample_quality.precision_recall(features, features, k=3) == (1.0, 1.0)
  assert sample_quality.precision_recall(features, features + 100.0, k=3) == (0.0, 0.0)
  assert sample_quality.density_coverage(features, features + 100.0, k=3) == (0.0, 0.0)


def test_density_coverage_hand_computed_line():
  # Real radii are 1. Fake 0.5 is in the balls of 0 and 1; fake 1 in those of 0, 1, 2 (closed
  # balls); fake 10 in none: density = (2 + 3 + 0) / (k=1 * 3 fakes). Reals 0, 1, 2 have a fake
  # within 1, real 3 (nearest fake 1, at 2) does not: coverage 3/4.
  density, coverage = sample_quality.density_coverage(REAL_LINE, np.array([[0.5], [1.0], [10.0]]),
                                                      k=1)
  assert density == pytest.approx(5.0 / 3.0)
  assert coverage == 0.75


def test_density_of_identical_sets_is_k_plus_one_over_k():
  # Each real ball holds its centre and its k nearest neighbours: (k + 1) N hits / (k N).
  features = np.random.default_rng(3).normal(size=(40, 3))
  density, coverage = sample_quality.density_coverage(features, features, k=4)
  assert density == pytest.approx(5.0 / 4.0)
  assert coverage == 1.0


def test_mode_collapse_keeps_precision_but_loses_recall_and_coverage():
  rng = np.random.default_rng(4)
  real = rng.normal(size=(300, 8))
  collapsed = 0.2 * rng.normal(size=(300, 8))
  precision, recall = sample_quality.precision_recall(real, collapsed, k=5)
  _, coverage = sample_quality.density_coverage(real, collapsed, k=5)
  matched_precision, matched_recall = sample_quality.precision_recall(
      real, rng.normal(size=(300, 8)), k=5)
  assert precision == 1.0 and recall < 0.1 < matched_recall
  assert coverage < sample_quality.density_coverage(real, rng.normal(size=(300, 8)), k=5)[1]
  assert matched_precision > 0.7


def test_results_do_not_depend_on_chunk_size():
  rng = np.random.default_rng(5)
  real, fake = rng.normal(size=(23, 4)), rng.normal(size=(17, 4)) + 0.5
  assert (sample_quality.precision_recall(real, fake, k=3, chunk_size=4)
          == sample_quality.precision_recall(real, fake, k=3))
  assert (sample_quality.density_coverage(real, fake, k=3, chunk_size=5)
          == sample_quality.density_coverage(real, fake, k=3))


def test_k_must_leave_a_neighbour():
  with pytest.raises(ValueError, match='k must be in \\[1, 3\\]'):
    sample_quality.precision_recall(REAL_LINE, REAL_LINE, k=4)
