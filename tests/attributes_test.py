"""Tests for the attribute model that reads patient attributes off images."""

import numpy as np
import pytest

from fedgan_jax.evaluation import attributes


def test_area_downsampling_matches_hand_computed_means():
  image = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 10
  features = attributes.image_features(image, feature_size=2, normalize_per_image=False)
  # Block means of [[0, 10, 40, 50], ...]: (0+10+40+50)/4 = 25, etc., over 255.
  np.testing.assert_allclose(features[0] * 255, [25, 45, 105, 125], rtol=1e-5)
  # 3 -> 2 pixels: each output pixel covers 1.5 inputs, (a + b / 2) / 1.5 and (b / 2 + c) / 1.5.
  np.testing.assert_allclose(attributes._area_matrix(3, 2),
                             [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], atol=1e-12)


def test_attribute_target_columns_and_missing_codes():
  records = {'sex': np.array([1, 0, -1]), 'history': np.array([[0, 1], [1, 0], [0, 0]]),
             'crp': np.array([1.0, np.nan, 3.0])}
  np.testing.assert_array_equal(attributes.attribute_target(records, 'sex'), [1, 0, np.nan])
  np.testing.assert_array_equal(attributes.attribute_target(records, 'history[1]'), [1, 0, 0])
  np.testing.assert_array_equal(attributes.attribute_target(records, 'crp'), [1, np.nan, 3])
  with pytest.raises(ValueError, match='history'):
    attributes.attribute_target(records, 'history')
  with pytest.raises(KeyError, match='age'):
    attributes.attribute_target(records, 'age')


def _synthetic(num, rng, size=24):
  """Images whose left half brightens linearly with `level` and whose top-right block is bright
  when `flag` is 1, under pixel noise."""
  level = rng.uniform(0, 1, num)
  flag = rng.integers(0, 2, num)
  images = 100 + 20 * rng.standard_normal((num, size, size))
  images[:, :, :size // 2] += 80 * level[:, None, None]
  images[:, :size // 3, -size // 3:] += 40 * flag[:, None, None]
  images = np.clip(images, 0, 255).astype(np.uint8)[..., None]
  return images, {'level': 20 + 60 * level, 'flag': flag}


def test_fit_predict_shapes_and_probabilities():
  rng = np.random.default_rng(0)
  images, records = _synthetic(60, rng)
  records['level'][:5] = np.nan  # Missing values are skipped when fitting.
  model = attributes.AttributeModel.fit(images, records, continuous=('level',), binary=('flag',))
  predictions = model.predict(images[:7])
  assert set(predictions) == {'level', 'flag'}
  assert predictions['level'].shape == (7,) and predictions['flag'].shape == (7,)
  assert ((predictions['flag'] >= 0) & (predictions['flag'] <= 1)).all()


def test_recovers_a_known_linear_signal():
  rng = np.random.default_rng(1)
  images, records = _synthetic(400, rng)
  train = {k: v[:300] for k, v in records.items()}
  model = attributes.AttributeModel.fit(images[:300], train, continuous=('level',),
                                        binary=('flag',), normalize_per_image=False)
  held_out = {k: v[300:] for k, v in records.items()}
  report = attributes.conditioning_report(model, images[300:], held_out)
  assert report['level_r2'] > 0.95 and report['level_pearson_r'] > 0.97
  assert report['level_mae'] < 4  # Of a 60-unit range.
  assert report['flag_auc'] > 0.99 and report['flag_accuracy'] > 0.95
  # Images of shuffled records carry no information about them.
  shuffled = {k: v[::-1] for k, v in held_out.items()}
  chance = attributes.conditioning_report(model, images[300:], shuffled)
  assert abs(chance['level_pearson_r']) < 0.3 and abs(chance['flag_auc'] - 0.5) < 0.2


def test_conditioning_report_is_nan_for_single_class():
  rng = np.random.default_rng(2)
  images, records = _synthetic(80, rng)
  model = attributes.AttributeModel.fit(images, records, continuous=('level',), binary=('flag',))
  ones = {'level': records['level'][:10], 'flag': np.ones(10, np.int64)}
  report = attributes.conditioning_report(model, images[:10], ones)
  assert np.isnan(report['flag_auc']) and np.isfinite(report['level_r2'])


def test_binary_attribute_needs_both_classes():
  rng = np.random.default_rng(3)
  images, records = _synthetic(20, rng)
  records['flag'] = np.zeros(20, np.int64)
  with pytest.raises(ValueError, match='flag'):
    attributes.AttributeModel.fit(images, records, continuous=(), binary=('flag',))
  with pytest.raises(ValueError, match='level'):
    attributes.AttributeModel.fit(images[:10], records, continuous=('level',), binary=())
