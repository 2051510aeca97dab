"""Measured execution choices: time the round's candidate executions once, cache the fastest.

Which way of running a round's clients is fastest depends on the machine, not only on the
backend: on one 2-core CPU the client programs run faster without jaxlib's YNNPACK
convolution fusions, on another with them (issue 23). So `runtime.strategy='auto'` times a
few candidate `Execution`s on the first run, for this model and batch (one untimed round
each, for compilation, then `rounds` timed ones, interleaved so a change in load hits all
alike), takes the fastest median, and caches the decision in a JSON file beside the XLA
compilation cache, keyed by the facts that decide it (backend, device kind, CPU model and
cores, jax/jaxlib versions, the program's shapes and the config that changes its math). A
later run with the same key reuses it without running anything. Every candidate computes the
same round (tests check it), so the decision changes speed, never results beyond rounding.

This module is pure bookkeeping over callables and a clock, so tests drive it with fake
timings; `federated/server.py` builds the real candidates and reads the config.
"""

import dataclasses
import datetime
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Mapping

from absl import logging

CACHE_VERSION = 1


# No postponed annotations in this module: ml_collections' flag parser reads these types.
@dataclasses.dataclass
class Settings:
  """`runtime.autotune`: how 'auto' measures (numbers: configs/common.py).

  Attributes:
    rounds: timed rounds per candidate after its untimed (compiling) one; the median counts.
    budget_s: candidates not started by then are skipped (compiles dominate).
    min_rounds: runs of fewer rounds take the backend's default unmeasured.
    clients: candidates time rounds of the first round's first this-many clients (0 = all).
    cache: the decision file; '' = fedgan_autotune.json in the XLA compilation cache directory.
  """
  rounds: int
  budget_s: float
  min_rounds: int
  clients: int
  cache: str


@dataclasses.dataclass(frozen=True)
class Execution:
  """How a round's clients run (`algorithm.make_round_fn`'s knobs).

  Attributes:
    strategy: 'vmap', 'sequential' or 'threads'.
    client_threads: clients in flight under 'threads' (0 = one per core).
    fuse_local_steps: a client's K local steps as one program.
    ynn_fusions: keep jaxlib's YNNPACK fusions in the client programs (XLA CPU only).
  """
  strategy: str
  client_threads: int = 0
  fuse_local_steps: bool = True
  ynn_fusions: bool = False

  @property
  def name(self) -> str:
    """'threads', 'threads+ynn', 'sequential+unfused', ...: the strategy and its departures
    from the default knobs (the names `benchmarks/round.py --strategies` takes)."""
    suffixes = ['ynn'] if self.ynn_fusions else []
    if not self.fuse_local_steps:
      suffixes.append('unfused')
    return '+'.join([self.strategy] + suffixes)

  @classmethod
  def from_name(cls, name: str, client_threads: int = 0) -> 'Execution':
    strategy, *suffixes = name.split('+')
    unknown = set(suffixes) - {'ynn', 'unfused'}
    if unknown:
      raise ValueError(f'execution {name!r}: unknown suffix(es) {sorted(unknown)}; expected '
                       "'<strategy>[+ynn][+unfused]'.")
    return cls(strategy, client_threads, 'unfused' not in suffixes, 'ynn' in suffixes)


def candidates(platform: str, participants: int, process_count: int = 1,
               ynn_available: bool = True, client_threads: int = 0) -> list['Execution']:
  """The executions worth timing here, the backend's usual best first.

  CPU: the threaded and sequential client loops, with and without YNNPACK fusions and fused
  local steps; `vmap` is left out (vmapped per-client weights become grouped convolutions,
  ~3x slower on XLA CPU, BENCHMARKS.md, and its compile is the longest). The sequential loop
  comes second because it runs the threaded loop's compiled programs (no compile of its
  own), so a budget spent on compiles still compares two. GPU/TPU: `vmap` and the
  sequential loop. Several processes: `vmap` only (the round is sharded over all hosts).
  """
  if process_count > 1:
    return [Execution('vmap')]
  if platform != 'cpu':
    return [Execution('vmap'), Execution('sequential')]
  loop = 'threads' if participants > 1 else 'sequential'
  options = [Execution(loop, client_threads)]
  if loop == 'threads':
    options.append(Execution('sequential'))
  options += [Execution(loop, client_threads, ynn_fusions=True),
              Execution(loop, client_threads, fuse_local_steps=False)]
  return [e for e in options if ynn_available or not e.ynn_fusions]


@dataclasses.dataclass
class Timing:
  """One candidate's measurement: the untimed first rounds (compilation) and the timed ones."""
  first_s: float
  times_s: list[float]

  @property
  def round_s(self) -> float:
    return statistics.median(self.times_s) if self.times_s else math.inf


def measure(runs: Mapping[str, Callable[[int], Any]], rounds: int, warmup: int = 1,
            clock: Callable[[], float] = time.perf_counter,
            budget_s: float = math.inf) -> dict[str, Timing]:
  """Times `runs[name](round_index)` (one whole round each call, finished on return).

  Each candidate first runs `warmup` untimed rounds (compilation), then the candidates take
  turns for `rounds` timed rounds. Past `budget_s` (counted from the start), candidates not
  yet started are skipped and the timed rounds stop after the round every candidate has had
  one of; the first candidate always runs. Returns `{name: Timing}` of those measured, in
  the order given.
  """
  started = clock()
  spent = lambda: clock() - started
  timings = {}
  for name, run in runs.items():
    if timings and spent() >= budget_s:
      logging.info('autotune: %s skipped (the %.0f s budget is spent).', name, budget_s)
      continue
    first = clock()
    for r in range(warmup):
      run(r)
    timings[name] = Timing(clock() - first, [])
  for r in range(warmup, warmup + rounds):
    if r > warmup and spent() >= budget_s:
      break
    for name, timing in timings.items():
      begin = clock()
      runs[name](r)
      timing.times_s.append(clock() - begin)
  return timings


def fastest(timings: Mapping[str, Timing]) -> str:
  """The name with the smallest median round time (the first given on a tie)."""
  return min(timings, key=lambda name: timings[name].round_s)


def cache_key(facts: Mapping[str, Any]) -> str:
  """A short stable digest of `facts` (JSON-serializable, or stringified)."""
  text = json.dumps(facts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def load_decisions(path: str) -> dict[str, Any]:
  """The decisions stored in `path`; empty, with a warning, when it is unreadable."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as handle:
      stored = json.load(handle)
    if stored.get('version') != CACHE_VERSION or not isinstance(stored.get('decisions'), dict):
      raise ValueError(f'not a version-{CACHE_VERSION} decision file')
    return stored['decisions']
  except (OSError, ValueError, AttributeError) as error:
    logging.warning('autotune: ignoring the unreadable decision cache %s (%s); measuring '
                    'again, and it will be rewritten.', path, error)
    return {}


def store_decision(path: str, key: str, decision: Mapping[str, Any]) -> None:
  """Adds `decision` under `key` to `path` (written whole to a temporary file, then renamed,
  so a reader never sees half a file). A write that fails only warns: the run goes on."""
  try:
    decisions = load_decisions(path)
    decisions[key] = dict(decision)
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
    with os.fdopen(fd, 'w') as handle:
      json.dump({'version': CACHE_VERSION, 'decisions': decisions}, handle, indent=1,
                sort_keys=True)
    os.replace(temporary, path)
  except OSError as error:
    logging.warning('autotune: could not write the decision cache %s (%s).', path, error)


@dataclasses.dataclass
class Decision:
  """What `decide` chose and why.

  Attributes:
    choice: the chosen candidate's name.
    round_s: `{name: median round seconds}` as measured (now or when cached).
    cost_s: seconds `decide` took in this process (0-ish on a cache hit).
    cached: whether it came from the cache file.
    measured_at: when the times were measured (UTC, ISO 8601).
    unmeasured: candidates the budget left out (then the decision is not cached).
  """
  choice: str
  round_s: dict[str, float]
  cost_s: float
  cached: bool
  measured_at: str
  unmeasured: tuple[str, ...] = ()

  def describe(self) -> str:
    """One line: the choice, every candidate's time, and where the decision came from."""
    times = ', '.join(f'{name} {seconds:.3g} s' for name, seconds in
                      sorted(self.round_s.items(), key=lambda item: item[1]))
    source = (f'cached decision of {self.measured_at}' if self.cached else
              f'measured in {self.cost_s:.0f} s')
    partial = (f'; not timed within the budget: {", ".join(self.unmeasured)}, so the next run '
               'measures again' if self.unmeasured else '')
    return f'{self.choice} (auto, {source}; round time {times}{partial})'


def decide(key: str, runs: Mapping[str, Callable[[int], Any]], cache_path: str | None,
           rounds: int, budget_s: float = math.inf, facts: Mapping[str, Any] | None = None,
           clock: Callable[[], float] = time.perf_counter) -> Decision:
  """The cached decision for `key` among `runs`, else one measured now.

  A decision is cached only when every candidate was timed. One cut short by `budget_s`
  (compiles are most of it) is used for this run and measured again by the next, which
  finds the candidates already compiled in the persistent XLA cache and so gets further.

  Args:
    key: `cache_key` of what decides the choice.
    runs: candidate name -> `run(round_index)` (see `measure`); nothing runs on a cache hit.
      A cached choice that is no longer among `runs` is measured again.
    cache_path: the JSON decision file, or None to measure every time.
    rounds, budget_s: `measure`'s.
    facts: stored beside the decision, for whoever reads the file.
  """
  started = clock()
  if cache_path:
    stored = load_decisions(cache_path).get(key)
    if isinstance(stored, dict) and stored.get('choice') in runs:
      return Decision(stored['choice'], dict(stored.get('round_s', {})), clock() - started,
                      True, str(stored.get('measured_at', '?')))
  timings = measure(runs, rounds, clock=clock, budget_s=budget_s)
  choice = fastest(timings)
  measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')
  decision = Decision(choice, {n: t.round_s for n, t in timings.items()}, clock() - started,
                      False, measured_at, tuple(n for n in runs if n not in timings))
  if cache_path and not decision.unmeasured:
    store_decision(cache_path, key, {
        'choice': choice, 'round_s': decision.round_s, 'measured_at': measured_at,
        'first_round_s': {n: t.first_s for n, t in timings.items()},
        'round_times_s': {n: t.times_s for n, t in timings.items()},
        'cost_s': decision.cost_s, 'facts': dict(facts or {})})
  return decision


def platform_facts() -> dict[str, Any]:
  """What about this machine and its software decides the fastest execution."""
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  return {'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
          'device_count': jax.device_count(), 'process_count': jax.process_count(),
          'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
          'cpu_model': _cpu_model(), 'cores': len(os.sched_getaffinity(0)),
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as handle:
      for line in handle:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top
  return platform.processor() or platform.machine()


def shapes_of(tree) -> list[str]:
  """`dtype[shape]` of every leaf of `tree`, in tree order (part of a program's facts)."""
  import jax  # pylint: disable=g-import-not-at-top
  return [f'{leaf.dtype}{list(leaf.shape)}' for leaf in jax.tree.leaves(tree)]
