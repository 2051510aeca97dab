"""Tests of the MedMNIST loader on the real PneumoniaMNIST subset and on made npz files."""

import numpy as np
import pytest

from configs.data import medmnist as medmnist_config
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import cxr14
from fedgan_jax.data import medmnist
import data_fixtures


def _config(path, task='pneumoniamnist', **overrides):
  config = medmnist_config.get_data_config(runlocal=True, task=task)
  config.update({'path': str(path), **overrides})
  return config


def _build(path, task='pneumoniamnist', seed=0, **overrides):
  return medmnist.build_federation(_config(path, task, **overrides),
                                   medmnist_config.get_conditions(task), seed)


def test_real_pneumoniamnist_keeps_pixels_and_labels(pneumoniamnist_path):
  federation = _build(pneumoniamnist_path, image_size=28)
  with np.load(pneumoniamnist_path) as npz:
    test_images, test_labels = npz['test_images'], npz['test_labels']
    num_train = len(npz['train_images'])
  np.testing.assert_array_equal(federation.test.images[..., 0], test_images)
  np.testing.assert_array_equal(federation.test.abnormal, test_labels[:, 0] == 1)
  assert federation.client_sizes.sum() == num_train
  # Condition = [pneumonia value, its mask]: the schema is the label only.
  assert federation.schema.model_dim == 2
  np.testing.assert_array_equal(federation.test.conditions,
                                np.stack([test_labels[:, 0], np.ones(len(test_labels))], 1))
  np.testing.assert_array_equal(federation.normal_profiles(np.random.default_rng(0), 4),
                                [[0.0, 1.0]] * 4)


def test_resizes_with_antialiasing_to_the_configured_size(tmp_path):
  arrays = data_fixtures.make_medmnist_npz(tmp_path / 'p.npz', size=28)
  small = np.random.default_rng(1).integers(0, 256, (8, 14, 14), dtype=np.uint8)
  arrays['test_images'] = np.kron(small, np.ones((2, 2), np.uint8))  # 2x2 blocks of one value.
  np.savez(tmp_path / 'p.npz', **arrays)
  federation = _build(tmp_path / 'p.npz', image_size=14, resample='box')
  np.testing.assert_array_equal(federation.test.images[..., 0], small)


@pytest.mark.parametrize('size', [28, 64, 128, 224])
def test_reads_every_released_size(tmp_path, size):
  arrays = data_fixtures.make_medmnist_npz(tmp_path / 'p.npz', size=size, split_sizes=(4, 2, 2))
  federation = _build(tmp_path / 'p.npz', image_size=size)
  assert federation.image_shape == (size, size, 1)
  np.testing.assert_array_equal(federation.test.images[..., 0], arrays['test_images'])


def test_chestmnist_is_multilabel_and_any_finding_is_abnormal(tmp_path):
  arrays = data_fixtures.make_medmnist_npz(tmp_path / 'c.npz', task='chestmnist')
  federation = _build(tmp_path / 'c.npz', task='chestmnist')
  assert federation.schema.feature('findings').categories == cxr14.FINDINGS
  np.testing.assert_array_equal(federation.test.abnormal, arrays['test_labels'].any(axis=1))
  values, mask = conditions_lib.split_condition(federation.test.conditions)
  np.testing.assert_array_equal(values, arrays['test_labels'])
  assert (mask == 1).all()


def test_every_image_is_its_own_patient_and_patient_ids_are_unique(tmp_path):
  data_fixtures.make_medmnist_npz(tmp_path / 'p.npz')
  federation = _build(tmp_path / 'p.npz', train_splits=('train', 'val'))
  ids = np.concatenate([c.patient_ids for c in federation.clients] + [federation.test.patient_ids])
  assert len(np.unique(ids)) == len(ids) == 24 + 6 + 8


def test_labels_of_another_task_are_named(tmp_path):
  data_fixtures.make_medmnist_npz(tmp_path / 'c.npz', task='chestmnist')
  with pytest.raises(ValueError, match='data.task'):
    _build(tmp_path / 'c.npz', task='pneumoniamnist')


def test_missing_file_or_array_is_named(tmp_path):
  with pytest.raises(ValueError, match='medmnist.com'):
    _build(tmp_path / 'absent.npz')
  np.savez(tmp_path / 'partial.npz', train_images=np.zeros((2, 28, 28), np.uint8))
  with pytest.raises(ValueError, match="'train_labels'"):
    _build(tmp_path / 'partial.npz')


def test_demographic_conditions_are_rejected(tmp_path):
  data_fixtures.make_medmnist_npz(tmp_path / 'p.npz')
  conditions = medmnist_config.get_conditions() + [dict(name='age', kind='continuous')]
  with pytest.raises(ValueError, match='findings only'):
    medmnist.build_federation(_config(tmp_path / 'p.npz'), conditions, 0)


def test_test_split_cannot_also_train(tmp_path):
  data_fixtures.make_medmnist_npz(tmp_path / 'p.npz')
  with pytest.raises(ValueError, match='data.test_split'):
    _build(tmp_path / 'p.npz', train_splits=('train', 'test'))


@pytest.mark.parametrize('split', ['test', 'val'])
def test_the_scored_split_is_named_for_the_reports(tmp_path, split):
  data_fixtures.make_medmnist_npz(tmp_path / 'p.npz')
  federation = _build(tmp_path / 'p.npz', test_split=split)
  assert federation.info['scored_split'] == split
  assert len(federation.test.images) == {'test': 8, 'val': 6}[split]
