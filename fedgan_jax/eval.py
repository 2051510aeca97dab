"""Evaluates a trained checkpoint: the eval binary.

    python -m fedgan_jax.eval --config=configs/phantom.py --workdir=/tmp/fedgan_phantom \
        [--step=N | --select_on_validation] [--config.eval.inception_weights=/data/fid_inception.npz]

Pass the config the run was trained with (a checkpoint made with a different model,
image size or condition schema is refused, naming the field). Writes
`WORKDIR/eval/results.json`, `results.md`, `roc.png`, `samples.png` and
`real_vs_generated.png`; never writes into `WORKDIR/checkpoints`. `--select_on_validation`
first scores F-AD of every saved round on the data source's validation split
(`WORKDIR/eval_selection/`) and evaluates the best round (real data sources only).
"""

import os

from absl import app
from absl import flags
from absl import logging

from fedgan_jax import checkpointing
from fedgan_jax import console
from fedgan_jax.evaluation import driver as evaluation
from fedgan_jax.evaluation import selection as selection_lib
from fedgan_jax import flags_common
from fedgan_jax import validation

_CONFIG = flags_common.define_config()
_WORKDIR = flags_common.define_workdir('Training workdir holding checkpoints/.')
_STEP = flags_common.define_step('evaluate')
_SELECT = flags.DEFINE_bool(
    'select_on_validation', False, 'Evaluate the saved round whose F-AD scores the validation '
    'split best (instead of the newest); the choice is recorded in results.json/results.md.')
_RUNTIME = flags_common.define_runtime_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  flags_common.check_no_arguments(argv)
  flags_common.start(_RUNTIME)
  config = _CONFIG.value
  validation.validate_config(config)
  # Without --step: the newest step that reads back intact (a corrupt newer one is named in
  # the log and skipped).
  step, selection = _STEP.value, None
  if _SELECT.value:
    if step is not None:
      raise app.UsageError('--step and --select_on_validation both pick the round; give one.')
    step, selection = selection_lib.best_step_on_validation(config, _WORKDIR.value)
  elif step is None:
    step = checkpointing.newest_usable_step(_WORKDIR.value, config)
  results = evaluation.evaluate_checkpoint(config, _WORKDIR.value, step, selection=selection)
  logging.info('Results of round %d (%.1f s):\n%s\nWrote %s and its figures.', results['step'],
               results['timing_s']['total'], console.results_table(results),
               os.path.join(_WORKDIR.value, 'eval', 'results.md'))


if __name__ == '__main__':
  app.run(main)
