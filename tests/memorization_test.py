"""Nearest-neighbour memorization check against hand-computed distances."""

import numpy as np
import pytest

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


def test_nearest_distances_skip_the_query_s_own_group():
  points = np.array([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 4.0]])
  patients = np.array([7, 7, 8, 9])
  # Film 0's nearest other patient is film 2 (3), not its own film 1 (1); film 3's is film 2.
  np.testing.assert_allclose(
      memorization.nearest_distances(points, points, query_groups=patients,
                                     reference_groups=patients), [3.0, np.sqrt(10), 3.0, 4.0])
  # A group with no other reference is infinitely far.
  assert np.isinf(memorization.nearest_distances(points[:2], points[:2], query_groups=patients[:2],
                                                 reference_groups=patients[:2])).all()


def test_release_veto_drops_films_nearer_than_the_site_s_patients_are_apart():
  site = np.array([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0], [3.0, 4.0]])
  patients = np.array([7, 7, 8, 9])
  # Between-patient distances 3, sqrt(10), 3, 4: the 0th percentile (min) is 3.
  synthetic = np.array([[0.0, 2.0], [1.5, 0.0], [10.0, 10.0], [3.0, 3.0]])
  # Nearest site film: 1 (film 1), 1.5, ~9.2, 1 (film 3): the first, second and last < 3.
  vetoed, floor = memorization.release_veto(synthetic, site, patients, percentile=1e-9)
  assert np.isclose(floor, 3.0) and vetoed.tolist() == [True, True, False, True]
  # One patient only: no floor, no veto.
  vetoed, floor = memorization.release_veto(synthetic, site[:2], patients[:2], 1.0)
  assert np.isnan(floor) and not vetoed.any()
  with pytest.raises(ValueError, match='release_filter_percentile'):
    memorization.release_veto(synthetic, site, patients, 0.0)
