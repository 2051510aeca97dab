"""F-AD detector variants on trained checkpoints, validation split (detector_variants.md).

    python -m benchmarks.detector_variants --workdir=/tmp/det/seed_0 --seed=0 \
        --data_root=/work/shared/data/zhanglab --noise_scales=0,0.5 --out=/tmp/det/variants.jsonl

For each `sampling.noise_scale` and each variant of `VARIANTS` (overrides of the
`anomaly` section of `configs/zhanglab.py`), runs the anomaly evaluator
(`evaluation.anomaly`, the eval binary's own) with the ceiling baseline: the same
variant trained on synthetic normals and on the pooled real normal training films.
Data, the checkpoint and, per noise scale, the synthetic normals are loaded once and
shared by the variants. Appends one JSON line per (noise scale, variant) to `--out`.
"""

from __future__ import annotations

import copy
import json
import time

from absl import app
from absl import flags

from configs import zhanglab
from fedgan_jax import checkpointing
from fedgan_jax.evaluation import report as eval_report
from fedgan_jax.evaluation import driver as evaluation
from fedgan_jax.data import registry
from fedgan_jax.evaluation import context as context_lib
from fedgan_jax.evaluation import detectors
from fedgan_jax.federated import task as task_lib

VARIANTS = {
    'pixels_dense_ssim': {},
    'discriminator_dense_mse': dict(features='discriminator', score='mse'),
    'pixels_inpaint_ssim': dict(architecture='inpaint'),
    'squid_inpaint_ssim+judge': dict(architecture='inpaint', ensemble_members=(
        '', 'score=judge')),
    'ensemble_3_seeds': dict(ensemble_seeds=3),
    'ensemble_pixels+discriminator': dict(ensemble_members=(
        '', 'features=discriminator,score=mse')),
}

_WORKDIR = flags.DEFINE_string('workdir', None, 'trained workdir (a copy: eval/ is written).')
_SEED = flags.DEFINE_integer('seed', 0, 'the run\'s config.seed.')
_ROOT = flags.DEFINE_string('data_root', None, 'data.root of configs/zhanglab.py.')
_SCALES = flags.DEFINE_list('noise_scales', ['0', '0.5'], 'sampling.noise_scale values.')
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS), 'names from VARIANTS.')
_OUT = flags.DEFINE_string('out', None, 'JSON lines appended here.')
_SUMMARIZE = flags.DEFINE_bool('summarize', False, 'print the markdown table of --out and exit.')


def summary_table(rows) -> str:
  """Markdown: per (noise scale, variant), per-seed synthetic/ceiling AUC and mean ± std."""
  groups = {}
  for row in rows:
    groups.setdefault((row['noise_scale'], row['variant']), {})[row['seed']] = row
  lines = ['| noise | variant | F-AD per seed | ceiling per seed | F-AD | ceiling |',
           '| --- | --- | --- | --- | --- | --- |']
  for (scale, name), by_seed in sorted(groups.items()):
    seeds = sorted(by_seed)
    per_seed = lambda key: ', '.join(f's{s} {by_seed[s][key]:.3f}' for s in seeds)
    lines.append(f'| {scale:g} | {name} | {per_seed("auc")} | {per_seed("ceiling_auc")} | '
                 f'{eval_report.mean_std([by_seed[s]["auc"] for s in seeds])} | '
                 f'{eval_report.mean_std([by_seed[s]["ceiling_auc"] for s in seeds])} |')
  return '\n'.join(lines)


def main(_):
  if _SUMMARIZE.value:
    with open(_OUT.value) as f:
      print(summary_table([json.loads(line) for line in f if line.strip()]))
    return
  config = zhanglab.get_config()
  config.data.root, config.seed = _ROOT.value, _SEED.value
  config.eval.evaluators = ('anomaly',)
  config.eval.anomaly_baselines = ('ceiling',)
  federation = registry.load_federation(config)
  step, _ = evaluation.checkpoint_meta(_WORKDIR.value)
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  template = evaluation.abstract_params(task, federation.image_shape, federation.schema.model_dim)
  params, _, step = checkpointing.restore_params(_WORKDIR.value, config, template, step)
  g_params = checkpointing.restore_sampling_generator(_WORKDIR.value, step,
                                                      template['generator'])
  for scale in map(float, _SCALES.value):
    config.sampling.noise_scale = scale
    task = task_lib.build_task(config, federation.schema, federation.image_shape)
    shared_cache = {}
    for name in _VARIANTS.value:
      variant = copy.deepcopy(config)
      variant.anomaly = detectors.with_overrides(variant.anomaly, **VARIANTS[name])
      context = context_lib.EvalContext(config=variant, federation=federation, task=task,
                                        g_params=g_params, d_params=params['discriminator'],
                                        out_dir='/dev/null', shared=context_lib.SharedModels())
      # The data and the synthetic normals do not depend on the detector variant.
      context._cache.update(shared_cache)  # pylint: disable=protected-access
      started = time.perf_counter()
      report = evaluation.anomaly(context)
      for key in ('synthetic_normals', 'pooled', 'training_normals', 'site_normals'):
        if key in context._cache:  # pylint: disable=protected-access
          shared_cache[key] = context._cache[key]  # pylint: disable=protected-access
      row = {'seed': _SEED.value, 'step': step, 'noise_scale': scale, 'variant': name,
             'overrides': VARIANTS[name], 'auc': report['auc'],
             'ceiling_auc': report['ceiling']['auc'], 'utility_ratio': report['utility_ratio'],
             'scored': federation.info.get('scored_split'),
             'seconds': time.perf_counter() - started}
      print(json.dumps(row), flush=True)
      with open(_OUT.value, 'a') as f:
        f.write(json.dumps(row, default=str) + '\n')


if __name__ == '__main__':
  flags.mark_flags_as_required(['out'])
  app.run(main)
