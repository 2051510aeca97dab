"""Tests for the procedural chest-radiograph phantoms and their config."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from configs.data import phantom as phantom_config
from fedgan_jax.data import phantom
from fedgan_jax.evaluation import attributes


def _records(num, **fixed):
  """`num` identical adult records (PA, normal), with `fixed` fields overridden."""
  records = dict(age=np.full(num, 50.0), sex=np.ones(num, np.int64), view=np.zeros(num, np.int64),
                 history=np.zeros((num, 3), np.int64), bmi=np.full(num, 25.0),
                 crp=np.full(num, 3.0), severity_score=np.ones(num),
                 diuretic=np.zeros((num, 1), np.int64), findings=np.zeros((num, 4), np.int64))
  records.update({k: np.asarray(v) for k, v in fixed.items()})
  return records


def _noiseless(hospital=None):
  """A hospital style (the first configured one by default) without detector noise."""
  hospital = hospital or phantom_config.get_data_config().hospitals[0]
  style = dataclasses.asdict(hospital) if dataclasses.is_dataclass(hospital) else dict(hospital)
  return dict(style, noise_std=0.0)


@pytest.fixture(scope='module')
def small_federation():
  config = phantom_config.get_data_config(runlocal=True)
  return config, phantom.build_federation(config, phantom_config.get_conditions(), seed=3)


def test_same_seed_same_federation_other_seed_differs(small_federation):
  config, federation = small_federation
  again = phantom.build_federation(config, phantom_config.get_conditions(), seed=3)
  other = phantom.build_federation(config, phantom_config.get_conditions(), seed=4)
  for a, b in zip(federation.clients + [federation.test], again.clients + [again.test]):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.conditions, b.conditions)
  assert not np.array_equal(federation.clients[0].images, other.clients[0].images)
  sample = federation.normal_profiles(np.random.default_rng(0), 16)
  np.testing.assert_array_equal(sample, again.normal_profiles(np.random.default_rng(0), 16))


def test_shapes_and_dtypes(small_federation):
  config, federation = small_federation
  assert len(federation.clients) == config.num_hospitals == 3
  assert [len(c) for c in federation.clients] == [80, 48, 64]
  assert federation.image_shape == (32, 32, 1)
  schema_dim = federation.schema.model_dim
  assert schema_dim == 2 * (1 + 2 + 2 + 3 + 1 + 1 + 1 + 1 + 4)
  for client in federation.clients + [federation.test]:
    assert client.images.dtype == np.uint8
    assert client.conditions.shape == (len(client), schema_dim)
    assert client.conditions.dtype == np.float32
    assert client.records['history'].shape == (len(client), 3)
    assert client.records['findings'].shape == (len(client), 4)
    np.testing.assert_array_equal(client.abnormal, client.records['findings'].any(axis=1))
  assert len(federation.test) == 64 and federation.test.abnormal.sum() == 32
  assert [c.abnormal.sum() for c in federation.clients] == [16, 10, 13]  # round(0.2 * n).


@pytest.mark.parametrize('size', [28, 100, 256])
def test_render_any_size_and_chunking(size):
  config = phantom_config.get_data_config()
  records = phantom.sample_records(5, np.random.default_rng(0), config.demographics,
                                   config.hospitals[0], 0.0)
  whole = phantom.render(records, size, _noiseless(), np.random.default_rng(1))
  assert whole.shape == (5, size, size, 1) and whole.dtype == np.uint8
  assert 20 < whole.mean() < 200  # Neither blank nor saturated.
  # Patient geometry is drawn before chunking; normal, noiseless images use no other draws.
  chunked = phantom.render(records, size, _noiseless(), np.random.default_rng(1),
                           chunk_pixels=2 * size * size)
  np.testing.assert_array_equal(chunked, whole)


def test_records_follow_the_config():
  config = phantom_config.get_data_config()
  hospital = config.hospitals[0]
  records = phantom.sample_records(20000, np.random.default_rng(0), config.demographics, hospital,
                                   0.2)
  assert set(records) == set(phantom.RECORD_KEYS) | {'patient_id'}
  counts = np.asarray(phantom_config.CXR14_AGE_BIN_COUNTS, np.float64)
  histogram, _ = np.histogram(records['age'], bins=phantom_config.CXR14_AGE_BIN_EDGES)
  np.testing.assert_allclose(histogram / 20000, counts / counts.sum(), atol=0.01)
  assert abs(records['sex'].mean() - 21777 / 40000) < 0.015
  assert abs(records['view'].mean() - 15911 / 40000) < 0.015
  assert records['findings'].any(axis=1).sum() == 4000
  assert abs(np.isnan(records['crp']).mean() - 0.25) < 0.015
  pneumonia = records['findings'][:, 0] == 1
  normal = ~records['findings'].any(axis=1)
  assert np.nanmedian(records['crp'][pneumonia]) > 5 * np.nanmedian(records['crp'][normal])
  assert records['severity_score'][pneumonia].mean() > records['severity_score'][normal].mean() + 2
  fluid = records['findings'][:, 2] == 1
  assert records['diuretic'][fluid].mean() > 3 * records['diuretic'][normal].mean()
  icu = phantom.sample_records(4000, np.random.default_rng(0), config.demographics,
                               config.hospitals[3], 0.2)
  assert abs(icu['view'].mean() - 0.8) < 0.03
  old = phantom.sample_records(4000, np.random.default_rng(0), config.demographics,
                               config.hospitals[2], 0.2)
  young = phantom.sample_records(4000, np.random.default_rng(0), config.demographics,
                                 config.hospitals[1], 0.2)
  assert old['age'].mean() > records['age'].mean() + 8 > young['age'].mean() + 16


def test_declared_standardization_matches_default_population():
  config = phantom_config.get_data_config()
  records = phantom.sample_records(200000, np.random.default_rng(0), config.demographics,
                                   config.hospitals[0], config.abnormal_fraction)
  for feature in phantom_config.get_conditions():
    if feature['kind'] == 'continuous':
      values = records[feature['name']][np.isfinite(records[feature['name']])]
      assert abs(values.mean() - feature['mean']) < 0.05 * feature['std'] + 0.5, feature
      assert abs(values.std() / feature['std'] - 1) < 0.05, feature


def test_images_express_age_and_sex():
  """Records cause images: a ridge/logistic model on 16x16 pixels recovers age and sex."""
  config = phantom_config.get_data_config()
  images, records = [], []
  for i, hospital in enumerate(config.hospitals):
    part = phantom.sample_records(375, np.random.default_rng([0, i]), config.demographics,
                                  hospital, 0.2)
    images.append(phantom.render(part, 32, hospital, np.random.default_rng([1, i])))
    records.append(part)
  order = np.random.default_rng(2).permutation(1500)
  images = np.concatenate(images)[order]
  records = {k: np.concatenate([r[k] for r in records])[order] for k in records[0]}
  train = {k: v[:1000] for k, v in records.items()}
  held_out = {k: v[1000:] for k, v in records.items()}
  model = attributes.AttributeModel.fit(images[:1000], train, continuous=('age',),
                                        binary=('sex',))
  report = attributes.conditioning_report(model, images[1000:], held_out)
  assert report['age_r2'] >= 0.5, report
  assert report['sex_auc'] >= 0.9, report


def _heart_width(images, row):
  """Length of the bright run through the middle column along `row`: the heart between lungs."""
  bright = images[:, row, :, 0] > 100  # Lungs are < 70 there, heart and spine > 140.
  middle = images.shape[2] // 2
  widths = []
  for line in bright:
    left, right = middle, middle
    while left > 0 and line[left - 1]:
      left -= 1
    while right < len(line) - 1 and line[right + 1]:
      right += 1
    widths.append(right - left + 1)
  return np.array(widths)


def test_ap_view_magnifies_the_heart():
  size, num = 64, 12
  pa = phantom.render(_records(num, view=np.zeros(num, np.int64)), size, _noiseless(),
                      np.random.default_rng(0))
  ap = phantom.render(_records(num, view=np.ones(num, np.int64)), size, _noiseless(),
                      np.random.default_rng(0))
  # The heart's centre is 0.2 lung heights above the diaphragm and its half-height 0.24; measure
  # half a half-height above the centre, clear of the domes (age 50, man, bmi 25).
  anatomy = phantom.Anatomy()
  height = anatomy.lung_height + anatomy.lung_height_per_decade * 0.5
  row = int((anatomy.lung_apex + (0.8 - 0.12) * height + 1) * size / 2)
  ratio = _heart_width(ap, row).mean() / _heart_width(pa, row).mean()
  assert 1.05 < ratio < 1.25  # anatomy.ap_magnification = 1.13, blurred by edges.
  assert (_heart_width(ap, row) > _heart_width(pa, row)).all()


def _finding_difference(column, num=8, size=64):
  findings = np.zeros((num, 4), np.int64)
  with_finding = findings.copy()
  with_finding[:, column] = 1
  normal = phantom.render(_records(num, findings=findings), size, _noiseless(),
                          np.random.default_rng(0))
  abnormal = phantom.render(_records(num, findings=with_finding), size, _noiseless(),
                            np.random.default_rng(0))
  return abnormal[..., 0].astype(np.float64) - normal[..., 0], normal


def test_findings_change_pixels_where_expected():
  size = 64
  rows = np.arange(size)[:, None] * np.ones((1, size))
  cols = np.ones((size, 1)) * np.arange(size)[None, :]
  for column in range(4):
    difference, normal = _finding_difference(column, size=size)
    changed = np.abs(difference) > 25
    per_image = changed.sum(axis=(1, 2))
    assert (per_image > 0).all(), phantom.FINDINGS[column]  # Visible in every image.
    assert (difference[changed] > 0).mean() > 0.95  # Findings are denser than air.
    if column == 0:  # Pneumonia: a patch inside a lung field, which was dark before.
      assert normal[..., 0][changed].mean() < normal.mean()
      assert (per_image > 0.02 * size * size).all()
    if column == 1:  # Nodules: small spots.
      assert (per_image < 0.03 * size * size).all()
    if column == 2:  # Effusion: fluid rises at most 0.45 of the lung height (+ 0.25 laterally).
      anatomy = phantom.Anatomy()
      highest = anatomy.lung_apex + 0.3 * anatomy.lung_height  # In [-1, 1] image units.
      shift = 4  # Pixels of patient shift and edge smoothing.
      assert np.broadcast_to(rows, changed.shape)[changed].min() >= (highest + 1) * size / 2 - shift
    if column == 3:  # Cardiomegaly: a wider heart, centred low and a little to the image right.
      assert (rows[None] * changed).sum() / changed.sum() > 0.55 * size
      assert abs((cols[None] * changed).sum() / changed.sum() / size - 0.55) < 0.1


def test_hospitals_differ_in_look_and_noise():
  config = phantom_config.get_data_config()
  records = phantom.sample_records(40, np.random.default_rng(0), config.demographics,
                                   config.hospitals[0], 0.0)
  means = []
  for hospital in config.hospitals:
    noisy = phantom.render(records, 64, hospital, np.random.default_rng(5)).astype(np.float64)
    clean = phantom.render(records, 64, _noiseless(hospital), np.random.default_rng(5))
    # Same draws, so the difference is the detector noise (where it is not clipped).
    unclipped = (clean > 20) & (clean < 235)
    noise = (noisy - clean)[unclipped].std() / 255
    assert abs(noise - hospital.noise_std) < 0.15 * hospital.noise_std + 0.002, hospital.name
    means.append(clean.mean())
  assert np.ptp(means) > 10  # Window/gamma differ by tens of grey levels.
  # Gamma 1.3 with a higher window darkens the geriatric scanner; gamma 0.8 brightens.
  assert means[2] < means[0] < means[1]


def test_patient_ids_unique_across_hospitals_and_test(small_federation):
  _, federation = small_federation
  ids = np.concatenate([c.patient_ids for c in federation.clients + [federation.test]])
  assert len(np.unique(ids)) == len(ids)
  for i, client in enumerate(federation.clients):
    assert client.patient_ids.min() >= (i + 1) * 1_000_000


def test_more_hospitals_than_styles_repeat_styles():
  config = phantom_config.get_data_config(runlocal=True)
  config.num_hospitals = 6
  federation = phantom.build_federation(config, phantom_config.get_conditions(), seed=0)
  names = [c.name for c in federation.clients]
  assert len(set(names)) == 6 and names[4] == 'general_1'


def test_normal_profiles_have_no_findings(small_federation):
  _, federation = small_federation
  profiles = federation.normal_profiles(np.random.default_rng(1), 300)
  schema = federation.schema
  assert profiles.shape == (300, schema.model_dim) and profiles.dtype == np.float32
  values, mask = profiles[:, :schema.value_dim], profiles[:, schema.value_dim:]
  findings = schema.slice('findings')
  assert (values[:, findings] == 0).all() and (mask[:, findings] == 1).all()
  sex = schema.slice('sex')
  assert (values[:, sex].sum(axis=1) == 1).all()
  age = schema.decode_continuous('age', values[:, schema.slice('age')][:, 0])
  assert 35 < age.mean() < 60


def test_condition_prior_draws_each_hospitals_configured_population(small_federation):
  config, federation = small_federation
  prior, schema = federation.condition_prior, federation.schema
  findings, view = schema.slice('findings'), schema.slice('view')
  for index in range(len(federation.clients)):
    hospital = config.hospitals[index % len(config.hospitals)]
    drawn = prior(np.random.default_rng(index), 400, index)
    assert drawn.shape == (400, schema.model_dim) and drawn.dtype == np.float32
    values = drawn[:, :schema.value_dim]
    # Exactly the configured share of patients with findings (sample_records rounds it).
    assert values[:, findings].any(axis=1).mean() == pytest.approx(config.abnormal_fraction)
    ap_share = values[:, view][:, 1].mean()  # One-hot (PA, AP).
    expected = hospital.ap_fraction
    assert ap_share == pytest.approx(expected, abs=0.08)
  # None draws the whole population; the same generator state gives the same draw.
  np.testing.assert_array_equal(prior(np.random.default_rng(5), 16),
                                prior(np.random.default_rng(5), 16, None))
  with pytest.raises(IndexError, match='hospital 9 out of range'):
    prior(np.random.default_rng(0), 4, 9)


def test_restricted_prior_maps_clients_to_hospitals(small_federation):
  from fedgan_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  _, federation = small_federation
  prior = federation.condition_prior
  local = dataset_lib.restricted_prior(prior, [2])
  np.testing.assert_array_equal(local(np.random.default_rng(0), 8, 0),
                                prior(np.random.default_rng(0), 8, 2))
  pooled = dataset_lib.restricted_prior(prior, [None])
  np.testing.assert_array_equal(pooled(np.random.default_rng(0), 8, 0),
                                prior(np.random.default_rng(0), 8))
  assert dataset_lib.restricted_prior(None, [0]) is None


def test_missing_crp_is_masked_not_zero(small_federation):
  _, federation = small_federation
  schema = federation.schema
  column = schema.slice('crp').start
  pooled = federation.pooled()
  missing = np.isnan(pooled.records['crp'])
  assert 0 < missing.sum() < len(missing)
  values, mask = pooled.conditions[:, :schema.value_dim], pooled.conditions[:, schema.value_dim:]
  assert (mask[missing, column] == 0).all() and (values[missing, column] == 0).all()
  assert (mask[~missing, column] == 1).all()
  expected = (pooled.records['crp'][~missing] - 12.4) / 30.5  # Declared in get_conditions().
  np.testing.assert_allclose(values[~missing, column], expected, rtol=1e-5, atol=1e-6)


def test_errors_name_the_field_to_fix():
  config = phantom_config.get_data_config(runlocal=True)
  config.test_style = 'sideways'
  with pytest.raises(ValueError, match='test_style'):
    phantom.build_federation(config, phantom_config.get_conditions(), seed=0)
  records = _records(2)
  with pytest.raises(ValueError, match='anatomy'):
    phantom.render(records, 32, _noiseless(), np.random.default_rng(0), anatomy={'ribz': 3})
  conditions = phantom_config.get_conditions()
  conditions[1] = dict(conditions[1], categories=('M', 'F'))
  with pytest.raises(ValueError, match='conditions.sex'):
    phantom.build_federation(phantom_config.get_data_config(True), conditions, seed=0)
  with pytest.raises(ValueError, match='window_high'):
    phantom.render(records, 32, ml_collections.ConfigDict(dict(_noiseless(), window_high=-1.0)),
                   np.random.default_rng(0))
