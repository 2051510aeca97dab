"""Tests for the personalized anomaly detectors' building blocks (hand-computed cases)."""

import numpy as np
import pytest

from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.evaluators import personalized


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
