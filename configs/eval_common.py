"""The `eval` section of every experiment config: what `python -m fedgan_jax.eval` computes.

Attached by `configs/common.py` as `config.eval = eval_common.get_eval_config()`; a
`runlocal` variant shrinks the encoder training for smoke tests. Evaluators are picked by
name (`fedgan_jax.evaluation.driver.EVALUATORS`), so adding one never edits the binary:

    python -m fedgan_jax.eval --config=configs/phantom.py --workdir=/tmp/fedgan_phantom \
        --config.eval.inception_weights=/data/fid_inception.npz

Generated images are compared with the real images of `eval.reference` ('test' or
'train'), one generated image per real one, generated for that real image's condition
vector, so both sets have the same mix of patients and findings.

What defines a metric rather than an experiment (the domain encoder's network and training,
the KID / k-NN protocol, the personalized detectors' sampling) is a typed preset: one leaf
each (a dataclass of `fedgan_jax/evaluation/`, numbers written here), whose fields are still
overridden by name, e.g. `--config.eval.domain_features.steps=800`.
"""

import dataclasses

import ml_collections

from fedgan_jax.evaluation import detectors
from fedgan_jax.evaluation import domain_features
from fedgan_jax.evaluation import personalized
from fedgan_jax.evaluation import sample_quality
from fedgan_jax.evaluation import schema_attributes

EVALUATORS = ('inception_fid', 'domain_quality', 'conditioning', 'memorization', 'anomaly',
              'personalized')


def get_eval_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  """Defaults sized for the phantom default (64x64, 1000 test images) on 2 CPU cores."""
  config = ml_collections.ConfigDict()
  config.evaluators = EVALUATORS
  config.reference = 'test'           # Real images the generated ones are compared with.
  config.generate_batch_size = 256
  config.sample_columns = 8           # Columns of eval/samples.png (one row per train.profiles).
  # eval/real_vs_generated_by_class.png: per hospital, normal films and those of this many
  # most frequent findings (real above G's for the same records).
  config.class_grid_findings = 3

  # Inception-v3 FID (pytorch-fid's network). '' skips it, saying how to enable it; a path that
  # does not hold a converted npz is an error naming the convert command.
  config.inception_weights = ''

  # KID and k-NN metrics, in the domain feature space (and Inception's when weights are given):
  # KID over 50 subsets of at most 500 images (smaller reference sets use all theirs), k = 5
  # for precision/recall and density/coverage, Inception batches of 50.
  config.sample_quality = sample_quality.Settings(
      kid_subsets=10 if runlocal else 50, kid_subset_size=32 if runlocal else 500,
      nearest_neighbours=5, inception_batch_size=50)

  # The domain encoder: a small CNN trained on the real training images to predict the
  # condition vector (attributes and findings); its penultimate layer is the feature space.
  config.domain_features = domain_features.EncoderSettings(
      channels=(16, 32, 64), feature_dim=64, input_unshuffle=2, steps=400, batch_size=64,
      learning_rate=1e-3, feature_batch_size=256)

  # Conditioning fidelity: the attribute model fitted on real training images reads back every
  # schema feature (or those listed) from images generated for the reference conditions.
  config.conditioning = schema_attributes.Conditioning(features=(), min_class_examples=5)

  # Memorization: synthetic normals nearer to a training film than this percentile of real
  # held-out normals' nearest-training distances are counted (the target is none).
  config.memorization_percentile = 1.0

  # Anomaly detection on the real test split (the detector follows `config.anomaly`).
  # The multi-hot feature holding per-finding labels: per-finding AUCs, and the personalized
  # detectors replace it by its normal-profile value so none reads the answer.
  config.findings_feature = 'findings'
  # Where F-AD would be used: each hospital thresholds the detector's scores on its own real
  # normal training films (they never leave it; the weights never see them) for a specificity
  # of site_percentile / 100, guaranteed with probability site_confidence (0: the plain
  # percentile); the federation's pooled threshold is also found by a private search within
  # (private_epsilon, private_delta) over private_steps bisections; the sensitivity at
  # `specificity` is read off the ROC. Confidence 0.9 over the plain median: on ZhangLab
  # validation (3 seeds) the federation's threshold met sensitivity >= 0.9 with specificity
  # >= 0.5 on 2 seeds instead of 1 (BENCHMARKS.md, issue 21, fourth session).
  config.operating_point = detectors.OperatingPoint(
      site_percentile=50.0, site_confidence=0.9, specificity=0.9, private_epsilon=2.0,
      private_delta=1e-5, private_steps=12)
  # The same detector trained on real normals, beside F-AD: 'ceiling' (all hospitals' pooled:
  # what synthetic images could give at best) and 'site_alone' (each hospital's own).
  config.anomaly_baselines = ('ceiling', 'site_alone')

  # Personalization ablation: detectors that use the patient's own PD/CD. Two z draws make
  # G's expected normal image; 250 synthetic normals set the generator_distance threshold
  # (the percentile is stable well before); profile_calibrated regresses on PD only (CD holds
  # acute-disease markers that track the findings).
  config.personalized = personalized.Settings(
      methods=('conditional_ae', 'generator_distance', 'profile_calibrated'),
      expected_normal_samples=2, threshold_samples=32 if runlocal else 250,
      calibration_groups=('PD',), calibration_ridge=1.0)

  if runlocal:
    config.domain_features = dataclasses.replace(
        config.domain_features, channels=(8, 16), feature_dim=16, steps=30, batch_size=32,
        feature_batch_size=64)
    config.generate_batch_size = 64
    config.sample_columns = 4
  return config
