"""The ZhangLab / Kermany data source on a release-shaped tree of JPEGs made here."""

import numpy as np
import pytest
from configs import zhanglab as zhanglab_experiment
from configs.data import zhanglab as zhanglab_config
from fedgan_jax.data import zhanglab
import data_fixtures


def _data_config(root, **split):
  config = zhanglab_config.get_data_config(runlocal=True)
  config.update(root=str(root), decode_workers=1)
  config.split.update(split)
  return config


def test_release_test_split_is_scored_once_and_patients_stay_whole(tmp_path):
  root = data_fixtures.make_zhanglab(tmp_path, with_test=True)
  federation = zhanglab.build_federation(_data_config(root, score='test'),
                                         zhanglab.get_conditions(), seed=0)
  info = federation.info
  assert info['test_source'] == 'chest_xray/test' and info['duplicate_files_dropped'] == 1
  # The test folder stays whole, though its films equal training ones byte for byte here.
  assert info['test_copies_of_training_files'] == 36
  assert len(federation.test) == 36 and federation.test.abnormal.sum() == 12
  train_patients = np.concatenate([c.patient_ids for c in federation.clients])
  assert not set(train_patients) & set(federation.test.patient_ids)
  # 20% of the 24 training patients (5) are the validation split, never in a hospital.
  assert len(set(train_patients)) == 24 - 5 and info['validation_rows'] > 0
  assert len(federation.clients) == 3
  findings = federation.test.records['findings']
  assert findings[:, 0].sum() == 6 and findings[:, 1].sum() == 6  # Bacterial, viral.
  # The config's 'auto' scores the release's test folder when it is there.
  auto = zhanglab.build_federation(_data_config(root, score='auto'), zhanglab.get_conditions(), 0)
  assert auto.info['scored_split'] == 'test' and len(auto.test) == 36


def test_validation_is_scored_while_choosing_and_held_out_test_without_the_folder(tmp_path):
  root = data_fixtures.make_zhanglab(tmp_path, with_test=False)
  federation = zhanglab.build_federation(_data_config(root, score='auto'),
                                         zhanglab.get_conditions(), seed=0)
  assert federation.info['scored_split'] == 'validation'
  assert federation.info['test_source'].startswith('held-out training patients')
  train_patients = np.concatenate([c.patient_ids for c in federation.clients])
  assert not set(train_patients) & set(federation.test.patient_ids)
  assert 0 < federation.test.abnormal.sum() < len(federation.test)


def test_bad_names_roots_and_settings_name_what_to_fix(tmp_path):
  with pytest.raises(ValueError, match='cannot read the patient'):
    zhanglab.parse_name('scan_01.jpeg')
  assert zhanglab.parse_name('person7_virus_3.jpeg') == ('person7', 1)
  assert zhanglab.parse_name('NORMAL2-IM-0012-0001.jpeg') == ('NORMAL2-IM-0012', None)
  with pytest.raises(ValueError, match='data.root is empty'):
    zhanglab.build_federation(_data_config(''), zhanglab.get_conditions(), seed=0)
  with pytest.raises(ValueError, match='chest_xray/train'):
    zhanglab.build_federation(_data_config(tmp_path), zhanglab.get_conditions(), seed=0)
  root = data_fixtures.make_zhanglab(tmp_path / 'release', with_test=False)
  with pytest.raises(ValueError, match='data.split.score'):
    zhanglab.build_federation(_data_config(root, score='valid'), zhanglab.get_conditions(), 0)
  with pytest.raises(ValueError, match='validation_fraction'):
    zhanglab.build_federation(_data_config(root, validation_fraction=0.0),
                              zhanglab.get_conditions(), 0)
  misplaced = root / 'chest_xray' / 'train' / 'PNEUMONIA' / 'IM-0500-0001.jpeg'
  data_fixtures.write_jpeg(misplaced, 50)
  with pytest.raises(ValueError, match='sits in PNEUMONIA'):
    zhanglab.build_federation(_data_config(root), zhanglab.get_conditions(), 0)


def test_every_variant_builds():
  for variant in (None, 'runlocal', 'size=128', 'size=224', 'centralized'):
    config = zhanglab_experiment.get_config(variant)
    assert config.data.name == 'zhanglab' and config.loss.r1_gamma > 0
