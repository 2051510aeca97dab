"""Runs the federated GAN and every baseline on one config; writes one comparison table.

    python -m benchmarks.compare_baselines --config=configs/phantom.py --workdir=/tmp/compare
    python -m benchmarks.compare_baselines --config=configs/phantom.py:runlocal --workdir=/tmp/c

Adds the default `eval` and `baselines` sections when the config lacks them (the
`runlocal` variant gets their small sizes), then runs `fedgan_jax.baselines.compare`:
`WORKDIR/comparison.md` and `comparison.json`, one row per method with FID (domain), KID,
precision, recall, AUC and train/eval time. Rerunning resumes trained GANs.
"""

import os

from absl import app
from absl import flags
from absl import logging

from configs import baselines as baselines_config
from configs import eval_common
from fedgan_jax.evaluation import report as eval_report
from fedgan_jax import flags_common
from fedgan_jax.baselines import compare

# Unlocked: `with_sections` adds the sections a config lacks.
_CONFIG = flags_common.define_config(lock=False)
_WORKDIR = flags_common.define_workdir('Where every method and the table go.')
_RUNTIME = flags_common.define_runtime_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def with_sections(config, runlocal: bool):
  """Adds the default `eval` and `baselines` sections when the config lacks them."""
  if 'eval' not in config:
    config.eval = eval_common.get_eval_config(runlocal)
  if 'baselines' not in config:
    config.baselines = baselines_config.get_baselines_config(runlocal)
  return config


def main(argv):
  flags_common.check_no_arguments(argv)
  flags_common.start(_RUNTIME)
  argument = flags_common.config_argument()
  config = with_sections(_CONFIG.value, 'runlocal' in argument.partition(':')[2].split(','))
  comparison = compare.compare(config, _WORKDIR.value)
  print(eval_report.comparison_markdown(comparison['rows'], compare.COLUMNS))
  logging.info('Wrote %s', os.path.join(_WORKDIR.value, 'comparison.md'))


if __name__ == '__main__':
  app.run(main)
