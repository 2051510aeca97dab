"""Sample-quality metrics on features from any extractor (numpy, float64).

* `kid`: Kernel Inception Distance (Binkowski et al. 2018), the unbiased MMD^2 estimate
  with the cubic polynomial kernel `k(x, y) = (x.y / d + 1)^3`, averaged over random
  subsets; unlike FID it is unbiased, so small evaluation sets compare fairly.
* `precision_recall` (Kynkaanniemi et al. 2019): each set's manifold is the union of balls
  around its points with radius the distance to the k-th nearest neighbour in the same set;
  precision = share of fakes inside the real manifold, recall = share of reals inside the
  fake manifold.
* `density_coverage` (Naeem et al. 2020): density counts how many real balls hold each fake
  (robust to real outliers, can exceed 1); coverage = share of real balls holding a fake.

Balls are closed (distance <= radius), so a point lying on another set's point always
counts; some reference code uses `<`, which differs only on exact ties. Distances are taken
in chunks of `chunk_size` rows, so memory stays O(chunk_size * N).
"""

import dataclasses
from typing import Iterator

import numpy as np


@dataclasses.dataclass
class Settings:
  """`eval.sample_quality`: the KID / k-NN protocol (numbers: configs/eval_common.py).

  Attributes:
    kid_subsets: random subsets KID averages over.
    kid_subset_size: images per subset, at most (smaller sets use all their images).
    nearest_neighbours: k of precision/recall and density/coverage.
    inception_batch_size: images per Inception-v3 forward pass (FID with Inception weights).
  """
  kid_subsets: int
  kid_subset_size: int
  nearest_neighbours: int
  inception_batch_size: int


def _feature_pair(features_real: np.ndarray,
                  features_fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  pair = []
  for name, features in (('features_real', features_real), ('features_fake', features_fake)):
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) == 0:
      raise ValueError(f'{name} must be a non-empty (N, D) feature array, got shape '
                       f'{features.shape}.')
    pair.append(features)
  if pair[0].shape[1] != pair[1].shape[1]:
    raise ValueError(f'features_real have {pair[0].shape[1]} dimensions, features_fake '
                     f'{pair[1].shape[1]}; both must come from the same extractor.')
  return pair[0], pair[1]


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """`(x.y / d + 1)^3` for all pairs: `(N, d), (M, d) -> (N, M)`."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of samples `x`, `y` under the polynomial kernel (diagonals excluded)."""
  m, n = len(x), len(y)
  kernel_xx, kernel_yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
  within_x = (kernel_xx.sum() - np.trace(kernel_xx)) / (m * (m - 1))
  within_y = (kernel_yy.sum() - np.trace(kernel_yy)) / (n * (n - 1))
  return float(within_x + within_y - 2.0 * polynomial_kernel(x, y).mean())


def kid(features_real: np.ndarray, features_fake: np.ndarray, num_subsets: int,
        subset_size: int, seed: int) -> tuple[float, float]:
  """KID: mean and standard deviation of the unbiased MMD^2 over random subsets.

  Args:
    features_real, features_fake: `(N, D)` and `(M, D)`.
    num_subsets: how many subset pairs to average.
    subset_size: examples per subset, drawn without replacement from each set.
    seed: seeds the subset draws, so a result is reproducible.
  """
  real, fake = _feature_pair(features_real, features_fake)
  if not 2 <= subset_size <= min(len(real), len(fake)):
    raise ValueError(f'kid: subset_size must be in [2, {min(len(real), len(fake))}] (the smaller '
                     f'set), got {subset_size}.')
  if num_subsets < 1:
    raise ValueError(f'kid: num_subsets must be >= 1, got {num_subsets}.')
  rng = np.random.default_rng(seed)
  estimates = [
      mmd2_unbiased(real[rng.choice(len(real), subset_size, replace=False)],
                    fake[rng.choice(len(fake), subset_size, replace=False)])
      for _ in range(num_subsets)]
  return float(np.mean(estimates)), float(np.std(estimates))


def _squared_distances(queries: np.ndarray, points: np.ndarray,
                       chunk_size: int) -> Iterator[tuple[slice, np.ndarray]]:
  """Yields `(rows, d2)` with `d2[i, j] = ||queries[rows][i] - points[j]||^2`."""
  point_norms = np.sum(points ** 2, axis=1)
  for start in range(0, len(queries), chunk_size):
    rows = slice(start, start + chunk_size)
    chunk = queries[rows]
    d2 = np.sum(chunk ** 2, axis=1)[:, None] + point_norms[None, :] - 2.0 * chunk @ points.T
    yield rows, np.maximum(d2, 0.0)  # Rounding can dip just below zero for equal points.


def _knn_squared_radii(features: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
  """Squared distance from each point to its k-th nearest other point of the same set."""
  if not 1 <= k < len(features):
    raise ValueError(f'k must be in [1, {len(features) - 1}] (fewer than the {len(features)} '
                     f'points of a set), got {k}.')
  radii = np.empty(len(features))
  for rows, d2 in _squared_distances(features, features, chunk_size):
    # Column 0 of the sorted row is the point itself (distance 0), so index k is the k-th NN.
    radii[rows] = np.partition(d2, k, axis=1)[:, k]
  return radii


def _share_inside_manifold(queries: np.ndarray, centres: np.ndarray, squared_radii: np.ndarray,
                           chunk_size: int) -> float:
  inside = np.zeros(len(queries), bool)
  for rows, d2 in _squared_distances(queries, centres, chunk_size):
    inside[rows] = np.any(d2 <= squared_radii[None, :], axis=1)
  return float(inside.mean())


def precision_recall(features_real: np.ndarray, features_fake: np.ndarray, k: int,
                     chunk_size: int = 1024) -> tuple[float, float]:
  """Improved precision and recall with k-NN manifolds; both in [0, 1]."""
  real, fake = _feature_pair(features_real, features_fake)
  precision = _share_inside_manifold(fake, real, _knn_squared_radii(real, k, chunk_size),
                                     chunk_size)
  recall = _share_inside_manifold(real, fake, _knn_squared_radii(fake, k, chunk_size),
                                  chunk_size)
  return precision, recall


def density_coverage(features_real: np.ndarray, features_fake: np.ndarray, k: int,
                     chunk_size: int = 1024) -> tuple[float, float]:
  """Density (mean number of real k-NN balls per fake, over k; ~1 when matched) and coverage."""
  real, fake = _feature_pair(features_real, features_fake)
  squared_radii = _knn_squared_radii(real, k, chunk_size)
  balls_holding_fake = 0
  for _, d2 in _squared_distances(fake, real, chunk_size):
    balls_holding_fake += int(np.sum(d2 <= squared_radii[None, :]))
  nearest_fake = np.empty(len(real))
  for rows, d2 in _squared_distances(real, fake, chunk_size):
    nearest_fake[rows] = d2.min(axis=1)
  density = balls_holding_fake / (k * len(fake))
  coverage = float(np.mean(nearest_fake <= squared_radii))
  return float(density), coverage
