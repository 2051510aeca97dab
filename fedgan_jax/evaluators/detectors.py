"""The detector `config.anomaly` describes: one autoencoder, or a small ensemble of them.

An ensemble (`anomaly.ensemble_members`, `anomaly.ensemble_seeds`) trains each member
variant with `ensemble_seeds` seeds on the same images and averages their normalized
scores. Scores of different variants live on different scales (1 - SSIM, squared feature
error, D's logit), so each member's scores are first mapped through a monotone transform
fitted on that member's scores of the scored split's images, their labels unseen
(`anomaly.ensemble_normalization`): 'rank' (the fraction of those scores below, ties
half) or 'zscore'. Not on the training images' scores: at `sampling.noise_scale=0`
every synthetic normal is the same film and their scores have no spread. A member is a
string of `anomaly` fields to override, e.g. `'features=discriminator,score=mse'`; ''
is the `anomaly` section itself.

Every caller (F-AD, the ceiling and the site-alone baselines) builds its detector here,
so all of them are the same variant.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import ml_collections
import numpy as np

from fedgan_jax.evaluators import anomaly as anomaly_lib
from fedgan_jax.evaluators import discriminator_view

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


def member_config(anomaly_config, overrides: str) -> ml_collections.ConfigDict:
  """`anomaly_config` with `'field=value,...'` applied (values typed as the field's)."""
  config = ml_collections.ConfigDict(anomaly_config.to_dict())
  for item in filter(None, (part.strip() for part in overrides.split(','))):
    field, sep, value = item.partition('=')
    if not sep or field not in config or isinstance(config[field], (tuple, list, dict)):
      raise ValueError(f'anomaly.ensemble_members: {item!r} must be field=value for a scalar '
                       f'anomaly field; fields: {sorted(config.keys())}.')
    config[field] = type(config[field])(value)
  return config


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
  return (len(anomaly_config.get('ensemble_members', ())) > 1
          or int(anomaly_config.get('ensemble_seeds', 1)) > 1)


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
  kind = anomaly_config.ensemble_normalization
  if kind not in NORMALIZATIONS:
    raise ValueError(f'anomaly.ensemble_normalization: {kind!r} is not one of '
                     f'{NORMALIZATIONS}.')
  members = []
  for overrides in anomaly_config.ensemble_members or ('',):
    config = member_config(anomaly_config, overrides)
    # Member k of a variant is seeded seed + k: member 0 is the single detector itself.
    members += [anomaly_lib.train_autoencoder(images, config, seed + k,
                                              discriminator=discriminator)
                for k in range(int(anomaly_config.ensemble_seeds))]
  return Ensemble(members, [anomaly_lib.anomaly_scores(m, reference) for m in members],
                  _NORMALIZERS[kind])


def scores(detector, images: np.ndarray) -> np.ndarray:
  """Anomaly scores `(N,)` of uint8 images by a `Detector` or an `Ensemble`."""
  if isinstance(detector, Ensemble):
    return combine([anomaly_lib.anomaly_scores(m, images) for m in detector.members],
                   detector.references, detector.normalize)
  return anomaly_lib.anomaly_scores(detector, images)
