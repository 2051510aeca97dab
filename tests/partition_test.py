"""Tests of the patient-level partitioners, the federation they make, and clients.json."""

import json

import ml_collections
import numpy as np
import pytest

from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import image_io
from fedgan_jax.data import partition


def _patients_of(metadata, clients):
  return [set(np.asarray(metadata['patient_id'])[rows].tolist()) for rows in clients]


def _assert_patient_level_cover(metadata, clients):
  rows = np.concatenate(clients)
  assert sorted(rows.tolist()) == list(range(len(metadata['patient_id'])))
  patients = _patients_of(metadata, clients)
  assert sum(map(len, patients)) == len(set().union(*patients))


def _three_rows_per_patient(num_patients):
  return {'patient_id': np.repeat(np.arange(num_patients), 3)}


def test_iid_deals_whole_patients_in_equal_counts():
  metadata = _three_rows_per_patient(10)
  clients = partition.partition(metadata, 'iid', 3, np.random.default_rng(0))
  _assert_patient_level_cover(metadata, clients)
  assert sorted(len(p) for p in _patients_of(metadata, clients)) == [3, 3, 4]


def test_same_rng_same_partition():
  metadata = _three_rows_per_patient(20)
  a, b = (partition.partition(metadata, 'iid', 4, np.random.default_rng(7)) for _ in range(2))
  assert all((x == y).all() for x, y in zip(a, b))


def test_demographic_bands_use_each_patients_mean_age():
  # Patient 0 visits at 38 and 44 (mean 41): band [40, 60); patient 3 has no age.
  metadata = {'patient_id': np.array([0, 0, 1, 2, 3, 4]),
              'age': np.array([38.0, 44.0, 25.0, 75.0, np.nan, 60.0])}
  clients = partition.partition(metadata, 'demographic', 3, np.random.default_rng(0),
                                bands=(40, 60))
  patients = _patients_of(metadata, clients)
  assert patients[0] - {3} == {1} and patients[1] - {3} == {0} and patients[2] - {3} == {2, 4}
  assert sum(3 in p for p in patients) == 1


def test_demographic_without_bands_cuts_equal_counts_in_age_order():
  ages = np.random.default_rng(0).uniform(20, 90, 30)
  metadata = {'patient_id': np.arange(30), 'age': ages}
  clients = partition.partition(metadata, 'demographic', 3, np.random.default_rng(1))
  assert [len(c) for c in clients] == [10, 10, 10]
  assert ages[clients[0]].max() < ages[clients[1]].min() < ages[clients[1]].max()
  assert ages[clients[1]].max() < ages[clients[2]].min()


def test_demographic_bands_must_fit_the_client_count():
  metadata = {'patient_id': np.arange(4), 'age': np.arange(4.0)}
  with pytest.raises(ValueError, match='data.partition.bands'):
    partition.partition(metadata, 'demographic', 3, np.random.default_rng(0), bands=(1,))


def test_dirichlet_with_huge_alpha_gives_each_client_an_equal_share_of_each_label():
  metadata = {'patient_id': np.arange(600), 'abnormal': np.repeat([0, 1], 300)}
  clients = partition.partition(metadata, 'dirichlet', 3, np.random.default_rng(0), alpha=1e9)
  for rows in clients:
    assert np.bincount(metadata['abnormal'][rows]).tolist() == [100, 100]


def test_dirichlet_with_tiny_alpha_leaves_clients_empty_and_says_so():
  metadata = {'patient_id': np.arange(100), 'abnormal': np.repeat([0, 1], 50)}
  with pytest.raises(ValueError, match='gets no patients.*data.partition.alpha'):
    partition.partition(metadata, 'dirichlet', 5, np.random.default_rng(0), alpha=1e-4)


def test_dirichlet_labels_a_patient_by_its_most_frequent_row_label():
  # Patient 0 is abnormal on 2 of 3 visits: all its rows follow label 1.
  metadata = {'patient_id': np.array([0, 0, 0, 1, 2]), 'abnormal': np.array([1, 1, 0, 0, 1])}
  clients = partition.partition(metadata, 'dirichlet', 1, np.random.default_rng(0), alpha=1.0)
  _assert_patient_level_cover(metadata, clients)


def test_quantity_skew_follows_the_dirichlet_shares():
  metadata = {'patient_id': np.arange(1000)}
  even = partition.partition(metadata, 'quantity', 4, np.random.default_rng(0), alpha=1e9)
  assert [len(c) for c in even] == [250, 250, 250, 250]
  skewed = partition.partition(metadata, 'quantity', 4, np.random.default_rng(2), alpha=0.5)
  expected = np.random.default_rng(2).dirichlet(np.full(4, 0.5))  # [.047 .674 .255 .024]
  np.testing.assert_allclose([len(c) / 1000 for c in skewed], expected, atol=1e-3)


def test_column_split_gives_one_client_per_value_by_majority_of_rows():
  metadata = {'patient_id': np.array([0, 0, 0, 1, 2, 3]),
              'site': np.array(['b', 'b', 'a', 'a', 'c', 'b'])}
  clients = partition.partition(metadata, 'column', 3, np.random.default_rng(0), column='site')
  assert _patients_of(metadata, clients) == [{1}, {0, 3}, {2}]
  with pytest.raises(ValueError, match='num_clients to 3'):
    partition.partition(metadata, 'column', 2, np.random.default_rng(0), column='site')
  with pytest.raises(ValueError, match='data.partition.column'):
    partition.partition(metadata, 'column', 3, np.random.default_rng(0))


def test_more_clients_than_patients_is_a_clear_error():
  with pytest.raises(ValueError, match='client 2 of 3 gets no patients'):
    partition.partition(_three_rows_per_patient(2), 'iid', 3, np.random.default_rng(0))


def test_unknown_method_option_or_column_is_named():
  metadata = _three_rows_per_patient(4)
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="'zipf' is not one of"):
    partition.partition(metadata, 'zipf', 2, rng)
  with pytest.raises(ValueError, match=r"unknown options \['alpha'\]"):
    partition.partition(metadata, 'iid', 2, rng, alpha=1.0)
  with pytest.raises(ValueError, match="no column 'age'"):
    partition.partition(metadata, 'demographic', 2, rng)


def _pool(images, abnormal):
  n = len(abnormal)
  conditions = np.stack([np.asarray(abnormal, np.float32), np.ones(n, np.float32)], axis=1)
  return dataset_lib.ClientData(
      name='train', images=images, conditions=conditions, abnormal=np.asarray(abnormal, bool),
      patient_ids=np.arange(n) // 2,
      records={'age': np.linspace(20, 80, n), 'sex': np.arange(n) % 2})


def _partition_config(**overrides):
  config = ml_collections.ConfigDict(dict(method='iid', num_clients=2, alpha=0.5,
                                          label='abnormal', column='', bands=()))
  config.update(overrides)
  return config


def test_federate_keeps_memmapped_images_on_disk_and_draws_normal_profiles(tmp_path):
  images = np.lib.format.open_memmap(tmp_path / 'x.npy', 'w+', np.uint8, (8, 4, 4, 1))
  images[:] = np.arange(8, dtype=np.uint8)[:, None, None, None]
  abnormal = [0, 0, 1, 1, 0, 0, 1, 1]
  pool = _pool(images, abnormal)
  schema = conditions_lib.ConditionSchema.from_config(
      [dict(name='findings', kind='multi_hot', categories=('x',))])
  on_disk, in_memory = (partition.federate(pool, pool.subset(np.arange(2)), schema,
                                            _partition_config(), np.random.default_rng(0),
                                            in_memory=flag) for flag in (False, True))
  for client, loaded in zip(on_disk.clients, in_memory.clients):
    assert isinstance(client.images, image_io.RowView) and type(loaded.images) is np.ndarray
    np.testing.assert_array_equal(np.asarray(client.images)[:, 0, 0, 0],
                                  np.flatnonzero(np.isin(pool.patient_ids, client.patient_ids)))
    np.testing.assert_array_equal(loaded.images, np.asarray(client.images))
  federation = on_disk
  np.testing.assert_array_equal(federation.normal_profiles(np.random.default_rng(0), 5),
                                [[0.0, 1.0]] * 5)
  assert federation.info['partition']['client_sizes'] == [4, 4]


def test_write_clients_json_prints_and_saves_one_row_per_hospital(tmp_path, capsys):
  pool = _pool(np.zeros((8, 4, 4, 1), np.uint8), [0, 0, 1, 1, 1, 1, 0, 0])
  schema = conditions_lib.ConditionSchema.from_config(
      [dict(name='findings', kind='multi_hot', categories=('x',))])
  federation = partition.federate(pool, pool.subset(np.arange(2)), schema,
                                  _partition_config(method='demographic', column='age'),
                                  np.random.default_rng(0))
  rows = partition.write_clients_json(tmp_path / 'clients.json', federation)
  assert json.loads((tmp_path / 'clients.json').read_text()) == rows
  # Ages 20..80 in 8 steps; the younger half (patients 0, 1) is hospital_0.
  assert [r['name'] for r in rows] == ['hospital_0', 'hospital_1']
  assert [r['examples'] for r in rows] == [4, 4] and [r['patients'] for r in rows] == [2, 2]
  assert rows[0]['mean_age'] == pytest.approx(np.linspace(20, 80, 8)[:4].mean())
  assert rows[0]['abnormal_ratio'] == 0.5 and rows[0]['male_ratio'] == 0.5
  assert 'hospital_1' in capsys.readouterr().out
