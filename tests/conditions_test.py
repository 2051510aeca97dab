"""Condition schema: encoding, masking of missing values, decoding, errors."""

import numpy as np
import pytest

from fedgan_jax.data import conditions

FEATURES = [
    dict(name='age', kind='continuous', mean=50.0, std=10.0),
    dict(name='sex', kind='categorical', categories=('F', 'M')),
    dict(name='history', kind='multi_hot', categories=('copd', 'smoker'), group='PD'),
    dict(name='crp', kind='continuous', group='CD', mean=10.0, std=5.0),
]


def schema():
  return conditions.ConditionSchema.from_config(FEATURES)


def test_encode_standardizes_one_hots_and_masks_missing():
  records = {'age': np.array([60.0, np.nan]), 'sex': np.array(['M', '']),
             'history': np.array([[1, 0], [np.nan, np.nan]]), 'crp': np.array([15.0, 10.0])}
  values, mask = schema().encode(records)
  np.testing.assert_allclose(values, [[1.0, 0, 1, 1, 0, 1.0], [0, 0, 0, 0, 0, 0]])
  # Missing age, sex and history are masked, not "zero and present".
  np.testing.assert_allclose(mask, [[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]])
  c = conditions.model_condition(values, mask)
  assert c.shape == (2, 12)
  v, m = conditions.split_condition(c)
  np.testing.assert_allclose(v, values * mask)
  np.testing.assert_allclose(m, mask)


def test_decode_inverts_encode():
  s = schema()
  records = {'age': np.array([35.0, np.nan]), 'sex': np.array([1, -1]),
             'history': np.array([[0.0, 1.0], [1.0, 1.0]]), 'crp': np.array([np.nan, 20.0])}
  decoded = s.decode(conditions.model_condition(*s.encode(records)))
  np.testing.assert_allclose(decoded['age'], [35.0, np.nan])
  np.testing.assert_array_equal(decoded['sex'], [1, -1])
  np.testing.assert_allclose(decoded['history'], records['history'])
  np.testing.assert_allclose(decoded['crp'], [np.nan, 20.0])


def test_unknown_category_is_a_clear_error():
  records = {'age': np.array([1.0]), 'sex': np.array(['X']), 'history': np.zeros((1, 2)),
             'crp': np.array([1.0])}
  with pytest.raises(ValueError, match=r"conditions.sex: unknown category 'X'"):
    schema().encode(records)


def test_missing_record_column_and_bad_config_are_clear_errors():
  with pytest.raises(KeyError, match='lack features'):
    schema().encode({'age': np.array([1.0])})
  with pytest.raises(ValueError, match='kind'):
    conditions.ConditionSchema.from_config([dict(name='a', kind='ordinal')])
  with pytest.raises(ValueError, match='unknown keys'):
    conditions.ConditionSchema.from_config([dict(name='a', kind='continuous', mena=1.0)])


def test_fit_standardization_fills_unset_statistics():
  s = conditions.ConditionSchema.from_config([dict(name='x', kind='continuous')])
  fitted = s.fit_standardization({'x': np.array([1.0, 3.0, np.nan])})
  assert fitted.feature('x').mean == 2.0 and fitted.feature('x').std == 1.0


def test_continuous_columns_and_slices():
  s = schema()
  np.testing.assert_array_equal(s.continuous_columns(), [1, 0, 0, 0, 0, 1])
  assert s.slice('history') == slice(3, 5)
  assert s.value_dim == 6 and s.model_dim == 12
