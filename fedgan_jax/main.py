"""Trains a federated conditional GAN and evaluates it: the main binary.

    python -m fedgan_jax.main --config=configs/phantom.py --workdir=/tmp/fedgan_phantom \
        [--config.fl.num_rounds=100 ...] [--jax_distributed]
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from fedgan_jax import cpu_backend
from fedgan_jax import train
from fedgan_jax import xla_cache

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
_JAX_DISTRIBUTED = flags.DEFINE_bool(
    'jax_distributed', False,
    'Call jax.distributed.initialize() first (multi-host). On Cloud TPU VMs it needs nothing '
    'else; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID.')
_COMPILATION_CACHE = flags.DEFINE_string('compilation_cache', xla_cache.DEFAULT_DIR,
                                          xla_cache.FLAG_HELP)
_CPU_YNN_FUSIONS = flags.DEFINE_bool('cpu_ynn_fusions', True, cpu_backend.FLAG_HELP)
flags.mark_flags_as_required(['config', 'workdir'])


def initialize_distributed() -> None:
  kwargs = {}
  if 'JAX_NUM_PROCESSES' in os.environ:
    kwargs['num_processes'] = int(os.environ['JAX_NUM_PROCESSES'])
  if 'JAX_PROCESS_ID' in os.environ:
    kwargs['process_id'] = int(os.environ['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cpu_ynn = cpu_backend.apply(_CPU_YNN_FUSIONS.value)
  if _JAX_DISTRIBUTED.value:
    initialize_distributed()
  xla_cache.enable(_COMPILATION_CACHE.value)
  logging.info('JAX %s, backend %s, %d device(s), process %d of %d; CPU YNNPACK fusions: %s.',
               jax.__version__, jax.default_backend(), jax.device_count(), jax.process_index(),
               jax.process_count(), cpu_ynn)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
