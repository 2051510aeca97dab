"""Runs the federated GAN and every baseline on one config; writes one comparison table.

    python benchmarks/compare_baselines.py --config=configs/phantom.py --workdir=/tmp/compare
    python benchmarks/compare_baselines.py --config=configs/phantom.py:runlocal --workdir=/tmp/c

Adds the default `eval` and `baselines` sections when the config lacks them (the
`runlocal` variant gets their small sizes), then runs `fedgan_jax.baselines.compare`:
`WORKDIR/comparison.md` and `comparison.json`, one row per method with FID (domain), KID,
precision, recall, AUC and train/eval time. Rerunning resumes trained GANs.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import baselines as baselines_config
from configs import eval_common
from fedgan_jax import cpu_backend
from fedgan_jax import eval_report
from fedgan_jax import xla_cache
from fedgan_jax.baselines import compare
# pylint: enable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where every method and the table go.')
_COMPILATION_CACHE = flags.DEFINE_string('compilation_cache', xla_cache.DEFAULT_DIR,
                                          xla_cache.FLAG_HELP)
_CPU_YNN_FUSIONS = flags.DEFINE_bool('cpu_ynn_fusions', True, cpu_backend.FLAG_HELP)
flags.mark_flags_as_required(['config', 'workdir'])


def with_sections(config, runlocal: bool):
  """Adds the default `eval` and `baselines` sections when the config lacks them."""
  if 'eval' not in config:
    config.eval = eval_common.get_eval_config(runlocal)
  if 'baselines' not in config:
    config.baselines = baselines_config.get_baselines_config(runlocal)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cpu_backend.apply(_CPU_YNN_FUSIONS.value)
  xla_cache.enable(_COMPILATION_CACHE.value)
  argument = config_flags.get_config_filename(flags.FLAGS['config'])
  config = with_sections(_CONFIG.value, 'runlocal' in argument.partition(':')[2].split(','))
  comparison = compare.compare(config, _WORKDIR.value)
  print(eval_report.comparison_markdown(comparison['rows'], compare.COLUMNS))
  logging.info('Wrote %s', os.path.join(_WORKDIR.value, 'comparison.md'))


if __name__ == '__main__':
  app.run(main)
