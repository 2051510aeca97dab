"""What the evaluators read: `EvalContext` (per run, cached) and `SharedModels` (per dataset).

`EvalContext` computes once per evaluation what several evaluators need: images generated
for the reference conditions, synthetic normal images, the F-AD detections (on synthetic
normals, and the same detector on real normals for the baselines), the domain encoder and
the attribute reader. What depends only on the real data lives in `SharedModels`, which
`benchmarks/compare_baselines.py` reuses across methods so every method is scored by the
very same encoder and attribute model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import numpy as np

from fedgan_jax import synthesis
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.evaluation import anomaly as anomaly_lib
from fedgan_jax.evaluation import detectors
from fedgan_jax.evaluation import discriminator_view
from fedgan_jax.evaluation import domain_features
from fedgan_jax.evaluation import memorization
from fedgan_jax.evaluation import personalized as personalized_lib
from fedgan_jax.evaluation import schema_attributes
from fedgan_jax.federated import client as client_lib

REFERENCES = ('test', 'train')
# Detectors trained on real normal films, reported beside F-AD (`eval.anomaly_baselines`).
ANOMALY_BASELINES = ('ceiling', 'site_alone')


class SharedModels:
  """Models fitted on the real training data only, reusable by every method on that data."""

  def __init__(self):
    self._key = None
    self._models: dict[str, Any] = {}

  def get(self, name: str, key: str, build: Callable[[], Any]) -> Any:
    """`build()` once per data key; a different key (other data or seed) is refused."""
    if self._key is None:
      self._key = key
    elif key != self._key:
      raise ValueError('SharedModels: reused with another data config or seed (its models were '
                       'fitted on other images); use one SharedModels per dataset.')
    if name not in self._models:
      self._models[name] = build()
    return self._models[name]


@dataclasses.dataclass
class EvalContext:
  """Everything an evaluator reads, with lazily computed, cached intermediate results."""
  config: Any
  federation: dataset_lib.FederatedDataset
  task: client_lib.GanTask
  g_params: Any
  out_dir: str
  shared: SharedModels
  # The federated D (its params), for detectors that read its features or judgment.
  d_params: Any = None
  roc_curves: dict = dataclasses.field(default_factory=dict)
  _cache: dict = dataclasses.field(default_factory=dict)

  @property
  def eval_config(self):
    return self.config.eval

  @property
  def seed(self) -> int:
    return int(self.config.seed)

  def _cached(self, name: str, build: Callable[[], Any]) -> Any:
    if name not in self._cache:
      self._cache[name] = build()
    return self._cache[name]

  def _shared(self, name: str, build: Callable[[], Any]) -> Any:
    key = json.dumps({'data': self.config.data.to_dict(), 'seed': self.seed,
                      'conditions': list(self.config.conditions),
                      'domain_features': dataclasses.asdict(self.eval_config.domain_features),
                      'conditioning': dataclasses.asdict(self.eval_config.conditioning)},
                     sort_keys=True, default=str)
    return self.shared.get(name, key, build)

  def pooled_training(self) -> dataset_lib.ClientData:
    """All hospitals' real training data, concatenated once."""
    return self._cached('pooled', self.federation.pooled)

  def reference(self) -> dataset_lib.ClientData:
    """The real images generated ones are compared with (`eval.reference`)."""
    name = self.eval_config.reference
    if name not in REFERENCES:
      raise ValueError(f'eval.reference: {name!r} is not one of {REFERENCES}.')
    return self.federation.test if name == 'test' else self.pooled_training()

  def generated_reference(self) -> np.ndarray:
    """One generated image per reference image, for that image's condition vector."""
    return self._cached('generated_reference', lambda: synthesis.synthesize(
        self.task, self.g_params, self.reference().conditions, self.seed + 2,
        self.eval_config.generate_batch_size))

  def synthetic_normals(self) -> tuple[np.ndarray, np.ndarray]:
    """`(images, conditions)` of synthetic normal patients, drawn as training's F-AD does."""
    def build():
      anomaly_config = self.config.anomaly
      if self.federation.normal_profiles is None:
        raise ValueError(f'data source {self.config.data.name!r} gives no normal_profiles to '
                         'synthesize normal patients from; the anomaly and personalized '
                         'evaluators need them (remove them from eval.evaluators).')
      rng = np.random.default_rng([self.seed, 99])
      count = anomaly_config.num_synthetic
      keep = float(anomaly_config.variant.normal_filter_keep)
      if not 0 < keep <= 1:
        raise ValueError(f'anomaly.variant.normal_filter_keep must be in (0, 1], got {keep}.')
      drawn = int(np.ceil(count / keep))
      conditions = self.federation.normal_profiles(rng, drawn)
      images = synthesis.synthesize(self.task, self.g_params, conditions, self.seed + 1,
                                    self.eval_config.generate_batch_size)
      vetoed = self._release_veto(images)
      if vetoed.all():
        raise ValueError(
            f'the hospitals\' release veto (anomaly.variant.release_filter_percentile='
            f'{anomaly_config.variant.release_filter_percentile:g}) dropped all {drawn} drawn '
            'synthetic normals: every one lies nearer to a hospital\'s film than its patients\' '
            'films are to each other (a G early in training draws near-mean films). Train G '
            'further, or lower the percentile (0 = off) knowing that films that near real '
            'patients\' films would then be used.')
      if vetoed.any():
        images, conditions = images[~vetoed], conditions[~vetoed]
      self._cache['release_filter'] = {
          'percentile': float(anomaly_config.variant.release_filter_percentile),
          'drawn': drawn, 'vetoed': int(vetoed.sum())}
      if len(images) > count:
        # G's "normal" films at noise scale > 0 often carry what its pneumonia films carry; the
        # federated D's attribute head, trained on the hospitals' labelled films, keeps the
        # `count` it reads as least likely to show a finding. The detector still trains on
        # synthetic images only.
        if self.d_params is None:
          raise ValueError('anomaly.variant.normal_filter_keep < 1 reads the federated D, '
                           'whose params this caller did not pass.')
        findings = self.federation.schema.slice(self.eval_config.findings_feature)
        probability = discriminator_view.finding_probability(
            self.task.discriminator, self.d_params, images, conditions, findings,
            self.eval_config.generate_batch_size)
        chosen = np.sort(np.argsort(probability, kind='stable')[:count])
        images, conditions = images[chosen], conditions[chosen]
      return images, conditions
    return self._cached('synthetic_normals', build)

  def _release_veto(self, images: np.ndarray) -> np.ndarray:
    """The drawn synthetic normals any hospital vetoes as too near one of its own films.

    Each site checks them against its normal films with the normal films' floor (what the
    synthetic films imitate) and against all its films with theirs: pneumonia films lie
    nearer each other, so a floor from all films alone would pass near-copies of normals.
    """
    percentile = float(self.config.anomaly.variant.release_filter_percentile)
    vetoed = np.zeros(len(images), bool)
    if percentile == 0:
      return vetoed
    to_model = dataset_lib.images_to_model
    synthetic = to_model(images)
    for client in self.federation.clients:
      normal = ~np.asarray(client.abnormal, bool)
      for films, patients in ((client.images[normal], client.patient_ids[normal]),
                              (client.images, client.patient_ids)):
        if len(films):
          vetoed |= memorization.release_veto(synthetic, to_model(films), patients,
                                              percentile)[0]
    return vetoed

  def release_filter(self) -> dict:
    """What the hospitals' release veto removed from the drawn synthetic normals."""
    self.synthetic_normals()
    return self._cache['release_filter']

  def domain_encoder(self) -> domain_features.FittedEncoder:
    def build():
      pooled = self.pooled_training()
      return domain_features.train_domain_encoder(
          pooled.images, pooled.conditions, self.federation.schema.continuous_columns(),
          self.eval_config.domain_features, self.seed)
    return self._shared('domain_encoder', build)

  def domain_features_of(self, name: str, images: np.ndarray) -> np.ndarray:
    batch_size = self.eval_config.domain_features.feature_batch_size
    return self._cached(f'domain_features/{name}',
                        lambda: self.domain_encoder().features(images, batch_size))

  def attribute_reader(self) -> schema_attributes.SchemaReader:
    def build():
      pooled = self.pooled_training()
      return schema_attributes.SchemaReader.fit(
          self.federation.schema, pooled.images, pooled.conditions,
          self.eval_config.conditioning.features,
          self.eval_config.conditioning.min_class_examples, self.seed)
    return self._shared('attribute_reader', build)

  def discriminator(self) -> discriminator_view.DiscriminatorView | None:
    """The federated D, judging under the synthetic normals' mean condition (None: not given)."""
    if self.d_params is None:
      return None
    return self._cached('discriminator', lambda: discriminator_view.DiscriminatorView(
        self.task.discriminator, self.d_params,
        np.asarray(self.synthetic_normals()[1], np.float32).mean(axis=0)))

  def train_detector(self, images: np.ndarray):
    """The configured detector (`evaluation/detectors.py`) trained on uint8 `images`."""
    return detectors.train_detector(images, self.config.anomaly, self.seed,
                                    reference=self.federation.test.images,
                                    discriminator=self.discriminator())

  def unconditioned_detection(self) -> dict:
    """F-AD: the plain AE on synthetic normals, scored on the real test split."""
    def build():
      synthetic, _ = self.synthetic_normals()
      detector = self.train_detector(synthetic)
      test_images = self.federation.test.images
      return {'synthetic_scores': detectors.scores(detector, synthetic),
              'test_scores': detectors.scores(detector, test_images),
              'final_loss': detector.final_loss, 'detector': detector}
    return self._cached('unconditioned_detection', build)

  def site_normals(self) -> dict[str, np.ndarray]:
    """Each hospital's real normal training films (they never leave the site)."""
    return self._cached('site_normals', lambda: {c.name: c.normal_images()
                                                  for c in self.federation.clients})

  def training_normals(self) -> np.ndarray:
    """All hospitals' real normal training films."""
    return self._cached('training_normals', lambda: self.pooled_training().normal_images())

  def real_normal_detection(self, name: str, images: np.ndarray) -> dict:
    """The same detector trained on real normal films `images` (a baseline, not the product)."""
    def build():
      if len(images) == 0:
        return {'skipped': 'no real normal training films.'}
      detector = self.train_detector(images)
      return {'train_scores': detectors.scores(detector, images),
              'test_scores': detectors.scores(detector, self.federation.test.images)}
    return self._cached(f'real_normal_detection/{name}', build)

  def detection_summary(self, label: str, synthetic_scores, test_scores) -> dict:
    """Threshold/AUC/sensitivity/specificity, per-finding AUC; adds the ROC to the plot."""
    test = self.federation.test
    report = anomaly_lib.detection_report(synthetic_scores, test_scores, test.abnormal,
                                          self.config.anomaly.threshold_percentile)
    roc = report.pop('roc')
    self.roc_curves[label] = (np.array(roc['fpr']), np.array(roc['tpr']), report['auc'])
    findings = self.eval_config.findings_feature
    schema = self.federation.schema
    if findings and findings in {f.name for f in schema.features}:
      labels = schema.decode(test.conditions)[findings]
      report['per_finding_auc'] = personalized_lib.per_finding_auc(
          test_scores, labels, test.abnormal, schema.feature(findings).categories)
    return report
