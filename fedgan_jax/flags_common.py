"""The flags every binary shares, and what a binary does with them before its work.

Every entry point (`fedgan_jax.main`, `eval`, `audit`, `deploy.server`, `deploy.hospital`,
`benchmarks.compare_baselines`) takes the same `--config`, `--workdir`, `--compilation_cache`
and `--cpu_ynn_fusions` (`main` also `--jax_distributed`, `eval` and `audit` `--step`); they
are defined here once:

    _CONFIG = flags_common.define_config()
    _WORKDIR = flags_common.define_workdir('Where checkpoints, metrics and results go.')
    _RUNTIME = flags_common.define_runtime_flags()
    flags.mark_flags_as_required(['config', 'workdir'])

    def main(argv):
      flags_common.check_no_arguments(argv)
      flags_common.start(_RUNTIME)
      ...

`start` must run before the first JAX computation (the YNNPACK option only takes effect
before JAX starts its backends). Each `define_*` returns the holder of a flag that is
already defined instead of defining it again, so any two binaries can be imported in one
process (tests do).
"""

from __future__ import annotations

import dataclasses
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from fedgan_jax import console
from fedgan_jax import cpu_backend
from fedgan_jax import xla_cache

FLAGS = flags.FLAGS

DISTRIBUTED_HELP = ('Call jax.distributed.initialize() first (multi-host). On Cloud TPU VMs it '
                    'needs nothing else; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES '
                    'and JAX_PROCESS_ID.')


def _define_once(name: str, define) -> flags.FlagHolder:
  """`define()`'s holder, or a holder of the flag `name` where a binary defined it already."""
  if name in FLAGS:
    return flags.FlagHolder(FLAGS, FLAGS[name])
  return define()


def define_config(help_text: str = 'Experiment config file.',
                  lock: bool = True) -> flags.FlagHolder:
  """`--config=configs/x.py[:variant]` with `--config.a.b=value` overrides.

  Locked (`lock`), a config refuses fields it does not declare, so a typo in an override
  fails at start-up, naming the field.
  """
  return _define_once('config', lambda: config_flags.DEFINE_config_file(
      'config', None, help_text, lock_config=lock))


def define_workdir(help_text: str) -> flags.FlagHolder:
  return _define_once('workdir', lambda: flags.DEFINE_string('workdir', None, help_text))


def define_step(verb: str) -> flags.FlagHolder:
  """`--step`: the checkpoint round a binary reads (`verb`: what it does with it)."""
  return _define_once('step', lambda: flags.DEFINE_integer(
      'step', None, f'Checkpoint round to {verb} (default: the latest).'))


@dataclasses.dataclass(frozen=True)
class RuntimeFlags:
  """Holders of the process-level flags: compilation cache, CPU convolutions, multi-host."""
  compilation_cache: flags.FlagHolder
  cpu_ynn_fusions: flags.FlagHolder
  jax_distributed: flags.FlagHolder | None = None


def define_runtime_flags(distributed: bool = False) -> RuntimeFlags:
  """`--compilation_cache`, `--cpu_ynn_fusions` and, with `distributed`, `--jax_distributed`."""
  cache = _define_once('compilation_cache', lambda: flags.DEFINE_string(
      'compilation_cache', xla_cache.DEFAULT_DIR, xla_cache.FLAG_HELP))
  ynn = _define_once('cpu_ynn_fusions', lambda: flags.DEFINE_bool(
      'cpu_ynn_fusions', True, cpu_backend.FLAG_HELP))
  multi_host = None
  if distributed:
    multi_host = _define_once('jax_distributed', lambda: flags.DEFINE_bool(
        'jax_distributed', False, DISTRIBUTED_HELP))
  return RuntimeFlags(cache, ynn, multi_host)


def config_argument() -> str:
  """The `--config` value as typed (`configs/phantom.py:runlocal`), for variant checks."""
  return config_flags.get_config_filename(FLAGS['config'])


def check_no_arguments(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')


def initialize_distributed() -> None:
  """`jax.distributed.initialize()`, with the process count and id from the environment."""
  kwargs = {}
  if 'JAX_NUM_PROCESSES' in os.environ:
    kwargs['num_processes'] = int(os.environ['JAX_NUM_PROCESSES'])
  if 'JAX_PROCESS_ID' in os.environ:
    kwargs['process_id'] = int(os.environ['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kwargs)


def start(runtime: RuntimeFlags | None = None) -> None:
  """Quiets library logs, then applies the runtime flags and logs the JAX environment.

  Args:
    runtime: the binary's `define_runtime_flags()`; None for binaries without them (only
      the logs are quieted).
  """
  console.quiet_library_logs()
  if runtime is None:
    return
  cpu_ynn = cpu_backend.apply(runtime.cpu_ynn_fusions.value)
  if runtime.jax_distributed is not None and runtime.jax_distributed.value:
    initialize_distributed()
  xla_cache.enable(runtime.compilation_cache.value)
  logging.info('JAX %s, backend %s, %d device(s), process %d of %d; CPU YNNPACK fusions: %s.',
               jax.__version__, jax.default_backend(), jax.device_count(), jax.process_index(),
               jax.process_count(), cpu_ynn)
