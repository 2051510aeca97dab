"""The FedAvg round: server state, weighted aggregation, server update, execution.

A round takes the server state and the participating clients' batches (stacked on a
leading client axis) and returns the next server state:

    deltas_i = local_update(params, batches_i, rng_i)        (client work)
    average  = sum_i w_i * deltas_i / sum_i w_i               (fedavg_aggregate)
    params  <- server_optimizer(-average)                      (server_update)

with `w_i` the client's example count (0 for padding clients) and
`rng_i = fold_in(round_rng, client_id)`, so a client's randomness does not depend on
which other clients take part or on how the round is executed. Two executions with
identical math are offered (`fl.strategy`):

  * `vmap`: one jitted function; clients are vmapped and the client axis is sharded
    over all local devices (`jax.sharding`), params replicated. Fast on GPU/TPU.
  * `sequential`: a Python loop calling a jitted per-client local update and a
    jitted accumulation. On XLA's CPU backend this is the fast one, because vmapped
    per-client weights turn convolutions into slow grouped convolutions.

`auto` picks `sequential` on CPU and `vmap` elsewhere (BENCHMARKS.md has the numbers).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedgan_jax.federated import client as client_lib

STRATEGIES = ('auto', 'vmap', 'sequential')


@flax.struct.dataclass
class ServerState:
  params: Any  # {'generator': ..., 'discriminator': ...}
  opt_state: Any
  round: jnp.ndarray  # rounds completed; the checkpoint step.


def server_init(params, server_optimizer: optax.GradientTransformation) -> ServerState:
  return ServerState(params=params, opt_state=server_optimizer.init(params),
                     round=jnp.zeros((), jnp.int32))


def fedavg_aggregate(deltas, weights):
  """Weighted mean over the leading client axis: `sum_i w_i d_i / sum_i w_i`."""
  total = jnp.sum(weights)
  return jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1) / total, deltas)


def server_update(server_optimizer: optax.GradientTransformation, state: ServerState,
                  average_delta) -> ServerState:
  """Applies the average delta as a negative pseudo-gradient."""
  pseudo_gradient = jax.tree.map(jnp.negative, average_delta)
  updates, opt_state = server_optimizer.update(pseudo_gradient, state.opt_state, state.params)
  return ServerState(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                     round=state.round + 1)


def weighted_metrics(metrics, weights):
  """Per-client metrics `(P,)` -> their example-weighted means."""
  return jax.tree.map(lambda m: jnp.sum(m * weights) / jnp.sum(weights), metrics)


def client_rngs(round_rng, client_ids):
  return jax.vmap(lambda i: jax.random.fold_in(round_rng, i))(client_ids)


def resolve_strategy(strategy: str, platform: str | None = None) -> str:
  if strategy not in STRATEGIES:
    raise ValueError(f'fl.strategy: {strategy!r} is not one of {STRATEGIES}.')
  if strategy != 'auto':
    return strategy
  platform = platform or jax.default_backend()
  return 'sequential' if platform == 'cpu' else 'vmap'


def client_mesh(devices=None) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), ('clients',))


def vmap_round(task, server_optimizer, state: ServerState, batches, weights, client_ids,
               round_rng):
  """The whole round as one function of stacked client inputs (jit it)."""
  local = functools.partial(client_lib.local_update, task)
  deltas, metrics = jax.vmap(local, in_axes=(None, 0, 0))(
      state.params, batches, client_rngs(round_rng, client_ids))
  state = server_update(server_optimizer, state, fedavg_aggregate(deltas, weights))
  return state, weighted_metrics(metrics, weights)


def make_round_fn(task, server_optimizer, strategy: str, mesh: Mesh | None = None) -> Callable:
  """Returns `round_fn(state, batches, weights, client_ids, round_rng) -> (state, metrics)`.

  The number of participating clients must be a multiple of the mesh size for
  `vmap` (pad with zero-weight clients; see `sampling.round_inputs`).
  """
  strategy = resolve_strategy(strategy)
  if strategy == 'vmap':
    mesh = mesh or client_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    by_client = NamedSharding(mesh, PartitionSpec('clients'))
    return jax.jit(
        functools.partial(vmap_round, task, server_optimizer),
        in_shardings=(replicated, by_client, by_client, by_client, replicated),
        out_shardings=(replicated, replicated))
  return SequentialRound(task, server_optimizer)


class SequentialRound:
  """A Python loop over clients and local steps (the same math as `vmap_round`).

  Only `client_step` is compiled for the model (once, reused for every step of every
  client), which halves compile time against jitting a K-step local update, and the
  per-client work runs without batching over client weights.
  """

  def __init__(self, task, server_optimizer):
    self._init = jax.jit(functools.partial(client_lib.client_init, task))
    self._step = jax.jit(functools.partial(client_lib.client_step, task))
    self._accumulate = jax.jit(self._accumulate_fn)
    self._finish = jax.jit(functools.partial(self._finish_fn, server_optimizer))
    self._fold_in = jax.jit(jax.random.fold_in)

  @staticmethod
  def _accumulate_fn(total, metric_sums, client_state, server_params, step_metrics, weight):
    delta = client_lib.client_final(client_state, server_params)
    total = jax.tree.map(lambda t, d: t + weight * d, total, delta)
    metrics = jax.tree.map(lambda *m: jnp.mean(jnp.stack(m)), *step_metrics)
    metric_sums = jax.tree.map(lambda s, m: s + weight * m, metric_sums, metrics)
    return total, metric_sums

  @staticmethod
  def _finish_fn(server_optimizer, state, total, total_weight, metric_sums):
    average = jax.tree.map(lambda t: t / total_weight, total)
    metrics = jax.tree.map(lambda m: m / total_weight, metric_sums)
    return server_update(server_optimizer, state, average), metrics

  def __call__(self, state: ServerState, batches, weights, client_ids, round_rng):
    weights = np.asarray(weights, np.float32)
    total = jax.tree.map(jnp.zeros_like, state.params)
    metric_sums = None
    for i in range(len(client_ids)):
      if weights[i] == 0.0:
        continue  # Padding clients contribute nothing; skip their compute.
      rng = self._fold_in(round_rng, client_ids[i])
      client_state = self._init(state.params)
      step_metrics = []
      for step in range(batches['condition'].shape[1]):
        batch = jax.tree.map(lambda x, i=i, step=step: x[i, step], batches)
        client_state, metrics = self._step(client_state, batch, self._fold_in(rng, step))
        step_metrics.append(metrics)
      if metric_sums is None:
        metric_sums = jax.tree.map(jnp.zeros_like, step_metrics[0])
      total, metric_sums = self._accumulate(total, metric_sums, client_state, state.params,
                                            step_metrics, weights[i])
    return self._finish(state, total, jnp.sum(weights), metric_sums)
