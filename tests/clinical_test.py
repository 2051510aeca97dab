"""Tests of the clinical CSV join and of its features in a ChestX-ray14 federation."""

import warnings

import numpy as np
import pytest

from configs.data import cxr14 as cxr14_config
from fedgan_jax.data import clinical
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import cxr14
import data_fixtures

COLUMNS = (dict(name='bmi', column='BMI', kind='continuous'),
           dict(name='smoker', column='Smoker', kind='categorical', categories=('no', 'yes')))


def _clinical_config(path, key='Patient ID', columns=COLUMNS):
  config = cxr14_config.get_clinical_config()
  config.update({'path': str(path), 'key': key, 'columns': columns})
  return config


def _write(path, text):
  path.write_text(text)
  return path


def test_join_by_key_masks_missing_cells_and_absent_keys(tmp_path):
  path = _write(tmp_path / 'c.csv', 'Patient ID,BMI,Smoker,Other\n'
                '0007,22.5,yes,x\n3,,no,y\n4,NA,,z\n')
  records, info = clinical.join_clinical(_clinical_config(path), np.array([7, 3, 4, 9, 7]))
  np.testing.assert_array_equal(records['bmi'], [22.5, np.nan, np.nan, np.nan, 22.5])
  assert records['smoker'].tolist() == ['yes', 'no', '', '', 'yes']
  assert info == {'clinical_unmatched': 1}


def test_clinical_columns_become_masked_cd_features():
  features = clinical.clinical_features(_clinical_config('c.csv'))
  assert features == [dict(name='bmi', kind='continuous', group='CD'),
                       dict(name='smoker', kind='categorical', group='CD',
                            categories=('no', 'yes'))]
  declared = [dict(name='bmi', kind='continuous', mean=25.0, std=4.0)]
  merged = clinical.with_clinical_features(declared, _clinical_config('c.csv'))
  assert [f['name'] for f in merged] == ['bmi', 'smoker'] and merged[0]['mean'] == 25.0


def test_no_path_means_no_clinical_data():
  config = cxr14_config.get_clinical_config()
  assert clinical.join_clinical(config, np.arange(3)) == ({}, {})
  assert clinical.clinical_features(config) == []


def test_text_in_a_continuous_column_names_file_line_and_column(tmp_path):
  path = _write(tmp_path / 'c.csv', 'Patient ID,BMI,Smoker\n1,22,no\n2,heavy,no\n')
  with pytest.raises(ValueError, match="line 3, column 'BMI': 'heavy' is not a number"):
    clinical.join_clinical(_clinical_config(path), np.array([1]))


def test_undeclared_category_is_named(tmp_path):
  path = _write(tmp_path / 'c.csv', 'Patient ID,BMI,Smoker\n1,22,former\n')
  with pytest.raises(ValueError, match=r"\['former'\] outside data.clinical.columns"):
    clinical.join_clinical(_clinical_config(path), np.array([1]))


def test_repeated_keys_missing_columns_and_bad_specs_are_named(tmp_path):
  path = _write(tmp_path / 'c.csv', 'Patient ID,BMI,Smoker\n1,22,no\n01,23,no\n')
  with pytest.raises(ValueError, match="repeated 'Patient ID' values"):
    clinical.join_clinical(_clinical_config(path), np.array([1]))
  with pytest.raises(ValueError, match=r"no column\(s\) \['Weight'\]"):
    clinical.join_clinical(_clinical_config(path, columns=(
        dict(name='weight', column='Weight', kind='continuous'),)), np.array([1]))
  with pytest.raises(ValueError, match='needs `categories`'):
    clinical.join_clinical(_clinical_config(path, columns=(
        dict(name='smoker', column='Smoker', kind='categorical'),)), np.array([1]))
  with pytest.raises(ValueError, match='not found'):
    clinical.join_clinical(_clinical_config(tmp_path / 'absent.csv'), np.array([1]))


def test_cxr14_federation_conditions_on_clinical_columns(tmp_path):
  fixture = data_fixtures.make_cxr14(tmp_path / 'root')
  path = _write(tmp_path / 'c.csv', 'Patient ID,BMI,Smoker\n' + ''.join(
      f'{p},{20 + p},{("no", "yes")[p % 2]}\n' for p in range(1, 9)) + '9,,\n')
  config = cxr14_config.get_data_config(runlocal=True)
  config.update({'root': str(fixture.root), 'image_size': 16, 'decode_workers': 1,
                 'max_images': 0})
  config.clinical = _clinical_config(path)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    federation = cxr14.build_federation(config, cxr14_config.get_conditions(), 0)
  schema = federation.schema
  assert schema.feature('bmi').group == 'CD' and schema.feature('smoker').group == 'CD'
  pooled = federation.pooled()
  values, mask = conditions_lib.split_condition(pooled.conditions)
  bmi, smoker = schema.slice('bmi'), schema.slice('smoker')
  for i, patient in enumerate(pooled.patient_ids):
    if patient <= 8:
      assert mask[i, bmi][0] == 1 and values[i, smoker].tolist() == [patient % 2 == 0,
                                                                      patient % 2 == 1]
      expected_bmi = (20 + patient - schema.feature('bmi').mean) / schema.feature('bmi').std
      assert values[i, bmi][0] == pytest.approx(expected_bmi)
    else:  # Patient 9 has empty cells; later patients are absent from the CSV.
      assert mask[i, bmi][0] == 0 and (mask[i, smoker] == 0).all()
  assert federation.info['clinical_unmatched'] == sum(r['patient_id'] > 9 for r in fixture.rows)


def test_cxr14_rejects_an_unknown_join_key(tmp_path):
  fixture = data_fixtures.make_cxr14(tmp_path / 'root')
  config = cxr14_config.get_data_config(runlocal=True)
  config.root = str(fixture.root)
  config.clinical = _clinical_config(tmp_path / 'c.csv', key='MRN')
  with pytest.raises(ValueError, match="data.clinical.key: 'MRN'"):
    cxr14.build_federation(config, cxr14_config.get_conditions(), 0)


def test_normalize_keys_ignores_leading_zeros_of_integer_ids():
  assert clinical.normalize_keys(['007', 7, ' a1 ', '00000001_000.png']).tolist() == [
      '7', '7', 'a1', '00000001_000.png']
