"""Round time of example-level DP-SGD against the non-DP round, phantom default sizes, CPU.

    python -m benchmarks.privacy_cost [--rounds=5] [--out=benchmarks/results/privacy_cost.json]

Three variants of the same federation (configs/phantom_dp.py: 4 hospitals, 64x64, 2 local
steps, its batch size (32), `sequential` strategy, the CPU default when it was first measured):
  * `nondp_minibatch_std`: the phantom default's round: its D (minibatch std on) and its batch
    size (16), no DP;
  * `nondp`: the DP config's D (minibatch std off) and batch, no DP: the like-for-like baseline;
  * `dp_example`: the same with per-example clipping and noise (dp.mode=example).
Each variant compiles (timed separately), runs one warm-up round, then `--rounds` timed rounds;
the median is reported with the load average (`os.getloadavg`) before and after, since other
jobs share the cores.
"""

import json
import os
import statistics
import time

from absl import app
from absl import flags
import jax

from configs import phantom
from configs import phantom_dp
from fedgan_jax.data import registry
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import optimizers
from fedgan_jax.federated import sampling
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import membership as audit
from fedgan_jax.privacy import engine

_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds per variant (after one warm-up).')
_OUT = flags.DEFINE_string('out', 'benchmarks/results/privacy_cost.json',
                           'Where the JSON goes.')
_VARIANTS = flags.DEFINE_list('variants', ['nondp_minibatch_std', 'nondp', 'dp_example'],
                              'Which variants to time.')


def variant_config(name: str):
  config = phantom_dp.get_config()
  config.runtime.strategy = 'sequential'
  if name == 'nondp_minibatch_std':
    default = phantom.get_config()
    config.dp.mode = 'none'
    config.model.discriminator.minibatch_std_group = default.model.discriminator.minibatch_std_group
    config.fl.batch_size = default.fl.batch_size
  elif name == 'nondp':
    config.dp.mode = 'none'
  elif name != 'dp_example':
    raise ValueError(f'unknown variant {name!r}')
  return config


def time_variant(name: str, rounds: int) -> dict:
  config = variant_config(name)
  federation = audit.hold_out(registry.load_federation(config), config)
  plan = engine.PrivacyPlan.from_config(config, federation.client_sizes)
  task = task_lib.build_task(config, federation.schema, federation.image_shape,
                             **plan.task_gradients())
  server_optimizer = optimizers.build_server_optimizer(config.fl.server_optimizer)
  params = client_lib.init_params(task, jax.random.key(0, impl='rbg'),
                                  tuple(federation.image_shape), federation.schema.model_dim)
  state = algorithm.server_init(params, server_optimizer, plan.aggregator())
  round_fn = algorithm.make_round_fn(task, server_optimizer, 'sequential', None,
                                     plan.aggregator())
  fl = config.fl
  load_before = os.getloadavg()[0]
  times = []
  for round_index in range(rounds + 1):
    ids = sampling.sample_clients(config.seed, round_index, len(federation.clients),
                                  fl.clients_per_round)
    batches, weights, ids = sampling.round_inputs(federation.clients, ids, config.seed,
                                                  round_index, fl.local_steps, fl.batch_size)
    started = time.perf_counter()
    state, metrics = round_fn(state, batches, weights, ids, jax.random.key(round_index))
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - started)
  return {'variant': name, 'first_round_s (compile + run)': times[0],
          'median_round_s': statistics.median(times[1:]), 'round_s': times[1:],
          'load_before': load_before, 'load_after': os.getloadavg()[0],
          'epsilon_after_300_rounds': plan.epsilon(fl.num_rounds) if plan.private else None,
          'noise_multiplier': plan.noise_multiplier if plan.private else None}


def main(argv):
  del argv
  results = [time_variant(name, _ROUNDS.value) for name in _VARIANTS.value]
  by_name = {r['variant']: r for r in results}
  summary = {'variants': results, 'backend': jax.default_backend(),
             'cpu_count': os.cpu_count()}
  if 'nondp' in by_name and 'dp_example' in by_name:
    summary['dp_over_nondp'] = (by_name['dp_example']['median_round_s'] /
                                by_name['nondp']['median_round_s'])
  if 'nondp_minibatch_std' in by_name and 'dp_example' in by_name:
    summary['dp_over_default'] = (by_name['dp_example']['median_round_s'] /
                                  by_name['nondp_minibatch_std']['median_round_s'])
  print(json.dumps(summary, indent=1))
  with open(_OUT.value, 'w') as f:
    json.dump(summary, f, indent=1)


if __name__ == '__main__':
  app.run(main)
