"""The private federated quantile search: exact without noise, accounted like the analytic
Gaussian mechanism with noise, and reproducible from its seed."""

import math

import numpy as np
import pytest
from scipy import stats

from fedgan_jax.privacy import quantile


def test_without_noise_the_search_lands_just_above_the_ranked_value():
  sites = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0])]
  result = quantile.federated_quantile(sites, lambda count: 3, bracket=(0.0, 8.0),
                                       epsilon=math.inf, delta=1e-5, steps=10,
                                       rng=np.random.default_rng(0))
  # The third smallest pooled value is 3; the upper end of the final bracket is within
  # 8 / 2 ** 10 above it, and below the fourth.
  assert 3.0 <= result['threshold'] <= 3.0 + 8.0 / 2 ** 10
  assert result['noisy_count'] == 5 and result['noise_multiplier'] == 0.0
  assert result['resolution'] == 8.0 / 2 ** 10 and result['queries'] == 11
  assert not result['at_bracket_edge']


def test_a_value_beyond_the_bracket_is_flagged():
  for values, bracket in (([10.0, 11.0], (0.0, 4.0)), ([-3.0, -2.0], (0.0, 4.0))):
    result = quantile.federated_quantile([np.array(values)], lambda count: 1, bracket=bracket,
                                         epsilon=math.inf, delta=1e-5, steps=8,
                                         rng=np.random.default_rng(0))
    assert result['at_bracket_edge'], (values, result['threshold'])


def test_too_small_a_count_searches_the_largest_value_and_says_so():
  result = quantile.federated_quantile([np.array([1.0, 2.0])], lambda count: None,
                                       bracket=(0.0, 4.0), epsilon=math.inf, delta=1e-5,
                                       steps=12, rng=np.random.default_rng(0))
  assert result['rank'] == 2 and not result['guaranteed']
  assert 2.0 <= result['threshold'] <= 2.0 + 4.0 / 2 ** 12


def _analytic_gaussian_delta(epsilon, sigma):
  # Balle & Wang (2018): the exact delta of a sensitivity-1 Gaussian mechanism at epsilon.
  return (stats.norm.cdf(-epsilon * sigma + 1 / (2 * sigma))
          - math.exp(epsilon) * stats.norm.cdf(-epsilon * sigma - 1 / (2 * sigma)))


def test_the_noise_meets_epsilon_as_the_analytic_gaussian_says():
  # q queries with noise sigma each compose to one Gaussian with sigma / sqrt(q) (PLD exact).
  queries, epsilon, delta = 13, 2.0, 1e-5
  sigma = quantile.noise_multiplier_for(epsilon, delta, queries, accountant='pld')
  effective = sigma / math.sqrt(queries)
  assert _analytic_gaussian_delta(epsilon, effective) <= delta * 1.01
  # The smallest such sigma: 2% less noise breaks the budget.
  assert _analytic_gaussian_delta(epsilon, 0.98 * effective) > delta


def test_the_noisy_search_is_reproducible_and_near_the_rank():
  rng = np.random.default_rng(0)
  sites = [rng.normal(size=400) for _ in range(3)]
  pooled = np.sort(np.concatenate(sites))
  run = lambda seed: quantile.federated_quantile(
      sites, lambda count: count // 2, bracket=(-10.0, 10.0), epsilon=1.0, delta=1e-5,
      steps=14, rng=np.random.default_rng(seed))
  first, again = run(5), run(5)
  assert first == again
  for seed in range(10):
    result = run(seed)
    rank = np.searchsorted(pooled, result['threshold'], side='right')
    assert abs(rank - result['rank']) <= 4 * result['rank_noise_std'] + 1


def test_bad_settings_name_the_field():
  sites = [np.array([1.0])]
  call = lambda **kw: quantile.federated_quantile(
      sites, lambda count: 1, rng=np.random.default_rng(0),
      **dict(dict(bracket=(0.0, 1.0), epsilon=1.0, delta=1e-5, steps=4), **kw))
  with pytest.raises(ValueError, match='private_steps'):
    call(steps=0)
  with pytest.raises(ValueError, match='private_epsilon'):
    call(epsilon=0.0)
  with pytest.raises(ValueError, match='bracket'):
    call(bracket=(1.0, 1.0))
  with pytest.raises(ValueError, match='no site'):
    quantile.federated_quantile([np.array([])], lambda count: 1, (0.0, 1.0), 1.0, 1e-5, 4,
                                np.random.default_rng(0))
