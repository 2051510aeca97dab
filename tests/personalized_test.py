"""Tests for the personalized anomaly detectors' building blocks (hand-computed cases)."""

import numpy as np
import pytest

from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.evaluation import personalized


def _schema():
  return conditions_lib.ConditionSchema.from_config([
      dict(name='age', kind='continuous', mean=50.0, std=10.0),
      dict(name='findings', kind='multi_hot', categories=('a', 'b'))])


def test_per_finding_auc_matches_hand_counts():
  # Normals score 0.1 and 0.4; images with finding a score 0.9 and 0.3, the one with b 0.8.
  scores = np.array([0.1, 0.4, 0.9, 0.3, 0.8])
  findings = np.array([[0, 0], [0, 0], [1, 0], [1, 0], [0, 1]])
  abnormal = findings.any(axis=1)
  aucs = personalized.per_finding_auc(scores, findings, abnormal, ('a', 'b'))
  # a: pairs (0.9 > 0.1, 0.9 > 0.4, 0.3 > 0.1, 0.3 < 0.4) -> 3 / 4. b: 0.8 beats both -> 1.
  assert aucs == {'a': pytest.approx(0.75), 'b': pytest.approx(1.0)}


def test_per_finding_auc_is_nan_without_positives_and_checks_shape():
  aucs = personalized.per_finding_auc(np.array([0.1, 0.2]), np.zeros((2, 1)),
                                      np.array([False, False]), ('a',))
  assert np.isnan(aucs['a'])
  with pytest.raises(ValueError, match=r'\(2, 2\)'):
    personalized.per_finding_auc(np.array([0.1, 0.2]), np.zeros((2, 1)),
                                 np.array([False, False]), ('a', 'b'))


def test_with_normal_labels_replaces_only_the_label_features():
  schema = _schema()
  values, mask = schema.encode({'age': np.array([70.0, np.nan]),
                                'findings': np.array([[1.0, 1.0], [0.0, 1.0]])})
  patients = conditions_lib.model_condition(values, mask)
  normal_values, normal_mask = schema.encode({'age': np.array([30.0, 40.0, 50.0]),
                                              'findings': np.zeros((3, 2))})
  normals = conditions_lib.model_condition(normal_values, normal_mask)
  result = personalized.with_normal_labels(patients, schema, normals, ['findings'])
  # Layout: [age, a, b | mask age, mask a, mask b]. Age (and its missing mask) is kept;
  # findings become "known, none".
  np.testing.assert_array_equal(result, [[2.0, 0, 0, 1, 1, 1], [0.0, 0, 0, 0, 1, 1]])
  np.testing.assert_array_equal(personalized.with_normal_labels(patients, schema, normals, []),
                                patients)


def test_distance_to_expected_is_mean_squared_difference_in_model_units():
  images = np.array([[[[0]], [[255]]]], np.uint8)  # (1, 2, 1, 1): -1 and +1 in model units.
  expected = np.array([[[[0.0]], [[0.0]]]], np.float32)
  np.testing.assert_allclose(personalized.distance_to_expected(images, expected), [1.0])
  with pytest.raises(ValueError, match='shape'):
    personalized.distance_to_expected(images, expected[:, :1])


def test_record_only_auc_ranks_each_known_column_against_the_label():
  schema = conditions_lib.ConditionSchema.from_config([
      dict(name='age', kind='continuous', mean=50.0, std=10.0),
      dict(name='sex', kind='categorical', categories=('female', 'male')),
      dict(name='findings', kind='multi_hot', categories=('a', 'b'))])
  values, mask = schema.encode({
      'age': np.array([30.0, 60.0, 50.0, 70.0, np.nan]),
      'sex': np.array(['female', 'female', 'male', 'male', 'female']),
      'findings': np.array([[0, 0], [1, 0], [0, 0], [0, 1], [1, 0]], np.float64)})
  conditions = conditions_lib.model_condition(values, mask)
  abnormal = np.array([False, True, False, True, True])
  aucs = personalized.record_only_auc(conditions, schema, abnormal, ['findings'])
  # Age, the 4 known: abnormal 60, 70 vs normal 30, 50 -> every pair ordered -> 1.
  # sex=male: abnormal (0, 1, 0) vs normal (0, 1) -> pairs 0.5 + 0 + 1 + 0.5 + 0.5 + 0 -> 2.5 / 6.
  assert aucs == {'age': pytest.approx(1.0), 'sex=female': pytest.approx(1 - 2.5 / 6),
                  'sex=male': pytest.approx(2.5 / 6)}


def test_fit_ridge_matches_hand_solution():
  features, targets = np.array([[0.0], [1.0], [2.0]]), np.array([1.0, 3.0, 5.0])
  weights, intercept = personalized.fit_ridge(features, targets, 0.0)
  np.testing.assert_allclose(weights, [2.0])
  assert intercept == pytest.approx(1.0)
  # Centered x = (-1, 0, 1), centered y = (-2, 0, 2): w = x.y / (x.x + 1) = 4 / 3, b = 3 - 4 / 3.
  weights, intercept = personalized.fit_ridge(features, targets, 1.0)
  np.testing.assert_allclose(weights, [4.0 / 3.0])
  assert intercept == pytest.approx(5.0 / 3.0)
  with pytest.raises(ValueError, match='calibration_ridge'):
    personalized.fit_ridge(features, targets, -1.0)


def test_profile_columns_take_the_groups_values_and_masks_without_labels():
  schema = conditions_lib.ConditionSchema.from_config([
      dict(name='age', kind='continuous', mean=50.0, std=10.0),
      dict(name='crp', kind='continuous', group='CD', mean=10.0, std=5.0),
      dict(name='sex', kind='categorical', categories=('F', 'M')),
      dict(name='findings', kind='multi_hot', categories=('a', 'b'))])
  # Values: age 0, crp 1, sex 2-3, findings 4-5; masks 6 + the same.
  np.testing.assert_array_equal(
      personalized.profile_columns(schema, ['PD'], ['findings']), [0, 2, 3, 6, 8, 9])
  np.testing.assert_array_equal(
      personalized.profile_columns(schema, ['CD'], ['findings']), [1, 7])
  with pytest.raises(ValueError, match='unknown'):
    personalized.profile_columns(schema, ['labs'], ['findings'])
  # Nothing but labels in the group (PneumoniaMNIST): no profile, no columns.
  assert personalized.profile_columns(schema, ['PD'], ['age', 'sex', 'findings']).size == 0


def test_profile_calibrated_scores_remove_what_the_profile_explains():
  schema = _schema()
  # Normal scores grow as exp(1 + 0.5 * standardized age); their calibrated scores are all 0.
  ages = np.array([30.0, 40.0, 50.0, 60.0, 70.0])
  values, mask = schema.encode({'age': ages, 'findings': np.zeros((5, 2))})
  normals = conditions_lib.model_condition(values, mask)
  normal_scores = np.exp(1.0 + 0.5 * (ages - 50.0) / 10.0)
  # Two patients of standardized age 2 and -2: the same raw score is anomalous for the young.
  test_values, test_mask = schema.encode({'age': np.array([70.0, 30.0]),
                                          'findings': np.zeros((2, 2))})
  test = conditions_lib.model_condition(test_values, test_mask)
  columns = personalized.profile_columns(schema, ['PD'], ['findings'])
  synthetic, scored, r2 = personalized.profile_calibrated_scores(
      normal_scores, normals, np.full(2, np.exp(2.0)), test, columns, penalty=0.0)
  np.testing.assert_allclose(synthetic, 0.0, atol=1e-12)
  # log e^2 minus the expected log score 1 + 0.5 * (+-2): 0 for the old patient, 2 for the young.
  np.testing.assert_allclose(scored, [0.0, 2.0], atol=1e-12)
  assert r2 == pytest.approx(1.0)
