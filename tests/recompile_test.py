"""Rounds after the first never trace or compile again, for every execution strategy.

The federation is built to provoke recompiles: four unequal phantom hospitals (one smaller
than a batch, so its batches are drawn with replacement), two of them sampled per round, so
participants, their example counts (the FedAvg weights) and the randomness change every
round while shapes must not. Traces are counted through the optimizers' `update`, which only
runs in Python while a function is traced; backend compiles through jax.monitoring.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from conftest import initial_params
from conftest import tiny_runlocal_config

from fedgan_jax.data import phantom
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import optimizers
from fedgan_jax.federated import sampling
from fedgan_jax.federated import task as task_lib

_CLIENT_SIZES = (40, 5, 24, 16)  # Hospital 1 holds fewer images than a batch (8).
_CLIENTS_PER_ROUND = 2
_ROUNDS = 4


class _Counter:
  """Counts traces (calls of a wrapped optimizer's update) and backend compiles."""

  def __init__(self):
    self.traces = 0
    self.compiles = 0

  def wrap(self, optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    def update(*args, **kwargs):
      self.traces += 1
      return optimizer.update(*args, **kwargs)
    return optax.GradientTransformation(optimizer.init, update)

  def on_event(self, event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      self.compiles += 1


@pytest.fixture(scope='module')
def tiny_federation_config():
  config = tiny_runlocal_config()  # Recompiles do not depend on the networks' width.
  config.data.num_hospitals = len(_CLIENT_SIZES)
  for hospital, examples in zip(config.data.hospitals, _CLIENT_SIZES):
    hospital.examples = examples
  config.data.test_examples = 8
  # One local step: what must not change between rounds (the programs' input shapes, dtypes
  # and shardings) is the same for any K, and the compile of the unrolled steps grows with K.
  config.fl.local_steps = 1
  federation = phantom.build_federation(config.data, config.conditions, config.seed)
  # The initial params, once for both strategies (init is not under test), one program.
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  return config, federation, initial_params(task, federation)


@pytest.mark.parametrize('strategy', ['sequential', 'vmap'])
def test_rounds_after_the_first_do_not_recompile(tiny_federation_config, strategy):
  config, federation, params = tiny_federation_config
  counter = _Counter()
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  task = dataclasses.replace(task, d_optimizer=counter.wrap(task.d_optimizer),
                             g_optimizer=counter.wrap(task.g_optimizer))
  server_optimizer = counter.wrap(optimizers.build_server_optimizer(config.fl.server_optimizer))
  state = algorithm.server_init(params, server_optimizer)
  mesh = algorithm.client_mesh() if strategy == 'vmap' else None
  if mesh is not None:
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
  round_fn = algorithm.make_round_fn(task, server_optimizer, strategy, mesh)

  participants, weights_seen, per_round = [], [], []
  jax.monitoring.register_event_duration_secs_listener(counter.on_event)
  try:
    for round_index in range(_ROUNDS):
      ids = sampling.sample_clients(config.seed, round_index, len(federation.clients),
                                    _CLIENTS_PER_ROUND)
      batches, weights, ids = sampling.round_inputs(
          federation.clients, ids, config.seed, round_index, config.fl.local_steps,
          config.fl.batch_size, mesh.size if mesh is not None else 1)
      state, metrics = round_fn(state, batches, weights, ids,
                                jax.random.fold_in(jax.random.key(0), round_index))
      jax.block_until_ready((state, metrics))
      participants.append(tuple(ids))
      weights_seen.append(tuple(weights))
      per_round.append((counter.traces, counter.compiles))
  finally:
    jax.monitoring.unregister_event_duration_listener(counter.on_event)

  # The rounds really differ in who takes part and with what weight.
  assert len(set(participants)) > 1 and len(set(weights_seen)) > 1
  assert 5.0 in {w for ws in weights_seen for w in ws}, weights_seen
  first_traces, first_compiles = per_round[0]
  assert first_traces > 0  # The counter sees the first round's trace.
  assert per_round[1:] == [(first_traces, first_compiles)] * (_ROUNDS - 1), per_round
  assert int(state.round) == _ROUNDS
  assert np.isfinite(float(metrics['d_loss']))
