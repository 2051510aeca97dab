"""FedAvg aggregation, server optimizers and execution strategies.

Aggregation and server updates are checked against hand-computed numbers; a full
round against the same round assembled by hand from per-client local updates; the
`vmap` strategy on 1 device, on 4 forced CPU devices, and the `sequential` strategy
against each other (in a subprocess, since the device count is fixed at start-up).
"""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedgan_jax import cpu_backend
from fedgan_jax.federated import aggregation
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import execution
from fedgan_jax.federated import optimizers
from fedgan_jax.federated import sampling

from conftest import REPO_ROOT
from conftest import binary_env
from conftest import TINY_MODEL
from conftest import with_tiny_model


@pytest.fixture(scope='module')
def tiny_task_and_federation():
  """The runlocal federation with `TINY_MODEL`'s networks: these tests check how rounds are
  assembled, which does not depend on the width, and XLA's compile shrinks with the layers."""
  from configs import phantom  # pylint: disable=g-import-not-at-top
  from fedgan_jax.data import registry  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import task as task_lib  # pylint: disable=g-import-not-at-top
  config = with_tiny_model(phantom.get_config('runlocal'))
  federation = registry.load_federation(config)
  return task_lib.build_task(config, federation.schema, federation.image_shape), federation


def _fedavg_both_ways(deltas, weights):
  """FedAvg's mean over a client axis, and client by client; checks they agree."""
  fedavg = aggregation.FedAvg()
  template = jax.tree.map(lambda d: d[0], deltas)
  metrics = {'loss': jnp.arange(len(weights), dtype=jnp.float32)}
  stacked, _, stacked_metrics = fedavg.finish(
      fedavg.accumulate_clients(fedavg.init(template, {'loss': 0.0}), deltas, metrics, weights),
      None)
  agg = fedavg.init(template, {'loss': 0.0})
  for i in range(len(weights)):
    if weights[i] > 0:  # Per-client strategies skip padding.
      agg = fedavg.accumulate(agg, jax.tree.map(lambda d, i=i: d[i], deltas),
                              {'loss': metrics['loss'][i]}, weights[i])
  one_by_one, privacy, one_by_one_metrics = fedavg.finish(agg, None)
  assert privacy is None and fedavg.init_privacy() is None
  for a, b in zip(jax.tree.leaves((stacked, stacked_metrics)),
                  jax.tree.leaves((one_by_one, one_by_one_metrics))):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  return stacked, stacked_metrics


def test_fedavg_aggregate_weights_by_example_count():
  deltas = {'w': jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}
  average, metrics = _fedavg_both_ways(deltas, jnp.array([1.0, 1.0, 2.0]))
  # (1 + 3 + 2*5) / 4 = 3.5 and (2 + 4 + 2*6) / 4 = 4.5; metrics (0 + 1 + 2*2) / 4.
  np.testing.assert_allclose(average['w'], [3.5, 4.5])
  np.testing.assert_allclose(metrics['loss'], 1.25)


def test_zero_weight_padding_clients_change_nothing():
  deltas = {'w': jnp.array([[1.0], [3.0], [100.0]])}
  average, metrics = _fedavg_both_ways(deltas, jnp.array([1.0, 3.0, 0.0]))
  np.testing.assert_allclose(average['w'], [2.5])
  np.testing.assert_allclose(metrics['loss'], 0.75)


def test_fedavg_server_adds_the_average_delta():
  optimizer = optimizers.build_server_optimizer({'name': 'fedavg', 'learning_rate': 1.0})
  state = algorithm.server_init({'w': jnp.array([1.0, -1.0])}, optimizer)
  state = algorithm.server_update(optimizer, state, {'w': jnp.array([0.5, 0.25])})
  np.testing.assert_allclose(state.params['w'], [1.5, -0.75])
  assert int(state.round) == 1


def test_server_momentum_matches_hand_computation():
  optimizer = optimizers.build_server_optimizer(
      {'name': 'sgd', 'learning_rate': 0.5, 'kwargs': {'momentum': 0.9}})
  state = algorithm.server_init({'w': jnp.array([0.0])}, optimizer)
  state = algorithm.server_update(optimizer, state, {'w': jnp.array([1.0])})
  state = algorithm.server_update(optimizer, state, {'w': jnp.array([2.0])})
  # Pseudo-gradients g1 = -1, g2 = -2; v1 = -1, v2 = 0.9 * -1 - 2 = -2.9;
  # w = 0 - 0.5 * (-1) - 0.5 * (-2.9) = 1.95.
  np.testing.assert_allclose(state.params['w'], [1.95], rtol=1e-6)


@pytest.mark.parametrize('name', ['adam', 'optimistic', 'fedavg', 'sgd'])
def test_every_server_optimizer_builds_and_steps(name):
  kwargs = {'sgd': {'momentum': 0.9}, 'adam': {'b1': 0.9}, 'optimistic': {'alpha': 1.0}}
  optimizer = optimizers.build_server_optimizer(
      {'name': name, 'learning_rate': 0.1, 'kwargs': kwargs.get(name, {})})
  state = algorithm.server_init({'w': jnp.zeros(3)}, optimizer)
  state = algorithm.server_update(optimizer, state, {'w': jnp.ones(3)})
  assert np.all(np.asarray(state.params['w']) > 0)


def test_generator_ema_ramps_then_decays_by_hand():
  params = {'generator': {'w': jnp.array([0.0])}, 'discriminator': {'w': jnp.array([5.0])}}
  state = algorithm.server_init(params, optax.sgd(1.0), generator_ema=True)
  assert algorithm.sampling_generator(state) is state.generator_ema
  # After round 1: rate min(0.9, 2 / 11) = 2/11, so ema = 2/11 * 0 + 9/11 * 1.
  state = state.replace(params={'generator': {'w': jnp.array([1.0])},
                                'discriminator': params['discriminator']},
                        round=jnp.array(1, jnp.int32))
  state = algorithm.update_generator_ema(state, 0.9)
  np.testing.assert_allclose(state.generator_ema['w'], [9 / 11], rtol=1e-6)
  # After round 100: the ramp (101 / 110) is past 0.9, so the decay rules: 0.9 * 9/11 + 0.1 * 3.
  state = state.replace(params={'generator': {'w': jnp.array([3.0])},
                                'discriminator': params['discriminator']},
                        round=jnp.array(100, jnp.int32))
  state = algorithm.update_generator_ema(state, 0.9)
  np.testing.assert_allclose(state.generator_ema['w'], [0.9 * 9 / 11 + 0.3], rtol=1e-6)
  np.testing.assert_array_equal(state.params['discriminator']['w'], [5.0])
  # Without an average, sampling uses the latest generator.
  plain = algorithm.server_init(params, optax.sgd(1.0))
  assert plain.generator_ema is None
  assert algorithm.sampling_generator(plain) is plain.params['generator']


def test_unknown_optimizer_names_the_config_field():
  with pytest.raises(ValueError, match='fl.server_optimizer.name'):
    optimizers.build_server_optimizer({'name': 'lamb', 'learning_rate': 1.0})
  with pytest.raises(ValueError, match='runtime.strategy'):
    algorithm.resolve_strategy('pmap')


def test_optimizer_kwargs_are_checked_against_the_named_optimizer():
  with pytest.raises(ValueError, match=r"fl.client_optimizer.kwargs: optimizer 'adam' takes no "
                                       r"\['bb1'\]; it takes \['b1', 'b2', 'eps'\]"):
    optimizers.build_client_optimizers({'name': 'adam', 'd_learning_rate': 1e-3,
                                        'g_learning_rate': 1e-3, 'kwargs': {'bb1': 0.5}})
  # A leftover of the previous optimizer after switching `name` is the same error.
  with pytest.raises(ValueError, match="optimizer 'sgd' takes no \\['b1'\\]"):
    optimizers.build_server_optimizer({'name': 'sgd', 'learning_rate': 1.0,
                                       'kwargs': {'b1': 0.5}})
  # The old flat layout names where the argument now goes.
  with pytest.raises(ValueError, match='fl.server_optimizer.kwargs.momentum'):
    optimizers.build_server_optimizer({'name': 'sgd', 'learning_rate': 1.0, 'momentum': 0.9})


def test_optimistic_optimizer_takes_alpha_and_beta():
  spec = {'name': 'optimistic', 'learning_rate': 0.1, 'kwargs': {'alpha': 0.5, 'beta': 2.0}}
  optimizer = optimizers.build_server_optimizer(spec)
  expected = optax.optimistic_gradient_descent(0.1, alpha=0.5, beta=2.0)
  params = {'w': jnp.array([1.0, -2.0])}
  grads = {'w': jnp.array([0.3, 0.7])}
  state, expected_state = optimizer.init(params), expected.init(params)
  for _ in range(2):
    updates, state = optimizer.update(grads, state, params)
    expected_updates, expected_state = expected.update(grads, expected_state, params)
    np.testing.assert_array_equal(updates['w'], expected_updates['w'])


def test_auto_strategy_is_threads_on_cpu_and_vmap_on_accelerators():
  assert algorithm.resolve_strategy('auto', 'cpu') == 'threads'
  assert algorithm.resolve_strategy('auto', 'gpu') == 'vmap'
  assert algorithm.resolve_strategy('auto', 'tpu') == 'vmap'


@pytest.mark.parametrize('fuse_local_steps, ynn_fusions', [(True, False), (False, True)])
def test_round_equals_hand_assembled_fedavg(tiny_task_and_federation, fuse_local_steps,
                                            ynn_fusions):
  task, federation = tiny_task_and_federation
  server_optimizer = optax.sgd(1.0)  # Plain FedAvg: params + weighted average delta.
  params = client_lib.init_params(task, jax.random.key(0, impl='rbg'),
                                  tuple(federation.image_shape), federation.schema.model_dim)
  state = algorithm.server_init(params, server_optimizer)
  ids = np.array([0, 2])  # Partial participation, clients of unequal size.
  batches, weights, ids = sampling.round_inputs(federation.clients, ids, 0, 5, 2, 8)
  round_rng = jax.random.key(3)
  new_state, metrics = algorithm.make_round_fn(
      task, server_optimizer, 'sequential', fuse_local_steps=fuse_local_steps,
      client_compiler_options=cpu_backend.client_compiler_options(ynn_fusions))(
          state, batches, weights, ids, round_rng)

  # The reference deltas: `execution.local_update` per client, one program for every case.
  local = execution.ClientUpdate(task, True, cpu_backend.client_compiler_options(False))
  deltas = [local(params, jax.tree.map(lambda x, i=i: x[i], batches),
                  jax.random.fold_in(round_rng, ids[i]))[0] for i in range(2)]
  sizes = [len(federation.clients[0]), len(federation.clients[2])]
  assert list(weights) == sizes
  expected = jax.tree.map(
      lambda p, d0, d1: p + (sizes[0] * d0 + sizes[1] * d1) / sum(sizes), params, *deltas)
  for got, want in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())


def test_threads_give_bit_identical_params_to_sequential(tiny_task_and_federation):
  task, federation = tiny_task_and_federation
  server_optimizer = optax.sgd(1.0, momentum=0.9)
  params = client_lib.init_params(task, jax.random.key(0, impl='rbg'),
                                  tuple(federation.image_shape), federation.schema.model_dim)
  results = {}
  # 2 workers over 3 clients (and a padding slot): completion order varies, the sum must not.
  for name, strategy, threads in [('sequential', 'sequential', 0), ('threads', 'threads', 2)]:
    # The options of the hand-assembled test's round, whose compiled client program this reuses.
    round_fn = algorithm.make_round_fn(
        task, server_optimizer, strategy, client_threads=threads,
        client_compiler_options=cpu_backend.client_compiler_options(False))
    state = algorithm.server_init(params, server_optimizer)
    for r in range(3):
      batches, weights, ids = sampling.round_inputs(federation.clients, np.array([0, 1, 2]), 0,
                                                    r, 2, 8, pad_to_multiple=4)
      state, metrics = round_fn(state, batches, weights, ids, jax.random.key(r))
    results[name] = (jax.device_get(state.params), jax.device_get(metrics))
  for got, want in zip(jax.tree.leaves(results['threads']), jax.tree.leaves(results['sequential'])):
    np.testing.assert_array_equal(got, want)


def test_client_threads_must_not_be_negative():
  with pytest.raises(ValueError, match='runtime.client_threads'):
    algorithm.resolve_client_threads(-1)
  assert algorithm.resolve_client_threads(3) == 3
  assert algorithm.resolve_client_threads(0) >= 1


_STRATEGY_SCRIPT = textwrap.dedent('''
    import json, sys
    TINY_MODEL = %r
    import jax, numpy as np
    from configs import phantom
    from fedgan_jax.data import registry
    from fedgan_jax.federated import algorithm, client as client_lib, optimizers, sampling
    from fedgan_jax.federated import task as task_lib
    assert jax.device_count() == 4, jax.devices()
    config = phantom.get_config('runlocal')
    for network, fields in TINY_MODEL.items():
      config.model[network].update(fields)
    config.fl.server_optimizer.kwargs = {'momentum': 0.9}
    # SGD clients: Adam's first step from a fresh state is ~lr * sign(g), which turns the
    # rounding differences of another device layout into lr-sized ones wherever a gradient
    # is near zero. SGD keeps them at rounding size, so layout bugs are what the test sees.
    config.fl.client_optimizer.update(name='sgd', d_learning_rate=0.01, g_learning_rate=0.01)
    config.fl.client_optimizer.kwargs = {'momentum': 0.9}  # Replaces Adam's (update merges).
    federation = registry.load_federation(config)
    task = task_lib.build_task(config, federation.schema, federation.image_shape)
    server_optimizer = optimizers.build_server_optimizer(config.fl.server_optimizer)
    params = client_lib.init_params(task, jax.random.key(0, impl='rbg'),
                                    tuple(federation.image_shape), federation.schema.model_dim)
    results = {}
    for name, strategy, devices in [('sequential', 'sequential', None),
                                    ('threads', 'threads', None),
                                    ('vmap_1_device', 'vmap', jax.devices()[:1]),
                                    ('vmap_4_devices', 'vmap', jax.devices())]:
      mesh = algorithm.client_mesh(devices) if devices else None
      round_fn = algorithm.make_round_fn(task, server_optimizer, strategy, mesh)
      state = algorithm.server_init(params, server_optimizer)
      for r in range(2):
        ids = sampling.sample_clients(0, r, 3, 0)
        # One local step: the client axis's layout is what differs here, and XLA's CPU
        # compile of a vmapped round grows with the steps (~35 s a step, twice).
        batches, weights, ids = sampling.round_inputs(
            federation.clients, ids, 0, r, 1, 8, mesh.size if mesh else 1)
        state, _ = round_fn(state, batches, weights, ids, jax.random.key(r))
      results[name] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)])
    np.savez(sys.argv[1], **results)
''') % (TINY_MODEL,)


def test_vmap_on_1_and_4_devices_sequential_and_threads_agree(tmp_path):
  out = tmp_path / 'params.npz'
  subprocess.run([sys.executable, '-c', _STRATEGY_SCRIPT, str(out)], cwd=REPO_ROOT,
                 env=binary_env(cpu_devices=4), check=True, timeout=900)
  results = np.load(out)
  np.testing.assert_allclose(results['vmap_1_device'], results['vmap_4_devices'], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(results['sequential'], results['vmap_1_device'], rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_array_equal(results['threads'], results['sequential'])
  assert not np.allclose(results['sequential'], 0.0)


def test_client_updates_of_one_task_share_their_compiled_programs(tiny_task_and_federation):
  task, _ = tiny_task_and_federation
  options = cpu_backend.client_compiler_options(False)
  first, second = execution.ClientUpdate(task, True, options), execution.ClientUpdate(task, False,
                                                                                      options)
  # Same task and options: the same jitted programs, so a second strategy compiles nothing.
  assert first._local_update is second._local_update and first._step is second._step  # pylint: disable=protected-access
  other_options = execution.ClientUpdate(task, True, {'xla_cpu_enable_fast_math': 'false'})
  assert other_options._local_update is not first._local_update  # pylint: disable=protected-access
