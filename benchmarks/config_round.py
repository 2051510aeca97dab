"""The round of any experiment config: images/s, round and compile time, memory, % of peak.

    python -m benchmarks.config_round --config=configs/zhanglab.py:size=128 \
        --config.data.root=../shared/data/zhanglab --clients=32 --strategies=naive,vmap \
        --json=/tmp/zhanglab128.json
    # bfloat16 compute (params and optimizer state float32):
    ... --config.runtime.precision=bfloat16

`benchmarks/round.py` times the phantom default's round; this times the round of the config
given, data loaded as training loads it, so the accelerator path is measured at the sizes
real data needs (128 px and up). A real config has a few hospitals, so `--clients` slots
take them in turn (`round_lib.Setup.round_inputs`): the same programs as that many
hospitals of the same sizes. Per strategy (interleaved rounds, `round_lib.time_strategies`):
median round time, images/s (`clients * fl.local_steps * fl.batch_size` per round, the
real-image count G and D each train on), compile time (first round minus the median), and
for `vmap` the round's FLOPs (XLA cost analysis) as a fraction of this device's measured
dense matmul peak in the compute dtype (`runtime.precision`). Peak device memory (GPU/TPU)
and host RSS are the process's, so run one precision per process.
"""

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

from benchmarks import round_lib
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import autotune
from fedgan_jax.federated import server as server_lib
from fedgan_jax.federated import task as task_lib

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_CLIENTS = flags.DEFINE_integer('clients', 32, 'Client slots per round (hospitals in turn).')
_STRATEGIES = flags.DEFINE_list('strategies', ['naive', 'vmap'],
                                "'naive', engine executions, or round_candidates names.")
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds; the median is reported.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed rounds first (compilation).')
_PEAK_SIZE = flags.DEFINE_integer('matmul_size', 8192, 'Side of the peak-measuring matmul.')
_JSON = flags.DEFINE_string('json', '', 'Where to write the results (empty: stdout only).')


def vmap_round_flops(setup: round_lib.Setup, clients: int) -> float:
  """XLA's FLOP count of the engine's one-program vmap round of `clients` slots."""
  mesh = algorithm.client_mesh()
  round_fn = server_lib.round_fn(setup.task, setup.server, autotune.Execution('vmap'),
                                 mesh)
  batches, weights, ids = setup.round_inputs(0, clients, jax.device_count())
  state, inputs, rng = server_lib.place_on_mesh(mesh, setup.state, (batches, weights, ids),
                                                setup.rng(0))
  return round_lib.compiled_flops(round_fn, state, *inputs, rng)[0]


def run(config, clients, strategies, rounds, warmup, matmul_size):
  """Times each strategy on `config`'s round; returns the JSON-ready dict."""
  load_before = round_lib.load_average()
  setup = round_lib.Setup(config)
  fl = config.fl
  images = clients * fl.local_steps * fl.batch_size
  results = []
  for strategy, (timing, _) in round_lib.time_strategies(strategies, setup, clients, rounds,
                                                         warmup).items():
    row = dict(strategy=strategy, clients=clients, images_per_round=images,
               images_per_s=round(images / timing['round_s'], 1),
               compile_s=round(timing['first_round_s'] - timing['round_s'], 2), **timing)
    results.append(row)
  naive = [r['round_s'] for r in results if r['strategy'] == 'naive']
  for row in results:
    if naive:
      row['speedup_vs_naive'] = round(naive[0] / row['round_s'], 3)
  dtype = jnp.dtype(task_lib.compute_dtype(config))
  peak = round_lib.matmul_peak_flops(matmul_size, dtype=dtype)
  efficiency = {'matmul_peak_flops': peak, 'matmul_dtype': dtype.name}
  vmap = [r for r in results if r['strategy'] == 'vmap']
  if vmap:
    flops = vmap_round_flops(setup, clients)
    efficiency.update(vmap_round_flops=flops,
                      vmap_fraction_of_peak=round(flops / vmap[0]['round_s'] / peak, 4))
  machine = round_lib.machine_info()
  machine['load_average_before'] = load_before
  return {'results': results, 'efficiency': efficiency,
          'device_memory': round_lib.device_memory(),
          'peak_host_rss_bytes': round_lib.peak_host_rss_bytes(),
          'device': machine['device_kind'], 'machine': machine,
          'config': {'data': config.data.name, 'image_size': config.data.image_size,
                     'precision': config.runtime.precision, 'local_steps': fl.local_steps,
                     'batch_size': fl.batch_size, 'hospitals': len(setup.federation.clients),
                     'rounds': rounds, 'warmup': warmup}}


def main(argv):
  del argv
  report = run(_CONFIG.value, _CLIENTS.value, _STRATEGIES.value, _ROUNDS.value, _WARMUP.value,
               _PEAK_SIZE.value)
  round_lib.print_report(report, _JSON.value)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main)
