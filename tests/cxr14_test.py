"""Tests of the ChestX-ray14 loader on fixtures in the official layout, and on the real CSV."""

import io
import os
import pathlib
import warnings

import numpy as np
from PIL import Image
import pytest

from configs.data import cxr14 as cxr14_config
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import cxr14
from fedgan_jax.data import image_io
import data_fixtures


def _config(root: pathlib.Path, **overrides):
  config = cxr14_config.get_data_config(runlocal=True)
  config.update({'root': str(root), 'image_size': 16, 'decode_workers': 1, 'max_images': 0,
                 **overrides})
  return config


def _build(root, seed=0, **overrides):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return cxr14.build_federation(_config(root, **overrides), cxr14_config.get_conditions(), seed)


def _all_examples(federation):
  return federation.clients + [federation.test]


@pytest.fixture
def flat(tmp_path):
  return data_fixtures.make_cxr14(tmp_path / 'flat', layout='flat')


def test_loads_exact_gray_pixels_from_every_png_mode(flat):
  federation = _build(flat.root)
  loaded_modes = set()
  for client in _all_examples(federation):
    for i, name in enumerate(client.records['image_index']):
      np.testing.assert_array_equal(client.images[i, :, :, 0], flat.pixels[name])
      loaded_modes.add(flat.modes[name])
  assert loaded_modes == set(data_fixtures.MODES)


def test_nih_folders_give_the_same_data_as_one_images_folder(flat, tmp_path):
  nih = data_fixtures.make_cxr14(tmp_path / 'nih', layout='nih')
  assert (nih.root / 'images_002' / 'images').is_dir()
  a, b = _build(flat.root), _build(nih.root)
  for client_a, client_b in zip(_all_examples(a), _all_examples(b)):
    np.testing.assert_array_equal(client_a.records['image_index'], client_b.records['image_index'])
    np.testing.assert_array_equal(client_a.images, client_b.images)


def test_records_map_to_the_condition_vector(flat):
  federation = _build(flat.root)
  schema = federation.schema
  rows = {r['image_index']: r for r in flat.rows}
  pooled = federation.pooled()
  train_ages = [rows[n]['age'] for n in pooled.records['image_index'] if rows[n]['age'] <= 120]
  age = schema.feature('age')
  assert age.mean == pytest.approx(np.mean(train_ages))
  assert age.std == pytest.approx(np.std(train_ages))
  for i, name in enumerate(pooled.records['image_index']):
    row = rows[name]
    values, mask = conditions_lib.split_condition(pooled.conditions[i])
    if row['age'] > 120:  # Recorded errors are missing, not 412 years.
      assert mask[schema.slice('age')] == 0 and values[schema.slice('age')] == 0
    else:
      assert values[schema.slice('age')][0] == pytest.approx((row['age'] - age.mean) / age.std)
    np.testing.assert_array_equal(values[schema.slice('sex')],
                                  [row['sex'] == 'F', row['sex'] == 'M'])
    np.testing.assert_array_equal(values[schema.slice('view')],
                                  [row['view'] == 'PA', row['view'] == 'AP'])
    expected_findings = [f in row['labels'].split('|') for f in cxr14.FINDINGS]
    np.testing.assert_array_equal(values[schema.slice('findings')], expected_findings)
    assert pooled.abnormal[i] == (row['labels'] != 'No Finding')
    assert values[schema.slice('follow_up')][0] == pytest.approx(
        (row['follow_up'] - schema.feature('follow_up').mean) / schema.feature('follow_up').std)


@pytest.mark.filterwarnings('ignore:ChestX-ray14. skipped')
def test_shared_patient_is_reported_and_dropped_from_training(flat):
  config = _config(flat.root)
  with pytest.warns(UserWarning, match='1 patients have images in both'):
    federation = cxr14.build_federation(config, cxr14_config.get_conditions(), 0)
  assert federation.info['overlapping_patients'] == 1
  assert federation.info['dropped_overlapping_rows'] == 1
  assert flat.shared_patient not in federation.pooled().patient_ids
  assert flat.shared_patient in federation.test.patient_ids


@pytest.mark.filterwarnings('ignore:ChestX-ray14. skipped')
def test_shared_patient_stays_in_training_when_not_dropping(flat):
  config = _config(flat.root, drop_overlapping_patients=False)
  with pytest.warns(UserWarning, match='stay in both splits'):
    federation = cxr14.build_federation(config, cxr14_config.get_conditions(), 0)
  assert flat.shared_patient in federation.pooled().patient_ids


def test_patients_never_span_hospitals_or_the_test_split(flat):
  federation = _build(flat.root, partition=cxr14_config.get_partition_config(num_clients=3))
  owners = [set(c.patient_ids.tolist()) for c in federation.clients]
  assert sum(map(len, owners)) == len(set().union(*owners))
  assert not set().union(*owners) & set(federation.test.patient_ids.tolist())
  assert set(federation.test.patient_ids.tolist()) == set(flat.test_patients)


@pytest.mark.filterwarnings('ignore:ChestX-ray14. 1 patients')
def test_corrupt_png_is_skipped_and_counted(flat):
  with pytest.warns(UserWarning, match='1 undecodable'):
    federation = cxr14.build_federation(_config(flat.root), cxr14_config.get_conditions(), 0)
  assert federation.info['bad_images'] == 1
  assert federation.info['bad_image_files'] == [flat.corrupt]
  used = np.concatenate([c.records['image_index'] for c in _all_examples(federation)])
  assert flat.corrupt not in used
  # The validation patients' films are held out of the hospitals and, scoring the official
  # test list, scored nowhere.
  assert len(used) == (len(flat.rows) - 1 - federation.info['dropped_overlapping_rows']
                       - federation.info['validation_rows'])


def test_corrupt_png_error_names_the_file_and_leaves_no_partial_cache(flat):
  with pytest.raises(ValueError, match=flat.corrupt):
    _build(flat.root, on_bad_image='error')
  assert not list((flat.root / 'fedgan_cache').glob('*.npy'))


def test_corrupt_png_recorded_in_the_cache_still_errors_by_name(flat):
  _build(flat.root)
  with pytest.raises(ValueError, match=flat.corrupt):
    _build(flat.root, on_bad_image='error')


def test_missing_image_file_is_skipped_or_named(flat):
  missing = flat.rows[0]['image_index']
  (flat.root / 'images' / missing).unlink()
  federation = _build(flat.root)
  assert federation.info['missing_images'] == 1
  with pytest.raises(ValueError, match=missing):
    _build(flat.root, on_bad_image='error')


def test_second_run_reads_the_cache_not_the_pngs(flat, monkeypatch):
  first = _build(flat.root)

  def no_decoding(*args, **kwargs):
    raise AssertionError('unchanged files were decoded again')
  monkeypatch.setattr(image_io, 'decode_into', no_decoding)
  second = _build(flat.root)
  assert not first.info['cache_hit'] and second.info['cache_hit']
  assert second.info['cache_path'] == first.info['cache_path']
  assert second.info['refreshed_images'] == 0
  np.testing.assert_array_equal(first.test.images, second.test.images)
  assert second.test.images.any()


@pytest.mark.filterwarnings('ignore:ChestX-ray14')
def test_a_repaired_or_replaced_png_is_decoded_again(flat):
  """The cache follows each file's size and mtime: a PNG repaired after a skip run is no
  longer "bad", and a replaced one gives its new pixels (issue 22)."""
  first = _build(flat.root)
  assert first.info['bad_image_files'] == [flat.corrupt]
  data_fixtures.save_png(flat.root / 'images' / flat.corrupt, flat.pixels[flat.corrupt], 'L')
  replaced = next(n for n in flat.pixels if n != flat.corrupt)
  data_fixtures.save_png(flat.root / 'images' / replaced, 255 - flat.pixels[replaced], 'L')
  second = _build(flat.root)
  assert second.info['bad_images'] == 0 and second.info['cache_hit']
  assert second.info['refreshed_images'] == 2
  rows = {name: (client, i) for client in _all_examples(second)
          for i, name in enumerate(client.records['image_index'])}
  checked = 0
  for name, expected in ((flat.corrupt, flat.pixels[flat.corrupt]),
                         (replaced, 255 - flat.pixels[replaced])):
    if name in rows:  # Unless it belongs to the shared patient's dropped training rows.
      client, i = rows[name]
      np.testing.assert_array_equal(np.asarray(client.images)[i, :, :, 0], expected)
      checked += 1
  assert checked == 2
  third = _build(flat.root, on_bad_image='error')  # Nothing bad is left, nothing stale.
  assert third.info['refreshed_images'] == 0


def test_cache_key_follows_image_size_and_file_list(flat):
  base = _build(flat.root)
  resized = _build(flat.root, image_size=8)
  fewer = _build(flat.root, max_images=24)
  paths = {base.info['cache_path'], resized.info['cache_path'], fewer.info['cache_path']}
  assert len(paths) == 3 and not resized.info['cache_hit'] and not fewer.info['cache_hit']
  assert resized.image_shape == (8, 8, 1)


def test_cache_dir_can_be_given(flat, tmp_path):
  federation = _build(flat.root, cache_dir=str(tmp_path / 'elsewhere'))
  assert federation.info['cache_path'].startswith(str(tmp_path / 'elsewhere'))


def test_streams_from_disk_when_larger_than_max_in_memory_bytes(flat):
  in_memory = _build(flat.root)
  streamed = _build(flat.root, max_in_memory_bytes=16 * 16)
  assert streamed.info['streaming'] and not in_memory.info['streaming']
  for a, b in zip(_all_examples(in_memory), _all_examples(streamed)):
    assert isinstance(b.images, image_io.RowView) and b.images.shape == a.images.shape
    assert type(a.images) is np.ndarray
    np.testing.assert_array_equal(np.asarray(b.images), a.images)
    np.testing.assert_array_equal(b.images[[2, 0]], a.images[[2, 0]])
    np.testing.assert_array_equal(b.images[1], a.images[1])
  np.testing.assert_array_equal(streamed.pooled().images, in_memory.pooled().images)


def test_max_images_uses_only_the_first_rows(flat):
  federation = _build(flat.root, max_images=24)
  used = {n for c in _all_examples(federation) for n in c.records['image_index']}
  assert federation.info['rows_in_csv'] == 24
  assert used <= {r['image_index'] for r in flat.rows[:24]}


def test_seeded_patient_split_without_split_lists(tmp_path):
  fixture = data_fixtures.make_cxr14(tmp_path / 'nolists', split_lists=False)
  a, b, c = (_build(fixture.root, seed=s, split=dict(test_fraction=0.2, validation_fraction=0.2,
                                                     score=score))
             for s, score in ((0, 'test'), (0, 'test'), (1, 'test')))
  assert a.info['split'] == 'seeded patients' and a.info['scored_split'] == 'test'
  test_patients = set(a.test.patient_ids.tolist())
  assert len(test_patients) == round(0.2 * 16)
  assert test_patients == set(b.test.patient_ids.tolist())
  assert test_patients != set(c.test.patient_ids.tolist())
  assert not test_patients & set(a.pooled().patient_ids.tolist())


def test_validation_split_is_scored_without_lists_and_the_official_test_with_them(tmp_path, flat):
  official = _build(flat.root)
  assert official.info['scored_split'] == 'test'
  assert set(official.test.patient_ids.tolist()) == set(flat.test_patients)
  fixture = data_fixtures.make_cxr14(tmp_path / 'nolists', split_lists=False)
  development = _build(fixture.root)
  assert development.info['scored_split'] == 'validation'
  validation = set(development.test.patient_ids.tolist())
  # 20% of the 13 training patients, none of them in a hospital.
  assert len(validation) == round(0.2 * 13) and development.info['validation_rows'] > 0
  assert not validation & set(development.pooled().patient_ids.tolist())
  with pytest.raises(ValueError, match='validation_fraction'):
    _build(fixture.root, split=dict(test_fraction=0.2, validation_fraction=0.0, score='auto'))


def test_normal_profiles_are_normal_training_conditions(flat):
  federation = _build(flat.root)
  profiles = federation.normal_profiles(np.random.default_rng(0), 50)
  pooled = federation.pooled()
  assert profiles.shape == (50, federation.schema.model_dim)
  normal = {tuple(row) for row in pooled.conditions[~pooled.abnormal]}
  assert all(tuple(row) in normal for row in profiles)
  values, mask = conditions_lib.split_condition(profiles)
  findings = federation.schema.slice('findings')
  assert (values[:, findings] == 0).all() and (mask[:, findings] == 1).all()


def test_missing_root_names_the_layout_and_the_publisher(tmp_path):
  with pytest.raises(ValueError, match='nihcc.app.box.com.*'):
    _build(tmp_path / 'absent')
  with pytest.raises(ValueError, match='data.root is empty'):
    _build('')
  (tmp_path / 'no_images').mkdir()
  csv_path = tmp_path / 'no_images' / cxr14.CSV_NAME
  csv_path.write_text(
      data_fixtures.CXR14_HEADER + '\n00000001_000.png,Hernia,0,1,50,M,PA,1,1,1,1\n')
  with pytest.raises(ValueError, match='no PNG images'):
    _build(tmp_path / 'no_images')
  csv_path.write_text(data_fixtures.CXR14_HEADER + '\n')
  with pytest.raises(ValueError, match='no rows'):
    _build(tmp_path / 'no_images')


def _rewrite_csv(root: pathlib.Path, old: str, new: str) -> None:
  path = root / cxr14.CSV_NAME
  text = path.read_text()
  assert old in text
  path.write_text(text.replace(old, new, 1))


def test_negative_and_unparsable_ages_are_counted_and_missing(flat, caplog):
  """Ages outside [0, max_valid_age] and text that is not a number become NaN, counted."""
  rows = flat.rows
  for row, age in ((rows[0], '-3'), (rows[1], 'abc'), (rows[2], '')):
    line = f'{row["image_index"]},{row["labels"]},{row["follow_up"]},{row["patient_id"]},'
    _rewrite_csv(flat.root, f'{line}{row["age"]},', f'{line}{age},')
  with caplog.at_level('WARNING'):
    records, info = cxr14.read_metadata(flat.root / cxr14.CSV_NAME, max_valid_age=120)
  assert np.isnan(records['age'][:3]).all()
  # -3 and the fixture's recorded errors (412) out of range, 'abc' unparsable; '' is missing.
  recorded_errors = sum(r['patient_id'] == data_fixtures.INVALID_AGE_PATIENT for r in rows)
  assert recorded_errors and info['out_of_range_ages'] == 1 + recorded_errors
  assert info['unparsable_ages'] == 1 and info['invalid_ages'] == 2 + recorded_errors
  assert 'ages treated as missing' in caplog.text and "'-3'" in caplog.text
  assert np.isfinite(records['age']).sum() == len(rows) - 3 - recorded_errors


def test_csv_without_a_column_names_it(flat):
  _rewrite_csv(flat.root, 'View Position', 'View')
  with pytest.raises(ValueError, match="'View Position'"):
    _build(flat.root)


def test_unknown_finding_label_is_an_error_before_training(flat):
  _rewrite_csv(flat.root, 'Cardiomegaly', 'Cardiomegally')
  with pytest.raises(ValueError, match="Cardiomegally"):
    _build(flat.root)


def test_unknown_sex_is_an_error(flat):
  _rewrite_csv(flat.root, ',M,', ',X,')
  with pytest.raises(ValueError, match="Patient Gender 'X'"):
    _build(flat.root)


def test_condition_not_provided_by_the_records_is_named(flat):
  conditions = cxr14_config.get_conditions() + [dict(name='bmi', kind='continuous')]
  with pytest.raises(ValueError, match=r"\['bmi'\]"):
    cxr14.build_federation(_config(flat.root), conditions, 0)


def test_box_resize_averages_blocks():
  pixels = np.array([[0, 2, 10, 10], [4, 6, 10, 10], [100, 100, 7, 9], [100, 100, 9, 11]],
                    np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'PNG')
  np.testing.assert_array_equal(image_io.decode_grayscale(buffer.getvalue(), 2, 'box'),
                                [[3, 10], [100, 9]])


def test_sixteen_bit_full_range_and_min_max():
  pixels = np.array([[0, 4095], [65535, 2570]], np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, 'PNG')
  np.testing.assert_array_equal(
      image_io.decode_grayscale(buffer.getvalue(), 2, sixteen_bit='full_range'),
      [[0, 16], [255, 10]])
  np.testing.assert_array_equal(
      image_io.decode_grayscale(buffer.getvalue(), 2, sixteen_bit='min_max'),
      [[0, 16], [255, 10]])
  twelve_bit = np.array([[0, 4095]], np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(twelve_bit).save(buffer, 'PNG')
  np.testing.assert_array_equal(
      image_io.decode_grayscale(buffer.getvalue(), 1, 'box', sixteen_bit='min_max'), [[128]])


def test_process_pool_decodes_like_one_process(flat):
  names = [n for n in flat.pixels if n != flat.corrupt]
  paths = [os.fspath(flat.root / 'images' / n) for n in names]
  out = np.zeros((len(paths), 16, 16, 1), np.uint8)
  bad = image_io.decode_into(paths, out, image_size=16, resample='bicubic',
                             sixteen_bit='full_range', workers=2, chunk_size=5,
                             on_bad_image='error')
  assert not bad
  np.testing.assert_array_equal(out[..., 0], np.stack([flat.pixels[n] for n in names]))


def test_real_csv_parses_and_maps_to_conditions(cxr14_csv_path):
  records, info = cxr14.read_metadata(cxr14_csv_path, max_valid_age=120)
  assert info['rows_in_csv'] == 40000
  assert len(np.unique(records['patient_id'])) == 10447
  # 23,087 rows are 'No Finding' and 5,909 mention Infiltration (counted with csv + str.split).
  assert int((~records['findings'].any(axis=1)).sum()) == 23087
  assert int(records['findings'][:, cxr14.FINDINGS.index('Infiltration')].sum()) == 5909
  assert int((records['sex'] == 1).sum()) == 21777
  schema = conditions_lib.ConditionSchema.from_config(
      cxr14_config.get_conditions()).fit_standardization(records)
  values, mask = schema.encode(records)
  assert values.shape == (40000, schema.value_dim)
  assert mask[:, schema.slice('findings')].all() and mask[:, schema.slice('sex')].all()
  np.testing.assert_array_equal(values[0, schema.slice('findings')],
                                np.eye(14)[cxr14.FINDINGS.index('Cardiomegaly')])


@pytest.mark.parametrize('image_size', [16, 8])
def test_spng_decoder_gives_pils_pixels_for_every_mode(flat, image_size):
  pytest.importorskip('pyspng', reason='pyspng (the optional fast PNG decoder) is not installed')
  for name in flat.pixels:
    data = next(flat.root.glob(f'images/{name}')).read_bytes()
    if name == flat.corrupt:
      for decoder in ('pil', 'auto'):
        with pytest.raises(Exception):
          image_io.decode_grayscale(data, image_size, png_decoder=decoder)
      continue
    np.testing.assert_array_equal(image_io.decode_grayscale(data, image_size, png_decoder='auto'),
                                  image_io.decode_grayscale(data, image_size, png_decoder='pil'))


def test_spng_decoder_without_pyspng_names_the_package(monkeypatch):
  monkeypatch.setattr(image_io, 'pyspng', None)
  data = image_io.encode_png(np.full((4, 4), 7, np.uint8))
  with pytest.raises(ValueError, match='pip install pyspng'):
    image_io.decode_grayscale(data, 2, png_decoder='spng')
  np.testing.assert_array_equal(image_io.decode_grayscale(data, 2, png_decoder='auto'),
                                np.full((2, 2), 7))


def test_unknown_png_decoder_is_an_error_before_decoding(flat):
  out = np.zeros((1, 16, 16, 1), np.uint8)
  with pytest.raises(ValueError, match='data.png_decoder'):
    image_io.decode_into([str(next(flat.root.glob('images/*.png')))], out, image_size=16,
                         resample='bicubic', sixteen_bit='full_range', workers=1, chunk_size=4,
                         on_bad_image='skip', png_decoder='fast')
