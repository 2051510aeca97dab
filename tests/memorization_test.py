"""Nearest-neighbour memorization check against hand-computed distances."""

import numpy as np

from fedgan_jax.evaluation import memorization


def test_memorization_counts_copies_of_training_films():
  training = np.array([[0.0, 0.0], [10.0, 0.0]])
  held_out = np.array([[0.0, 3.0], [10.0, 4.0], [5.0, 0.0]])  # Nearest: 3, 4, 5.
  synthetic = np.array([[0.0, 0.5], [10.0, 3.5], [5.0, 5.0]])  # Nearest: 0.5, 3.5, sqrt(50).
  np.testing.assert_allclose(memorization.nearest_distances(synthetic, training),
                             [0.5, 3.5, np.sqrt(50)])
  report = memorization.report(synthetic, held_out, training, percentile=0.0)
  # Floor = the smallest held-out distance, 3: only the first synthetic point is below it.
  assert report['held_out_floor'] == 3.0
  assert report['fraction_synthetic_below_floor'] == 1 / 3
  assert report['synthetic_below_held_out_minimum'] == 1
