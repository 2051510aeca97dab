"""Tests for `runtime.precision`: bfloat16 compute with float32 params, state and losses.

A few rounds of the runlocal phantom in bfloat16 must track the same rounds in float32:
the losses within 1e-2 (measured: <= 2.5e-3 after 4 rounds), every param within 1e-2 of
float32's (measured 2.3e-3, where Adam moved params by up to 4.9e-3), and the whole
update (params minus initial params) within 20% of float32's in L2 norm. (3 rounds with the
client update compiled at XLA backend optimization level 0: 2.4e-3, 2.9e-3 and 12%.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedgan_jax.federated import algorithm
from fedgan_jax.federated import rngs
from fedgan_jax.federated import sampling
from fedgan_jax.federated import server as server_lib
from fedgan_jax.federated import task as task_lib

ROUNDS = 3


def _run(config, federation, precision):
  config = config.copy_and_resolve_references()
  config.runtime.precision = precision
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  server = server_lib.build(config, task, federation.image_shape, federation.schema.model_dim)
  round_fn = algorithm.make_round_fn(task, server.server_optimizer, 'sequential')
  state, history = server.state, []
  for r in range(ROUNDS):
    ids = sampling.sample_clients(config.seed, r, len(federation.clients), 0)
    batches, weights, ids = sampling.round_inputs(federation.clients, ids, config.seed, r,
                                                  config.fl.local_steps, config.fl.batch_size)
    state, metrics = round_fn(state, batches, weights, ids, rngs.round_key(config.seed, r))
    history.append(jax.device_get(metrics))
  return task, server.state, state, history


def test_bfloat16_tracks_float32_and_keeps_float32_state(runlocal_config, runlocal_federation):
  _, initial, f32, f32_history = _run(runlocal_config, runlocal_federation, 'float32')
  task, _, bf16, bf16_history = _run(runlocal_config, runlocal_federation, 'bfloat16')
  assert task.generator.dtype == jnp.bfloat16 and task.discriminator.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves((bf16.params, bf16.opt_state, bf16.generator_ema)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  for want, got in zip(f32_history, bf16_history):
    assert set(want) == set(got)
    for name in want:
      assert got[name].dtype == np.float32
      np.testing.assert_allclose(got[name], want[name], atol=1e-2, err_msg=name)
  for want, got in zip(jax.tree.leaves(f32.params), jax.tree.leaves(bf16.params)):
    np.testing.assert_allclose(got, want, atol=1e-2)
  moved = lambda state: np.concatenate([np.ravel(a - b) for a, b in zip(
      jax.tree.leaves(state.params), jax.tree.leaves(initial.params))])
  f32_update, bf16_update = moved(f32), moved(bf16)
  assert np.linalg.norm(bf16_update - f32_update) <= 0.2 * np.linalg.norm(f32_update)


def test_unknown_precision_names_the_field(runlocal_config, runlocal_federation):
  config = runlocal_config.copy_and_resolve_references()
  config.runtime.precision = 'float16'
  with pytest.raises(ValueError, match='runtime.precision'):
    task_lib.build_task(config, runlocal_federation.schema, runlocal_federation.image_shape)
