"""Round time and memory from 3 to 1,000 clients in the population, a fixed number per round.

    python -m benchmarks.scaling --populations=3,32,100,1000 --clients_per_round=32 \
        --json=/tmp/scaling.json

Each point runs in its own process (peak memory is per process), builds `population` small
phantom hospitals (`examples_per_client` images each, configs/phantom.py model, batch size
and local steps), runs `warmup` untimed rounds, then `rounds` timed ones sampling
`min(clients_per_round, population)` clients each. Reported per point: median round time,
host RSS after the data is built, peak host RSS during the timed rounds (the kernel's
high-water mark, reset after warm-up; `resource.getrusage` gives the whole process's peak),
the federation's bytes, and the device's peak memory where the backend reports it. A
participants sweep at the largest population (`--participants`) shows what the round's
memory grows with. Children share a persistent compilation cache, so the round compiles once.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

# Children run `python -m benchmarks.scaling` from here.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_POPULATIONS = flags.DEFINE_list('populations', ['3', '32', '100', '1000'],
                                 'Clients in the federation, one process each.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 32, 'Sampled per round.')
_PARTICIPANTS = flags.DEFINE_list('participants', ['8'], 'Extra clients-per-round points at the '
                                  'largest population (memory vs participants).')
_STRATEGY = flags.DEFINE_string('strategy', 'auto', "Engine strategy, 'naive' or a candidate.")
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds; the median is reported.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed rounds first (compilation).')
_EXAMPLES = flags.DEFINE_integer('examples_per_client', 16, 'Phantom images per hospital.')
_CONFIG_ARG = flags.DEFINE_string('config_arg', '', "configs/phantom.py variant, e.g. 'runlocal'.")
_CACHE = flags.DEFINE_string('compilation_cache_dir', '', 'Shared by the children (empty: a '
                             'temporary folder).')
_CHILD = flags.DEFINE_integer('child_population', 0, 'Internal: run one point and print JSON.')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results (empty: stdout only).')

_HIGH_WATER = 'VmHWM'


def _status_bytes(field: str) -> int | None:
  """A `/proc/self/status` memory field in bytes (Linux), else None."""
  try:
    for line in pathlib.Path('/proc/self/status').read_text().splitlines():
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _reset_high_water() -> bool:
  """Resets the kernel's peak-RSS mark of this process (Linux `clear_refs` 5)."""
  try:
    pathlib.Path('/proc/self/clear_refs').write_text('5')
    return True
  except OSError:
    return False


def run_point(population: int, clients_per_round: int) -> dict:
  """One population in this process: build, warm up, time; memory around the timed rounds."""
  from benchmarks import round_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  setup = round_lib.Setup(round_lib.benchmark_config(population, _EXAMPLES.value,
                                                     _CONFIG_ARG.value or None))
  data_bytes = sum(c.images.nbytes + c.conditions.nbytes for c in setup.federation.clients)
  rss_after_data = _status_bytes('VmRSS')
  participants = min(clients_per_round, population)
  round_fn, execution, _ = round_lib.make_round(setup, _STRATEGY.value, participants)
  inputs = [setup.round_inputs(r, participants) for r in range(_WARMUP.value + _ROUNDS.value)]
  state = round_lib.place_state(execution, setup.state)
  for r in range(_WARMUP.value):
    state, _ = round_lib.block(round_fn(state, *inputs[r], setup.rng(r)))
  rss_before_rounds = _status_bytes('VmRSS')
  reset = _reset_high_water()
  times = []
  import time  # pylint: disable=g-import-not-at-top
  for r in range(_WARMUP.value, _WARMUP.value + _ROUNDS.value):
    started = time.perf_counter()
    state, _ = round_lib.block(round_fn(state, *inputs[r], setup.rng(r)))
    times.append(time.perf_counter() - started)
  times.sort()
  return {
      'population': population, 'clients_per_round': participants,
      'strategy': _STRATEGY.value, 'round_s': times[len(times) // 2],
      'round_times_s': [round(t, 4) for t in times],
      'data_bytes': int(data_bytes), 'rss_after_data_bytes': rss_after_data,
      'rss_before_rounds_bytes': rss_before_rounds,
      'peak_rss_during_rounds_bytes': _status_bytes(_HIGH_WATER) if reset else None,
      'peak_rss_process_bytes': round_lib.peak_host_rss_bytes(),
      'device_memory': round_lib.device_memory(),
      'platform': jax.default_backend(),
      'load_average': round_lib.load_average()}


def _child_command(population: int, clients_per_round: int) -> list[str]:
  passed = ['rounds', 'warmup', 'examples_per_client', 'config_arg', 'strategy']
  command = [sys.executable, '-m', 'benchmarks.scaling',
             f'--child_population={population}', f'--clients_per_round={clients_per_round}']
  return command + [f'--{name}={flags.FLAGS[name].value}' for name in passed]


def main(argv):
  del argv
  if _CHILD.value:
    print('RESULT ' + json.dumps(run_point(_CHILD.value, _CLIENTS_PER_ROUND.value)), flush=True)
    return
  from benchmarks import round_lib  # pylint: disable=g-import-not-at-top
  load_before = round_lib.load_average()
  cache = _CACHE.value or tempfile.mkdtemp(prefix='scaling_xla_cache_')
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  populations = [int(p) for p in _POPULATIONS.value]
  points = [(p, _CLIENTS_PER_ROUND.value) for p in populations]
  points += [(max(populations), int(c)) for c in _PARTICIPANTS.value]
  results = []
  for population, clients_per_round in points:
    output = subprocess.run(_child_command(population, clients_per_round), env=env,
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    lines = [l for l in output.stdout.splitlines() if l.startswith('RESULT ')]
    if output.returncode or not lines:
      raise RuntimeError(f'scaling point population={population} failed:\n{output.stderr[-3000:]}')
    results.append(json.loads(lines[-1][len('RESULT '):]))
    print(json.dumps(results[-1]), flush=True)
  by_population = {r['population']: r for r in results
                   if r['clients_per_round'] == min(_CLIENTS_PER_ROUND.value, r['population'])}
  reference = by_population.get(_CLIENTS_PER_ROUND.value)
  if reference:
    for row in results:
      row['round_s_over_population_equal_to_participants'] = round(
          row['round_s'] / reference['round_s'], 3)
  machine = round_lib.machine_info()
  machine['load_average_before'] = load_before
  report = {'results': results, 'device': machine['device_kind'], 'machine': machine,
            'config': {'examples_per_client': _EXAMPLES.value, 'rounds': _ROUNDS.value,
                       'warmup': _WARMUP.value, 'config_arg': _CONFIG_ARG.value}}
  round_lib.print_report(report, _JSON.value)


if __name__ == '__main__':
  app.run(main)
