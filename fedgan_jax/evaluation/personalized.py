"""The personalization ablation: anomaly detectors that use the patient's own PD/CD.

The design claims that knowing who the patient is (age, sex, view, body habitus,
clinical data) makes anomaly detection better, because a deviation the record explains
(an old patient's wider heart shadow, an AP film's magnified mediastinum) is no longer
scored as an anomaly. Two personalized scores, each against the same real test split as
the unconditioned F-AD autoencoder:

  * `conditional_ae`: an autoencoder whose decoder is FiLM-modulated by the condition
    vector (`Autoencoder(conditional=True)`), trained on the same synthetic normal images
    with the conditions they were generated for; score = reconstruction error given the
    patient's condition.
  * `generator_distance`: no second model; score = mean squared distance between the image
    and G's expected normal image for the patient (the mean of `G(c, z)` over a few z).
  * `profile_calibrated`: the unconditioned F-AD score, read against what a normal patient of
    the same profile scores: a ridge regression of the log score on the patient's
    demographics (`calibration_groups`, PD by default), fitted on the synthetic normals, is
    subtracted from it. A COPD patient's hyperinflated lungs, an AP film or an old
    patient's thin bones raise every normal film's error; the threshold then no longer
    treats that as disease. Clinical data (CD) stay out by default: acute-disease markers
    such as CRP or a severity score track the findings, and a regression on normals
    extrapolates arbitrarily to the values only sick patients have.

A test patient's condition vector holds the label itself (the findings); those features
(`label_features`: `eval.findings_feature`) are replaced by their value in normal profiles before any detector
sees them, i.e. each detector asks "how far is this image from THIS patient's normal?".
Thresholds are the configured percentile of the score on synthetic normal images, as for
the unconditioned detector; no real image sets them.
"""

import dataclasses
from typing import Sequence

import numpy as np
from sklearn import metrics as sk_metrics

from fedgan_jax import synthesis
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.evaluation import anomaly as anomaly_lib

METHODS = ('conditional_ae', 'generator_distance', 'profile_calibrated')


@dataclasses.dataclass
class Settings:
  """`eval.personalized` (numbers: configs/eval_common.py); a field is overridden by name.

  Attributes:
    methods: which of `METHODS` to run.
    expected_normal_samples: z draws averaged into G's expected normal image.
    threshold_samples: synthetic normals whose distance to G's expected normal sets the
      `generator_distance` threshold (each costs `expected_normal_samples` generations).
    calibration_groups: schema groups `profile_calibrated` regresses the normal score on.
    calibration_ridge: that regression's ridge penalty.
  """
  methods: tuple
  expected_normal_samples: int
  threshold_samples: int
  calibration_groups: tuple
  calibration_ridge: float
METHOD_LABELS = {'conditional_ae': 'personalized: conditional AE (PD/CD)',
                 'generator_distance': 'personalized: distance to G(c) normal',
                 'profile_calibrated': 'personalized: AE score calibrated to the PD profile'}


def with_normal_labels(conditions: np.ndarray, schema: conditions_lib.ConditionSchema,
                       normal_conditions: np.ndarray, label_features: Sequence[str]) -> np.ndarray:
  """Copies of `conditions` whose `label_features` take their normal-profile value.

  The normal value of a feature is, over `normal_conditions`, the most common row of its
  columns (values and mask together): for findings, "known, none present".

  Args:
    conditions: `(N, model_dim)` model condition vectors of the patients to score.
    schema: the schema that encoded them.
    normal_conditions: `(M, model_dim)` condition vectors of normal profiles.
    label_features: names of the features to replace.
  """
  values, mask = (np.array(part) for part in conditions_lib.split_condition(
      np.asarray(conditions, np.float32)))
  normal_values, normal_mask = conditions_lib.split_condition(
      np.asarray(normal_conditions, np.float32))
  if len(normal_values) == 0:
    raise ValueError('personalized: no normal profiles to take the normal label values from.')
  for name in label_features:
    columns = schema.slice(name)
    rows = np.concatenate([normal_values[:, columns], normal_mask[:, columns]], axis=1)
    unique, counts = np.unique(rows, axis=0, return_counts=True)
    mode = unique[np.argmax(counts)]
    width = columns.stop - columns.start
    values[:, columns], mask[:, columns] = mode[:width], mode[width:]
  return conditions_lib.model_condition(values, mask)


def expected_normal_images(task, g_params, conditions: np.ndarray, num_samples: int, seed: int,
                           batch_size: int) -> np.ndarray:
  """G's expected image per condition: the mean of `num_samples` draws, float32 in [-1, 1]."""
  if num_samples < 1:
    raise ValueError(f'eval.personalized.expected_normal_samples must be >= 1, got {num_samples}.')
  repeated = np.repeat(np.asarray(conditions, np.float32), num_samples, axis=0)
  images = synthesis.synthesize(task, g_params, repeated, seed, batch_size)
  images = images.reshape((len(conditions), num_samples) + images.shape[1:])
  return images.astype(np.float32).mean(axis=1) / 127.5 - 1.0


def distance_to_expected(images_uint8: np.ndarray, expected: np.ndarray) -> np.ndarray:
  """Per-image mean squared difference `(N,)` in [-1, 1] units."""
  images = np.asarray(images_uint8, np.float32) / 127.5 - 1.0
  if images.shape != expected.shape:
    raise ValueError(f'personalized: images {images.shape} and expected normals {expected.shape} '
                     'differ in shape.')
  return np.mean(np.square(images - expected), axis=tuple(range(1, images.ndim)))


def per_finding_auc(scores: np.ndarray, findings: np.ndarray, abnormal: np.ndarray,
                    names: Sequence[str]) -> dict[str, float]:
  """AUC of each finding against the normal images: positives = images with that finding.

  Args:
    scores: `(N,)` anomaly scores (higher = more anomalous).
    findings: `(N, K)` 0/1 (NaN = unknown) finding labels.
    abnormal: bool `(N,)`, True for images with any finding (the negatives are the rest).
    names: the K finding names.

  Returns:
    `{name: auc}`; NaN for a finding without positives or when there are no normals.
  """
  scores, findings = np.asarray(scores, np.float64), np.asarray(findings, np.float64)
  normal = ~np.asarray(abnormal, bool)
  if findings.ndim != 2 or findings.shape != (len(scores), len(names)):
    raise ValueError(f'per_finding_auc: findings must be ({len(scores)}, {len(names)}) for '
                     f'{list(names)}, got {findings.shape}.')
  report = {}
  for index, name in enumerate(names):
    positive = findings[:, index] == 1
    if not positive.any() or not normal.any():
      report[name] = float('nan')
      continue
    labels = np.concatenate([np.ones(positive.sum()), np.zeros(normal.sum())])
    report[name] = float(sk_metrics.roc_auc_score(
        labels, np.concatenate([scores[positive], scores[normal]])))
  return report


def conditional_ae_scores(synthetic: np.ndarray, synthetic_conditions: np.ndarray,
                          test_images: np.ndarray, test_conditions: np.ndarray, anomaly_config,
                          seed: int) -> tuple[np.ndarray, np.ndarray, float]:
  """Trains the conditional AE on synthetic normals; returns their and the test's errors.

  Returns:
    `(synthetic_errors, test_errors, final_training_loss)`.
  """
  detector = anomaly_lib.train_autoencoder(synthetic, anomaly_config, seed,
                                           conditions=synthetic_conditions)
  return (anomaly_lib.anomaly_scores(detector, synthetic, synthetic_conditions),
          anomaly_lib.anomaly_scores(detector, test_images, test_conditions),
          detector.final_loss)


def generator_distance_scores(task, g_params, synthetic: np.ndarray,
                              synthetic_conditions: np.ndarray, test_images: np.ndarray,
                              test_conditions: np.ndarray, num_samples: int, seed: int,
                              batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Distances of synthetic normals and of test images to G's expected normal for them.

  The synthetic normals were drawn with other noise than the expectation's (`seed` must
  differ from theirs), so their distances are what a normal patient scores.
  """
  synthetic_expected = expected_normal_images(task, g_params, synthetic_conditions, num_samples,
                                              seed, batch_size)
  test_expected = expected_normal_images(task, g_params, test_conditions, num_samples, seed + 1,
                                         batch_size)
  return (distance_to_expected(synthetic, synthetic_expected),
          distance_to_expected(test_images, test_expected))


def profile_columns(schema: conditions_lib.ConditionSchema, groups: Sequence[str],
                    label_features: Sequence[str]) -> np.ndarray:
  """Indices into the model condition vector of the features in `groups`, values and masks.

  Label features are never included, whatever their group. Empty when the schema has no
  such feature (PneumoniaMNIST's only feature is its label): there is no profile to calibrate to.
  """
  unknown = set(groups) - set(conditions_lib.GROUPS)
  if unknown:
    raise ValueError(f'eval.personalized.calibration_groups: unknown {sorted(unknown)}; '
                     'expected "PD" and/or "CD".')
  columns = [np.arange(schema.slice(f.name).start, schema.slice(f.name).stop)
             for f in schema.features if f.group in groups and f.name not in label_features]
  if not columns:
    return np.zeros((0,), np.int64)
  values = np.concatenate(columns)
  return np.concatenate([values, values + schema.value_dim])


def fit_ridge(features: np.ndarray, targets: np.ndarray, penalty: float):
  """`(weights, intercept)` of ridge regression with an unpenalized intercept (float64)."""
  if penalty < 0:
    raise ValueError(f'eval.personalized.calibration_ridge must be >= 0, got {penalty}.')
  features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64)
  feature_mean, target_mean = features.mean(axis=0), targets.mean()
  centered = features - feature_mean
  gram = centered.T @ centered + penalty * np.eye(features.shape[1])
  # lstsq rather than solve: a constant column (a mask that is always 1) makes the
  # unpenalized system singular, and its weight should simply be 0.
  weights = np.linalg.lstsq(gram, centered.T @ (targets - target_mean), rcond=None)[0]
  return weights, float(target_mean - feature_mean @ weights)


def profile_calibrated_scores(synthetic_scores: np.ndarray, synthetic_conditions: np.ndarray,
                              test_scores: np.ndarray, test_conditions: np.ndarray,
                              columns: np.ndarray, penalty: float,
                              floor: float = 1e-12) -> tuple[np.ndarray, np.ndarray, float]:
  """Log scores minus the log score a normal patient of that profile is expected to have.

  Args:
    synthetic_scores: `(M,)` F-AD scores of the synthetic normals (the fit's targets).
    synthetic_conditions: `(M, model_dim)` their condition vectors.
    test_scores: `(N,)` F-AD scores of the patients to score.
    test_conditions: `(N, model_dim)` their condition vectors (labels set to normal).
    columns: which condition columns the profile is (`profile_columns`).
    penalty: ridge penalty.
    floor: scores are clipped below at this before the log.

  Returns:
    `(synthetic_calibrated, test_calibrated, r2)`, r2 = the share of the synthetic normals'
    log-score variance the profile explains.
  """
  log_synthetic = np.log(np.maximum(np.asarray(synthetic_scores, np.float64), floor))
  log_test = np.log(np.maximum(np.asarray(test_scores, np.float64), floor))
  synthetic_profiles = np.asarray(synthetic_conditions)[:, columns]
  weights, intercept = fit_ridge(synthetic_profiles, log_synthetic, penalty)
  synthetic_residual = log_synthetic - (synthetic_profiles @ weights + intercept)
  test_residual = log_test - (np.asarray(test_conditions)[:, columns] @ weights + intercept)
  variance = np.var(log_synthetic)
  r2 = float(1.0 - np.var(synthetic_residual) / variance) if variance > 0 else 0.0
  return synthetic_residual, test_residual, r2


def record_only_auc(conditions: np.ndarray, schema: conditions_lib.ConditionSchema,
                    abnormal: np.ndarray, label_features: Sequence[str]) -> dict[str, float]:
  """How well each record column alone ranks the abnormal patients (AUC; 0.5 = no signal).

  A personalized detector reads the record. A column that carries the label (in the
  phantom, `severity_score` is generated from the findings) lets it score the record rather
  than the image, and its gain over the unconditioned detector is then not personalization.
  Continuous features by value, categorical and multi-hot ones per category (1 = present);
  masked values are left out, and so are columns with one class or one value among the rest.

  Args:
    conditions: `(N, model_dim)` model condition vectors of the test patients.
    schema: the schema that encoded them.
    abnormal: bool `(N,)`.
    label_features: features that are the label itself (not reported).
  """
  abnormal = np.asarray(abnormal, bool)
  records = schema.decode(conditions)
  report = {}
  for feature in schema.features:
    if feature.name in label_features:
      continue
    record = records[feature.name]
    if feature.kind == 'continuous':
      columns = {feature.name: record}
    elif feature.kind == 'categorical':
      columns = {f'{feature.name}={category}': np.where(record < 0, np.nan, record == index)
                 for index, category in enumerate(feature.categories)}
    else:
      columns = {f'{feature.name}={category}': record[:, index]
                 for index, category in enumerate(feature.categories)}
    for name, column in columns.items():
      column = np.asarray(column, np.float64)
      known = ~np.isnan(column)
      labels = abnormal[known]
      if labels.all() or not labels.any() or len(np.unique(column[known])) < 2:
        continue
      report[name] = float(sk_metrics.roc_auc_score(labels, column[known]))
  return report
