"""Conditioning schema: patient records -> the condition vector `c = [PD, CD]`.

A schema is declared in the config as a list of features, each one of
  * `continuous`: a float, standardized with the declared (or fitted) mean/std;
  * `categorical`: one of `categories`, one-hot;
  * `multi_hot`: any subset of `categories` (e.g. medical history, findings).
Missing values are never silently zero: every entry of the value vector has a
mask bit, and the vector the models see is `[values * mask, mask]`, so a model can
tell "age unknown" from "age equal to the mean". Losses that compare attributes
(L_cond, the attribute head) use the mask to ignore missing entries.

Records are dicts of numpy arrays keyed by feature name:
  continuous  -> float (N,), NaN = missing;
  categorical -> int codes (N,) with -1 = missing, or strings/objects ('' or None = missing);
  multi_hot   -> (N, K) of {0, 1}, or float with NaN rows = missing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

KINDS = ('continuous', 'categorical', 'multi_hot')
GROUPS = ('PD', 'CD')  # Patient demographics, clinical data.


@dataclasses.dataclass(frozen=True)
class Feature:
  """One declared feature of the condition vector."""
  name: str
  kind: str
  group: str = 'PD'  # 'PD' (demographics) or 'CD' (clinical data).
  categories: tuple[str, ...] = ()
  mean: float | None = None
  std: float | None = None

  @property
  def width(self) -> int:
    return 1 if self.kind == 'continuous' else len(self.categories)


class ConditionSchema:
  """Encodes records into `[values * mask, mask]` and slices the vector back."""

  def __init__(self, features: Sequence[Feature]):
    names = [f.name for f in features]
    if len(set(names)) != len(names):
      raise ValueError(f'conditions: duplicate feature names in {names}.')
    for f in features:
      if f.kind not in KINDS:
        raise ValueError(f'conditions.{f.name}: kind {f.kind!r} is not one of {KINDS}.')
      if f.kind != 'continuous' and not f.categories:
        raise ValueError(f'conditions.{f.name}: a {f.kind} feature needs `categories`.')
      if f.group not in GROUPS:
        raise ValueError(f'conditions.{f.name}: group must be "PD" or "CD", got {f.group!r}.')
    self.features = tuple(features)
    offsets = np.cumsum([0] + [f.width for f in self.features])
    self._slices = {f.name: slice(int(a), int(b))
                    for f, a, b in zip(self.features, offsets[:-1], offsets[1:])}

  @classmethod
  def from_config(cls, feature_configs: Sequence[Mapping[str, Any]]) -> 'ConditionSchema':
    features = []
    for fc in feature_configs:
      fc = dict(fc)
      unknown = set(fc) - {f.name for f in dataclasses.fields(Feature)}
      if unknown:
        raise ValueError(f'conditions entry {fc.get("name")!r}: unknown keys {sorted(unknown)}.')
      fc['categories'] = tuple(fc.get('categories', ()))
      features.append(Feature(**fc))
    return cls(features)

  @property
  def value_dim(self) -> int:
    """Length of the value vector (and of its mask)."""
    return sum(f.width for f in self.features)

  @property
  def model_dim(self) -> int:
    """Length of the vector fed to models: `[values * mask, mask]`."""
    return 2 * self.value_dim

  def feature(self, name: str) -> Feature:
    for f in self.features:
      if f.name == name:
        return f
    raise KeyError(f'conditions: no feature named {name!r}; have {[f.name for f in self.features]}.')

  def slice(self, name: str) -> slice:
    """Columns of feature `name` in the value vector."""
    self.feature(name)
    return self._slices[name]

  def fit_standardization(self, records: Mapping[str, np.ndarray]) -> 'ConditionSchema':
    """Fills in mean/std of continuous features that the config left unset."""
    features = []
    for f in self.features:
      if f.kind == 'continuous' and (f.mean is None or f.std is None):
        values = np.asarray(records[f.name], np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
          raise ValueError(f'conditions.{f.name}: no non-missing values to standardize with; '
                           'declare `mean` and `std` in the config.')
        std = float(values.std()) or 1.0
        f = dataclasses.replace(f, mean=float(values.mean()), std=std)
      features.append(f)
    return ConditionSchema(features)

  def encode(self, records: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(values, mask)`, both float32 `(N, value_dim)`."""
    missing = [f.name for f in self.features if f.name not in records]
    if missing:
      raise KeyError(f'conditions: records lack features {missing}; have {sorted(records)}.')
    n = len(np.asarray(records[self.features[0].name]))
    values = np.zeros((n, self.value_dim), np.float32)
    mask = np.zeros((n, self.value_dim), np.float32)
    for f in self.features:
      cols = self._slices[f.name]
      column = records[f.name]
      if len(column) != n:
        raise ValueError(f'conditions.{f.name}: {len(column)} rows, expected {n}.')
      if f.kind == 'continuous':
        if f.mean is None or f.std is None:
          raise ValueError(f'conditions.{f.name}: mean/std unset; call fit_standardization first.')
        x = np.asarray(column, np.float64)
        present = np.isfinite(x)
        values[:, cols.start] = np.where(present, (x - f.mean) / f.std, 0.0)
        mask[:, cols.start] = present
      elif f.kind == 'categorical':
        codes = self._category_codes(f, column)
        present = codes >= 0
        values[np.flatnonzero(present), cols.start + codes[present]] = 1.0
        mask[present, cols] = 1.0
      else:
        x = np.asarray(column, np.float64)
        if x.ndim != 2 or x.shape[1] != f.width:
          raise ValueError(f'conditions.{f.name}: multi-hot records must be (N, {f.width}) for '
                           f'categories {f.categories}, got shape {x.shape}.')
        present = np.isfinite(x)
        bad = present & (x != 0) & (x != 1)
        if bad.any():
          raise ValueError(f'conditions.{f.name}: multi-hot values must be 0 or 1, got {x[bad][:5]}.')
        values[:, cols] = np.where(present, x, 0.0)
        mask[:, cols] = present
    return values, mask

  def _category_codes(self, f: Feature, column: Any) -> np.ndarray:
    column = np.asarray(column)
    if np.issubdtype(column.dtype, np.integer):
      codes = column.astype(np.int64)
      if (codes >= f.width).any() or (codes < -1).any():
        raise ValueError(f'conditions.{f.name}: codes must be in [-1, {f.width - 1}], got '
                         f'{sorted(set(codes[(codes >= f.width) | (codes < -1)].tolist()))[:5]}.')
      return codes
    lookup = {c: i for i, c in enumerate(f.categories)}
    codes = np.empty(len(column), np.int64)
    for i, v in enumerate(column):
      if v is None or v == '' or (isinstance(v, float) and np.isnan(v)):
        codes[i] = -1
      elif v in lookup:
        codes[i] = lookup[v]
      else:
        raise ValueError(f'conditions.{f.name}: unknown category {str(v)!r}; expected one of '
                         f'{f.categories} (or empty for missing).')
    return codes

  def continuous_columns(self) -> np.ndarray:
    """Bool `(value_dim,)`: True where a column is a standardized continuous value
    (regressed), False where it is a 0/1 indicator (classified)."""
    columns = np.zeros(self.value_dim, bool)
    for f in self.features:
      if f.kind == 'continuous':
        columns[self._slices[f.name]] = True
    return columns

  def decode(self, condition: np.ndarray) -> dict[str, np.ndarray]:
    """Model condition vectors `(N, model_dim)` -> records (inverse of `encode`).

    Continuous features come back in their units (NaN where masked), categorical as
    codes (-1 where masked), multi-hot as floats (NaN where masked).
    """
    values, mask = split_condition(np.asarray(condition, np.float64))
    records = {}
    for f in self.features:
      cols = self._slices[f.name]
      v, m = values[:, cols], mask[:, cols] > 0
      if f.kind == 'continuous':
        records[f.name] = np.where(m[:, 0], v[:, 0] * f.std + f.mean, np.nan)
      elif f.kind == 'categorical':
        records[f.name] = np.where(m.all(axis=1), np.argmax(v, axis=1), -1)
      else:
        records[f.name] = np.where(m, v, np.nan)
    return records

  def decode_continuous(self, name: str, standardized: np.ndarray) -> np.ndarray:
    """Maps standardized values of a continuous feature back to its units."""
    f = self.feature(name)
    return np.asarray(standardized) * f.std + f.mean


def model_condition(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The vector models see: `[values * mask, mask]` along the last axis."""
  return np.concatenate([values * mask, mask], axis=-1).astype(np.float32)


def split_condition(condition):
  """Inverse of `model_condition` (works on numpy and jax arrays)."""
  half = condition.shape[-1] // 2
  return condition[..., :half], condition[..., half:]
