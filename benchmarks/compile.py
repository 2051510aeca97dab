"""Compile time of the round and its distance to this machine's matmul peak.

    python -m benchmarks.compile --clients=32 --json=/tmp/compile.json

For each strategy, times the compilation of a round of `compile_clients` clients (cold: run
this without a persistent compilation cache): `lower` and `compile` of the one-program vmap
round, and the first round's time minus the second's for the others. Reads XLA's cost
analysis for the FLOPs of one round of `clients` clients and divides the achieved FLOP/s
(FLOPs / median round time) by the f32 matmul peak measured here with a large `jnp.dot`.
A round's FLOPs are the same for every strategy (same math); they are read from the naive
loop's programs: `clients` x one client's local update plus the FedAvg/server update.
Efficiency rows are written for strategies whose round time is given in `--round_json`
(benchmarks/round.py's output) or timed here (`--rounds`).
"""

import functools
import json
import pathlib
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from benchmarks import round_lib
from fedgan_jax.federated import aggregation
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import autotune
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import execution

_CLIENTS = flags.DEFINE_integer('clients', 32, 'Clients per round of the FLOP count and '
                                'efficiency rows (all take part).')
_COMPILE_CLIENTS = flags.DEFINE_integer('compile_clients', 4, 'Clients per round whose '
                                        'compile time is measured (4: the phantom default).')
_STRATEGIES = flags.DEFINE_list('strategies', ['naive', 'vmap', 'sequential'],
                                'Strategies whose compile time is measured.')
_ROUNDS = flags.DEFINE_integer('rounds', 0, 'Timed rounds per strategy here (0: use '
                               '--round_json or report FLOPs only).')
_ROUND_JSON = flags.DEFINE_string('round_json', '', 'benchmarks/round.py output to read '
                                  'round times from.')
_EXAMPLES = flags.DEFINE_integer('examples_per_client', 32, 'Phantom images per hospital.')
_CONFIG_ARG = flags.DEFINE_string('config_arg', '', "configs/phantom.py variant, e.g. 'runlocal'.")
_PEAK_SIZE = flags.DEFINE_integer('matmul_size', 2048, 'Side of the square peak matmul.')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results (empty: stdout only).')


def round_flops(setup: round_lib.Setup, clients: int) -> dict:
  """FLOPs of one round from the naive loop's compiled programs (and their compile times)."""
  batches, weights, ids = setup.round_inputs(0, clients)
  one_client = jax.tree.map(lambda x: x[0], batches)
  rng = jax.random.key(0)
  local = jax.jit(functools.partial(execution.local_update, setup.task))
  local_flops, local_compile_s = round_lib.compiled_flops(local, setup.state.params, one_client,
                                                          rng)
  step = jax.jit(functools.partial(client_lib.client_step, setup.task))
  client_state = client_lib.client_init(setup.task, setup.state.params)
  step_flops, step_compile_s = round_lib.compiled_flops(
      step, client_state, jax.tree.map(lambda x: x[0], one_client), rng)
  deltas = jax.tree.map(lambda p: jnp.zeros((clients,) + p.shape, p.dtype), setup.state.params)
  fedavg = aggregation.FedAvg()

  def server(state, deltas, weights):
    agg = fedavg.accumulate_clients(fedavg.init(state.params, {}), deltas, {}, weights)
    return algorithm.apply_aggregate(fedavg, setup.server_optimizer, state, agg, None)

  server_flops, _ = round_lib.compiled_flops(jax.jit(server), setup.state, deltas,
                                             jnp.asarray(weights))
  return {'local_update_flops': local_flops, 'client_step_flops': step_flops,
          'server_flops': server_flops, 'round_flops': clients * local_flops + server_flops,
          'local_update_compile_s': round(local_compile_s, 2),
          'client_step_compile_s': round(step_compile_s, 2)}


def strategy_compile_s(setup: round_lib.Setup, strategy: str, clients: int) -> float:
  """Wall time of the first round minus that of a second: compilation and tracing."""
  timing = round_lib.time_rounds(strategy, setup, clients, rounds=1, warmup=1)
  return round(timing['first_round_s'] - timing['round_s'], 2)


def vmap_round_compile(setup: round_lib.Setup, clients: int) -> dict:
  """`lower` and `compile` of the engine's one-program vmap round, timed apart."""
  round_fn = algorithm.make_round_fn(setup.task, setup.server_optimizer, 'vmap')
  batches, weights, ids = setup.round_inputs(0, clients)
  state = round_lib.place_state(autotune.Execution('vmap'), setup.state)
  started = time.perf_counter()
  lowered = round_fn.lower(state, batches, weights, ids, setup.rng(0))
  lower_s = time.perf_counter() - started
  compiled = lowered.compile()
  compile_s = time.perf_counter() - started - lower_s
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return {'vmap_lower_s': round(lower_s, 2), 'vmap_compile_s': round(compile_s, 2),
          'vmap_round_flops': float(analysis.get('flops', float('nan')))}


def main(argv):
  del argv
  load_before = round_lib.load_average()
  clients = _CLIENTS.value
  setup = round_lib.Setup(round_lib.benchmark_config(clients, _EXAMPLES.value,
                                                     _CONFIG_ARG.value or None))
  report = {'clients': clients, **round_flops(setup, clients)}
  # Fresh task objects below, so nothing compiled above is reused.
  compile_setup = round_lib.Setup(round_lib.benchmark_config(
      _COMPILE_CLIENTS.value, _EXAMPLES.value, _CONFIG_ARG.value or None))
  report['compile_clients'] = _COMPILE_CLIENTS.value
  report['first_round_compile_s'] = {}
  for strategy in _STRATEGIES.value:
    if strategy == 'vmap':
      report.update(vmap_round_compile(compile_setup, _COMPILE_CLIENTS.value))
    else:
      report['first_round_compile_s'][strategy] = strategy_compile_s(
          round_lib.Setup(compile_setup.config), strategy, _COMPILE_CLIENTS.value)
  round_times = {}
  if _ROUND_JSON.value:
    for row in json.loads(pathlib.Path(_ROUND_JSON.value).read_text())['results']:
      if row['clients'] == clients:
        round_times[row['strategy']] = row['round_s']
  if _ROUNDS.value:
    for strategy in _STRATEGIES.value:
      round_times[strategy] = round_lib.time_rounds(strategy, setup, clients, _ROUNDS.value)[
          'round_s']
  peak = round_lib.matmul_peak_flops(_PEAK_SIZE.value)
  report['matmul_peak_flops'] = peak
  report['efficiency'] = [
      {'strategy': s, 'round_s': t, 'achieved_flops': report['round_flops'] / t,
       'fraction_of_peak': float(f"{report['round_flops'] / t / peak:.3g}")}
      for s, t in sorted(round_times.items())]
  machine = round_lib.machine_info()
  machine['load_average_before'] = load_before
  report['machine'] = machine
  report['device'] = machine['device_kind']
  round_lib.print_report(report, _JSON.value)


if __name__ == '__main__':
  app.run(main)
