"""Where a hospital thresholds F-AD: on its own real normal films, which never leave it.

The detector is trained only on synthetic normals; a site's real normal training films set
only its threshold. Two rules for a site's threshold (`eval.operating_point`):

* `site_confidence = 0`: the `site_percentile`-th percentile of the site's normal scores.
  Its specificity on new normals is `site_percentile / 100` on average, and below it about
  half the time.
* `site_confidence = c > 0`: a distribution-free guarantee. With n exchangeable normal scores
  (continuous, the new normal drawn like them), the k-th smallest X_(k) passes a new normal
  with probability F(X_(k)) ~ Beta(k, n - k + 1), so P(specificity >= s) =
  P(Binomial(n, s) <= k - 1). The site takes the smallest k with that probability >= c:
  specificity >= s = site_percentile / 100 with confidence c, whatever the score's
  distribution. Too few normals for the guarantee (k > n) is reported, not papered over.

The federation's threshold is the normal-count-weighted mean of the sites' thresholds (one
number per site is shared), and optionally the pooled quantile of all sites' normals found
by a differentially private federated search (`fedgan_jax.privacy.quantile`), where the
sites share only noisy counts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from fedgan_jax.evaluation import anomaly as anomaly_lib
from fedgan_jax.privacy import quantile as quantile_lib


def guaranteed_rank(count: int, specificity: float, confidence: float) -> int | None:
  """The 1-based rank k whose order statistic of `count` normal scores is the threshold.

  Returns the smallest k with P(Binomial(count, specificity) <= k - 1) >= confidence, or
  None when even the largest score cannot give that confidence. `confidence = 0` gives the
  plain empirical quantile's rank, ceil(specificity * count) (at least 1).
  """
  if count < 1:
    raise ValueError(f'calibration needs at least one normal score, got {count}.')
  if not 0 < specificity < 1:
    raise ValueError(f'eval.operating_point.site_percentile / 100 must be in (0, 1), got '
                     f'{specificity}.')
  if not 0 <= confidence < 1:
    raise ValueError(f'eval.operating_point.site_confidence must be in [0, 1), got {confidence}.')
  if confidence == 0:
    return max(1, math.ceil(specificity * count))
  # binom.ppf(c) is the smallest j with cdf(j) >= c; k - 1 = j. Checked against the cdf so
  # float rounding inside ppf can never hand back a rank one short of the guarantee.
  rank = int(stats.binom.ppf(confidence, count, specificity)) + 1
  while stats.binom.cdf(rank - 1, count, specificity) < confidence:
    rank += 1
  while rank > 1 and stats.binom.cdf(rank - 2, count, specificity) >= confidence:
    rank -= 1
  return rank if rank <= count else None


def site_threshold(scores: np.ndarray, percentile: float, confidence: float) -> dict:
  """One site's threshold on its own normal scores: `{threshold, rank?, guaranteed?}`."""
  scores = np.sort(np.asarray(scores, np.float64))
  if confidence == 0:
    return {'threshold': float(np.percentile(scores, percentile))}
  rank = guaranteed_rank(len(scores), percentile / 100, confidence)
  if rank is None:
    # The largest score is the best this site can do; it is said not to carry the guarantee.
    return {'threshold': float(scores[-1]), 'rank': len(scores), 'guaranteed': False}
  return {'threshold': float(scores[rank - 1]), 'rank': rank, 'guaranteed': True}


def site_calibration(site_normal_scores: dict[str, np.ndarray], test_scores: np.ndarray,
                     test_abnormal: np.ndarray, settings, seed: int = 0) -> dict:
  """Thresholds each site sets on its own real normal films, applied to the scored split.

  Args:
    site_normal_scores: site name -> the detector's scores on that site's normal films.
    test_scores, test_abnormal: the scored split.
    settings: `eval.operating_point` (`detectors.OperatingPoint`).
    seed: seeds the private search's noise (the run's `config.seed`).

  Returns:
    `{site: {threshold, sensitivity, specificity, normals, ...}, 'federated': {...},
    'private_pooled': {...} (when settings.private_epsilon > 0), 'percentile', 'confidence'}`.
  """
  percentile, confidence = float(settings.site_percentile), float(settings.site_confidence)
  if not 0 < percentile < 100:
    raise ValueError(f'eval.operating_point.site_percentile must be in (0, 100), got {percentile}.')
  report, thresholds, counts = {}, [], []
  for site, scores in site_normal_scores.items():
    if len(scores) == 0:
      report[site] = {'skipped': 'the site has no normal training films to calibrate on.'}
      continue
    threshold = site_threshold(scores, percentile, confidence)
    report[site] = dict(anomaly_lib.operating_point(test_scores, test_abnormal,
                                                    threshold['threshold']),
                        **{k: v for k, v in threshold.items() if k != 'threshold'},
                        normals=int(len(scores)))
    thresholds.append(threshold['threshold'])
    counts.append(len(scores))
  if not thresholds:
    raise ValueError('site calibration: no site has normal training films.')
  report['federated'] = dict(
      anomaly_lib.operating_point(test_scores, test_abnormal,
                                  float(np.average(thresholds, weights=counts))),
      normals=int(sum(counts)))
  if float(settings.private_epsilon) > 0:
    report['private_pooled'] = private_pooled(site_normal_scores, test_scores, test_abnormal,
                                              settings, np.random.default_rng(seed))
  return dict(report, percentile=percentile, confidence=confidence)


def private_pooled(site_normal_scores: dict[str, np.ndarray], test_scores: np.ndarray,
                   test_abnormal: np.ndarray, settings, rng: np.random.Generator) -> dict:
  """The pooled threshold of all sites' normals, found by the private federated search.

  The search's bracket comes from the scored split's scores (no label read) widened on both
  sides; the sites' real normal scores are reached only through noisy counts. Beside it,
  the exact pooled threshold the same rule gives without privacy, for comparison.
  """
  sites = [np.asarray(s, np.float64) for s in site_normal_scores.values() if len(s)]
  specificity, confidence = float(settings.site_percentile) / 100, float(settings.site_confidence)
  low, high = float(np.min(test_scores)), float(np.max(test_scores))
  span = max(high - low, 1e-12)
  search = quantile_lib.federated_quantile(
      sites, lambda count: guaranteed_rank(count, specificity, confidence),
      bracket=(low - span, high + span), epsilon=float(settings.private_epsilon),
      delta=float(settings.private_delta), steps=int(settings.private_steps),
      rng=rng)
  exact = site_threshold(np.concatenate(sites), float(settings.site_percentile), confidence)
  return dict(anomaly_lib.operating_point(test_scores, test_abnormal, search['threshold']),
              **{k: v for k, v in search.items() if k != 'threshold'},
              exact_threshold=exact['threshold'],
              exact=anomaly_lib.operating_point(test_scores, test_abnormal, exact['threshold']))
