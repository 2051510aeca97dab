"""Tests for fedgan_jax.privacy.client_dp: clipping, the DP-FedAvg aggregator, adaptive clipping
by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedgan_jax.privacy import client_dp


@pytest.mark.parametrize('clip_norm', (0.0, 1.0, 2.0, math.inf))
def test_clip_update_bounds_norm_and_keeps_direction(clip_norm):
  update = {'w': jnp.array([3.0, 0.0]), 'b': jnp.array([0.0, 4.0])}  # Global norm 5.
  clipped, norm = client_dp.clip_update(update, clip_norm)
  assert float(norm) == pytest.approx(5.0)
  scale = min(1.0, clip_norm / 5.0)
  np.testing.assert_allclose(clipped['w'], [3.0 * scale, 0.0], rtol=1e-6)
  np.testing.assert_allclose(clipped['b'], [0.0, 4.0 * scale], rtol=1e-6)


def private_mean(updates, mask, rng, **settings):
  """`DpFedAvg`'s mean delta of one round over a leading client axis (no adaptive clip)."""
  aggregator = client_dp.DpFedAvg(**settings)
  template = jax.tree.map(lambda u: u[0], updates)
  agg = aggregator.init(template, {}, None)
  agg = aggregator.accumulate_clients(agg, updates, {}, jnp.asarray(mask, jnp.float32))
  return aggregator.finish(agg, None, rng)[0]


def test_dp_fedavg_without_noise_is_clipped_sum_over_expected_clients():
  updates = {'u': jnp.array([[3.0, 4.0],      # norm 5 -> clipped to norm 2: (1.2, 1.6)
                             [0.6, 0.8],      # norm 1 -> unchanged
                             [jnp.nan, 1.0]])}  # padded slot: must vanish, nan included
  mean = private_mean(updates, [True, True, False], jax.random.key(0), clip_norm=2.0,
                      noise_multiplier=0.0, expected_clients=4)
  np.testing.assert_allclose(mean['u'], [(1.2 + 0.6) / 4, (1.6 + 0.8) / 4], rtol=1e-6)
  # Client by client (the sequential strategies and the Flower server): the same numbers.
  aggregator = client_dp.DpFedAvg(clip_norm=2.0, noise_multiplier=0.0, expected_clients=4)
  agg = aggregator.init({'u': jnp.zeros(2)}, {'loss': 0.0}, None)
  for update, loss, examples in [([3.0, 4.0], 1.0, 100.0), ([0.6, 0.8], 3.0, 1.0)]:
    agg = aggregator.accumulate(agg, {'u': jnp.array(update)}, {'loss': loss}, examples)
  one_by_one, privacy, metrics = aggregator.finish(agg, None, jax.random.key(0))
  np.testing.assert_allclose(one_by_one['u'], mean['u'], rtol=1e-6)
  # Uniform weights for the metrics too (example counts 100:1 do not count).
  assert privacy is None and float(metrics['loss']) == pytest.approx(2.0)


def test_dp_fedavg_rejects_settings_it_cannot_honour():
  with pytest.raises(ValueError, match='expected_clients'):
    client_dp.DpFedAvg(clip_norm=1.0, noise_multiplier=1.0, expected_clients=0)
  with pytest.raises(ValueError, match='dp.clip_norm is inf'):
    client_dp.DpFedAvg(clip_norm=math.inf, noise_multiplier=1.0, expected_clients=2)


def test_noisy_sum_std_is_noise_multiplier_times_clip_norm():
  zeros = {'a': jnp.zeros((64,)), 'b': jnp.zeros((8, 8))}
  draws = jax.vmap(lambda rng: client_dp.noisy_sum(zeros, rng, 0.5, 3.0))(
      jax.random.split(jax.random.PRNGKey(2), 2000))
  for leaf in jax.tree.leaves(draws):
    np.testing.assert_allclose(np.asarray(leaf).std(), 1.5, rtol=0.01)  # 128000 draws.


def test_dp_fedavg_noise_is_divided_by_expected_clients():
  zeros = {'a': jnp.zeros((3, 64))}
  draws = jax.vmap(lambda rng: private_mean(
      zeros, jnp.ones(3, bool), rng, clip_norm=0.5, noise_multiplier=3.0,
      expected_clients=10))(jax.random.split(jax.random.key(3), 2000))
  np.testing.assert_allclose(np.asarray(draws['a']).std(), 1.5 / 10, rtol=0.01)


def no_noise_step(clip_norm, norms, mask, expected_clients=None):
  state = client_dp.AdaptiveClipState.create(clip_norm)
  return client_dp.adaptive_clip_update(
      state, jnp.asarray(norms), jnp.asarray(mask), jax.random.PRNGKey(0), target_quantile=0.5,
      learning_rate=0.2, count_noise_multiplier=0.0, expected_clients=expected_clients)


def test_adaptive_clip_grows_when_too_many_updates_are_clipped():
  # 1 of 4 norms <= C=1: b = 0.25 < 0.5, so C <- exp(-0.2 * (0.25 - 0.5)) = exp(0.05).
  state, metrics = no_noise_step(1.0, [0.5, 2.0, 3.0, 4.0], [True] * 4)
  np.testing.assert_allclose(metrics['unclipped_fraction'], 0.25, rtol=1e-6)
  np.testing.assert_allclose(state.clip_norm, math.exp(0.05), rtol=1e-6)


def test_adaptive_clip_shrinks_when_too_few_updates_are_clipped():
  # 3 of 4 norms <= C=1: b = 0.75, so C <- exp(-0.2 * 0.25) = exp(-0.05).
  state, _ = no_noise_step(1.0, [0.1, 0.2, 0.3, 4.0], [True] * 4)
  np.testing.assert_allclose(state.clip_norm, math.exp(-0.05), rtol=1e-6)


def test_adaptive_clip_counts_centered_indicators_of_reporting_clients_only():
  # Reporting: norms 0.5 (+1/2), 2 (-1/2), 3 (-1/2); centered sum -1/2 over m=3 clients:
  # b = -1/6 + 1/2 = 1/3, so C <- exp(-0.2 * (1/3 - 1/2)) = exp(1/30).
  state, metrics = no_noise_step(1.0, [0.5, 2.0, 3.0, 0.1], [True, True, True, False],
                                 expected_clients=3)
  np.testing.assert_allclose(metrics['unclipped_fraction'], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(state.clip_norm, math.exp(1 / 30), rtol=1e-6)


def test_adaptive_clip_converges_to_the_target_quantile():
  norms = jnp.arange(1.0, 11.0)  # Median between 5 and 6.
  mask = jnp.ones(10, bool)

  @jax.jit
  def run(state):
    def step(state, rng):
      state, _ = client_dp.adaptive_clip_update(state, norms, mask, rng, 0.5, 0.2, 0.0)
      return state, state.clip_norm
    return jax.lax.scan(step, state, jax.random.split(jax.random.PRNGKey(0), 200))

  state, trajectory = run(client_dp.AdaptiveClipState.create(0.5))
  assert 5.0 <= float(state.clip_norm) < 6.0
  assert float(trajectory[0]) > 0.5  # It started by growing toward the median.


def test_adaptive_clip_count_noise_std():
  state = client_dp.AdaptiveClipState.create(1.0)
  norms, mask = jnp.full((10,), 0.5), jnp.ones(10, bool)
  fractions = jax.vmap(lambda rng: client_dp.adaptive_clip_update(
      state, norms, mask, rng, 0.5, 0.2, count_noise_multiplier=2.0)[1]['unclipped_fraction'])(
          jax.random.split(jax.random.PRNGKey(5), 40000))
  # Std of the count noise is 2 * 1/2 = 1, divided by m = 10 clients.
  np.testing.assert_allclose(np.std(fractions), 0.1, rtol=0.02)
  np.testing.assert_allclose(np.mean(fractions), 1.0, atol=0.003)


def test_split_noise_multiplier_inverts_combination():
  # 1^-2 - 2^-2 = 3/4, so the update keeps (3/4)^-1/2 = 2/sqrt(3).
  update = client_dp.split_noise_multiplier(1.0, 2.0)
  assert update == pytest.approx(2 / math.sqrt(3))
  assert client_dp.combined_noise_multiplier(update, 2.0) == pytest.approx(1.0)
  with pytest.raises(ValueError, match='count_noise_multiplier'):
    client_dp.split_noise_multiplier(1.0, 0.9)


def test_dp_fedavg_jits_and_vmaps_over_groups():
  updates = {'u': jnp.arange(24.0).reshape(2, 3, 4)}  # 2 groups of 3 clients.
  masks = jnp.array([[True, True, True], [True, False, True]])
  means = jax.jit(jax.vmap(lambda u, m: private_mean(
      u, m, jax.random.key(0), clip_norm=math.inf, noise_multiplier=0.0,
      expected_clients=3)))(updates, masks)
  raw = np.arange(24.0).reshape(2, 3, 4)
  np.testing.assert_allclose(means['u'][0], raw[0].sum(0) / 3)
  np.testing.assert_allclose(means['u'][1], (raw[1, 0] + raw[1, 2]) / 3)
