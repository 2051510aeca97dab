"""The TFDS builders (array_record, read with tfds.data_source) give the plain loaders' arrays."""

import warnings

import numpy as np
import pytest

from configs.data import cxr14 as cxr14_config
from configs.data import medmnist as medmnist_config
from fedgan_jax.data import cxr14
from fedgan_jax.data import medmnist
import data_fixtures

tfds = pytest.importorskip('tensorflow_datasets', reason='tensorflow-datasets is not installed')
# Imported after the skip: these modules import tensorflow_datasets themselves.
# pylint: disable=g-import-not-at-top
from fedgan_jax.data.tfds_builders import cxr14 as cxr14_builder
from fedgan_jax.data.tfds_builders import medmnist as medmnist_builder
from fedgan_jax.data.tfds_builders import reader
# pylint: enable=g-import-not-at-top


def test_cxr14_tfds_gives_the_plain_loaders_images_and_records(tmp_path):
  fixture = data_fixtures.make_cxr14(tmp_path / 'root')
  config = cxr14_config.get_data_config(runlocal=True)
  config.update({'root': str(fixture.root), 'image_size': 16, 'decode_workers': 1,
                 'max_images': 0, 'drop_overlapping_patients': False})
  # The TFDS splits are the release's: no validation carve-out, the official test list scored.
  config.split.update(validation_fraction=0.0, score='test')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    federation = cxr14.build_federation(config, cxr14_config.get_conditions(), 0)
  with pytest.warns(UserWarning, match='1 undecodable'):
    builder = reader.prepare(
        cxr14_builder.Cxr14,
        cxr14_builder.Cxr14Config(name='16px', image_size=16, decode_workers=1,
                                  cache_dir=str(tmp_path / 'tfds_cache')),
        tmp_path / 'tfds', fixture.root)
  plain = {'train': federation.pooled(), 'test': federation.test}
  for split, examples in plain.items():
    stored = reader.read_split(builder.data_dir, split)
    order = np.argsort(examples.records['image_index'])
    assert stored['image_index'].tolist() == sorted(examples.records['image_index'])
    assert fixture.corrupt not in stored['image_index']
    np.testing.assert_array_equal(stored['image'], examples.images[order])
    for name in ('patient_id', 'sex', 'view', 'findings'):
      np.testing.assert_array_equal(stored[name], examples.records[name][order])
    for name in ('age', 'follow_up'):
      np.testing.assert_allclose(stored[name], examples.records[name][order])


def test_medmnist_tfds_gives_the_plain_loaders_resized_images(tmp_path):
  data_fixtures.make_medmnist_npz(tmp_path / 'chestmnist.npz', task='chestmnist')
  config = medmnist_config.get_data_config(runlocal=True, task='chestmnist')
  config.update({'path': str(tmp_path / 'chestmnist.npz'), 'image_size': 20})
  federation = medmnist.build_federation(config, medmnist_config.get_conditions('chestmnist'), 0)
  builder = reader.prepare(
      medmnist_builder.MedMnist,
      medmnist_builder.MedMnistConfig(name='chest_20', task='chestmnist', image_size=20),
      tmp_path / 'tfds', tmp_path)
  stored = reader.read_split(builder.data_dir, 'test')
  assert stored['image_index'].tolist() == federation.test.records['image_index'].tolist()
  np.testing.assert_array_equal(stored['image'], federation.test.images)
  np.testing.assert_array_equal(stored['findings'], federation.test.records['findings'])
  assert reader.read_split(builder.data_dir, 'val')['image'].shape == (6, 20, 20, 1)


def test_missing_manual_files_point_to_the_instructions(tmp_path):
  # TFDS checks an empty manual_dir itself (AssertionError), the builder a missing file.
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'notes.txt').write_text('not the data')
  for manual_dir, error in ((tmp_path / 'empty', AssertionError), (tmp_path / 'other', ValueError)):
    with pytest.raises(error, match='nihcc.app.box.com'):
      reader.prepare(cxr14_builder.Cxr14, cxr14_builder.Cxr14Config(name='8px', image_size=8),
                     tmp_path / 'tfds', manual_dir)
  with pytest.raises(ValueError, match='medmnist.com'):
    reader.prepare(medmnist_builder.MedMnist, medmnist_builder.MedMnistConfig(name='p_8'),
                   tmp_path / 'tfds', tmp_path)
  assert cxr14_builder.Cxr14.BUILDER_CONFIGS[0].image_size == 64
  assert {'pneumoniamnist_28', 'chestmnist_224'} <= {
      c.name for c in medmnist_builder.MedMnist.BUILDER_CONFIGS}
