"""Conditioning fidelity per schema feature, read by a model fitted on real training images.

`SchemaReader.fit` turns every feature of the condition schema into columns for
`attributes.AttributeModel` (trained on REAL training images, never the GAN's D):
continuous features are regressed (standardized units), every 0/1 column of a categorical
or multi-hot feature is classified. `report(images, conditions)` then says how well
images express the condition vectors they were generated for:

  * continuous: Pearson correlation of read vs requested value (and MAE in the feature's
    units);
  * binary (a two-category feature, or a multi-hot entry): AUC (and accuracy at 0.5);
  * categorical with more than two categories: accuracy of the most probable category;
  * overall: the mean cosine similarity of the design's L_cond, `1 - L_cond`, between the
    read attribute vector and the requested one over the present entries.

A column whose training labels are too one-sided to fit (fewer than `min_class_examples`
of a class) is not read; `not_fitted` says why, and it is masked out of the cosine.
"""

import dataclasses
from typing import Sequence

import numpy as np
from sklearn import metrics as sk_metrics

from fedgan_jax import losses
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.evaluation import attributes as attributes_lib


def _records(schema: conditions_lib.ConditionSchema, conditions: np.ndarray) -> dict:
  """`{feature: (N, width)}` in standardized/0-1 units, NaN where the mask is 0."""
  values, mask = conditions_lib.split_condition(np.asarray(conditions, np.float64))
  return {f.name: np.where(mask[:, schema.slice(f.name)] > 0, values[:, schema.slice(f.name)],
                           np.nan) for f in schema.features}


def _column(name: str, index: int) -> str:
  return f'{name}[{index}]'


# No postponed annotations in this module: ml_collections' flag parser reads these types.
@dataclasses.dataclass
class Conditioning:
  """`eval.conditioning`: what the conditioning-fidelity reader reads (configs/eval_common.py).

  Attributes:
    features: schema features read back from generated images; () = every one.
    min_class_examples: a binary column needs this many of each class to be fit.
  """
  features: tuple
  min_class_examples: int


@dataclasses.dataclass
class SchemaReader:
  """A fitted `AttributeModel` plus how its columns map onto the schema."""
  schema: conditions_lib.ConditionSchema
  features: tuple[str, ...]
  model: attributes_lib.AttributeModel | None
  not_fitted: dict[str, str]

  @classmethod
  def fit(cls, schema: conditions_lib.ConditionSchema, images_uint8: np.ndarray,
          conditions: np.ndarray, features: Sequence[str] = (), min_class_examples: int = 5,
          seed: int = 0) -> 'SchemaReader':
    """Fits one reader per column of `features` (all of the schema's when empty)."""
    names = tuple(features) or tuple(f.name for f in schema.features)
    for name in names:
      schema.feature(name)  # Raises naming the unknown feature.
    records = _records(schema, conditions)
    continuous, binary, not_fitted = [], [], {}
    for name in names:
      feature = schema.feature(name)
      if feature.kind == 'continuous':
        known = np.isfinite(records[name][:, 0]).sum()
        if known < max(2, min_class_examples):
          not_fitted[_column(name, 0)] = f'only {known} known training values'
        else:
          continuous.append(_column(name, 0))
        continue
      # A two-category feature is one binary question (is it the second category?).
      two_categories = feature.kind == 'categorical' and feature.width == 2
      indices = [1] if two_categories else range(feature.width)
      for index in indices:
        column = records[name][:, index]
        positives, negatives = int(np.sum(column == 1)), int(np.sum(column == 0))
        if min(positives, negatives) < min_class_examples:
          not_fitted[_column(name, index)] = (
              f'{positives} positive / {negatives} negative training labels (< '
              f'eval.conditioning.min_class_examples={min_class_examples})')
        else:
          binary.append(_column(name, index))
    model = None
    if continuous or binary:
      model = attributes_lib.AttributeModel.fit(images_uint8, records, continuous, binary,
                                                seed=seed)
    return cls(schema, names, model, not_fitted)

  def read(self, images_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(predicted values (N, value_dim), read mask (N, value_dim))` in value-vector layout.

    Continuous columns hold the predicted standardized value, 0/1 columns a probability; the
    read mask is 0 on columns nobody reads (not in `features`, or not fitted).
    """
    n = len(images_uint8)
    predicted = np.zeros((n, self.schema.value_dim))
    read = np.zeros((n, self.schema.value_dim))
    if self.model is None:
      return predicted, read
    outputs = self.model.predict(images_uint8)
    for name in self.features:
      feature, columns = self.schema.feature(name), self.schema.slice(name)
      for index in range(feature.width):
        key = _column(name, index)
        if key in outputs:
          predicted[:, columns.start + index] = outputs[key]
          read[:, columns.start + index] = 1.0
      pair = _column(name, 1)
      if feature.kind == 'categorical' and feature.width == 2 and pair in outputs:
        predicted[:, columns.start] = 1.0 - outputs[pair]
        read[:, columns.start] = 1.0
    return predicted, read

  def report(self, images_uint8: np.ndarray, conditions: np.ndarray) -> dict:
    """Per-feature fidelity of `images_uint8` to the `conditions` they should show."""
    if len(images_uint8) != len(conditions):
      raise ValueError(f'conditioning: {len(images_uint8)} images for {len(conditions)} '
                       'condition vectors.')
    predicted, read = self.read(images_uint8)
    values, mask = conditions_lib.split_condition(np.asarray(conditions, np.float64))
    report = {}
    for name in self.features:
      feature, columns = self.schema.feature(name), self.schema.slice(name)
      truth, guess = values[:, columns], predicted[:, columns]
      known = (mask[:, columns] > 0).all(axis=1) & (read[:, columns] > 0).all(axis=1)
      if feature.kind == 'continuous':
        report[name] = {'kind': 'continuous',
                        'pearson_r': _pearson(truth[known, 0], guess[known, 0]),
                        'mae': float(np.mean(np.abs(truth[known, 0] - guess[known, 0]))
                                     * feature.std) if known.any() else float('nan')}
      elif feature.kind == 'categorical' and feature.width == 2:
        report[name] = {'kind': 'categorical', 'auc': _auc(truth[known, 1], guess[known, 1]),
                        'accuracy': _accuracy(truth[known, 1], guess[known, 1])}
      elif feature.kind == 'categorical':
        agree = np.argmax(truth[known], axis=1) == np.argmax(guess[known], axis=1)
        report[name] = {'kind': 'categorical',
                        'accuracy': float(agree.mean()) if known.any() else float('nan')}
      else:
        aucs = {}
        for index, category in enumerate(feature.categories):
          present = (mask[:, columns.start + index] > 0) & (read[:, columns.start + index] > 0)
          aucs[category] = _auc(truth[present, index], guess[present, index])
        finite = [v for v in aucs.values() if np.isfinite(v)]
        report[name] = {'kind': 'multi_hot', 'auc': aucs,
                        'mean_auc': float(np.mean(finite)) if finite else float('nan')}
    report['cond_cosine'] = cosine_similarity(predicted, values, mask * read)
    return report


def cosine_similarity(predicted: np.ndarray, values: np.ndarray, mask: np.ndarray) -> float:
  """Mean `1 - L_cond` over the rows whose masked vectors are both non-zero (NaN if none)."""
  cosine = 1.0 - np.asarray(losses.cosine_condition_loss(predicted, values, mask), np.float64)
  defined = ((np.linalg.norm(predicted * mask, axis=-1) > 1e-8)
             & (np.linalg.norm(values * mask, axis=-1) > 1e-8))
  return float(cosine[defined].mean()) if defined.any() else float('nan')


def _pearson(truth: np.ndarray, guess: np.ndarray) -> float:
  if len(truth) < 2 or truth.std() == 0 or guess.std() == 0:
    return float('nan')
  return float(np.corrcoef(truth, guess)[0, 1])


def _auc(truth: np.ndarray, probability: np.ndarray) -> float:
  if len(np.unique(truth)) != 2:
    return float('nan')
  return float(sk_metrics.roc_auc_score(truth, probability))


def _accuracy(truth: np.ndarray, probability: np.ndarray) -> float:
  return float(np.mean((probability >= 0.5) == truth)) if len(truth) else float('nan')
