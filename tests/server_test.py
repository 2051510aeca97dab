"""federated/server.py: one server from a config, for the simulation and the Flower server alike."""

import jax
import numpy as np
import pytest

from conftest import tiny_runlocal_config

from fedgan_jax import checkpointing
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.deploy import coordinator as coordinator_lib
from fedgan_jax.deploy import settings
from fedgan_jax.federated import aggregation
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import rngs
from fedgan_jax.federated import server as server_lib
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import client_dp


@pytest.fixture(scope='module')
def config_and_task():
  config = tiny_runlocal_config()
  schema = conditions_lib.ConditionSchema.from_config(config.conditions)
  task = task_lib.build_task(config, schema, coordinator_lib.image_shape(config))
  return config, task, schema.model_dim


def _build(config_and_task, **kwargs):
  config, task, condition_dim = config_and_task
  return server_lib.build(config, task, coordinator_lib.image_shape(config), condition_dim,
                          **kwargs)


def test_a_fresh_server_starts_from_the_seeds_params_and_the_configs_average(config_and_task):
  config, task, condition_dim = config_and_task
  config = config.copy_and_resolve_references()
  config.fl.generator_ema = 0.0
  plain = _build((config, task, condition_dim))
  assert int(plain.state.round) == 0 and plain.state.privacy is None
  assert isinstance(plain.aggregator, aggregation.FedAvg) and plain.checkpoint_manager is None
  # Without a moving average, the update is the identity and the state keeps none.
  assert plain.state.generator_ema is None and plain.update_ema(plain.state) is plain.state
  expected = client_lib.init_params(task, rngs.init_key(config.seed),
                                    coordinator_lib.image_shape(config), condition_dim)
  for got, want in zip(jax.tree.leaves(plain.state.params), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)
  # The Flower server's initial params are the simulation's.
  for got, want in zip(jax.tree.leaves(coordinator_lib.initial_params(config, task)),
                       jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, want)
  config.fl.generator_ema = 0.9
  averaged = _build((config, task, condition_dim))
  assert averaged.state.generator_ema is not None


def test_the_aggregators_state_starts_in_the_server_state(config_and_task):
  adaptive = client_dp.DpFedAvg(clip_norm=0.5, noise_multiplier=0.0, expected_clients=2,
                                adaptive=True)
  server = _build(config_and_task, aggregator=adaptive)
  assert server.aggregator is adaptive
  assert float(server.state.privacy.clip_norm) == 0.5


def test_a_server_resumes_from_the_workdirs_latest_checkpoint(config_and_task, tmp_path):
  config, _, _ = config_and_task
  first = _build(config_and_task, workdir=str(tmp_path))
  assert first.resumed_round == 0
  moved = first.state.replace(round=first.state.round + 3,
                              params=jax.tree.map(lambda p: p + 1.0, first.state.params))
  checkpointing.save(first.checkpoint_manager, 3, moved, config, {})
  first.checkpoint_manager.wait_until_finished()
  first.checkpoint_manager.close()
  resumed = _build(config_and_task, workdir=str(tmp_path))
  resumed.checkpoint_manager.close()
  assert resumed.resumed_round == 3
  for got, want in zip(jax.tree.leaves(resumed.state.params), jax.tree.leaves(moved.params)):
    np.testing.assert_array_equal(got, want)


def test_the_flower_server_draws_the_simulations_dp_noise_and_adapts_its_clip(tmp_path):
  config = tiny_runlocal_config()
  config.deploy = settings.get_deploy_config()
  config.dp = dict(mode='client', clip_norm=1.0, noise_multiplier=0.5, delta=1e-3,
                   target_epsilon=None, accountant='rdp',
                   adaptive_clip=dict(enabled=True, target_quantile=0.5, learning_rate=0.2,
                                      count_noise_multiplier=4.0))
  coordinator = coordinator_lib.Coordinator(config, str(tmp_path))
  start = jax.device_get(coordinator.state.params)
  size = sum(int(np.prod(shape)) for shape, _ in coordinator.specs)
  # Deltas of global norm 4 (clipped to 1) and 0.5 (kept), all entries equal.
  replies = [coordinator_lib.Reply(i, 10, [np.full(shape, norm / np.sqrt(size), np.float32)
                                           for shape, _ in coordinator.specs], {})
             for i, norm in enumerate((4.0, 0.5))]
  coordinator.participants()
  coordinator.apply(replies)
  coordinator.close()
  aggregator = coordinator._plan.aggregator()  # pylint: disable=protected-access
  clients = len(coordinator.sites)
  assert aggregator.adaptive and aggregator.expected_clients == clients
  # The simulation's noise for round 0: the same key, the same draw.
  update_key, _ = rngs.server_noise_keys(rngs.round_key(config.seed, 0))
  noise = client_dp.noisy_sum(jax.tree.map(np.zeros_like, start), update_key, 1.0,
                              aggregator.noise_multiplier)
  expected = jax.tree.map(lambda p, n: p + ((1.0 + 0.5) / np.sqrt(size) + n) / clients, start,
                          noise)
  for got, want in zip(jax.tree.leaves(coordinator.state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # One norm above C = 1, one below: the clip norm moved (and is checkpointed with the state).
  assert float(coordinator.state.privacy.clip_norm) != 1.0
