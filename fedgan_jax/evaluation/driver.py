"""Evaluating a trained generator from its checkpoint: evaluator registry and driver.

`evaluate_checkpoint(config, workdir, step)` restores only the G/D parameters of a
checkpoint (refusing one made with an incompatible config, naming the field), rebuilds
the federation the config describes, runs the evaluators named in `config.eval.evaluators`
and writes `workdir/eval/results.{json,md}`, `roc.png` and sample grids. It never writes
into `workdir/checkpoints`.

Evaluators are functions `fn(context) -> dict` registered by name in `EVALUATORS`; what
several of them need is computed once per run by `evaluation/context.EvalContext`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from fedgan_jax import checkpointing
from fedgan_jax.evaluation import report as eval_report
from fedgan_jax import plots
from fedgan_jax import synthesis
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import registry
from fedgan_jax.evaluation import anomaly as anomaly_lib
from fedgan_jax.evaluation import calibration
from fedgan_jax.evaluation import detectors
from fedgan_jax.evaluation import fid
from fedgan_jax.evaluation import inception
from fedgan_jax.evaluation import memorization as memorization_lib
from fedgan_jax.evaluation import personalized as personalized_lib
from fedgan_jax.evaluation import sample_quality
from fedgan_jax.federated import client as client_lib
from fedgan_jax.evaluation import context as context_lib
from fedgan_jax.federated import task as task_lib


def inception_fid(context: context_lib.EvalContext) -> dict:
  """FID and KID with pytorch-fid's Inception-v3 (needs `eval.inception_weights`)."""
  eval_config = context.eval_config
  if not eval_config.inception_weights:
    return {'skipped': 'eval.inception_weights is unset. Convert pytorch-fid\'s weights once with '
                       '`python -m fedgan_jax.tools.convert_inception --input=pt_inception-2015-'
                       '12-05-6726825d.pth --output=PATH` and pass '
                       '--config.eval.inception_weights=PATH.'}
  apply_fn, variables = inception.load_inception(eval_config.inception_weights)
  protocol = eval_config.sample_quality
  batch_size = protocol.inception_batch_size
  real = fid.inception_features(apply_fn, variables, context.reference().images, batch_size)
  fake = fid.inception_features(apply_fn, variables, context.generated_reference(), batch_size)
  subset = min(protocol.kid_subset_size, len(real), len(fake))
  kid_mean, kid_std = sample_quality.kid(real, fake, protocol.kid_subsets, subset, context.seed)
  return {'fid': fid.fid_from_features(real, fake), 'kid_mean': kid_mean, 'kid_std': kid_std,
          'kid_subset_size': subset, 'real_images': len(real), 'generated_images': len(fake)}


def domain_quality(context: context_lib.EvalContext) -> dict:
  """FID, KID, precision/recall and density/coverage in the domain encoder's feature space."""
  eval_config = context.eval_config
  encoder = context.domain_encoder()
  real = context.domain_features_of('reference', context.reference().images)
  fake = context.domain_features_of('generated_reference', context.generated_reference())
  protocol = eval_config.sample_quality
  subset = min(protocol.kid_subset_size, len(real), len(fake))
  kid_mean, kid_std = sample_quality.kid(real, fake, protocol.kid_subsets, subset, context.seed)
  k = protocol.nearest_neighbours
  precision, recall = sample_quality.precision_recall(real, fake, k)
  density, coverage = sample_quality.density_coverage(real, fake, k)
  report = {'fid': fid.fid_from_features(real, fake), 'kid_mean': kid_mean, 'kid_std': kid_std,
            'kid_subset_size': subset, 'precision': precision, 'recall': recall,
            'density': density, 'coverage': coverage, 'nearest_neighbours': k,
            'encoder_initial_loss': encoder.initial_loss, 'encoder_final_loss': encoder.final_loss}
  if eval_config.reference == 'test':
    # Real training vs real test images: the floor no generator can go below (hospital mix
    # and sampling noise), to read the generated numbers against.
    train = context.domain_features_of('train', context.pooled_training().images)
    report['fid_real_train_vs_test'] = fid.fid_from_features(train, real)
  # What F-AD trains on against what it should resemble: synthetic normals vs the reference's
  # real normal films, beside real training normals vs the same films (the floor).
  reference = context.reference()
  reference_normal = real[~np.asarray(reference.abnormal, bool)]
  synthetic = context.domain_features_of('synthetic_normals', context.synthetic_normals()[0])
  training_normal = context.domain_features_of('training_normals', context.training_normals())
  report['fid_synthetic_normals'] = fid.fid_from_features(reference_normal, synthetic)
  report['fid_real_normals_floor'] = fid.fid_from_features(reference_normal, training_normal)
  return report


def memorization(context: context_lib.EvalContext) -> dict:
  """Synthetic normals' nearest real training film vs held-out normals' (pixels, [-1, 1]).

  Normal films on both sides, so the held-out distances measure how far two different
  normal patients' films are; `fraction_synthetic_below_floor` should be ~0.
  """
  synthetic, _ = context.synthetic_normals()
  to_model = dataset_lib.images_to_model
  return dict(memorization_lib.report(to_model(synthetic),
                                      to_model(context.federation.test.normal_images()),
                                      to_model(context.training_normals()),
                                      float(context.eval_config.memorization_percentile)),
              release_filter=context.release_filter())


def conditioning(context: context_lib.EvalContext) -> dict:
  """Attributes read back from generated images by a model fitted on real training images."""
  reader = context.attribute_reader()
  reference = context.reference()
  return {'generated': reader.report(context.generated_reference(), reference.conditions),
          'real_reference': reader.report(reference.images, reference.conditions),
          'not_fitted': dict(reader.not_fitted)}


def anomaly(context: context_lib.EvalContext) -> dict:
  """F-AD: AE trained on synthetic normal images only, scored on the real scored split.

  Beside the synthetic-percentile threshold: the thresholds each hospital sets on its own
  real normal films, the sensitivity at `eval.operating_point.specificity`, and the
  baselines of `eval.anomaly_baselines` (the same detector trained on real normals:
  'ceiling' on all hospitals' pooled, 'site_alone' on each hospital's own).
  """
  detection = context.unconditioned_detection()
  test = context.federation.test
  settings = context.eval_config.operating_point
  report = context.detection_summary('F-AD (unconditioned AE)', detection['synthetic_scores'],
                                     detection['test_scores'])
  report['autoencoder_final_loss'] = detection['final_loss']
  target = float(settings.specificity)
  report['sensitivity_at_specificity'] = {'specificity': target, 'sensitivity': (
      anomaly_lib.sensitivity_at_specificity(detection['test_scores'], test.abnormal, target))}
  detector = detection['detector']
  report['site_calibrated'] = calibration.site_calibration(
      {site: detectors.scores(detector, images)
       for site, images in context.site_normals().items()},
      detection['test_scores'], test.abnormal, settings, context.seed)
  percentile = context.config.anomaly.threshold_percentile
  baselines = {}
  if 'ceiling' in context.eval_config.anomaly_baselines:
    baselines['ceiling'] = {'real normals': context.training_normals()}
  if 'site_alone' in context.eval_config.anomaly_baselines:
    baselines['site_alone'] = context.site_normals()
  for kind, sources in baselines.items():
    entries = {}
    for site, images in sources.items():
      scores = context.real_normal_detection(f'{kind}/{site}', images)
      if 'skipped' in scores:
        entries[site] = scores
        continue
      entry = anomaly_lib.detection_report(scores['train_scores'], scores['test_scores'],
                                           test.abnormal, percentile)
      entry.pop('roc')
      entry['sensitivity_at_specificity'] = anomaly_lib.sensitivity_at_specificity(
          scores['test_scores'], test.abnormal, target)
      entries[site] = dict(entry, normals=len(images))
    if kind == 'ceiling':
      report['ceiling'] = entries['real normals']
      report['utility_ratio'] = report['auc'] / report['ceiling']['auc']
    else:
      aucs = [e['auc'] for e in entries.values() if 'auc' in e]
      report['site_alone'] = dict(entries, mean_auc=float(np.mean(aucs)) if aucs else None)
  return report


def personalized(context: context_lib.EvalContext) -> dict:
  """The personalization ablation against the unconditioned detector, same test split."""
  settings = context.eval_config.personalized
  unknown = set(settings.methods) - set(personalized_lib.METHODS)
  if unknown:
    raise ValueError(f'eval.personalized.methods: unknown {sorted(unknown)}; expected some of '
                     f'{personalized_lib.METHODS}.')
  schema, test = context.federation.schema, context.federation.test
  label_features = (context.eval_config.findings_feature,)
  synthetic, synthetic_conditions = context.synthetic_normals()
  test_conditions = personalized_lib.with_normal_labels(
      test.conditions, schema, synthetic_conditions, label_features)
  baseline = context.unconditioned_detection()
  percentile = context.config.anomaly.threshold_percentile
  report = {'unconditioned': anomaly_lib.detection_report(
      baseline['synthetic_scores'], baseline['test_scores'], test.abnormal, percentile)}
  report['unconditioned'].pop('roc')
  for method in settings.methods:
    extra = {}
    if method == 'conditional_ae':
      synthetic_scores, test_scores, _ = personalized_lib.conditional_ae_scores(
          synthetic, synthetic_conditions, test.images, test_conditions, context.config.anomaly,
          context.seed)
    elif method == 'profile_calibrated':
      columns = personalized_lib.profile_columns(schema, settings.calibration_groups,
                                                 label_features)
      if not len(columns):
        report[method] = {'skipped': f'the schema has no feature in eval.personalized.'
                                     f'calibration_groups {list(settings.calibration_groups)} '
                                     'besides the label features: no profile to calibrate to.'}
        continue
      synthetic_scores, test_scores, extra['profile_r2'] = (
          personalized_lib.profile_calibrated_scores(
              baseline['synthetic_scores'], synthetic_conditions, baseline['test_scores'],
              test_conditions, columns, float(settings.calibration_ridge)))
    else:
      count = settings.threshold_samples
      synthetic_scores, test_scores = personalized_lib.generator_distance_scores(
          context.task, context.g_params, synthetic[:count], synthetic_conditions[:count],
          test.images, test_conditions, settings.expected_normal_samples, context.seed + 3,
          context.eval_config.generate_batch_size)
    report[method] = dict(context.detection_summary(personalized_lib.METHOD_LABELS[method],
                                                    synthetic_scores, test_scores), **extra)
    report[method]['auc_minus_unconditioned'] = (report[method]['auc']
                                                 - report['unconditioned']['auc'])
  report['label_features'] = list(label_features)
  report['record_only_auc'] = personalized_lib.record_only_auc(
      test.conditions, schema, test.abnormal, label_features)
  return report


EVALUATORS: dict[str, Callable[[context_lib.EvalContext], dict]] = {
    'inception_fid': inception_fid,
    'domain_quality': domain_quality,
    'conditioning': conditioning,
    'memorization': memorization,
    'anomaly': anomaly,
    'personalized': personalized,
}


def privacy_report(meta: dict) -> dict:
  """The privacy spend the checkpoint recorded, or that DP was off."""
  privacy = meta.get('privacy')
  if not privacy or (isinstance(privacy, dict) and privacy.get('mode', 'none') == 'none'):
    return {'mode': 'none', 'note': 'DP was off: the checkpoint records no privacy spend.'}
  return dict(privacy) if isinstance(privacy, dict) else {'recorded': privacy}


def abstract_params(task: client_lib.GanTask, image_shape, condition_dim: int):
  """Shapes/dtypes of G and D params without running (or compiling) an initialization."""
  return jax.eval_shape(lambda: client_lib.init_params(
      task, jax.random.key(0, impl='rbg'), tuple(image_shape), condition_dim))


def checkpoint_meta(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """`(step, meta)` of the latest (or given) checkpoint, read without restoring arrays."""
  steps = checkpointing.saved_steps(workdir)
  directory = checkpointing.checkpoint_directory(workdir)
  step = steps[-1] if step is None and steps else step
  if step is None or step not in steps:
    raise FileNotFoundError(f'checkpoint step {step} not found in {directory}; have {steps}.')
  with ocp.CheckpointManager(directory) as checkpoint_manager:
    return int(step), checkpointing.restore_meta(checkpoint_manager, step)


def check_eval_config(config) -> None:
  """Raises for a config without an `eval` section or with an unknown evaluator (checked
  before training, so a typo never costs a run)."""
  if 'eval' not in config:
    raise ValueError('the config has no `eval` section; add `config.eval = '
                     'eval_common.get_eval_config()` (configs/eval_common.py) to it.')
  unknown = [name for name in config.eval.evaluators if name not in EVALUATORS]
  if unknown:
    raise ValueError(f'eval.evaluators: unknown {unknown}; expected some of {sorted(EVALUATORS)}.')
  unknown = set(config.eval.anomaly_baselines) - set(context_lib.ANOMALY_BASELINES)
  if unknown:
    raise ValueError(f'eval.anomaly_baselines: unknown {sorted(unknown)}; expected some of '
                     f'{context_lib.ANOMALY_BASELINES}.')


def evaluate_checkpoint(config, workdir: str, step: int | None = None,
                        shared: context_lib.SharedModels | None = None,
                        federation: dataset_lib.FederatedDataset | None = None,
                        out_dir: str | None = None, selection: dict | None = None) -> dict:
  """Restores a checkpoint's params, runs `config.eval.evaluators`, writes `workdir/eval/`.

  Args:
    config: the experiment config (the one it was trained with, or compatible in the
      fields of `checkpointing.SHAPE_FIELDS`), with an `eval` section.
    workdir: the training workdir holding `checkpoints/`.
    step: checkpoint round to evaluate; None = the latest.
    shared: models fitted on the real data, to reuse across methods (see
      `context_lib.SharedModels`).
    federation: `registry.load_federation(config)` when the caller already built it.
    out_dir: where results and figures go (default `workdir/eval`).
    selection: how `step` was chosen (`selection.best_step_on_validation`), reported.

  Returns:
    The content of `results.json`.
  """
  check_eval_config(config)
  started = time.perf_counter()
  # Refuse an incompatible checkpoint before building anything from the config: a changed
  # image size or schema would otherwise fail in model code with a less helpful message.
  step, meta = checkpoint_meta(workdir, step)
  checkpointing.check_compatible(meta, config, checkpointing.SHAPE_FIELDS,
                                 where=f'{os.path.join(workdir, "checkpoints")} step {step}')
  if federation is None:
    federation = registry.load_federation(config)
  # Eval never trains D, so no DP-SGD gradient is needed.
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  template = abstract_params(task, federation.image_shape, federation.schema.model_dim)
  params, meta, step = checkpointing.restore_params(workdir, config, template, step)
  # Sample from G's moving average when the run kept one (as training's own evaluation does).
  g_params = checkpointing.restore_sampling_generator(workdir, step, template['generator'])
  if g_params is None:
    g_params = params['generator']
  return evaluate_generator(config, workdir, step, meta, federation, task, g_params, shared,
                            started, d_params=params['discriminator'], out_dir=out_dir,
                            selection=selection)


def evaluate_generator(config, workdir: str, step: int, meta: dict,
                       federation: dataset_lib.FederatedDataset, task: client_lib.GanTask,
                       g_params, shared: context_lib.SharedModels | None = None,
                       started: float | None = None, d_params=None,
                       out_dir: str | None = None, selection: dict | None = None) -> dict:
  """Runs `config.eval.evaluators` on G's sampling params and writes `workdir/eval/`.

  The main job calls this with the state it just checkpointed (a restore would be a
  collective on multi-host runs), the eval binary with the params it restored: the same
  function, so both report the same numbers for the same checkpoint.

  Args:
    meta: the checkpoint's metadata (its `privacy` entry is reported).
    started: `time.perf_counter()` when the caller started (for the timing report).
    d_params: the federated D's params, for detectors that read D (`anomaly.features`,
      `anomaly.score='judge'`).
    out_dir: where results and figures go (default `workdir/eval`).
    selection: how `step` was chosen, reported in results.json/results.md.
  """
  started = time.perf_counter() if started is None else started
  out_dir = out_dir or os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  context = context_lib.EvalContext(config=config, federation=federation, task=task,
                        g_params=g_params, out_dir=out_dir, d_params=d_params,
                        shared=shared if shared is not None else context_lib.SharedModels())
  timing = {'setup': time.perf_counter() - started}
  results = {'workdir': os.path.abspath(workdir), 'step': int(step),
             'data': federation.info.get('source', config.data.name),
             'scored_split': federation.info.get('scored_split', 'test'),
             'reference': config.eval.reference, 'privacy': privacy_report(meta),
             'sampling_noise_scale': task.sample_noise_scale,
             'evaluators': list(config.eval.evaluators)}
  if selection:
    results['checkpoint_selection'] = selection
  for name in config.eval.evaluators:
    evaluator_started = time.perf_counter()
    results[name] = EVALUATORS[name](context)
    timing[name] = time.perf_counter() - evaluator_started
    logging.info('eval %s (%.1f s): %s', name, timing[name], eval_report.headline(name,
                                                                                  results[name]))
  _write_figures(context)
  timing['total'] = time.perf_counter() - started
  results['timing_s'] = timing
  _write_atomic(os.path.join(out_dir, 'results.json'),
                json.dumps(eval_report.jsonable(results), indent=1))
  _write_atomic(os.path.join(out_dir, 'results.md'), eval_report.results_markdown(results))
  return results


def _write_figures(context: context_lib.EvalContext) -> None:
  if context.roc_curves:
    plots.save_roc_png(os.path.join(context.out_dir, 'roc.png'), context.roc_curves,
                       title='anomaly detection, real test split')
  config = context.config
  profiles = config.train.get('profiles') or [{}]
  grid = synthesis.sample_grid(context.task, context.g_params, context.federation.schema,
                               profiles, config.eval.sample_columns, context.seed)
  plots.save_image_grid(os.path.join(context.out_dir, 'samples.png'), grid,
                        *synthesis.sample_grid_labels(context.federation.schema, profiles,
                                                      config.eval.sample_columns))
  # Real reference images above images generated for their conditions.
  columns = min(config.eval.sample_columns, len(context.reference()))
  pairs = np.stack([context.reference().images[:columns], context.generated_reference()[:columns]])
  plots.save_image_grid(os.path.join(context.out_dir, 'real_vs_generated.png'), pairs,
                        ['real', 'generated'], [f'#{i + 1}' for i in range(columns)],
                        title=f"real {config.eval.reference} images, G's for their conditions")
  grid, row_labels = class_hospital_grid(context, config.eval.sample_columns,
                                         config.eval.class_grid_findings)
  plots.save_image_grid(os.path.join(context.out_dir, 'real_vs_generated_by_class.png'), grid,
                        row_labels, [f'#{i + 1}' for i in range(grid.shape[1])],
                        title="each hospital's real films by class, G's for their records below")


def class_hospital_grid(context: context_lib.EvalContext, columns: int,
                        num_findings: int) -> tuple[np.ndarray, list[str]]:
  """uint8 `(rows, columns, H, W, C)` and row labels: for each hospital and class (normal,
  then the `num_findings` findings most frequent in training), a row of its first real
  training films and a row of G's images for those films' records. Missing films are black.
  """
  federation = context.federation
  names = federation.schema.feature('findings').categories
  counts = np.asarray(context.pooled_training().records['findings']).sum(axis=0)
  order = [int(k) for k in np.argsort(-counts, kind='stable')[:num_findings] if counts[k]]
  rows, labels = [], []
  for client in federation.clients:
    findings = np.asarray(client.records['findings'], bool)
    classes = [('normal', ~client.abnormal)] + [(names[k], findings[:, k]) for k in order]
    for label, member in classes:
      index = np.flatnonzero(member)[:columns]
      if not len(index):
        continue
      real = np.asarray(client.images[index])
      generated = synthesis.synthesize(context.task, context.g_params, client.conditions[index],
                                       context.seed + 3, len(index))
      for images, kind in ((real, 'real'), (generated, 'G')):
        padded = np.zeros((columns,) + images.shape[1:], np.uint8)
        padded[:len(images)] = images
        rows.append(padded)
        labels.append(f'{client.name} {label}: {kind}')
  return np.stack(rows), labels


def _write_atomic(path: str, text: str) -> None:
  with open(path + '.tmp', 'w') as f:
    f.write(text)
  os.replace(path + '.tmp', path)
