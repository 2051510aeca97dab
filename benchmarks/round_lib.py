"""Shared pieces of the round benchmarks: setup, the naive baseline, timing, machine facts.

`benchmarks/round.py`, `scaling.py`, `compile.py` and `gpu.sh` all time the same thing: one
FedAvg round of the phantom default (configs/phantom.py: model sizes, batch size and local
steps) over `num_clients` small phantom hospitals. Only the per-client example count is
shrunk (`examples_per_client`), which changes what a round samples from, not what it
computes, so building hundreds of hospitals stays cheap.

The naive baseline (`round_candidates.NaiveRound`) is what fedjax's default backend does: a
Python loop that calls one jitted local update per client, then FedAvg and the server update.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import resource
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import round_candidates
from configs import phantom as phantom_config
from fedgan_jax.data import registry
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import autotune
from fedgan_jax.federated import rngs
from fedgan_jax.federated import sampling
from fedgan_jax.federated import server as server_lib
from fedgan_jax.federated import task as task_lib


def load_average() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def print_report(report: dict[str, Any], path: str | None) -> None:
  """Prints the benchmark's JSON report and, given a path, writes the same text there."""
  text = json.dumps(report, indent=1)
  if path:
    pathlib.Path(path).write_text(text)
  print(text)


def machine_info() -> dict[str, Any]:
  """What a reader needs to judge a timing: hardware, versions, date and how busy it was."""
  device = jax.devices()[0]
  return {
      'platform': jax.default_backend(),
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'python': platform.python_version(),
      'jax': jax.__version__,
      'jaxlib': getattr(jax.lib, '__version__', None) or _jaxlib_version(),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'load_average': load_average(),
      'command': ' '.join([os.path.basename(sys.executable)] + sys.argv),
  }


def _jaxlib_version() -> str:
  import jaxlib  # pylint: disable=g-import-not-at-top
  return jaxlib.__version__


def peak_host_rss_bytes() -> int:
  """Peak resident set size of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_memory() -> dict[str, int] | None:
  """Peak/current device memory where the backend reports it (GPU, TPU); None on CPU."""
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return {k: int(stats[k]) for k in ('peak_bytes_in_use', 'bytes_in_use', 'bytes_limit')
          if k in stats}


def benchmark_config(num_clients: int, examples_per_client: int | tuple[int, ...],
                     config_arg: str | None = None, test_examples: int = 16):
  """configs/phantom.py with `num_clients` hospitals of `examples_per_client` each.

  A tuple of sizes is cycled over the hospital styles, so clients can be unequal.
  """
  config = phantom_config.get_config(config_arg)
  config.data.num_hospitals = num_clients
  sizes = examples_per_client if isinstance(examples_per_client, tuple) else (
      examples_per_client,)
  for i, hospital in enumerate(config.data.hospitals):
    hospital.examples = int(sizes[i % len(sizes)])
  config.data.test_examples = test_examples
  return config


class Setup:
  """The federation, task and server (`federated.server`) of a benchmark's config (phantom's
  `benchmark_config`, or any experiment config: its data is loaded as training loads it)."""

  def __init__(self, config):
    self.config = config
    self.federation = registry.load_federation(config)
    self.task = task_lib.build_task(config, self.federation.schema, self.federation.image_shape)
    self.server = server_lib.build(config, self.task, self.federation.image_shape,
                                   self.federation.schema.model_dim)
    self.server_optimizer = self.server.server_optimizer
    self.state = self.server.state

  @property
  def fl(self):
    return self.config.fl

  def round_inputs(self, round_index: int, clients_per_round: int, pad_to_multiple: int = 1):
    """`(batches, weights, client_ids)` of one round, as the training loop builds them."""
    clients = self.federation.clients
    if clients_per_round > len(clients):
      # More slots than hospitals (a real config has a few): each slot is a hospital in turn.
      ids = np.arange(clients_per_round) % len(clients)
    else:
      ids = sampling.sample_clients(self.config.seed, round_index, len(clients),
                                    clients_per_round)
    return sampling.round_inputs(clients, ids, self.config.seed, round_index,
                                 self.fl.local_steps, self.fl.batch_size, pad_to_multiple)

  def rng(self, round_index: int):
    return rngs.round_key(self.config.seed, round_index)


def make_round(setup: Setup, strategy: str, clients_per_round: int | None = None):
  """`(round_fn, execution or None, decision)` for a strategy name.

  Names: an engine execution as train.py builds it (`autotune.Execution` names: 'threads',
  'threads+ynn', 'sequential+unfused', 'vmap', ...; the config's other knobs), 'auto' (the
  engine's measured choice among them for `clients_per_round` clients, whose
  `decision` = `{'choice', 'note', 'decision_s'}`), or a round_candidates name ('naive', ...).
  """
  engine = strategy.partition('+')[0]
  if engine == 'auto':
    config = setup.config.copy_and_resolve_references()
    config.runtime.strategy = 'auto'
    config.runtime.autotune = dataclasses.replace(config.runtime.autotune, min_rounds=0)
    started = time.perf_counter()
    slots = clients_per_round or len(setup.federation.clients)
    chosen = server_lib.choose_execution(
        config, setup.task, setup.server,
        lambda: (setup.round_inputs(0, slots, jax.device_count()), setup.rng(0)), 1)
    decision = {'choice': chosen.execution.name, 'note': chosen.note,
                'decision_s': round(time.perf_counter() - started, 3)}
    mesh = algorithm.client_mesh() if chosen.execution.strategy == 'vmap' else None
    round_fn = chosen.round_fn or server_lib.round_fn(setup.task, setup.server,
                                                      chosen.execution, mesh)
    return round_fn, chosen.execution, decision
  if engine in algorithm.STRATEGIES:
    execution = autotune.Execution.from_name(strategy, setup.config.runtime.client_threads)
    if execution.strategy == 'auto':
      raise ValueError(f'{strategy!r}: auto takes no suffix.')
    mesh = algorithm.client_mesh() if execution.strategy == 'vmap' else None
    return server_lib.round_fn(setup.task, setup.server, execution, mesh), execution, None
  return round_candidates.make(strategy, setup.task, setup.server_optimizer), None, None


def place_state(execution, state):
  """Gives the vmap round's state its mesh sharding up front, as train.py does.

  The vmap round returns a mesh-replicated state; an unsharded first state would make the
  second round compile again. `execution`: `make_round`'s (None for candidates).
  """
  if execution is None or execution.strategy != 'vmap':
    return state
  return server_lib.place_on_mesh(algorithm.client_mesh(), state)


def block(tree):
  return jax.block_until_ready(tree)


class TimedRound:
  """One strategy's round function, state and the last round's metrics."""

  def __init__(self, strategy: str, setup: Setup, clients_per_round: int | None = None):
    self.strategy = strategy
    self._setup = setup
    self._round_fn, execution, self.decision = make_round(setup, strategy, clients_per_round)
    self.state = place_state(execution, setup.state)
    self.metrics = None

  def run(self, round_index: int, inputs) -> None:
    self.state, self.metrics = block(self._round_fn(self.state, *inputs,
                                                    self._setup.rng(round_index)))

  def summary(self, timing: autotune.Timing) -> dict[str, Any]:
    summary = {'round_s': timing.round_s,
               'round_times_s': [round(t, 4) for t in timing.times_s],
               'first_round_s': round(timing.first_s, 3),
               'metrics': {k: float(v) for k, v in jax.device_get(self.metrics).items()}}
    return dict(summary, **self.decision) if self.decision else summary


def time_strategies(strategies, setup: Setup, clients_per_round: int, rounds: int,
                    warmup: int = 1) -> dict[str, tuple[dict[str, Any], Any]]:
  """Median wall time of `rounds` rounds after `warmup` untimed ones (compilation), per strategy.

  Timed rounds are interleaved (`autotune.measure`: round r of every strategy, then round
  r + 1), so a change in the machine's load hits all strategies alike. Inputs are sampled
  before the clock starts (as in train.py, which times `round_fn` alone); host-to-device
  transfer of the batches is part of the round. 'auto' is measured as the round it chose;
  its decision's cost is its summary's `decision_s`. Returns `{strategy: (summary, final
  state)}`.
  """
  inputs = [setup.round_inputs(r, clients_per_round) for r in range(warmup + rounds)]
  timed = {s: TimedRound(s, setup, clients_per_round) for s in strategies}
  timings = autotune.measure({s: (lambda r, t=t: t.run(r, inputs[r])) for s, t in timed.items()},
                             rounds, warmup)
  return {s: (t.summary(timings[s]), t.state) for s, t in timed.items()}


def time_rounds(strategy: str, setup: Setup, clients_per_round: int, rounds: int,
                warmup: int = 1) -> dict[str, Any]:
  """`time_strategies` of one strategy; the summary has the final `state` too."""
  summary, state = time_strategies([strategy], setup, clients_per_round, rounds, warmup)[
      strategy]
  return dict(summary, state=state)


def max_abs_difference(tree_a, tree_b) -> float:
  leaves = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), tree_a, tree_b))
  return float(max(leaves))


def matmul_peak_flops(size: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """This machine's `dtype` matmul FLOP/s: the best of `repeats` timed `size`-square products."""
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  dot = jax.jit(jnp.dot)
  block(dot(a, b))
  best = np.inf
  for _ in range(repeats):
    started = time.perf_counter()
    block(dot(a, b))
    best = min(best, time.perf_counter() - started)
  return 2.0 * size ** 3 / best


def compiled_flops(jitted: Callable, *args) -> tuple[float, float]:
  """`(flops, compile_s)` of `jitted(*args)` from XLA's cost analysis, timing lower+compile."""
  started = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - started
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older jax returns one dict per device program.
    analysis = analysis[0]
  return float(analysis.get('flops', np.nan)), compile_s
