"""Tests for fedgan_jax.privacy.accounting against published numbers and closed forms."""

import math

import dp_accounting
import ml_collections
import numpy as np
import pytest
from scipy import stats

from fedgan_jax.privacy import accounting
from fedgan_jax.privacy import client_dp


@pytest.mark.parametrize('dataset_size, batch_size, noise_multiplier, epochs, delta, expected', [
    # tensorflow_privacy's compute_dp_sgd_privacy_lib_test (RDP): MNIST-sized DP-SGD runs.
    (60000, 150, 1.3, 15, 1e-5, 0.7242234026109595),
    (100000, 100, 1.0, 30, 1e-7, 1.4154988495444845),
])
def test_rdp_epsilon_matches_published_dp_sgd_numbers(dataset_size, batch_size, noise_multiplier,
                                                      epochs, delta, expected):
  steps = epochs * dataset_size // batch_size
  event = accounting.example_level_event(noise_multiplier, batch_size, dataset_size, steps)
  assert accounting.epsilon(event, delta, 'rdp') == pytest.approx(expected, rel=1e-6)


def test_pld_epsilon_matches_privacy_loss_distribution_built_directly():
  # An independent route inside dp_accounting: compose the PLD of one sampled step by hand.
  noise_multiplier, q, steps, delta = 1.3, 150 / 60000, 600, 1e-5
  event = accounting.example_level_event(noise_multiplier, 150, 60000, steps)
  direct = dp_accounting.pld.privacy_loss_distribution.from_gaussian_mechanism(
      noise_multiplier, sampling_prob=q).self_compose(steps).get_epsilon_for_delta(delta)
  assert accounting.epsilon(event, delta, 'pld') == pytest.approx(direct, rel=1e-3)
  # PLD accounting is tight; RDP is an upper bound on the same mechanism.
  assert accounting.epsilon(event, delta, 'pld') < accounting.epsilon(event, delta, 'rdp')


def gaussian_delta(epsilon, sigma):
  """Exact delta of the Gaussian mechanism with sensitivity 1 (Balle and Wang 2018, Thm. 8)."""
  return (stats.norm.cdf(1 / (2 * sigma) - epsilon * sigma)
          - math.exp(epsilon) * stats.norm.cdf(-1 / (2 * sigma) - epsilon * sigma))


def test_one_full_batch_step_is_the_gaussian_mechanism():
  sigma, delta = 2.0, 1e-5
  event = accounting.client_level_event(sigma, clients_per_round=10, num_clients=10, rounds=1)
  pld_epsilon = accounting.epsilon(event, delta, 'pld')
  assert gaussian_delta(pld_epsilon, sigma) == pytest.approx(delta, rel=0.02)
  assert accounting.epsilon(event, delta, 'rdp') >= pld_epsilon


def test_degenerate_events():
  assert accounting.epsilon(accounting.example_level_event(1.0, 10, 100, 0), 1e-5) == 0.0
  assert accounting.epsilon(accounting.example_level_event(0.0, 10, 100, 5), 1e-5) == math.inf
  # A hospital smaller than a batch is sampled with q = 1, no error.
  small = accounting.example_level_event(2.0, 64, 50, 1)
  full = accounting.client_level_event(2.0, 5, 5, 1)
  assert accounting.epsilon(small, 1e-5) == pytest.approx(accounting.epsilon(full, 1e-5))
  with pytest.raises(ValueError, match='dp.accountant'):
    accounting.epsilon(full, 1e-5, 'moments')
  with pytest.raises(ValueError, match='fl.clients_per_round'):
    accounting.client_level_event(1.0, 11, 10, 1)


@pytest.mark.parametrize('accountant', ('rdp', 'pld'))
def test_calibration_hits_target_epsilon_from_below(accountant):
  # Large noise keeps PLD fast: its cost grows as the noise multiplier shrinks.
  target, delta = 1.0, 1e-5

  def make_event(noise_multiplier):
    return accounting.client_level_event(noise_multiplier, 10, 100, 100)

  noise_multiplier = accounting.calibrate_noise_multiplier(target, delta, make_event, accountant)
  reached = accounting.epsilon(make_event(noise_multiplier), delta, accountant)
  assert target * 0.99 < reached <= target
  less_noise = noise_multiplier * (1 - 2e-4)
  assert accounting.epsilon(make_event(less_noise), delta, accountant) > target


def test_default_delta_is_a_power_of_ten_at_least_ten_times_below_one_over_n():
  assert accounting.default_delta(60000) == 1e-6
  assert accounting.default_delta(1000) == 1e-4
  assert accounting.default_delta(999) == 1e-4
  assert accounting.default_delta(1) == 0.1
  for n in (1, 7, 10, 11, 99, 100, 101, 12345):
    assert accounting.default_delta(n) <= 0.1 / n < 10 * accounting.default_delta(n)


def make_configs(mode, **dp_overrides):
  dp = ml_collections.ConfigDict(dict(mode=mode, noise_multiplier=1.1, clip_norm=1.0,
                                      delta=1e-5, target_epsilon=None, accountant='rdp'))
  dp.update(dp_overrides)
  fl = ml_collections.ConfigDict(dict(num_rounds=20, local_steps=5, batch_size=16,
                                      clients_per_round=4, num_clients=8))
  return dp, fl


def test_example_mode_reports_the_smallest_hospital_as_if_it_took_part_every_round():
  dp, fl = make_configs('example')
  sizes = [1000, 200, 5000]
  per_hospital = accounting.hospital_epsilons(dp, fl, sizes)
  by_hand = [accounting.epsilon(accounting.example_level_event(1.1, 16, n, 20 * 5), 1e-5)
             for n in sizes]
  np.testing.assert_allclose(per_hospital, by_hand)
  assert per_hospital[1] == max(per_hospital) > per_hospital[0] > per_hospital[2]
  assert accounting.epsilon_after_rounds(dp, fl, sizes, 20) == pytest.approx(max(by_hand))


def test_epsilon_after_rounds_grows_from_zero():
  dp, fl = make_configs('client')
  epsilons = [accounting.epsilon_after_rounds(dp, fl, [10] * 8, r) for r in (0, 1, 10, 20)]
  assert epsilons[0] == 0.0
  assert epsilons[1] < epsilons[2] < epsilons[3]
  by_hand = accounting.epsilon(accounting.client_level_event(1.1, 4, 8, 20), 1e-5)
  assert epsilons[3] == pytest.approx(by_hand)
  dp_none, _ = make_configs('none')
  assert accounting.epsilon_after_rounds(dp_none, fl, [10] * 8, 5) == math.inf


def test_target_epsilon_in_config_calibrates_the_query_and_the_event_alike():
  dp, fl = make_configs('example', target_epsilon=3.0, delta=None)
  sizes = [500, 800]
  delta = accounting.delta_from_config(dp, fl, sizes)
  assert delta == accounting.default_delta(1300)
  query = accounting.query_from_config(dp, fl, sizes)
  event = accounting.example_level_event(query.noise_multiplier, 16, 500, 100)
  assert 2.97 < accounting.epsilon(event, delta) <= 3.0
  assert accounting.epsilon_after_rounds(dp, fl, sizes, 20) <= 3.0


def test_adaptive_clipping_shares_the_accounted_noise_with_the_count():
  dp, fl = make_configs('client')
  dp.adaptive_clip = ml_collections.ConfigDict(dict(target_quantile=0.5, learning_rate=0.2,
                                                    count_noise_multiplier=5.0))
  query = accounting.query_from_config(dp, fl, [10] * 8)
  assert query.noise_multiplier == pytest.approx(client_dp.split_noise_multiplier(1.1, 5.0))
  assert query.noise_multiplier > 1.1
  assert accounting.summary(dp, fl, [10] * 8)['noise_multiplier'] == 1.1


def test_config_errors_name_the_field():
  dp, fl = make_configs('sample')
  with pytest.raises(ValueError, match='config.dp.mode'):
    accounting.epsilon_after_rounds(dp, fl, [10], 1)
  dp, fl = make_configs('client')
  del fl['num_clients']
  with pytest.raises(ValueError, match='config.fl.num_clients'):
    accounting.epsilon_after_rounds(dp, fl, [10], 1)
