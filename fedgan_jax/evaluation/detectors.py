"""The detector `config.anomaly` describes: one autoencoder, or a small ensemble of them.

The variant knobs (what the AE reads, the in-painter's shape, the ensemble) are one typed
preset, `anomaly.variant` (`Variant`; numbers in configs/common.py), whose fields are still
overridden by name, e.g. `--config.anomaly.variant.ensemble_seeds=3`.

An ensemble (`anomaly.variant.ensemble_members`, `.ensemble_seeds`) trains each member
variant with `ensemble_seeds` seeds on the same images and averages their normalized
scores. Scores of different variants live on different scales (1 - SSIM, squared feature
error, D's logit), so each member's scores are first mapped through a monotone transform
fitted on that member's scores of the scored split's images, their labels unseen
(`anomaly.variant.ensemble_normalization`): 'rank' (the fraction of those scores below, ties
half) or 'zscore'. Not on the training images' scores: at `sampling.noise_scale=0`
every synthetic normal is the same film and their scores have no spread. A member is a
string of `anomaly` (or `anomaly.variant`) fields to override, e.g.
`'features=discriminator,score=mse'`; '' is the `anomaly` section itself.

Every caller (F-AD, the ceiling and the site-alone baselines) builds its detector here,
so all of them are the same variant.
"""

import dataclasses
from typing import Callable, Sequence

import ml_collections
import numpy as np

from fedgan_jax.evaluation import anomaly as anomaly_lib
from fedgan_jax.evaluation import discriminator_view

NORMALIZATIONS = ('rank', 'zscore')


def rank_normalize(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """Fraction of `reference` below each score, ties counting half: in [0, 1]."""
  reference = np.sort(np.asarray(reference, np.float64))
  scores = np.asarray(scores, np.float64)
  below = np.searchsorted(reference, scores, side='left')
  at_or_below = np.searchsorted(reference, scores, side='right')
  return (below + at_or_below) / (2.0 * len(reference))


def zscore_normalize(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
  """`(scores - mean) / std` of `reference` (a zero spread counts as 1)."""
  reference = np.asarray(reference, np.float64)
  std = reference.std()
  return (np.asarray(scores, np.float64) - reference.mean()) / (std if std > 0 else 1.0)


_NORMALIZERS = {'rank': rank_normalize, 'zscore': zscore_normalize}


# No postponed annotations in this module: ml_collections' flag parser reads these types.
# Not frozen: ml_collections' flag parser sets a preset's fields in place.
@dataclasses.dataclass
class Variant:
  """`anomaly.variant`: which detector variant (issue 21; benchmarks/detector_variants.md).

  Attributes:
    features: what the AE reconstructs: 'pixels' (block averages, `anomaly.input_size`) or
      'discriminator': the federated D's residual block `discriminator_block` (0-based).
    discriminator_block: see `features`.
    inpaint_patch, inpaint_embedding_dim, memory_slots: `anomaly.architecture='inpaint'`
      (SQUID-style, models/inpainting.py): patch side in the AE's input, embedding width,
      memory rows; its decoder's width is `anomaly.hidden[0]`.
    ensemble_members: member variants, each 'field=value,...' overrides of `anomaly` (or of
      this preset); () = the section alone.
    ensemble_seeds: seeds each member is trained with (1 and one member: no ensemble).
    ensemble_normalization: 'rank' or 'zscore' (module docstring).
    normal_filter_keep: the fraction of drawn synthetic normals F-AD keeps (1 = all): G
      draws `anomaly.num_synthetic / normal_filter_keep` and the federated D's attribute
      head keeps those it reads as least likely to show a finding (`EvalContext`).
    release_filter_percentile: > 0: before that, each hospital vetoes the drawn synthetic
      normals nearer to one of its normal films (or of all its films) than this percentile of
      those films' distances to another of its patients' (`memorization.release_veto`); 0 =
      off.
    score_border: the fraction of the image's height and width left out of the score on
      each side (0 = the whole image).
  """
  features: str
  discriminator_block: int
  inpaint_patch: int
  inpaint_embedding_dim: int
  memory_slots: int
  ensemble_members: tuple
  ensemble_seeds: int
  ensemble_normalization: str
  normal_filter_keep: float
  release_filter_percentile: float
  score_border: float


@dataclasses.dataclass
class OperatingPoint:
  """`eval.operating_point`: where a hospital would use F-AD (numbers: configs/eval_common.py).

  Attributes:
    site_percentile: each hospital thresholds F-AD on the detector's scores on its own real
      normal training films (they never leave it; the weights never see them), aiming at a
      specificity of site_percentile / 100 (`evaluation/calibration.py`).
    site_confidence: 0: the threshold is that percentile of the site's scores; c > 0: the
      order statistic that gives specificity >= site_percentile / 100 with confidence c.
    specificity: the sensitivity at this specificity is read off the ROC.
    private_epsilon: > 0 adds the pooled threshold of all sites' normals found by a
      differentially private federated search (`privacy/quantile.py`) within this epsilon;
      0 skips it.
    private_delta: that search's delta.
    private_steps: its bisection steps.
  """
  site_percentile: float
  site_confidence: float
  specificity: float
  private_epsilon: float
  private_delta: float
  private_steps: int


_VARIANT_FIELDS = tuple(f.name for f in dataclasses.fields(Variant))


def _has_field(anomaly_config, field: str) -> bool:
  return field in _VARIANT_FIELDS or (field != 'variant' and field in anomaly_config)


def _field(anomaly_config, field: str):
  return (getattr(anomaly_config.variant, field) if field in _VARIANT_FIELDS
          else anomaly_config[field])


def with_overrides(anomaly_config, **fields) -> ml_collections.ConfigDict:
  """A copy of `anomaly_config` with `fields` set, in the section or in its `variant`."""
  config = ml_collections.ConfigDict(anomaly_config.to_dict())
  for field, value in fields.items():
    if not _has_field(config, field):
      raise ValueError(f'anomaly: no field {field!r}; fields: '
                       f'{sorted(set(config.keys()) - {"variant"} | set(_VARIANT_FIELDS))}.')
    if field in _VARIANT_FIELDS:
      config.variant = dataclasses.replace(config.variant, **{field: value})
    else:
      config[field] = value
  return config


def member_config(anomaly_config, overrides: str) -> ml_collections.ConfigDict:
  """`anomaly_config` with `'field=value,...'` applied (values typed as the field's)."""
  fields = {}
  for item in filter(None, (part.strip() for part in overrides.split(','))):
    field, sep, value = item.partition('=')
    current = _field(anomaly_config, field) if _has_field(anomaly_config, field) else None
    if not sep or current is None or isinstance(current, (tuple, list, dict)):
      raise ValueError(f'anomaly.variant.ensemble_members: {item!r} must be field=value for a '
                       f'scalar field of anomaly or anomaly.variant.')
    fields[field] = type(current)(value)
  return with_overrides(anomaly_config, **fields)


@dataclasses.dataclass
class Ensemble:
  """Member detectors and the transforms their scores are averaged through."""
  members: list[anomaly_lib.Detector]
  references: list[np.ndarray]  # Each member's scores of the scored split's images.
  normalize: Callable[[np.ndarray, np.ndarray], np.ndarray]

  @property
  def final_loss(self) -> float:
    return float(np.mean([m.final_loss for m in self.members]))


def combine(member_scores: Sequence[np.ndarray], references: Sequence[np.ndarray],
            normalize: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
  """The mean over members of each member's scores normalized against its reference."""
  return np.mean([normalize(ref, s) for ref, s in zip(references, member_scores)], axis=0)


def is_ensemble(anomaly_config) -> bool:
  variant = anomaly_config.variant
  return len(variant.ensemble_members) > 1 or int(variant.ensemble_seeds) > 1


def train_detector(images: np.ndarray, anomaly_config, seed: int, reference: np.ndarray,
                   discriminator: discriminator_view.DiscriminatorView | None = None):
  """The configured detector trained on uint8 `images`: a `Detector` or an `Ensemble`.

  Args:
    reference: unlabeled images whose scores fit an ensemble's normalization (the scored
      split's); unused by a single detector.
    discriminator: the federated D, for `anomaly.features='discriminator'` or 'judge'.
  """
  if not is_ensemble(anomaly_config):
    return anomaly_lib.train_autoencoder(images, anomaly_config, seed,
                                         discriminator=discriminator)
  variant = anomaly_config.variant
  kind = variant.ensemble_normalization
  if kind not in NORMALIZATIONS:
    raise ValueError(f'anomaly.variant.ensemble_normalization: {kind!r} is not one of '
                     f'{NORMALIZATIONS}.')
  members = []
  for overrides in variant.ensemble_members or ('',):
    config = member_config(anomaly_config, overrides)
    # Member k of a variant is seeded seed + k: member 0 is the single detector itself.
    members += [anomaly_lib.train_autoencoder(images, config, seed + k,
                                              discriminator=discriminator)
                for k in range(int(variant.ensemble_seeds))]
  return Ensemble(members, [anomaly_lib.anomaly_scores(m, reference) for m in members],
                  _NORMALIZERS[kind])


def scores(detector, images: np.ndarray) -> np.ndarray:
  """Anomaly scores `(N,)` of uint8 images by a `Detector` or an `Ensemble`."""
  if isinstance(detector, Ensemble):
    return combine([anomaly_lib.anomaly_scores(m, images) for m in detector.members],
                   detector.references, detector.normalize)
  return anomaly_lib.anomaly_scores(detector, images)
