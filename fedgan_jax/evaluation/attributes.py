"""Attribute model: predicts patient attributes from an image, to measure conditioning.

Trained on REAL training images only (never on the GAN's discriminator, which
would grade its own homework), it answers "does an image generated for a
75-year-old man look like one?": regress age from the generated image and compare
with the requested age. Features are cheap and fixed: each image area-averaged to
`feature_size` x `feature_size`, optionally normalized per image (so scanner
window/gamma shifts between hospitals matter less), then standardized per pixel.
Continuous attributes use ridge regression with the penalty picked by efficient
leave-one-out CV; binary ones use L2 logistic regression.

Attribute names are record keys; a column of a multi-hot record is named
`'key[index]'` (e.g. `'history[1]'` for the second history entry).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn import linear_model
from sklearn import metrics
from sklearn import preprocessing

_COLUMN = re.compile(r'^(?P<key>[^\[\]]+)\[(?P<index>\d+)\]$')


def _area_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) matrix averaging input pixels by their overlap with each output pixel."""
  edges_in = np.arange(size_in + 1) / size_in
  edges_out = np.arange(size_out + 1) / size_out
  overlap = (np.minimum(edges_out[1:, None], edges_in[None, 1:])
             - np.maximum(edges_out[:-1, None], edges_in[None, :-1]))
  weights = np.clip(overlap, 0.0, None)
  return weights / weights.sum(axis=1, keepdims=True)


def image_features(images_uint8: np.ndarray, feature_size: int = 16,
                   normalize_per_image: bool = True) -> np.ndarray:
  """Area-downsampled pixels `(N, feature_size**2)` of uint8 `(N, H, W, 1)` images."""
  images = np.asarray(images_uint8)
  if images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f'images must be (N, H, W, 1), got shape {images.shape}.')
  rows = _area_matrix(images.shape[1], feature_size).astype(np.float32)
  cols = _area_matrix(images.shape[2], feature_size).astype(np.float32)
  small = rows @ (images[..., 0].astype(np.float32) @ (cols.T / 255.0))
  features = small.reshape(len(images), -1)
  if normalize_per_image:
    features = features - features.mean(axis=1, keepdims=True)
    features /= features.std(axis=1, keepdims=True) + 1e-6
  return features


def attribute_target(records: Mapping[str, Any], name: str) -> np.ndarray:
  """The record column named `name` (`'key'` or `'key[index]'`) as float64 `(N,)`; NaN = missing."""
  match = _COLUMN.match(name)
  key = match['key'] if match else name
  if key not in records:
    raise KeyError(f'attribute {name!r}: records have no {key!r}; have {sorted(records)}.')
  column = np.asarray(records[key], np.float64)
  if match:
    if column.ndim != 2 or int(match['index']) >= column.shape[1]:
      raise ValueError(f'attribute {name!r}: records[{key!r}] has shape {column.shape}.')
    return column[:, int(match['index'])]
  if column.ndim != 1:
    raise ValueError(f'attribute {name!r}: records[{key!r}] has shape {column.shape}; name one '
                     f'column as {key}[index].')
  return np.where(column < 0, np.nan, column)  # Categorical code -1 = missing.


@dataclasses.dataclass
class AttributeModel:
  """Fitted per-attribute regressors on fixed image features."""
  scaler: preprocessing.StandardScaler
  regressors: dict[str, Any]
  classifiers: dict[str, Any]
  feature_size: int
  normalize_per_image: bool

  @classmethod
  def fit(cls, images_uint8: np.ndarray, records: Mapping[str, Any],
          continuous: Sequence[str] = ('age',), binary: Sequence[str] = ('sex',), seed: int = 0,
          feature_size: int = 16, normalize_per_image: bool = True,
          ridge_alphas: Sequence[float] = tuple(np.logspace(-1, 5, 13)),
          logistic_c: float = 0.05) -> 'AttributeModel':
    """Fits one model per attribute on the rows where it is known.

    Args:
      images_uint8: `(N, H, W, 1)` real training images.
      records: attribute arrays with N rows (see `attribute_target` for names).
      continuous: attributes to regress (predicted in their own units).
      binary: 0/1 attributes to classify (predicted as P(1)).
      seed: seeds the logistic solver.
      feature_size: side of the downsampled image the models see.
      normalize_per_image: zero-mean, unit-std features per image before per-pixel scaling.
      ridge_alphas: ridge penalties tried by leave-one-out CV (1e-1 .. 1e5 by default).
      logistic_c: inverse L2 strength of the logistic regressions (0.05 by default: pixels are
        many, strongly correlated features).
    """
    features = image_features(images_uint8, feature_size, normalize_per_image)
    scaler = preprocessing.StandardScaler().fit(features)
    features = scaler.transform(features)
    regressors, classifiers = {}, {}
    for name in (*continuous, *binary):
      if len(attribute_target(records, name)) != len(features):
        raise ValueError(f'attribute {name!r}: {len(attribute_target(records, name))} record '
                         f'rows for {len(features)} images.')
    for name in continuous:
      target = attribute_target(records, name)
      known = np.isfinite(target)
      if known.sum() < 2:
        raise ValueError(f'attribute {name!r}: fewer than 2 known values to fit on.')
      regressors[name] = linear_model.RidgeCV(alphas=ridge_alphas).fit(features[known],
                                                                       target[known])
    for name in binary:
      target = attribute_target(records, name)
      known = np.isfinite(target)
      labels = target[known]
      if set(np.unique(labels)) != {0.0, 1.0}:
        raise ValueError(f'attribute {name!r}: binary targets need both 0 and 1, got '
                         f'{np.unique(labels)[:5]}.')
      classifiers[name] = linear_model.LogisticRegression(
          C=logistic_c, max_iter=2000, random_state=seed).fit(features[known], labels)
    return cls(scaler, regressors, classifiers, feature_size, normalize_per_image)

  def predict(self, images_uint8: np.ndarray) -> dict[str, np.ndarray]:
    """Continuous attributes: predicted values; binary ones: P(class 1). Each `(N,)`."""
    features = self.scaler.transform(
        image_features(images_uint8, self.feature_size, self.normalize_per_image))
    out = {name: model.predict(features) for name, model in self.regressors.items()}
    out.update({name: model.predict_proba(features)[:, 1]
                for name, model in self.classifiers.items()})
    return out


def conditioning_report(model: AttributeModel, images_uint8: np.ndarray,
                        records: Mapping[str, Any]) -> dict[str, float]:
  """How well images express their records, as read by `model`.

  Returns:
    `{name}_pearson_r`, `{name}_r2`, `{name}_mae` for continuous attributes; `{name}_auc`,
    `{name}_accuracy` (threshold 0.5) for binary ones. NaN where the rows with a known value
    are too few (< 2) or hold a single class.
  """
  predictions = model.predict(images_uint8)
  report = {}
  for name in model.regressors:
    target = attribute_target(records, name)
    known = np.isfinite(target)
    truth, guess = target[known], predictions[name][known]
    enough = known.sum() >= 2 and truth.std() > 0 and guess.std() > 0
    report[f'{name}_pearson_r'] = float(np.corrcoef(truth, guess)[0, 1]) if enough else np.nan
    report[f'{name}_r2'] = float(metrics.r2_score(truth, guess)) if enough else np.nan
    report[f'{name}_mae'] = float(np.mean(np.abs(truth - guess))) if known.any() else np.nan
  for name in model.classifiers:
    target = attribute_target(records, name)
    known = np.isfinite(target)
    truth, prob = target[known], predictions[name][known]
    both = len(np.unique(truth)) == 2
    report[f'{name}_auc'] = float(metrics.roc_auc_score(truth, prob)) if both else np.nan
    report[f'{name}_accuracy'] = float(np.mean((prob >= 0.5) == truth)) if known.any() else np.nan
  return report
