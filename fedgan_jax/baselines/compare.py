"""The federated GAN against every baseline on one config: one comparison table.

`compare(config, workdir)` runs `config.baselines.methods`: the federated GAN; the
centralized GAN (`fl.centralized`, one client holding all data); local-only GANs (each
hospital alone); the F-AD autoencoder trained on real normal images, centralized and
FedAvg; and a FedAvg supervised normal-vs-abnormal classifier. GANs are trained by the
engine (`train.train_gan`, resuming from `workdir/<method>` when rerun) and scored by
`evaluation.evaluate_checkpoint` with one shared domain encoder and attribute model, so
their numbers are comparable. Writes `workdir/comparison.json` and `comparison.md`.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from fedgan_jax.evaluation import report as eval_report
from fedgan_jax.evaluation import driver as evaluation
from fedgan_jax import metrics_log
from fedgan_jax import train
from fedgan_jax.baselines import autoencoder as autoencoder_baseline
from fedgan_jax.baselines import classifier as classifier_baseline
from fedgan_jax.baselines import local_gan
from fedgan_jax.data import registry
from fedgan_jax.evaluation import context as context_lib
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import engine as privacy_engine

COLUMNS = (('method', 'method'), ('fid', 'FID (domain)'), ('kid_mean', 'KID (domain)'),
           ('precision', 'precision'), ('recall', 'recall'), ('auc', 'AUC'),
           ('auc_conditional_ae', 'AUC personalized (cond. AE)'),
           ('auc_generator_distance', 'AUC personalized (G distance)'),
           ('auc_profile_calibrated', 'AUC personalized (profile-calibrated)'),
           ('sensitivity', 'sensitivity'), ('specificity', 'specificity'),
           ('train_time_s', 'train time (s)'), ('eval_time_s', 'eval time (s)'))
SUPERVISED_METHODS = ('ae_real_centralized', 'ae_real_federated', 'fedavg_classifier')


def gan_row(method: str, results: dict, train_time_s: float) -> dict:
  quality = results.get('domain_quality', {})
  detection = results.get('anomaly') or results.get('personalized', {}).get('unconditioned', {})
  personalized = results.get('personalized', {})
  return {'method': method, 'fid': quality.get('fid'), 'kid_mean': quality.get('kid_mean'),
          'kid_std': quality.get('kid_std'), 'precision': quality.get('precision'),
          'recall': quality.get('recall'), 'density': quality.get('density'),
          'coverage': quality.get('coverage'), 'auc': detection.get('auc'),
          'sensitivity': detection.get('sensitivity'),
          'specificity': detection.get('specificity'),
          'auc_conditional_ae': personalized.get('conditional_ae', {}).get('auc'),
          'auc_generator_distance': personalized.get('generator_distance', {}).get('auc'),
          'auc_profile_calibrated': personalized.get('profile_calibrated', {}).get('auc'),
          'train_time_s': train_time_s, 'eval_time_s': results['timing_s']['total'],
          'workdir': results['workdir'], 'step': results['step']}


def detector_row(method: str, report: dict, train_time_s: float, eval_time_s: float) -> dict:
  return {'method': method, 'auc': report['auc'], 'sensitivity': report['sensitivity'],
          'specificity': report['specificity'], 'threshold': report['threshold'],
          'train_time_s': train_time_s, 'eval_time_s': eval_time_s}


def training_seconds(workdir: str) -> float:
  """Seconds the rounds in `workdir/metrics.jsonl` took (all sessions of a resumed run).

  Sums the engine's per-round times rather than timing this call, so a rerun that only
  resumes a finished GAN still reports what training it cost (compilation excluded).
  """
  rows = metrics_log.MetricsLog(os.path.join(workdir, 'metrics.jsonl')).read()
  return float(sum(row.get('round_time_s', 0.0) for row in rows))


def run_gan(method, config, workdir, federation, eval_federation, shared, evaluators):
  """Trains (or resumes) one GAN and evaluates its last checkpoint."""
  plan = privacy_engine.PrivacyPlan.from_config(config, federation.client_sizes)
  task = task_lib.build_task(config, federation.schema, federation.image_shape,
                             **plan.task_gradients())
  train.train_gan(config, workdir, federation, task, plan)
  train_time = training_seconds(workdir)
  eval_config = config.copy_and_resolve_references()
  eval_config.eval.evaluators = tuple(evaluators)
  results = evaluation.evaluate_checkpoint(eval_config, workdir, shared=shared,
                                           federation=eval_federation)
  return gan_row(method, results, train_time)


def compare(config, workdir: str) -> dict:
  """Runs `config.baselines.methods`; returns (and writes) the comparison."""
  os.makedirs(workdir, exist_ok=True)
  methods = tuple(config.baselines.methods)
  known = ('federated_gan', 'centralized_gan', 'local_gans') + SUPERVISED_METHODS
  unknown = set(methods) - set(known)
  if unknown:
    raise ValueError(f'baselines.methods: unknown {sorted(unknown)}; expected some of {known}.')
  federation = registry.load_federation(_federated(config))
  shared = context_lib.SharedModels()
  gan_evaluators = tuple(config.baselines.gan_evaluators)
  seed, anomaly = int(config.seed), config.anomaly
  rows = []
  if 'federated_gan' in methods:
    rows.append(run_gan('federated GAN', config, os.path.join(workdir, 'federated_gan'),
                        federation, federation, shared, config.eval.evaluators))
  if 'centralized_gan' in methods:
    centralized = config.copy_and_resolve_references()
    centralized.fl.centralized = True
    rows.append(run_gan('centralized GAN', centralized, os.path.join(workdir, 'centralized_gan'),
                        registry.load_federation(centralized), federation, shared,
                        gan_evaluators))
  if 'local_gans' in methods:
    local_rows = []
    for index, client in enumerate(federation.clients):
      local_workdir = os.path.join(workdir, 'local_gans', local_gan.workdir_name(client.name))
      local_rows.append(run_gan(f'local GAN: {client.name}', config, local_workdir,
                                local_gan.single_hospital(federation, index), federation, shared,
                                gan_evaluators))
    rows += local_rows
    rows.append(mean_row('local GANs (mean over hospitals)', local_rows))
  if 'ae_real_centralized' in methods:
    started = time.perf_counter()
    detector = autoencoder_baseline.train_centralized(federation, anomaly, seed)
    trained = time.perf_counter()
    report = autoencoder_baseline.evaluate(detector, federation, anomaly.threshold_percentile)
    rows.append(detector_row('AE on real normals (centralized)', report, trained - started,
                             time.perf_counter() - trained))
  if 'ae_real_federated' in methods:
    started = time.perf_counter()
    detector = autoencoder_baseline.train_federated(federation, anomaly,
                                                    config.baselines.autoencoder, seed)
    trained = time.perf_counter()
    report = autoencoder_baseline.evaluate(detector, federation, anomaly.threshold_percentile)
    rows.append(detector_row('AE on real normals (FedAvg)', report, trained - started,
                             time.perf_counter() - trained))
  if 'fedavg_classifier' in methods:
    settings = config.baselines.classifier
    started = time.perf_counter()
    model, params, _ = classifier_baseline.train(federation, settings, seed)
    trained = time.perf_counter()
    probabilities = classifier_baseline.predict(model, params, federation.test.images,
                                                settings.predict_batch_size)
    report = classifier_baseline.evaluate(probabilities, federation.test.abnormal,
                                          settings.decision_threshold)
    rows.append(detector_row('FedAvg classifier (supervised)', report, trained - started,
                             time.perf_counter() - trained))
  comparison = {'config': json.loads(config.to_json_best_effort()), 'rows': rows,
                'targets': targets(rows), 'backend': jax.default_backend()}
  with open(os.path.join(workdir, 'comparison.json'), 'w') as f:
    json.dump(eval_report.jsonable(comparison), f, indent=1)
  markdown = '\n'.join([
      f'# Federated GAN vs baselines ({config.data.name}, seed {seed})', '',
      eval_report.comparison_markdown(rows, COLUMNS), '', eval_report.DOMAIN_NOTE, '',
      'AUC: anomaly detection on the real test split (GANs: the F-AD autoencoder trained on '
      'their synthetic normals; personalized columns: the ablation detectors using the '
      'patient\'s PD/CD). Sensitivity/specificity at each detector\'s own threshold.', '',
      'Train time: GANs, the sum of their rounds\' times (metrics.jsonl, compilation '
      'excluded; local GANs\' mean row sums the hospitals); others, wall time of training.', '',
      'Targets: ' + ', '.join(f'{k} = {v}' for k, v in comparison['targets'].items()), ''])
  with open(os.path.join(workdir, 'comparison.md'), 'w') as f:
    f.write(markdown)
  return comparison


def _federated(config):
  """The federation with one client per hospital, whatever `fl.centralized` says."""
  federated = config.copy_and_resolve_references()
  federated.fl.centralized = False
  return federated


def mean_row(method: str, rows: list[dict]) -> dict:
  """Column-wise mean of numeric entries (times summed: all hospitals train)."""
  mean = {'method': method}
  for key in rows[0]:
    values = [row.get(key) for row in rows]
    if all(isinstance(v, (int, float)) and v is not None for v in values) and key != 'step':
      summed = key.endswith('time_s')
      mean[key] = float(np.sum(values) if summed else np.mean(values))
  return mean


def targets(rows: list[dict]) -> dict:
  """The issue's targets, checked on these rows (None where a method did not run)."""
  by_method = {row['method']: row for row in rows}
  federated, centralized = by_method.get('federated GAN'), by_method.get('centralized GAN')
  report = {}
  if federated and centralized and federated.get('fid') and centralized.get('fid'):
    report['fid_federated_over_centralized'] = federated['fid'] / centralized['fid']
    report['fid_within_1.2x_centralized'] = bool(federated['fid'] <= 1.2 * centralized['fid'])
  for method in ('conditional_ae', 'generator_distance', 'profile_calibrated'):
    if federated and federated.get(f'auc_{method}') is not None and federated.get('auc'):
      report[f'{method}_auc_at_least_unconditioned'] = bool(
          federated[f'auc_{method}'] >= federated['auc'])
  return report
