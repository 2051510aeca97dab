"""Round time of every client-execution strategy against the naive per-client loop.

    python -m benchmarks.round --clients=3,8,32 --json=/tmp/round.json

For each client count, builds that many small phantom hospitals (configs/phantom.py model,
batch size and local steps; every client takes part), runs `warmup` untimed rounds and
reports the median of `rounds` timed ones per strategy (interleaved, so changes in load hit
all alike): `naive` (a Python loop of jitted `execution.local_update`, see
round_candidates.NaiveRound), the engine's executions (`vmap`, `sequential`, `threads`, with
`+ynn` / `+unfused`: `autotune.Execution` names), `auto` (the engine's measured choice; its
row adds `choice` and `decision_s`, the cost of choosing), and any candidate of
benchmarks/round_candidates.py. All strategies start from the same state
and see the same inputs, so their final params must agree (`max_abs_diff_vs_naive`).

JSON: `{"results": [{"strategy", "clients", "round_s", "speedup_vs_naive", ...}], "device",
"machine", ...}`; `machine.load_average` is read before and after (timings on a busy
machine are pessimistic).
"""

import dataclasses
import json

from absl import app
from absl import flags

from benchmarks import round_lib

_CLIENTS = flags.DEFINE_list('clients', ['3', '8', '32'], 'Client counts (all take part).')
_STRATEGIES = flags.DEFINE_list('strategies', ['naive', 'vmap', 'sequential'],
                                "'naive', engine strategies, or round_candidates names.")
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds; the median is reported.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed rounds first (compilation).')
_EXAMPLES = flags.DEFINE_integer('examples_per_client', 32,
                                 'Phantom images per hospital (what rounds sample from).')
_CONFIG_ARG = flags.DEFINE_string('config_arg', '', "configs/phantom.py variant, e.g. 'runlocal'.")
_LOCAL_STEPS = flags.DEFINE_integer('local_steps', 0, 'Overrides fl.local_steps when > 0.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, 'Overrides fl.batch_size when > 0.')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results (empty: stdout only).')
_AUTOTUNE_CACHE = flags.DEFINE_string(
    'autotune_cache', '', "runtime.autotune.cache for the 'auto' strategy (empty: measure "
    'every run, as the benchmark enables no XLA compilation cache).')


def run(client_counts, strategies, rounds, warmup, examples_per_client, config_arg='',
        local_steps=0, batch_size=0, autotune_cache=''):
  """Times each strategy at each client count; returns the JSON-ready dict."""
  load_before = round_lib.load_average()
  results = []
  for clients in client_counts:
    config = round_lib.benchmark_config(clients, examples_per_client, config_arg or None)
    if local_steps:
      config.fl.local_steps = local_steps
    if batch_size:
      config.fl.batch_size = batch_size
    config.runtime.autotune = dataclasses.replace(config.runtime.autotune, cache=autotune_cache)
    setup = round_lib.Setup(config)
    timed = round_lib.time_strategies(strategies, setup, clients, rounds, warmup)
    states = {strategy: state for strategy, (_, state) in timed.items()}
    for strategy, (timing, _) in timed.items():
      results.append(dict(strategy=strategy, clients=clients, **timing))
      print(json.dumps({k: v for k, v in results[-1].items() if k != 'metrics'}), flush=True)
    for row in results:
      if row['clients'] != clients:
        continue
      if 'naive' in states:
        row['max_abs_diff_vs_naive'] = round_lib.max_abs_difference(
            states[row['strategy']].params, states['naive'].params)
  naive = {r['clients']: r['round_s'] for r in results if r['strategy'] == 'naive'}
  for row in results:
    if row['clients'] in naive:
      row['speedup_vs_naive'] = round(naive[row['clients']] / row['round_s'], 3)
  machine = round_lib.machine_info()
  machine['load_average_before'] = load_before
  return {'results': results, 'device': machine['device_kind'], 'machine': machine,
          'config': {'config_arg': config_arg, 'local_steps': config.fl.local_steps,
                     'batch_size': config.fl.batch_size, 'image_size': config.data.image_size,
                     'examples_per_client': examples_per_client, 'rounds': rounds,
                     'warmup': warmup}}


def main(argv):
  del argv
  report = run([int(c) for c in _CLIENTS.value], _STRATEGIES.value, _ROUNDS.value,
               _WARMUP.value, _EXAMPLES.value, _CONFIG_ARG.value, _LOCAL_STEPS.value,
               _BATCH_SIZE.value, _AUTOTUNE_CACHE.value)
  round_lib.print_report(report, _JSON.value)


if __name__ == '__main__':
  app.run(main)
