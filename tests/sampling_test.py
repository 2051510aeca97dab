"""Client and batch sampling are pure functions of (seed, round, client)."""

import numpy as np
import pytest

from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.federated import sampling


def make_client(n, name='c', value=0):
  return dataset_lib.ClientData(
      name=name, images=np.full((n, 4, 4, 1), value, np.uint8),
      conditions=np.arange(n, dtype=np.float32)[:, None].repeat(2, 1), abnormal=np.zeros(n, bool),
      patient_ids=np.arange(n) + 1000 * value)


def test_client_sampling_is_reproducible_and_varies_by_round():
  a = sampling.sample_clients(7, 3, 100, 10)
  np.testing.assert_array_equal(a, sampling.sample_clients(7, 3, 100, 10))
  assert len(set(a)) == 10 and np.all(np.diff(a) > 0)
  assert not np.array_equal(a, sampling.sample_clients(7, 4, 100, 10))
  assert not np.array_equal(a, sampling.sample_clients(8, 3, 100, 10))


def test_all_clients_when_clients_per_round_is_zero_or_too_large():
  np.testing.assert_array_equal(sampling.sample_clients(0, 0, 5, 0), np.arange(5))
  np.testing.assert_array_equal(sampling.sample_clients(0, 0, 5, 9), np.arange(5))


def test_batches_without_replacement_and_with_it_for_tiny_clients():
  index = sampling.batch_indices(0, 1, 2, num_examples=20, local_steps=3, batch_size=8)
  assert index.shape == (3, 8)
  assert all(len(set(row)) == 8 for row in index)
  tiny = sampling.batch_indices(0, 1, 2, num_examples=3, local_steps=1, batch_size=8)
  assert set(tiny.ravel()) <= {0, 1, 2}


def test_round_inputs_pads_with_zero_weight_clients_and_keeps_unequal_sizes():
  clients = [make_client(10, 'a', 1), make_client(30, 'b', 2), make_client(5, 'c', 3)]
  batches, weights, ids = sampling.round_inputs(clients, np.array([0, 1, 2]), 0, 0, 2, 4,
                                                pad_to_multiple=4)
  assert batches['image'].shape == (4, 2, 4, 4, 4, 1)
  assert batches['condition'].shape == (4, 2, 4, 2)
  np.testing.assert_array_equal(weights, [10, 30, 5, 0])
  np.testing.assert_array_equal(ids, [0, 1, 2, 0])
  # Each client's batch comes from its own data only.
  for i, value in enumerate([1, 2, 3]):
    assert np.all(batches['image'][i] == value)


def test_client_batches_do_not_depend_on_which_other_clients_take_part():
  clients = [make_client(10, 'a', 1), make_client(30, 'b', 2)]
  alone, _, _ = sampling.round_inputs(clients, np.array([1]), 0, 4, 2, 4)
  together, _, _ = sampling.round_inputs(clients, np.array([0, 1]), 0, 4, 2, 4)
  np.testing.assert_array_equal(alone['condition'][0], together['condition'][1])


def test_public_prior_conditions_ride_beside_the_batch_without_moving_it():
  calls = []

  def prior(rng, n, client_index):
    calls.append(client_index)
    return np.full((n, 2), 100.0 + client_index) + rng.random((n, 1))

  clients = [make_client(10, 'a', 1), make_client(30, 'b', 2)]
  plain, _, _ = sampling.round_inputs(clients, np.array([0, 1]), 0, 4, 2, 4, pad_to_multiple=4)
  with_prior, _, _ = sampling.round_inputs(clients, np.array([0, 1]), 0, 4, 2, 4,
                                           pad_to_multiple=4, condition_prior=prior)
  for key in ('image', 'condition'):
    np.testing.assert_array_equal(plain[key], with_prior[key])
  fake = with_prior[sampling.FAKE_CONDITION_KEY]
  assert fake.shape == (4, 2, 4, 2) and fake.dtype == np.float32
  assert calls == [0, 1]  # Each hospital draws from its own prior; padding copies client 0.
  assert np.all(np.floor(fake[1]) == 101) and np.all(np.floor(fake[0]) == 100)
  np.testing.assert_array_equal(fake[3], fake[0])
  again = sampling.client_batches(clients[1], 0, 4, 1, 2, 4, prior)
  np.testing.assert_array_equal(again[sampling.FAKE_CONDITION_KEY], fake[1])
  next_round = sampling.client_batches(clients[1], 0, 5, 1, 2, 4, prior)
  assert not np.array_equal(next_round[sampling.FAKE_CONDITION_KEY], fake[1])


def test_public_prior_of_the_wrong_width_is_refused():
  prior = lambda rng, n, client_index: np.zeros((n, 3))
  with pytest.raises(ValueError, match=r'condition_prior gave shape \(4, 3\), expected \(4, 2\)'):
    sampling.client_batches(make_client(10), 0, 0, 0, 1, 4, prior)
