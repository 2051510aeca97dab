"""Does G copy its training films? Nearest-neighbour distances against the real ones.

Each synthetic image's distance to its nearest real *training* film is compared with
the distances of real *held-out* films to their nearest training film: a held-out film
is a new patient, so its distance says how far apart two different patients' films
are. A synthetic image nearer to a training film than (almost) every held-out film is
a candidate copy. The report gives the fraction of synthetic images below the 1st
percentile (and the minimum) of the held-out distances, and the quantiles of both.

Distances are Euclidean, on images in [-1, 1] (pixel space) or on any feature vectors.
"""

from __future__ import annotations

import numpy as np


def nearest_distances(queries: np.ndarray, references: np.ndarray,
                      batch_size: int = 512) -> np.ndarray:
  """`(N,)` Euclidean distance of each query row to its nearest reference row."""
  queries = np.asarray(queries, np.float64).reshape(len(queries), -1)
  references = np.asarray(references, np.float64).reshape(len(references), -1)
  if len(references) == 0:
    raise ValueError('memorization: no reference (training) images to compare with.')
  reference_norms = np.sum(references ** 2, axis=1)
  out = np.empty(len(queries))
  for start in range(0, len(queries), batch_size):
    chunk = queries[start:start + batch_size]
    squared = (np.sum(chunk ** 2, axis=1)[:, None] + reference_norms[None, :]
               - 2.0 * chunk @ references.T)
    out[start:start + batch_size] = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
  return out


def report(synthetic: np.ndarray, held_out: np.ndarray, training: np.ndarray,
           percentile: float = 1.0) -> dict:
  """Nearest-training-film distances of synthetic vs held-out real images (see module doc)."""
  synthetic_distances = nearest_distances(synthetic, training)
  held_out_distances = nearest_distances(held_out, training)
  floor = float(np.percentile(held_out_distances, percentile))
  quantiles = (0.0, 1.0, 5.0, 50.0)
  return {
      'percentile': float(percentile),
      'held_out_floor': floor,
      'fraction_synthetic_below_floor': float(np.mean(synthetic_distances < floor)),
      'synthetic_below_held_out_minimum': int(np.sum(
          synthetic_distances < held_out_distances.min())),
      'synthetic_quantiles': {f'p{q:g}': float(np.percentile(synthetic_distances, q))
                              for q in quantiles},
      'held_out_quantiles': {f'p{q:g}': float(np.percentile(held_out_distances, q))
                             for q in quantiles},
      'synthetic': int(len(synthetic)), 'held_out': int(len(held_out)),
      'training': int(len(training)),
  }
