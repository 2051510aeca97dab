"""The FedAvg round: server state, server update, and the round's execution strategies.

A round takes the server state and the participating clients' batches (stacked on a
leading client axis) and returns the next server state:

    deltas_i = local_update(params, batches_i, rng_i)           (client work, `execution`)
    average  = aggregator(deltas_i, w_i)                          (`aggregation`, written once)
    params  <- server_optimizer(-average)                         (server_update)

with `w_i` the client's example count (0 for padding clients) and
`rng_i = rngs.client_key(round_rng, client_id)`, so a client's randomness does not depend on
which other clients take part or on how the round is executed. The aggregator is FedAvg's
example-weighted mean unless the caller passes another (client-level DP-FedAvg:
`privacy.engine.PrivacyPlan.aggregator`); strategies differ only in how clients run, never
in how their deltas are combined (`runtime.strategy`):

  * `vmap`: one jitted function; clients are vmapped and the client axis is sharded
    over all local devices (`jax.sharding`), params replicated. Fast on GPU/TPU.
  * `sequential`: a Python loop calling a jitted per-client local update (all K local
    steps in one program unless `runtime.fuse_local_steps=False`) and a jitted accumulation.
    On XLA's CPU backend this beats `vmap`, because vmapped per-client weights turn
    convolutions into slow grouped convolutions.
  * `threads`: `sequential` with up to `client_threads` clients in flight at once, each
    driven from its own host thread; deltas are still accumulated in client order, so the
    result is bit-identical to `sequential`. XLA's CPU convolutions at these sizes keep
    barely one core busy, so concurrent clients fill the others (~1.5x over the naive
    per-client loop on 2 idle cores, BENCHMARKS.md).

`auto` is measured: the run times a few candidate executions on its first round and keeps
the fastest (`server.choose_execution`, `autotune`); `resolve_strategy('auto')` is the
backend's default when nothing is measured (`threads` on CPU, `vmap` elsewhere).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Iterable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedgan_jax.federated import aggregation
from fedgan_jax.federated import execution
from fedgan_jax.federated import rngs

STRATEGIES = ('auto', 'vmap', 'sequential', 'threads')


@flax.struct.dataclass
class ServerState:
  params: Any  # {'generator': ..., 'discriminator': ...}
  opt_state: Any
  round: jnp.ndarray  # rounds completed; the checkpoint step.
  # The aggregator's state across rounds (`client_dp.AdaptiveClipState` under adaptive
  # client-level clipping), else None.
  privacy: Any = None
  # Exponential moving average of the generator's params over rounds (`fl.generator_ema`),
  # else None. Only sampling reads it; training never does.
  generator_ema: Any = None


def server_init(params, server_optimizer: optax.GradientTransformation,
                aggregator: aggregation.Aggregator | None = None,
                generator_ema: bool = False) -> ServerState:
  privacy = None if aggregator is None else aggregator.init_privacy()
  return ServerState(params=params, opt_state=server_optimizer.init(params),
                     round=jnp.zeros((), jnp.int32), privacy=privacy,
                     generator_ema=params['generator'] if generator_ema else None)


def generator_ema_decay(fl_config) -> float:
  """`fl.generator_ema`, checked: a decay in [0, 1), 0 meaning no moving average."""
  decay = float(fl_config.generator_ema)
  if not 0.0 <= decay < 1.0:
    raise ValueError(f'fl.generator_ema must be in [0, 1) (0 = off), got {decay}.')
  return decay


def update_generator_ema(state: ServerState, decay: float) -> ServerState:
  """`ema <- r * ema + (1 - r) * G` after a round, `r = min(decay, (1 + t) / (10 + t))`.

  `t` is the number of rounds done; the ramp (as in tf.train.ExponentialMovingAverage)
  keeps the random initial generator from lingering in the average of a short run.
  Server-side post-processing of the released model: no client sees it, DP is unchanged.
  """
  t = state.round.astype(jnp.float32)
  rate = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  ema = jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, state.generator_ema,
                     state.params['generator'])
  return state.replace(generator_ema=ema)


def sampling_generator(state: ServerState):
  """The generator params to sample from: the moving average when kept, else the latest."""
  return state.params['generator'] if state.generator_ema is None else state.generator_ema


def server_update(server_optimizer: optax.GradientTransformation, state: ServerState,
                  average_delta) -> ServerState:
  """Applies the average delta as a negative pseudo-gradient."""
  pseudo_gradient = jax.tree.map(jnp.negative, average_delta)
  updates, opt_state = server_optimizer.update(pseudo_gradient, state.opt_state, state.params)
  return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                       round=state.round + 1)


def apply_aggregate(aggregator: aggregation.Aggregator, server_optimizer, state: ServerState,
                    agg, round_rng) -> tuple[ServerState, dict]:
  """Finishes the round's aggregation and applies it: `(next state, metrics)`."""
  average, privacy, metrics = aggregator.finish(agg, state.privacy, round_rng)
  return server_update(server_optimizer, state, average).replace(privacy=privacy), metrics


def check_client_message(message, params, client_axis: bool = False) -> None:
  """Raises unless `message` is a pytree of `params`' structure, shapes and dtypes.

  The engine calls it on the deltas while tracing a round (shapes are static then, so it
  costs nothing per round): what leaves a hospital is a parameter delta, never anything
  shaped like data. `client_axis`: every leaf of `message` has a leading client axis.
  """
  want_structure = jax.tree.structure(params)
  got_structure = jax.tree.structure(message)
  if got_structure != want_structure:
    raise ValueError(f'a client message has the structure {got_structure}, not that of the '
                     f'model parameters {want_structure}; only parameter deltas may leave a '
                     'hospital.')
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, want), got in zip(paths, jax.tree.leaves(message)):
    shape = tuple(got.shape[1:] if client_axis else got.shape)
    if shape != tuple(want.shape) or got.dtype != want.dtype:
      raise ValueError(f'client message leaf {jax.tree_util.keystr(path)} has shape {shape} '
                       f'and dtype {got.dtype}, but the parameter is {tuple(want.shape)} '
                       f'{want.dtype}; only parameter deltas may leave a hospital.')


def resolve_strategy(strategy: str, platform: str | None = None) -> str:
  if strategy not in STRATEGIES:
    raise ValueError(f'runtime.strategy: {strategy!r} is not one of {STRATEGIES}.')
  if strategy != 'auto':
    return strategy
  platform = platform or jax.default_backend()
  return 'threads' if platform == 'cpu' else 'vmap'


def resolve_client_threads(client_threads: int) -> int:
  """`runtime.client_threads`: 0 means one thread per CPU core this process may use."""
  if client_threads < 0:
    raise ValueError(f'runtime.client_threads must be >= 0 (0 = one per CPU core), got '
                     f'{client_threads}.')
  return client_threads or len(os.sched_getaffinity(0))


def client_mesh(devices=None) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), ('clients',))


def vmap_round(task, server_optimizer, aggregator: aggregation.Aggregator, state: ServerState,
               batches, weights, client_ids, round_rng):
  """The whole round as one function of stacked client inputs (jit it)."""
  local = functools.partial(execution.local_update, task)
  deltas, metrics = jax.vmap(local, in_axes=(None, 0, 0))(
      state.params, batches, rngs.client_keys(round_rng, client_ids))
  check_client_message(deltas, state.params, client_axis=True)
  # Padding slots from `sampling.round_inputs` re-run client 0 on a copy of its batches; the
  # aggregator gives their weight 0 no say, so they neither release anything nor spend
  # privacy budget (the accountant counts each real hospital once per round).
  agg = aggregator.init(state.params, jax.tree.map(lambda m: m[0], metrics), state.privacy)
  agg = aggregator.accumulate_clients(agg, deltas, metrics, weights)
  return apply_aggregate(aggregator, server_optimizer, state, agg, round_rng)


def make_round_fn(task, server_optimizer, strategy: str, mesh: Mesh | None = None,
                  aggregator: aggregation.Aggregator | None = None,
                  client_threads: int = 0, fuse_local_steps: bool = True,
                  client_compiler_options: dict | None = None) -> Callable:
  """Returns `round_fn(state, batches, weights, client_ids, round_rng) -> (state, metrics)`.

  `task` is an `execution.ClientTask`. The number of participating clients must be a
  multiple of the mesh size for `vmap` (pad with zero-weight clients; see
  `sampling.round_inputs`). `aggregator` (default `aggregation.FedAvg()`) combines the
  deltas; its state across rounds is `server_init(..., aggregator)`'s `privacy`.
  `client_threads` bounds the clients in flight under `threads` (0: one per CPU core);
  `fuse_local_steps` and `client_compiler_options` (XLA options for the client-update
  programs, e.g. `cpu_backend.client_compiler_options`) are `execution.ClientUpdate`'s
  (`sequential` and `threads` only).
  """
  strategy = resolve_strategy(strategy)
  aggregator = aggregation.FedAvg() if aggregator is None else aggregator
  if strategy == 'vmap':
    mesh = mesh or client_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    by_client = NamedSharding(mesh, PartitionSpec('clients'))
    return jax.jit(
        functools.partial(vmap_round, task, server_optimizer, aggregator),
        in_shardings=(replicated, by_client, by_client, by_client, replicated),
        out_shardings=(replicated, replicated))
  workers = resolve_client_threads(client_threads) if strategy == 'threads' else 1
  return SequentialRound(task, server_optimizer, aggregator, workers, fuse_local_steps,
                         client_compiler_options)


class ServerRound:
  """The server's half of a round whose deltas arrive one client at a time.

  Jitted aggregator `init` / `accumulate` (with the message check) and the server update;
  `SequentialRound` feeds it from local clients, the Flower coordinator from hospitals'
  replies, so both aggregate and update exactly alike.
  """

  def __init__(self, aggregator: aggregation.Aggregator, server_optimizer):
    self._init = jax.jit(aggregator.init)
    self._accumulate = jax.jit(functools.partial(self._accumulate_fn, aggregator))
    self._finish = jax.jit(functools.partial(apply_aggregate, aggregator, server_optimizer))

  @staticmethod
  def _accumulate_fn(aggregator, agg, delta, server_params, metrics, weight):
    check_client_message(delta, server_params)
    return aggregator.accumulate(agg, delta, metrics, weight)

  def __call__(self, state: ServerState, client_results: Iterable[tuple[Any, Any, Any]],
               round_rng) -> tuple[ServerState, dict]:
    """`(next state, metrics)` from `(delta, metrics, weight)` of each reporting client, in
    client order."""
    agg = None
    for delta, metrics, weight in client_results:
      if agg is None:
        agg = self._init(state.params, metrics, state.privacy)
      agg = self._accumulate(agg, delta, state.params, metrics, weight)
    if agg is None:
      raise ValueError('a round needs at least one client with weight > 0.')
    return self._finish(state, agg, round_rng)


class SequentialRound:
  """A Python loop over clients (the same math as `vmap_round`).

  Each client's work is an `execution.ClientUpdate` (`fuse_local_steps` and
  `client_compiler_options` are its), run by an `execution.ClientRunner` with up to
  `workers` clients in flight; their deltas reach the aggregator in client order, so the
  result is the same to the bit whatever the number of workers.
  """

  def __init__(self, task, server_optimizer, aggregator: aggregation.Aggregator | None = None,
               workers: int = 1, fuse_local_steps: bool = True,
               client_compiler_options: dict | None = None):
    self._clients = execution.ClientRunner(
        execution.ClientUpdate(task, fuse_local_steps, client_compiler_options), workers)
    self._server = ServerRound(aggregation.FedAvg() if aggregator is None else aggregator,
                               server_optimizer)

  def __call__(self, state: ServerState, batches, weights, client_ids, round_rng):
    weights = np.asarray(weights, np.float32)
    client_ids = np.asarray(client_ids)
    # Padding clients (weight 0) contribute nothing; skip their compute.
    participants = [i for i in range(len(client_ids)) if weights[i] != 0.0]
    results = self._clients(state.params, batches, participants, client_ids, round_rng)
    return self._server(state, ((delta, metrics, weights[i]) for i, delta, metrics in results),
                        round_rng)
