"""How one client's work runs: the local update of any task, compiled, and clients in flight.

A task is anything with fedjax's three client functions, so the GAN (`client.GanTask`) and
the supervised baselines (`baselines.fedavg.SupervisedTask`) run on the same engine:

    client_init(server_params) -> client_state
    client_step(client_state, batch, rng) -> (client_state, metrics)
    client_final(client_state, server_params) -> delta      (the only thing that leaves a site)

`local_update` strings them together for K local steps; `ClientUpdate` is its jitted form for
one client at a time (the `sequential` and `threads` rounds, the Flower hospital); `client_results`
runs the clients of a round, a few at once on host threads, and hands back their results in
client order so that aggregation never depends on which finished first.

Local steps are unrolled in Python rather than run in `lax.scan`: on XLA's CPU backend
convolutions inside a loop body run ~19x slower (BENCHMARKS.md), and K is small.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
from typing import Any, Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp

from fedgan_jax.federated import rngs


class ClientTask(Protocol):
  """The client functions the engine runs (see the module docstring)."""

  def client_init(self, server_params): ...

  def client_step(self, client_state, batch, rng): ...

  def client_final(self, client_state, server_params): ...


def step_mean(step_metrics: Sequence[Any]):
  """The metrics of K local steps -> their means (what a client reports)."""
  return jax.tree.map(lambda *m: jnp.mean(jnp.stack(m)), *step_metrics)


def local_update(task: ClientTask, server_params, batches, rng):
  """client_init, K unrolled client steps, client_final.

  Args:
    batches: a pytree whose leaves have a leading axis of K local steps.
    rng: the client's key of the round (`rngs.client_key`); step k uses `fold_in(rng, k)`.
  Returns:
    `(delta, metrics)`, metrics averaged over the K steps.
  """
  state = task.client_init(server_params)
  step_metrics = []
  for step in range(jax.tree.leaves(batches)[0].shape[0]):
    batch = jax.tree.map(lambda x, s=step: x[s], batches)
    state, metrics = task.client_step(state, batch, jax.random.fold_in(rng, step))
    step_metrics.append(metrics)
  return task.client_final(state, server_params), step_mean(step_metrics)


@functools.lru_cache(maxsize=8)
def _client_programs(task: ClientTask, compiler_options: tuple):
  """The jitted `(local_update, client_init, client_step)` of `task`, one set per process.

  Every `ClientUpdate` of one task (the `sequential` and `threads` rounds of a comparison,
  a baseline's several rounds) then compiles each program once. Tasks hash by identity;
  the cache holds the few most recent ones.
  """
  jit = functools.partial(jax.jit, compiler_options=dict(compiler_options) or None)
  return (jit(functools.partial(local_update, task)), jax.jit(task.client_init),
          jit(task.client_step))


class ClientUpdate:
  """One client's `(delta, step-mean metrics)` from its `(K, ...)` batches, jitted.

  With `fuse_local_steps`, a client's K local steps are one compiled program,
  `local_update`, the very function the `vmap` round vmaps: on XLA's CPU backend that runs
  ~10% faster than one program per step (BENCHMARKS.md), and its compile time grows with K.
  Without it, only `client_step` is compiled for the model (once, reused for every step of
  every client, whatever K). `compiler_options` go to XLA for those programs.
  """

  def __init__(self, task: ClientTask, fuse_local_steps: bool = True,
               compiler_options: dict | None = None):
    self._fused = fuse_local_steps
    self._local_update, self._init, self._step = _client_programs(
        task, tuple(sorted((compiler_options or {}).items())))
    self._final = jax.jit(functools.partial(self._final_fn, task))
    self._fold_in = jax.jit(jax.random.fold_in)

  @staticmethod
  def _final_fn(task, client_state, server_params, step_metrics):
    """`client_final` and the step-mean metrics, as `local_update` ends."""
    return task.client_final(client_state, server_params), step_mean(step_metrics)

  def __call__(self, server_params, batches, rng):
    if self._fused:
      return self._local_update(server_params, batches, rng)
    client_state = self._init(server_params)
    step_metrics = []
    for step in range(jax.tree.leaves(batches)[0].shape[0]):
      batch = jax.tree.map(lambda x, step=step: x[step], batches)
      client_state, metrics = self._step(client_state, batch, self._fold_in(rng, step))
      step_metrics.append(metrics)
    return self._final(client_state, server_params, step_metrics)


class ClientRunner:
  """Runs the clients of a round with a `ClientUpdate`, up to `workers` at once.

  JAX releases the GIL while XLA runs, so concurrent clients fill the cores XLA's CPU
  convolutions leave idle (~1.5x over one client at a time on 2 idle cores, BENCHMARKS.md).
  Results come back in client order, and at most `workers + 1` of them are resident,
  whatever the number of clients.
  """

  def __init__(self, client_update: ClientUpdate, workers: int = 1):
    self._client_update = client_update
    self._fold_in = jax.jit(rngs.client_key)
    self._workers = workers
    self._pool = (concurrent.futures.ThreadPoolExecutor(workers, 'client')
                  if workers > 1 else None)
    self._compiled = False

  def _run(self, server_params, batches, i, client_id, round_rng):
    """One client's `(delta, metrics)`, computed (the worker's whole job)."""
    result = self._client_update(server_params, jax.tree.map(lambda x: x[i], batches),
                                 self._fold_in(round_rng, client_id))
    # Blocking here keeps each worker on one client until its work is done.
    return jax.block_until_ready(result)

  def __call__(self, server_params, batches, slots: Sequence[int], client_ids,
               round_rng) -> Iterator[tuple[int, Any, Any]]:
    """Yields `(slot, delta, metrics)` for each of `slots` (indices into the client axis of
    `batches` and `client_ids`), in that order."""
    pending = collections.deque()
    for i in slots:
      if self._pool is None or not self._compiled:
        # Without a pool every client runs here; with one, the first client ever runs
        # alone, so threads never race to compile.
        yield (i,) + self._run(server_params, batches, i, client_ids[i], round_rng)
        self._compiled = True
        continue
      pending.append((i, self._pool.submit(self._run, server_params, batches, i,
                                           client_ids[i], round_rng)))
      if len(pending) > self._workers:
        j, future = pending.popleft()
        yield (j,) + future.result()
    while pending:
      j, future = pending.popleft()
      yield (j,) + future.result()
