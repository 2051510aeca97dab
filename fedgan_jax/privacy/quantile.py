"""A differentially private quantile of values several sites hold: noisy federated bisection.

Each site holds values it never shares (a hospital's detector scores on its own real normal
films). The server wants the value of a given rank among all sites' values pooled. It bisects
a public bracket: at each step it asks every site how many of its values lie at or below the
midpoint, and each site answers its count plus Gaussian noise N(0, sigma^2) that it draws
itself, so no count leaves a site unnoised, not even to the server. One film changes one
site's count by one, so each query (the vector of the sites' noisy counts) is a Gaussian
mechanism of L2 sensitivity 1 with noise multiplier sigma. The pooled count, which turns the
wanted quantile into a rank, is one more such query: a search of `steps` bisections is
`steps + 1` Gaussian mechanisms, composed by `fedgan_jax.privacy.accounting`, and sigma is the
smallest that keeps the composition within (epsilon, delta) under the add-or-remove-one-film
relation.

The noisy sum over K sites has standard deviation sigma * sqrt(K) counts: a bisection step
taken within a few of those of the target rank can go the wrong way, so the answer's rank is
off by about that many values (reported as `rank_noise_std`; at ~1,000 pooled normals and
epsilon 2, about 1.5% of the ranks). The bracket's ends after `steps` halvings set the
resolution; the upper end is returned, the side whose noisy count reached the rank.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import dp_accounting
import numpy as np

from fedgan_jax.privacy import accounting


def count_event(noise_multiplier: float, queries: int) -> dp_accounting.DpEvent:
  """`queries` Gaussian count queries of sensitivity 1 (sigma = 0: not private)."""
  if noise_multiplier == 0:
    return dp_accounting.NonPrivateDpEvent()
  return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier),
                                           queries)


def noise_multiplier_for(epsilon: float, delta: float, queries: int,
                         accountant: str = 'rdp') -> float:
  """The smallest sigma whose `queries` composed count queries stay within (epsilon, delta).

  epsilon = inf means no privacy (sigma 0): the exact search, for comparison and tests.
  """
  if math.isinf(epsilon) and epsilon > 0:
    return 0.0
  return accounting.calibrate_noise_multiplier(
      epsilon, delta, lambda sigma: count_event(sigma, queries), accountant)


def federated_quantile(site_values: Sequence[np.ndarray],
                       rank_of_count: Callable[[int], int | None],
                       bracket: tuple[float, float], epsilon: float, delta: float, steps: int,
                       rng: np.random.Generator, accountant: str = 'rdp') -> dict:
  """The pooled value of rank `rank_of_count(N)` (1-based, N = the noisy pooled count).

  Args:
    site_values: each site's values; only noisy counts of them are used.
    rank_of_count: maps the pooled count to the wanted rank, or None when the count is too
      small for the rule (then the largest rank is searched and `guaranteed` is False).
    bracket: (low, high), public; the answer is clipped to it.
    epsilon, delta: the privacy budget of the whole search (epsilon = inf: no noise).
    steps: bisection steps (the resolution is (high - low) / 2 ** steps).
    rng: the sites' noise (simulated here; each site draws its own in a deployment).

  Returns:
    `{threshold, rank, noisy_count, guaranteed, noise_multiplier, epsilon, delta, queries,
    rank_noise_std, resolution, at_bracket_edge}`; `epsilon` is what the accountant reports
    for the search; `at_bracket_edge` says the answer lies within one resolution of an end
    of the bracket, where the wanted value may lie beyond it.
  """
  low, high = (float(b) for b in bracket)
  if not low < high:
    raise ValueError(f'private quantile: the bracket must have low < high, got {bracket}.')
  if int(steps) != steps or steps < 1:
    raise ValueError(f'eval.operating_point.private_steps must be a whole number >= 1, got '
                     f'{steps}.')
  if not epsilon > 0:
    raise ValueError(f'eval.operating_point.private_epsilon must be > 0, got {epsilon}.')
  values = [np.asarray(v, np.float64) for v in site_values]
  if not values or not sum(len(v) for v in values):
    raise ValueError('private quantile: no site holds a value.')
  queries = int(steps) + 1
  sigma = noise_multiplier_for(epsilon, delta, queries, accountant)

  def noisy_count(at: float | None) -> float:
    counts = [len(v) if at is None else int(np.sum(v <= at)) for v in values]
    return float(sum(c + rng.normal(0.0, sigma) if sigma else c for c in counts))

  noisy_total = max(1, int(round(noisy_count(None))))
  rank = rank_of_count(noisy_total)
  guaranteed = rank is not None
  rank = noisy_total if rank is None else rank
  for _ in range(int(steps)):
    middle = 0.5 * (low + high)
    if noisy_count(middle) >= rank:
      high = middle
    else:
      low = middle
  resolution = (float(bracket[1]) - float(bracket[0])) / 2 ** int(steps)
  at_edge = bool(high >= float(bracket[1]) - 0.5 * resolution
                 or high <= float(bracket[0]) + 1.5 * resolution)
  return {'threshold': high, 'rank': int(rank), 'noisy_count': noisy_total,
          'guaranteed': guaranteed, 'noise_multiplier': sigma,
          'epsilon': accounting.epsilon(count_event(sigma, queries), delta, accountant),
          'delta': float(delta), 'queries': queries,
          'rank_noise_std': sigma * math.sqrt(len(values)),
          'resolution': resolution, 'at_bracket_edge': at_edge}
