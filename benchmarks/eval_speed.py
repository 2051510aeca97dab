"""Times the eval binary on the phantom default (target: <= 3 minutes on 2 CPU cores).

    python -m benchmarks.eval_speed --workdir=/tmp/fedgan_eval_speed [--rounds=2]

Evaluation cost does not depend on how well G is trained, so when `WORKDIR` holds no
checkpoint the script first trains `--rounds` rounds of the default config (not timed).
It then runs `python -m fedgan_jax.eval` as a fresh process twice: once with an empty
compilation cache (what a first evaluation costs) and once reusing it (a re-evaluation),
and writes both wall and CPU times and the per-evaluator times to `--output` (on a shared
machine, CPU seconds are the fairer number: wall time then also measures the other load).
"""

import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir to evaluate (trained first if empty).')
_CONFIG = flags.DEFINE_string('config', 'configs/phantom.py', 'Config file (and variant).')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Rounds to train when the workdir has no checkpoint.')
_OUTPUT = flags.DEFINE_string('output', 'benchmarks/results/eval_speed.json',
                              'Where the timings go.')
_TARGET_S = flags.DEFINE_float('target_s', 180.0, 'Target wall time of one evaluation.')
flags.mark_flags_as_required(['workdir'])

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_if_needed(config_argument: str, workdir: str, rounds: int) -> None:
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return
  from fedgan_jax import train  # pylint: disable=g-import-not-at-top
  from fedgan_jax.data import registry  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import task as task_lib  # pylint: disable=g-import-not-at-top
  path, _, variant = config_argument.partition(':')
  spec = importlib.util.spec_from_file_location('benchmark_config', os.path.join(REPO_ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  config.fl.num_rounds = rounds
  federation = registry.load_federation(config)
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  started = time.perf_counter()
  train.train_gan(config, workdir, federation, task)
  logging.info('Trained %d rounds in %.1f s (not part of the timing).', rounds,
               time.perf_counter() - started)


def time_eval(config_argument: str, workdir: str, cache: str) -> dict:
  command = [sys.executable, '-m', 'fedgan_jax.eval', f'--config={config_argument}',
             f'--workdir={workdir}', f'--compilation_cache={cache}']
  cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
  started = time.perf_counter()
  subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
  wall = time.perf_counter() - started
  cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
  # CPU seconds tell what the run costs when the machine is shared (wall time then mostly
  # measures the other load): on an idle 2-core machine wall >= cpu / 2.
  cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    results = json.load(f)
  return {'wall_s': wall, 'cpu_s': cpu, 'evaluators_s': results['timing_s'],
          'load_average_1min_after': os.getloadavg()[0]}


def main(argv):
  del argv
  workdir = os.path.abspath(_WORKDIR.value)
  train_if_needed(_CONFIG.value, workdir, _ROUNDS.value)
  with tempfile.TemporaryDirectory() as cache:
    cold = time_eval(_CONFIG.value, workdir, cache)
    warm = time_eval(_CONFIG.value, workdir, cache)
  report = {'config': _CONFIG.value, 'cold_compilation_cache': cold,
            'warm_compilation_cache': warm, 'target_s': _TARGET_S.value,
            'meets_target_cold': cold['wall_s'] <= _TARGET_S.value,
            'cpu_count': os.cpu_count(), 'machine': platform.processor() or platform.machine()}
  with open(_OUTPUT.value, 'w') as f:
    json.dump(report, f, indent=1)
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  app.run(main)
