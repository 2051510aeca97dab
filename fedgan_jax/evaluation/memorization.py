"""Does G copy its training films? Nearest-neighbour distances against the real ones.

Each synthetic image's distance to its nearest real *training* film is compared with
the distances of real *held-out* films to their nearest training film: a held-out film
is a new patient, so its distance says how far apart two different patients' films
are. A synthetic image nearer to a training film than (almost) every held-out film is
a candidate copy. The report gives the fraction of synthetic images below the 1st
percentile (and the minimum) of the held-out distances, and the quantiles of both.

`release_veto` is the safeguard that acts on it before synthetic films are used: each
hospital vetoes the candidates nearer to one of its own films than its own patients are
to each other (`anomaly.variant.release_filter_percentile`; the films never leave it).

Distances are Euclidean, on images in [-1, 1] (pixel space) or on any feature vectors.
"""

from __future__ import annotations

import numpy as np


def nearest_distances(queries: np.ndarray, references: np.ndarray,
                      batch_size: int = 512, query_groups: np.ndarray | None = None,
                      reference_groups: np.ndarray | None = None) -> np.ndarray:
  """`(N,)` Euclidean distance of each query row to its nearest reference row.

  With groups (e.g. patient ids), a reference of the query's own group is skipped (inf
  when every reference is).
  """
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
    if query_groups is not None:
      same = (np.asarray(query_groups)[start:start + batch_size, None]
              == np.asarray(reference_groups)[None, :])
      squared = np.where(same, np.inf, squared)
    out[start:start + batch_size] = np.sqrt(np.maximum(squared.min(axis=1), 0.0))
  return out


def release_veto(synthetic: np.ndarray, site_images: np.ndarray, site_patient_ids: np.ndarray,
                 percentile: float) -> tuple[np.ndarray, float]:
  """One hospital's veto on synthetic films before they are used: `(vetoed (N,), floor)`.

  The site's floor is the `percentile` of its films' distances to the nearest film of
  another of its patients (what two different patients' films are apart, at that site); a
  synthetic film nearer than that to any of the site's films is vetoed as a candidate copy.
  Only the veto bits leave the site. A site with a single patient has no floor and vetoes
  nothing.
  """
  if not 0 < percentile < 100:
    raise ValueError(f'anomaly.variant.release_filter_percentile must be in (0, 100) (0 = off), '
                     f'got {percentile}.')
  between = nearest_distances(site_images, site_images, query_groups=site_patient_ids,
                              reference_groups=site_patient_ids)
  between = between[np.isfinite(between)]
  if not len(between):
    return np.zeros(len(synthetic), bool), float('nan')
  floor = float(np.percentile(between, percentile))
  return nearest_distances(synthetic, site_images) < floor, floor


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
