"""Site thresholds on real normal films: the percentile, the guaranteed order statistic,
and the private pooled search, against hand-computed ranks and thresholds."""

import numpy as np
import pytest

from fedgan_jax.evaluation import calibration
from fedgan_jax.evaluation import detectors


def _settings(percentile=50.0, confidence=0.0, private_epsilon=0.0, steps=12):
  return detectors.OperatingPoint(site_percentile=percentile, site_confidence=confidence,
                                  specificity=0.9, private_epsilon=private_epsilon,
                                  private_delta=1e-5, private_steps=steps)


def test_guaranteed_rank_is_the_binomial_quantile():
  # Binomial(10, 1/2): cdf(6) = 0.828 < 0.9 <= cdf(7) = 0.945, so k - 1 = 7.
  assert calibration.guaranteed_rank(10, 0.5, 0.9) == 8
  # Binomial(4, 1/2): cdf(2) = 11/16 < 0.9 <= cdf(3) = 15/16.
  assert calibration.guaranteed_rank(4, 0.5, 0.9) == 4
  # Binomial(3, 1/2): cdf(2) = 7/8 < 0.9: not even the largest of 3 scores guarantees it.
  assert calibration.guaranteed_rank(3, 0.5, 0.9) is None
  # Confidence 0 is the plain quantile's rank, ceil(s n).
  assert calibration.guaranteed_rank(10, 0.5, 0.0) == 5
  assert calibration.guaranteed_rank(10, 0.01, 0.0) == 1
  for bad in ((0, 0.5, 0.9), (10, 1.0, 0.9), (10, 0.5, 1.0)):
    with pytest.raises(ValueError):
      calibration.guaranteed_rank(*bad)


def test_the_guarantee_holds_by_simulation():
  # Uniform scores: the true specificity of threshold t is t itself.
  rng = np.random.default_rng(0)
  scores = rng.uniform(size=(4000, 20))
  guaranteed = np.array([calibration.site_threshold(s, 50.0, 0.9)['threshold'] for s in scores])
  plain = np.array([calibration.site_threshold(s, 50.0, 0.0)['threshold'] for s in scores])
  # k = 14 of 20: P(Beta(14, 7) >= 1/2) = 0.942; the plain median falls short half the time.
  assert abs(np.mean(guaranteed >= 0.5) - 0.942) < 0.015
  assert abs(np.mean(plain >= 0.5) - 0.5) < 0.03


def test_site_threshold_is_the_ranked_score_or_says_it_cannot_guarantee():
  scores = np.array([5.0, 1.0, 4.0, 2.0, 3.0, 8.0, 7.0, 6.0, 9.0, 10.0])
  assert calibration.site_threshold(scores, 50.0, 0.9) == {
      'threshold': 8.0, 'rank': 8, 'guaranteed': True}
  assert calibration.site_threshold(scores, 50.0, 0.0) == {'threshold': 5.5}
  assert calibration.site_threshold(scores[:3], 50.0, 0.9) == {
      'threshold': 5.0, 'rank': 3, 'guaranteed': False}


def test_site_calibration_thresholds_per_site_and_their_weighted_mean():
  test_scores = np.array([1.0, 2.0, 3.0, 4.0])
  abnormal = np.array([0, 0, 1, 1], bool)
  report = calibration.site_calibration(
      {'a': np.array([1.0, 2.0, 3.0]), 'b': np.array([3.0])}, test_scores, abnormal,
      _settings())
  assert report['a']['threshold'] == 2.0 and report['b']['threshold'] == 3.0
  # a: > 2 flags 3, 4: sensitivity 1, specificity 1. b: > 3 flags 4 only.
  assert (report['a']['sensitivity'], report['a']['specificity']) == (1.0, 1.0)
  assert (report['b']['sensitivity'], report['b']['specificity']) == (0.5, 1.0)
  # Federated: (3 * 2 + 1 * 3) / 4 = 2.25.
  assert report['federated']['threshold'] == 2.25 and report['federated']['normals'] == 4
  assert 'private_pooled' not in report and report['confidence'] == 0.0
  with pytest.raises(ValueError, match='site_percentile'):
    calibration.site_calibration({'a': np.ones(2)}, test_scores, abnormal, _settings(100.0))


def test_private_pooled_threshold_matches_the_exact_one_within_its_noise():
  rng = np.random.default_rng(1)
  sites = {f'h{i}': rng.normal(size=n) for i, n in enumerate((300, 500, 400))}
  test_scores = rng.normal(size=200) + np.repeat([0.0, 2.0], 100)
  abnormal = np.repeat([False, True], 100)
  report = calibration.site_calibration(sites, test_scores, abnormal,
                                        _settings(confidence=0.9, private_epsilon=2.0), seed=3)
  private = report['private_pooled']
  pooled = np.sort(np.concatenate(list(sites.values())))
  # Rank of the exact pooled threshold: the guarantee's order statistic of 1,200 scores.
  assert private['exact_threshold'] == pooled[calibration.guaranteed_rank(1200, 0.5, 0.9) - 1]
  assert private['epsilon'] <= 2.0 and private['queries'] == 13 and private['guaranteed']
  # The private answer's rank among the pooled scores is within a few noise stds.
  found_rank = np.searchsorted(pooled, private['threshold'], side='right')
  assert abs(found_rank - private['rank']) <= 4 * private['rank_noise_std'] + 2
  assert abs(private['noisy_count'] - 1200) <= 4 * private['rank_noise_std']
