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
  * `sequential`: a Python loop calling a jitted per-client local update (all K local
    steps in one program unless `fl.fuse_local_steps=False`) and a jitted accumulation.
    On XLA's CPU backend this beats `vmap`, because vmapped per-client weights turn
    convolutions into slow grouped convolutions.
  * `threads`: `sequential` with up to `client_threads` clients in flight at once, each
    driven from its own host thread; deltas are still summed in client order, so the
    result is bit-identical to `sequential`. XLA's CPU convolutions at these sizes keep
    barely one core busy, so concurrent clients fill the others (~1.5x over the naive
    per-client loop on 2 idle cores, BENCHMARKS.md).

`auto` picks `threads` on CPU and `vmap` elsewhere (BENCHMARKS.md has the numbers).

Client-level DP-FedAvg (`ClientPrivacy`, McMahan et al. 2018) replaces the weighted mean:
each reporting client's delta is clipped to `clip_norm`, the clipped deltas are summed with
UNIFORM weights (example counts would let a large hospital exceed the sensitivity), Gaussian
noise of std `noise_multiplier * clip_norm` is added to the sum and the noisy sum is divided
by the expected number of clients per round, a public constant. With adaptive clipping the
clip norm lives in `ServerState.privacy` and moves toward a quantile of the update norms
(Andrew et al. 2021). The noise keys are `fold_in(round_rng, SERVER_NOISE_STREAM)`, so a
resumed run draws the same noise, and both strategies draw it identically.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedgan_jax.federated import client as client_lib
from fedgan_jax.privacy import client_dp

STRATEGIES = ('auto', 'vmap', 'sequential', 'threads')
# Client keys are fold_in(round_rng, client_id) with small ids; the server's noise key uses a
# value no client id reaches.
SERVER_NOISE_STREAM = 2**31 - 1


@flax.struct.dataclass
class ServerState:
  params: Any  # {'generator': ..., 'discriminator': ...}
  opt_state: Any
  round: jnp.ndarray  # rounds completed; the checkpoint step.
  # `client_dp.AdaptiveClipState` under adaptive client-level clipping, else None.
  privacy: Any = None
  # Exponential moving average of the generator's params over rounds (`fl.generator_ema`),
  # else None. Only sampling reads it; training never does.
  generator_ema: Any = None


@dataclasses.dataclass(frozen=True)
class ClientPrivacy:
  """Static numbers of client-level DP-FedAvg (built by `privacy.engine` from `config.dp`).

  Attributes:
    clip_norm: fixed clip norm, or the initial one under adaptive clipping.
    noise_multiplier: noise std on the clipped sum / clip norm (after sharing with the count).
    expected_clients: the public denominator (fl.clients_per_round, or all clients).
    adaptive: move the clip norm toward `target_quantile` of the update norms each round.
    target_quantile, learning_rate, count_noise_multiplier: `client_dp.adaptive_clip_update`.
  """
  clip_norm: float
  noise_multiplier: float
  expected_clients: int
  adaptive: bool = False
  target_quantile: float = 0.5
  learning_rate: float = 0.2
  count_noise_multiplier: float = 0.0


def server_init(params, server_optimizer: optax.GradientTransformation,
                client_privacy: ClientPrivacy | None = None,
                generator_ema: bool = False) -> ServerState:
  privacy = None
  if client_privacy is not None and client_privacy.adaptive:
    privacy = client_dp.AdaptiveClipState.create(client_privacy.clip_norm)
  return ServerState(params=params, opt_state=server_optimizer.init(params),
                     round=jnp.zeros((), jnp.int32), privacy=privacy,
                     generator_ema=params['generator'] if generator_ema else None)


def generator_ema_decay(fl_config) -> float:
  """`fl.generator_ema`, checked: a decay in [0, 1), 0 meaning no moving average."""
  decay = float(fl_config.get('generator_ema', 0.0))
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


def fedavg_aggregate(deltas, weights):
  """Weighted mean over the leading client axis: `sum_i w_i d_i / sum_i w_i`."""
  total = jnp.sum(weights)
  return jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1) / total, deltas)


def server_update(server_optimizer: optax.GradientTransformation, state: ServerState,
                  average_delta) -> ServerState:
  """Applies the average delta as a negative pseudo-gradient."""
  pseudo_gradient = jax.tree.map(jnp.negative, average_delta)
  updates, opt_state = server_optimizer.update(pseudo_gradient, state.opt_state, state.params)
  return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state,
                       round=state.round + 1)


def current_clip_norm(client_privacy: ClientPrivacy, state: ServerState):
  return state.privacy.clip_norm if client_privacy.adaptive else client_privacy.clip_norm


def server_noise_rngs(round_rng):
  """`(update_noise_rng, count_noise_rng)` of a round."""
  return jax.random.split(jax.random.fold_in(round_rng, SERVER_NOISE_STREAM))


def private_server_update(client_privacy: ClientPrivacy, server_optimizer, state: ServerState,
                          clipped_sum, norms, mask, round_rng):
  """Noise on the sum of clipped deltas, / expected clients, server step, clip-norm step.

  `norms` (pre-clip) and `mask` (False for padding) have one entry per client slot; only the
  adaptive clip norm reads them, through its own noised count. Returns `(state, metrics)`.
  """
  update_rng, count_rng = server_noise_rngs(round_rng)
  clip_norm = current_clip_norm(client_privacy, state)
  noisy = client_dp.noisy_sum(clipped_sum, update_rng, clip_norm, client_privacy.noise_multiplier)
  average = jax.tree.map(lambda x: x / client_privacy.expected_clients, noisy)
  new_state = server_update(server_optimizer, state, average)
  metrics = {}
  if client_privacy.adaptive:
    privacy, metrics = client_dp.adaptive_clip_update(
        state.privacy, norms, mask, count_rng, client_privacy.target_quantile,
        client_privacy.learning_rate, client_privacy.count_noise_multiplier,
        client_privacy.expected_clients)
    new_state = new_state.replace(privacy=privacy)
  return new_state, metrics


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
  return 'threads' if platform == 'cpu' else 'vmap'


def resolve_client_threads(client_threads: int) -> int:
  """`fl.client_threads`: 0 means one thread per CPU core this process may use."""
  if client_threads < 0:
    raise ValueError(f'fl.client_threads must be >= 0 (0 = one per CPU core), got '
                     f'{client_threads}.')
  return client_threads or len(os.sched_getaffinity(0))


def client_mesh(devices=None) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  return Mesh(devices.reshape(-1), ('clients',))


def vmap_round(task, server_optimizer, state: ServerState, batches, weights, client_ids,
               round_rng, client_privacy: ClientPrivacy | None = None):
  """The whole round as one function of stacked client inputs (jit it)."""
  local = functools.partial(client_lib.local_update, task)
  deltas, metrics = jax.vmap(local, in_axes=(None, 0, 0))(
      state.params, batches, client_rngs(round_rng, client_ids))
  check_client_message(deltas, state.params, client_axis=True)
  # Padding slots from `sampling.round_inputs` re-run client 0 on a copy of its batches; with
  # weight 0 (FedAvg) or masked out (DP-FedAvg) their deltas reach nothing, so they neither
  # release anything nor spend privacy budget (the accountant counts each real hospital once
  # per round).
  if client_privacy is None:
    state = server_update(server_optimizer, state, fedavg_aggregate(deltas, weights))
    return state, weighted_metrics(metrics, weights)
  # Padding slots (weight 0) are masked out of the sum and the clip-norm count.
  mask = weights > 0
  clip_norm = current_clip_norm(client_privacy, state)
  clipped, norms = jax.vmap(client_dp.clip_update, in_axes=(0, None))(deltas, clip_norm)
  clipped_sum = jax.tree.map(
      lambda x: jnp.sum(jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0), axis=0),
      clipped)
  state, privacy_metrics = private_server_update(client_privacy, server_optimizer, state,
                                                 clipped_sum, norms, mask, round_rng)
  return state, dict(weighted_metrics(metrics, mask.astype(jnp.float32)), **privacy_metrics)


def make_round_fn(task, server_optimizer, strategy: str, mesh: Mesh | None = None,
                  client_privacy: ClientPrivacy | None = None,
                  client_threads: int = 0, fuse_local_steps: bool = True,
                  client_compiler_options: dict | None = None) -> Callable:
  """Returns `round_fn(state, batches, weights, client_ids, round_rng) -> (state, metrics)`.

  The number of participating clients must be a multiple of the mesh size for
  `vmap` (pad with zero-weight clients; see `sampling.round_inputs`). With
  `client_privacy`, the round is DP-FedAvg (weights then only mark padding: 0 or not).
  `client_threads` bounds the clients in flight under `threads` (0: one per CPU core);
  `fuse_local_steps` and `client_compiler_options` (XLA options for the client-update
  programs, e.g. `cpu_backend.client_compiler_options`) are `SequentialRound`'s
  (`sequential` and `threads` only).
  """
  strategy = resolve_strategy(strategy)
  if strategy == 'vmap':
    mesh = mesh or client_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    by_client = NamedSharding(mesh, PartitionSpec('clients'))
    return jax.jit(
        functools.partial(vmap_round, task, server_optimizer, client_privacy=client_privacy),
        in_shardings=(replicated, by_client, by_client, by_client, replicated),
        out_shardings=(replicated, replicated))
  workers = resolve_client_threads(client_threads) if strategy == 'threads' else 1
  return SequentialRound(task, server_optimizer, client_privacy, workers, fuse_local_steps,
                         client_compiler_options)


@functools.lru_cache(maxsize=8)
def _client_programs(task, compiler_options: tuple):
  """The jitted `(local_update, client_init, client_step)` of `task`, one set per process.

  Every `ClientUpdate` of one task (the `sequential` and `threads` rounds of a comparison,
  a baseline's several rounds) then compiles each program once. Tasks hash by identity;
  the cache holds the few most recent ones.
  """
  jit = functools.partial(jax.jit, compiler_options=dict(compiler_options) or None)
  return (jit(functools.partial(client_lib.local_update, task)),
          jax.jit(functools.partial(client_lib.client_init, task)),
          jit(functools.partial(client_lib.client_step, task)))


class ClientUpdate:
  """One client's `(delta, step-mean metrics)` from its `(K, B, ...)` batches, jitted.

  With `fuse_local_steps`, a client's K local steps are one compiled program,
  `client.local_update`, the very function `vmap_round` vmaps: on XLA's CPU backend that
  runs ~10% faster than one program per step (BENCHMARKS.md), and its compile time grows
  with K. Without it, only `client_step` is compiled for the model (once, reused for every
  step of every client, whatever K). `compiler_options` go to XLA for those programs.
  Used by `SequentialRound` and the Flower hospital.
  """

  def __init__(self, task, fuse_local_steps: bool = True, compiler_options: dict | None = None):
    self._fused = fuse_local_steps
    self._local_update, self._init, self._step = _client_programs(
        task, tuple(sorted((compiler_options or {}).items())))
    self._final = jax.jit(self._final_fn)
    self._fold_in = jax.jit(jax.random.fold_in)

  @staticmethod
  def _final_fn(client_state, server_params, step_metrics):
    """`client_final` and the step-mean metrics, as `client.local_update` ends."""
    metrics = jax.tree.map(lambda *m: jnp.mean(jnp.stack(m)), *step_metrics)
    return client_lib.client_final(client_state, server_params), metrics

  def __call__(self, server_params, batches, rng):
    if self._fused:
      return self._local_update(server_params, batches, rng)
    client_state = self._init(server_params)
    step_metrics = []
    for step in range(batches['condition'].shape[0]):
      batch = jax.tree.map(lambda x, step=step: x[step], batches)
      client_state, metrics = self._step(client_state, batch, self._fold_in(rng, step))
      step_metrics.append(metrics)
    return self._final(client_state, server_params, step_metrics)


class SequentialRound:
  """A Python loop over clients (the same math as `vmap_round`).

  Each client's work is a `ClientUpdate` (`fuse_local_steps` and `client_compiler_options`
  are its). With `workers > 1`, up to that many clients run at once on a thread pool
  (JAX releases the GIL while XLA runs); their deltas are accumulated in client order, so
  the sum is the same to the bit, and at most `workers + 1` client results are resident,
  whatever the number of clients.
  """

  def __init__(self, task, server_optimizer, client_privacy: ClientPrivacy | None = None,
               workers: int = 1, fuse_local_steps: bool = True,
               client_compiler_options: dict | None = None):
    self._privacy = client_privacy
    self._client_update_fn = ClientUpdate(task, fuse_local_steps, client_compiler_options)
    self._accumulate = jax.jit(self._accumulate_fn)
    self._finish = jax.jit(functools.partial(self._finish_fn, server_optimizer))
    self._accumulate_clipped = jax.jit(self._accumulate_clipped_fn)
    self._finish_private = jax.jit(functools.partial(private_server_update, client_privacy,
                                                     server_optimizer))
    self._fold_in = jax.jit(jax.random.fold_in)
    self._workers = workers
    self._pool = (concurrent.futures.ThreadPoolExecutor(workers, 'client')
                  if workers > 1 else None)
    self._compiled = False

  @staticmethod
  def _accumulate_fn(total, metric_sums, delta, server_params, metrics, weight):
    check_client_message(delta, server_params)
    total = jax.tree.map(lambda t, d: t + weight * d, total, delta)
    metric_sums = jax.tree.map(lambda s, m: s + weight * m, metric_sums, metrics)
    return total, metric_sums

  @staticmethod
  def _accumulate_clipped_fn(total, metric_sums, delta, server_params, metrics, clip_norm):
    """Adds one client's clipped delta (uniform weight); returns its pre-clip norm too."""
    check_client_message(delta, server_params)
    clipped, norm = client_dp.clip_update(delta, clip_norm)
    total = jax.tree.map(jnp.add, total, clipped)
    metric_sums = jax.tree.map(jnp.add, metric_sums, metrics)
    return total, metric_sums, norm

  @staticmethod
  def _finish_fn(server_optimizer, state, total, total_weight, metric_sums):
    average = jax.tree.map(lambda t: t / total_weight, total)
    metrics = jax.tree.map(lambda m: m / total_weight, metric_sums)
    return server_update(server_optimizer, state, average), metrics

  def _client_update(self, server_params, batches, i, client_id, round_rng):
    """One client's `(delta, metrics)`, computed (the worker's whole job)."""
    result = self._client_update_fn(server_params, jax.tree.map(lambda x: x[i], batches),
                                    self._fold_in(round_rng, client_id))
    # Blocking here keeps each worker on one client until its work is done.
    return jax.block_until_ready(result)

  def _client_results(self, server_params, batches, participants, client_ids, round_rng):
    """Yields `(i, delta, metrics)` in client order, <= workers in flight."""
    pending = collections.deque()
    for i in participants:
      if self._pool is None or not self._compiled:
        # Without a pool every client runs here; with one, the first client ever runs
        # alone, so threads never race to compile.
        yield (i,) + self._client_update(server_params, batches, i, client_ids[i], round_rng)
        self._compiled = True
        continue
      pending.append((i, self._pool.submit(self._client_update, server_params, batches, i,
                                           client_ids[i], round_rng)))
      if len(pending) > self._workers:
        j, future = pending.popleft()
        yield (j,) + future.result()
    while pending:
      j, future = pending.popleft()
      yield (j,) + future.result()

  def __call__(self, state: ServerState, batches, weights, client_ids, round_rng):
    weights = np.asarray(weights, np.float32)
    client_ids = np.asarray(client_ids)
    total = jax.tree.map(jnp.zeros_like, state.params)
    metric_sums = None
    norms = np.zeros(len(client_ids), np.float32)
    # Padding clients (weight 0) contribute nothing; skip their compute.
    participants = [i for i in range(len(client_ids)) if weights[i] != 0.0]
    for i, delta, metrics in self._client_results(
        state.params, batches, participants, client_ids, round_rng):
      if metric_sums is None:
        metric_sums = jax.tree.map(jnp.zeros_like, metrics)
      if self._privacy is None:
        total, metric_sums = self._accumulate(total, metric_sums, delta, state.params,
                                              metrics, weights[i])
      else:
        total, metric_sums, norms[i] = self._accumulate_clipped(
            total, metric_sums, delta, state.params, metrics,
            current_clip_norm(self._privacy, state))
    if self._privacy is None:
      return self._finish(state, total, jnp.sum(weights), metric_sums)
    mask = weights > 0
    state, privacy_metrics = self._finish_private(state, total, norms, mask, round_rng)
    metrics = jax.tree.map(lambda m: m / np.sum(mask), metric_sums)
    return state, dict(metrics, **privacy_metrics)
