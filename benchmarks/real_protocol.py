"""The real-data protocol: the federated GAN + F-AD over several seeds, beside its baselines.

    python -m benchmarks.real_protocol --config=configs/zhanglab.py --seeds=0,1,2 \
        --workdir=/tmp/protocol -- --config.data.root=../shared/data/zhanglab

Runs `python -m fedgan_jax.main` once per seed (workdir/seed_N; a finished seed is
reused, an interrupted one resumes from its checkpoints; `--reevaluate` runs the eval binary
on a finished seed's checkpoint with the current config, e.g. after a detector change), each scoring the split its
config names (`data.split.score`: 'validation' while choosing, 'test' once at the end),
and writes `workdir/protocol.md` and `protocol.json`: per seed and as mean +- std, F-AD's
AUC (the detector trained on synthetic normals only), its ceiling (the same detector on
the pooled real normal training films), each hospital alone (on its own real normals),
the utility ratio AUC(synthetic) / AUC(ceiling), sensitivity at the configured
specificity, and sensitivity/specificity at the hospitals' own calibrated thresholds.
`--select_checkpoint` evaluates, per seed, the saved round whose F-AD scores the validation
split best (`python -m fedgan_jax.eval --select_on_validation`) instead of the last one.
Arguments after `--` go to every run.
"""

import json
import os

from absl import app
from absl import flags

from benchmarks import protocol_lib
from fedgan_jax.evaluation import report as eval_report

_CONFIG = flags.DEFINE_string('config', None, 'Config file (with variant), as main takes it.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'One subfolder per seed goes here.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (config.seed) to run.')
_REEVALUATE = flags.DEFINE_bool('reevaluate', False, 'Evaluate finished seeds\' checkpoints again '
                                'with the current config (G is not retrained).')
_SELECT = flags.DEFINE_bool(
    'select_checkpoint', False, 'Evaluate each seed at the saved round chosen on the '
    'validation split (fedgan_jax/evaluation/selection.py).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  extra = argv[1:]
  runs = {}
  for seed in map(int, _SEEDS.value):
    runs[seed] = protocol_lib.run_seed(seed, os.path.join(_WORKDIR.value, f'seed_{seed}'),
                                       extra, _CONFIG.value, _SELECT.value, _REEVALUATE.value)
  rows = {seed: eval_report.protocol_row(results) for seed, results in runs.items()}
  summary = eval_report.protocol_markdown(_CONFIG.value, extra, rows)
  with open(os.path.join(_WORKDIR.value, 'protocol.json'), 'w') as f:
    json.dump({'config': _CONFIG.value, 'overrides': extra, 'rows': rows}, f, indent=1)
  with open(os.path.join(_WORKDIR.value, 'protocol.md'), 'w') as f:
    f.write(summary)
  print(summary)


if __name__ == '__main__':
  app.run(main)
