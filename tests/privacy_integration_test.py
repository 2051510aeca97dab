"""DP wired into the engine: DP-SGD rounds, budget stop, DP-FedAvg rounds, G's data flow.

Client-level rounds run on a stand-in local update (a client adds its data to the params),
so both execution strategies are checked against hand-computed numbers in milliseconds;
example-level DP runs the real runlocal GAN.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import initial_params
from configs import phantom_dp
from fedgan_jax import checkpointing
from fedgan_jax.evaluation import driver as evaluation
from fedgan_jax import train
from fedgan_jax.data import registry
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import rngs
from fedgan_jax.federated import sampling
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import membership as audit_lib
from fedgan_jax.privacy import client_dp
from fedgan_jax.privacy import dp_sgd
from fedgan_jax.privacy import engine


@pytest.fixture(scope='module')
def dp_config():
  config = phantom_dp.get_config('runlocal')
  config.runtime.strategy = 'sequential'
  config.train.sample_every_rounds = 1000  # No sample grids: not what is tested here.
  # Fewer layers than runlocal: compiling the per-example step is most of these tests' time.
  config.model.generator.update(encoder_channels=(8,), decoder_channels=(4,), embedding_dim=8,
                                z_dim=4)
  config.model.discriminator.channels = (4,)
  return config


@pytest.fixture(scope='module')
def dp_federation(dp_config):
  return audit_lib.hold_out(registry.load_federation(dp_config), dp_config)


def test_example_dp_run_logs_epsilon_and_stops_cleanly_at_the_budget(dp_config, dp_federation,
                                                                      tmp_path):
  config = dp_config.copy_and_resolve_references()
  config.fl.num_rounds = 5
  # One compiled DP-SGD step, run K times, instead of K unrolled in one program: half the
  # compile, and the same steps, accounting and diagnostics.
  config.runtime.fuse_local_steps = False
  config.dp.target_epsilon = None
  config.dp.noise_multiplier = 1.0
  probe = engine.PrivacyPlan.from_config(config, dp_federation.client_sizes)
  # A budget between the spend of 2 and 3 rounds: round 3 must not run.
  config.dp.max_epsilon = (probe.epsilon(2) + probe.epsilon(3)) / 2
  plan = engine.PrivacyPlan.from_config(config, dp_federation.client_sizes)
  task = task_lib.build_task(config, dp_federation.schema, dp_federation.image_shape,
                             **plan.task_gradients())
  state = train.train_gan(config, str(tmp_path), dp_federation, task, plan)

  assert int(state.round) == 2
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['round'] for r in rows] == [1, 2]
  assert [r['epsilon'] for r in rows] == pytest.approx([probe.epsilon(1), probe.epsilon(2)])
  assert 0 < rows[0]['epsilon'] < rows[1]['epsilon'] < config.dp.max_epsilon
  # DP-SGD's own diagnostics reach the log; a batch is 8 examples (runlocal).
  assert rows[0]['valid_examples'] == 8 and 0 <= rows[0]['clipped_fraction'] <= 1
  manager = checkpointing.manager(str(tmp_path), 3)
  assert manager.latest_step() == 2
  meta = checkpointing.restore_meta(manager, 2)
  manager.close()
  privacy = meta['privacy']
  assert privacy['mode'] == 'example' and privacy['rounds'] == 2
  assert privacy['epsilon'] == pytest.approx(probe.epsilon(2))
  assert privacy['delta'] == 1e-5 and privacy['noise_multiplier'] == 1.0
  assert privacy['protects'].startswith('one training image') and 'not covered' in (
      privacy['protects'])
  assert evaluation.privacy_report(meta)['epsilon'] == privacy['epsilon']


def private_task(config, federation):
  """The task of `config` with its plan's DP-SGD gradients, as `train` builds it."""
  plan = engine.PrivacyPlan.from_config(config, federation.client_sizes)
  return task_lib.build_task(config, federation.schema, federation.image_shape,
                             **plan.task_gradients())


def test_example_dp_requires_minibatch_std_off(dp_config, dp_federation):
  config = dp_config.copy_and_resolve_references()
  config.model.discriminator.minibatch_std_group = 4
  with pytest.raises(ValueError, match='minibatch_std_group=0'):
    private_task(config, dp_federation)


def test_example_dp_refuses_a_task_without_dp_sgd_and_a_run_without_sizes(dp_config,
                                                                           dp_federation):
  plan = engine.PrivacyPlan.from_config(dp_config, dp_federation.client_sizes)
  plain = task_lib.build_task(dp_config, dp_federation.schema, dp_federation.image_shape)
  with pytest.raises(ValueError, match='task_gradients'):
    plan.check_task(plain)
  plan.check_task(private_task(dp_config, dp_federation))
  # A deployment knows no hospital sizes: example-level DP cannot be accounted there.
  with pytest.raises(ValueError, match='"none" or "client" only'):
    engine.PrivacyPlan.from_config(dp_config, (), num_clients=3)


def test_generator_update_depends_on_conditions_and_noise_not_images(dp_config, dp_federation):
  config = dp_config.copy_and_resolve_references()
  # D frozen (lr 0), so G's step sees identical D params whatever the images were.
  config.fl.client_optimizer.d_learning_rate = 0.0
  task = private_task(config, dp_federation)
  params = initial_params(task, dp_federation)
  batches = sampling.client_batches(dp_federation.clients[0], 0, 0, 0, 1, 8)
  batch = jax.tree.map(lambda x: x[0], batches)
  other = dict(batch, image=np.asarray(dp_federation.clients[1].images[:8]))
  step = jax.jit(lambda b: client_lib.client_step(task, client_lib.client_init(task, params), b,
                                               jax.random.key(1)))
  state_a, metrics_a = step(batch)
  state_b, metrics_b = step(other)
  # D did see the images (its loss differs), G's new params did not.
  assert abs(float(metrics_a['d_real']) - float(metrics_b['d_real'])) > 1e-4
  for a, b in zip(jax.tree.leaves(state_a.params['generator']),
                  jax.tree.leaves(state_b.params['generator'])):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state_a.params['generator']), jax.tree.leaves(params['generator'])))


def _public_prior_config(dp_config, **dp_overrides):
  config = dp_config.copy_and_resolve_references()
  config.fl.fake_conditions = 'public_prior'
  config.dp.update(target_epsilon=None, **dp_overrides)
  return config


def _public_prior_batch(federation, client_index=0, batch_size=8):
  batches = sampling.client_batches(federation.clients[client_index], 0, 0, client_index, 1,
                                    batch_size, federation.condition_prior)
  return jax.tree.map(lambda x: x[0], batches)


def test_public_fakes_bound_one_records_influence_on_d_by_the_clip(dp_config, dp_federation):
  # Noise off and a tiny clip: if anything unclipped (G's images, D's fake term) read the real
  # records, replacing one record would move D's gradient by far more than 2 C / B.
  clip = 1e-4
  config = _public_prior_config(dp_config, clip_norm=clip, noise_multiplier=0.0)
  task = private_task(config, dp_federation)
  assert task.public_fake_conditions and task.fake_term_gradient is None
  params = initial_params(task, dp_federation)
  batch = _public_prior_batch(dp_federation)
  other = _public_prior_batch(dp_federation, client_index=1)
  neighbour = dict(batch)
  for key in ('image', 'condition'):  # Example 0's whole record replaced by another patient's.
    neighbour[key] = np.concatenate([other[key][:1], batch[key][1:]])
  fake = jax.jit(lambda c: client_lib.generate(task, params['generator'], c, jax.random.key(2)))(
      batch[client_lib.FAKE_CONDITION_KEY])

  @jax.jit
  def d_gradient(b):
    return client_lib.private_split_discriminator_gradient(
        task, params['discriminator'], b, fake, b[client_lib.FAKE_CONDITION_KEY],
        jax.random.key(3))

  grads_a, metrics = d_gradient(batch)
  grads_b, _ = d_gradient(neighbour)
  assert float(metrics['clipped_fraction']) == 1.0  # Every real example is clipped.
  assert float(metrics['d_gan_loss']) == pytest.approx(
      float(metrics['d_real_gan_loss']) + float(metrics['d_fake_gan_loss']), rel=1e-6)
  difference = dp_sgd.global_norm(jax.tree.map(jnp.subtract, grads_a, grads_b))
  assert 0 < float(difference) <= 2 * clip / 8 * (1 + 1e-4)
  # The fake term is there, unclipped: D's gradient is far larger than the clipped real sum.
  assert float(dp_sgd.global_norm(grads_a)) > 100 * clip


def test_public_fakes_keep_every_record_out_of_gs_update(dp_config, dp_federation):
  # Without DP (cheaper to compile): where G's conditions come from does not depend on DP.
  config = dp_config.copy_and_resolve_references()
  config.dp.mode = 'none'
  config.fl.client_optimizer.d_learning_rate = 0.0  # D frozen: G's step sees the same D.
  params = None
  new_generators = {}
  for fake_conditions in ('public_prior', 'batch'):
    config.fl.fake_conditions = fake_conditions
    task = task_lib.build_task(config, dp_federation.schema, dp_federation.image_shape)
    if params is None:
      params = initial_params(task, dp_federation)
    batch = _public_prior_batch(dp_federation)
    other = _public_prior_batch(dp_federation, client_index=1)
    records_swapped = dict(batch, image=other['image'], condition=other['condition'])
    step = jax.jit(lambda b, t=task: client_lib.client_step(
        t, client_lib.client_init(t, params), b, jax.random.key(1)))
    new_generators[fake_conditions] = [step(b)[0].params['generator']
                                       for b in (batch, records_swapped)]
  a, b = new_generators['public_prior']
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # With the batch's own conditions the same swap does reach G.
  a, b = new_generators['batch']
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_clipped_fake_term_bounds_each_fake_examples_gradient(dp_config, dp_federation):
  clip = 0.01
  config = _public_prior_config(dp_config, clip_norm=clip, noise_multiplier=0.0,
                                clip_fake_term=True)
  task = private_task(config, dp_federation)
  params = initial_params(task, dp_federation)
  batch = _public_prior_batch(dp_federation)
  fake_batch = {'fake': jax.jit(lambda c: client_lib.generate(task, params['generator'], c,
                                                           jax.random.key(2)))(
                    batch[client_lib.FAKE_CONDITION_KEY]),
                client_lib.FAKE_CONDITION_KEY: batch[client_lib.FAKE_CONDITION_KEY]}
  fake_loss = lambda p, b, r: client_lib.discriminator_fake_loss(task, p, b, r)
  grads, metrics = jax.jit(lambda b: task.fake_term_gradient(
      fake_loss, params['discriminator'], b, jax.random.key(3)))(fake_batch)
  assert float(metrics['clipped_fraction']) == 1.0
  # The mean of 8 gradients each clipped to C, with no noise: norm <= C.
  assert 0 < float(dp_sgd.global_norm(grads)) <= clip * (1 + 1e-5)


def test_public_fake_settings_name_what_to_fix(dp_config, dp_federation):
  typo = dp_config.copy_and_resolve_references()
  typo.fl.fake_conditions = 'prior'
  with pytest.raises(ValueError, match="fl.fake_conditions must be one of"):
    private_task(typo, dp_federation)
  clip_without_prior = dp_config.copy_and_resolve_references()
  clip_without_prior.dp.clip_fake_term = True
  with pytest.raises(ValueError, match='fl.fake_conditions="public_prior"'):
    private_task(clip_without_prior, dp_federation)
  config = _public_prior_config(dp_config)
  task = private_task(config, dp_federation)
  without_prior = dataclasses.replace(dp_federation, condition_prior=None)
  with pytest.raises(ValueError, match='has no public condition prior'):
    task_lib.training_condition_prior(task, without_prior, config)
  assert task_lib.training_condition_prior(task, dp_federation, config) is (
      dp_federation.condition_prior)
  assert engine.PrivacyPlan.from_config(config, dp_federation.client_sizes).protects.startswith(
      'one training record: its image and its condition vector')


# ------------------------------------------------ client level, on a stand-in local update


class StandInTask:
  """Client k's local update adds the sum of its batches' `x` to the params."""

  def client_init(self, server_params):
    return server_params

  def client_step(self, state, batch, rng):
    del rng
    return {'w': state['w'] + batch['x']}, {'loss': jnp.sum(batch['x'])}

  def client_final(self, state, server_params):
    return jax.tree.map(jnp.subtract, state, server_params)


def _stand_in_round(strategy, aggregator, state, round_rng=None):
  # Slot 0: norm 4 (clipped to 1); slot 1: norm 0.5 (kept); slot 2: padding (weight 0).
  x = np.zeros((3, 2, 3), np.float32)
  x[0, :, 0] = 2.0
  x[1, 0, 1] = 0.5
  x[2, :, :] = 100.0
  batches = {'x': x}
  weights = np.array([10.0, 1.0, 0.0], np.float32)
  round_fn = algorithm.make_round_fn(StandInTask(), optax.sgd(1.0), strategy,
                                     algorithm.client_mesh(jax.devices()[:1]), aggregator)
  return round_fn(state, batches, weights, np.array([0, 1, 0], np.int32),
                  jax.random.key(0) if round_rng is None else round_rng)


@pytest.mark.parametrize('strategy', ['vmap', 'sequential', 'threads'])
def test_client_dp_clips_each_client_and_divides_by_expected_clients(strategy):
  privacy = client_dp.DpFedAvg(clip_norm=1.0, noise_multiplier=0.0, expected_clients=3)
  state = algorithm.server_init({'w': jnp.zeros(3)}, optax.sgd(1.0), privacy)
  state, metrics = _stand_in_round(strategy, privacy, state)
  # Uniform weights (not 10:1), padding dropped, / 3 expected clients: ([1,0,0] + [0,.5,0]) / 3.
  np.testing.assert_allclose(state.params['w'], [1 / 3, 0.5 / 3, 0.0], rtol=1e-6)
  # Per-client step means (2 and 0.25), averaged uniformly over the two real clients.
  assert float(metrics['loss']) == pytest.approx((2.0 + 0.25) / 2)


def test_client_dp_strategies_draw_the_same_noise_and_adapt_the_same_clip():
  privacy = client_dp.DpFedAvg(clip_norm=1.0, noise_multiplier=0.7, expected_clients=3,
                               adaptive=True, target_quantile=0.8, learning_rate=0.2,
                               count_noise_multiplier=0.0)
  results = {}
  for strategy in ('vmap', 'sequential', 'threads'):
    state = algorithm.server_init({'w': jnp.zeros(3)}, optax.sgd(1.0), privacy)
    results[strategy], _ = _stand_in_round(strategy, privacy, state)
  np.testing.assert_allclose(results['vmap'].params['w'], results['sequential'].params['w'],
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(results['threads'].params['w'], results['sequential'].params['w'])
  noise = np.asarray(results['vmap'].params['w']) - np.array([1 / 3, 0.5 / 3, 0.0])
  assert np.all(np.abs(noise) > 1e-4)  # Noise was added ...
  # ... with the key rngs.server_noise_keys(round_rng): std 0.7 * 1 on the sum, / 3.
  update_rng, _ = rngs.server_noise_keys(jax.random.key(0))
  expected = client_dp.noisy_sum({'w': jnp.zeros(3)}, update_rng, 1.0, 0.7)['w'] / 3
  np.testing.assert_allclose(noise, expected, rtol=1e-5, atol=1e-6)
  # Norms 4 > C and 0.5 <= C: b = ((0 - .5) + (1 - .5)) / 3 + .5 = .5; C = exp(-.2 (.5 - .8)).
  for state in results.values():
    assert float(state.privacy.clip_norm) == pytest.approx(np.exp(0.06), rel=1e-6)


def test_adaptive_clip_norm_is_checkpointed_and_restored(tmp_path):
  privacy = client_dp.DpFedAvg(clip_norm=1.0, noise_multiplier=0.0, expected_clients=3,
                               adaptive=True)
  state = algorithm.server_init({'w': jnp.zeros(3)}, optax.sgd(1.0), privacy)
  state = state.replace(privacy=client_dp.AdaptiveClipState.create(0.25))
  config = phantom_dp.get_config('runlocal')
  manager = checkpointing.manager(str(tmp_path), 2)
  checkpointing.save(manager, 1, state, config, {'privacy': {'mode': 'client'}})
  manager.wait_until_finished()
  template = algorithm.server_init({'w': jnp.zeros(3)}, optax.sgd(1.0), privacy)
  restored, meta = checkpointing.restore_server_state(manager, 1, template, config)
  manager.close()
  assert float(restored.privacy.clip_norm) == 0.25 and meta['privacy']['mode'] == 'client'


def test_client_plan_uses_expected_clients_and_split_noise():
  config = phantom_dp.get_config('runlocal,client,adaptive')
  config.dp.target_epsilon = None
  config.dp.noise_multiplier = 2.0
  plan = engine.PrivacyPlan.from_config(config, [80, 48, 64])
  privacy = plan.aggregator()
  assert privacy.expected_clients == 3 and privacy.adaptive
  # 1/z_total^2 = 1/z_update^2 + 1/z_count^2 with z_total 2, z_count 10.
  assert privacy.noise_multiplier == pytest.approx((2.0 ** -2 - 10.0 ** -2) ** -0.5)
  assert plan.task_gradients() == {'discriminator_gradient': None, 'fake_term_gradient': None}
  assert plan.summary(1)['protects'] == "one hospital's whole data (client-level)"
  config.dp.adaptive_clip.count_noise_multiplier = None
  with pytest.raises(ValueError, match='count_noise_multiplier'):
    engine.PrivacyPlan.from_config(config, [80, 48, 64])
