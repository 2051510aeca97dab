"""Empirical privacy audit of a trained run: the audit binary.

    python -m fedgan_jax.audit --config=configs/phantom_dp.py --workdir=/tmp/fedgan_phantom_dp

Pass the config the run was trained with (it names the held-out examples: `config.audit`).
Runs the membership-inference attacks of `fedgan_jax.privacy.membership` on the latest checkpoint
(or `--step`) and writes `WORKDIR/audit.json`.
"""

import json

from absl import app
from absl import flags
from absl import logging

from fedgan_jax import flags_common
from fedgan_jax import validation
from fedgan_jax.privacy import membership as audit

_CONFIG = flags_common.define_config()
_WORKDIR = flags_common.define_workdir('Training workdir holding checkpoints/.')
_STEP = flags_common.define_step('audit')
_RUNTIME = flags_common.define_runtime_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  flags_common.check_no_arguments(argv)
  flags_common.start(_RUNTIME)
  validation.validate_config(_CONFIG.value)
  results = audit.run_audit(_CONFIG.value, _WORKDIR.value, _STEP.value)
  logging.info('audit of round %d: %s', results['step'],
               json.dumps({k: results[k] for k in ('discriminator', 'update_alignment',
                                                    'max_auc', 'privacy')}))
  print(json.dumps(results, indent=1))


if __name__ == '__main__':
  app.run(main)
