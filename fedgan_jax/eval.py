"""Evaluates a trained checkpoint: the eval binary.

    python -m fedgan_jax.eval --config=configs/phantom.py --workdir=/tmp/fedgan_phantom \
        [--step=N] [--config.eval.inception_weights=/data/fid_inception.npz]

Pass the config the run was trained with (a checkpoint made with a different model,
image size or condition schema is refused, naming the field). Writes
`WORKDIR/eval/results.json`, `results.md`, `roc.png`, `samples.png` and
`real_vs_generated.png`; never writes into `WORKDIR/checkpoints`.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import eval_common
from fedgan_jax import checkpointing
from fedgan_jax import cpu_backend
from fedgan_jax import evaluation
from fedgan_jax import validation
from fedgan_jax import xla_cache

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint round to evaluate (default: the latest).')
_COMPILATION_CACHE = flags.DEFINE_string('compilation_cache', xla_cache.DEFAULT_DIR,
                                          xla_cache.FLAG_HELP)
_CPU_YNN_FUSIONS = flags.DEFINE_bool('cpu_ynn_fusions', True, cpu_backend.FLAG_HELP)
flags.mark_flags_as_required(['config', 'workdir'])


def with_eval_section(config, config_argument: str):
  """Adds the default `eval` section to configs made before it existed (same variant)."""
  if 'eval' in config:
    return config
  options = config_argument.partition(':')[2].split(',')
  logging.warning('The config has no `eval` section; using configs/eval_common.py defaults. '
                  'Add `config.eval = eval_common.get_eval_config()` to configs/common.py.')
  with config.unlocked():
    config.eval = eval_common.get_eval_config(runlocal='runlocal' in options)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cpu_backend.apply(_CPU_YNN_FUSIONS.value)
  xla_cache.enable(_COMPILATION_CACHE.value)
  config = with_eval_section(_CONFIG.value, config_flags.get_config_filename(flags.FLAGS['config']))
  validation.validate_config(config)
  # Without --step: the newest step that reads back intact (a corrupt newer one is named in
  # the log and skipped).
  step = _STEP.value
  if step is None:
    step = checkpointing.newest_usable_step(_WORKDIR.value, config)
  results = evaluation.evaluate_checkpoint(config, _WORKDIR.value, step)
  logging.info('Wrote %s (round %d, %.1f s).', os.path.join(_WORKDIR.value, 'eval', 'results.md'),
               results['step'], results['timing_s']['total'])


if __name__ == '__main__':
  app.run(main)
