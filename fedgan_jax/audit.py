"""Empirical privacy audit of a trained run: the audit binary.

    python -m fedgan_jax.audit --config=configs/phantom_dp.py --workdir=/tmp/fedgan_phantom_dp

Pass the config the run was trained with (it names the held-out examples: `config.audit`).
Runs the membership-inference attacks of `fedgan_jax.privacy.audit` on the latest checkpoint
(or `--step`) and writes `WORKDIR/audit.json`.
"""

import json

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from fedgan_jax import cpu_backend
from fedgan_jax import validation
from fedgan_jax import xla_cache
from fedgan_jax.privacy import audit

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir holding checkpoints/.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint round to audit (default: the latest).')
_COMPILATION_CACHE = flags.DEFINE_string('compilation_cache', xla_cache.DEFAULT_DIR,
                                          xla_cache.FLAG_HELP)
_CPU_YNN_FUSIONS = flags.DEFINE_bool('cpu_ynn_fusions', True, cpu_backend.FLAG_HELP)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cpu_backend.apply(_CPU_YNN_FUSIONS.value)
  xla_cache.enable(_COMPILATION_CACHE.value)
  validation.validate_config(_CONFIG.value)
  results = audit.run_audit(_CONFIG.value, _WORKDIR.value, _STEP.value)
  logging.info('audit of round %d: %s', results['step'],
               json.dumps({k: results[k] for k in ('discriminator', 'update_alignment',
                                                    'max_auc', 'privacy')}))
  print(json.dumps(results, indent=1))


if __name__ == '__main__':
  app.run(main)
