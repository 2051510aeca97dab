"""Optional clinical data: a CSV joined to the images, whose columns become CD features.

The `data.clinical` config section:
  path: the CSV ('' = no clinical data).
  key: the column to join on, present in the CSV under the same name, e.g. 'Patient ID'
    or 'Image Index' for ChestX-ray14 (values compared as text, with leading zeros of
    integer ids ignored).
  columns: one dict per feature: `name` (feature name), `column` (CSV header, default
    `name`), `kind` ('continuous' or 'categorical'), `categories` (categorical),
    optional `mean`/`std` (else fitted on the training records).
  missing_values: cell texts that mean "missing".

Missing cells, and images whose key is absent from the CSV, are masked (NaN or ''),
never zero-filled. Text in a continuous column or an undeclared category is an error.
"""

from __future__ import annotations

import csv
import os
from typing import Any, Mapping, Sequence

import numpy as np

KINDS = ('continuous', 'categorical')
DEFAULT_MISSING_VALUES = ('', 'NA', 'N/A', 'NaN', 'nan', 'null', 'NULL', 'None', '?')


def read_csv_columns(path: str | os.PathLike, columns: Sequence[str],
                     field: str) -> dict[str, np.ndarray]:
  """Reads the named columns of a CSV with a header row as arrays of stripped text.

  Args:
    path: the CSV file.
    columns: the headers to read; extra columns (and trailing empty fields) are ignored.
    field: the config field that named the file, for error messages.

  Raises:
    ValueError: the file is missing, lacks one of `columns`, or has a short row.
  """
  if not os.path.isfile(path):
    raise ValueError(f'{field}: CSV file {path} not found.')
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in columns if c not in header]
    if missing:
      raise ValueError(f'{field}: {path} has no column(s) {missing}; its header is {header}.')
    positions = [header.index(c) for c in columns]
    needed = max(positions) + 1 if positions else 0
    rows = []
    for line, row in enumerate(reader, start=2):
      if not row:
        continue
      if len(row) < needed:
        raise ValueError(f'{field}: {path} line {line} has {len(row)} fields, expected at least '
                         f'{needed} (header {header}).')
      rows.append([row[p].strip() for p in positions])
  values = list(zip(*rows)) if rows else [()] * len(columns)
  return {c: np.asarray(v, dtype=object) for c, v in zip(columns, values)}


def normalize_keys(keys: Sequence[Any]) -> np.ndarray:
  """Join keys as text; integer ids lose leading zeros so '00012' matches 12."""
  out = []
  for key in keys:
    text = str(key).strip()
    out.append(str(int(text)) if text.isdigit() else text)
  return np.asarray(out, dtype=object)


def _column_specs(clinical_config) -> list[dict]:
  specs = []
  for spec in clinical_config.get('columns', ()) or ():
    spec = dict(spec)
    name, kind = spec.get('name'), spec.get('kind')
    if not name or kind not in KINDS:
      raise ValueError(f'data.clinical.columns entry {spec}: needs a `name` and a `kind` in '
                       f'{KINDS}.')
    if kind == 'categorical' and not spec.get('categories'):
      raise ValueError(f'data.clinical.columns[{name!r}]: a categorical column needs `categories`.')
    unknown = set(spec) - {'name', 'column', 'kind', 'categories', 'mean', 'std'}
    if unknown:
      raise ValueError(f'data.clinical.columns[{name!r}]: unknown keys {sorted(unknown)}.')
    spec.setdefault('column', name)
    specs.append(spec)
  return specs


def enabled(clinical_config) -> bool:
  return clinical_config is not None and bool(clinical_config.get('path'))


def clinical_features(clinical_config) -> list[dict]:
  """Feature configs (group 'CD') for `ConditionSchema.from_config`; [] without clinical data."""
  if not enabled(clinical_config):
    return []
  features = []
  for spec in _column_specs(clinical_config):
    feature = {'name': spec['name'], 'kind': spec['kind'], 'group': 'CD'}
    if spec['kind'] == 'categorical':
      feature['categories'] = tuple(spec['categories'])
    for stat in ('mean', 'std'):
      if spec.get(stat) is not None:
        feature[stat] = float(spec[stat])
    features.append(feature)
  return features


def with_clinical_features(conditions_config: Sequence[Mapping[str, Any]],
                           clinical_config) -> list[dict]:
  """The declared conditions plus the clinical features they do not already declare."""
  declared = [dict(c) for c in conditions_config]
  names = {c['name'] for c in declared}
  return declared + [f for f in clinical_features(clinical_config) if f['name'] not in names]


def join_clinical(clinical_config, keys: Sequence[Any]) -> tuple[dict[str, np.ndarray], dict]:
  """Looks up the clinical columns of each record by its join key.

  Args:
    clinical_config: the `data.clinical` section.
    keys: the join key of each record (e.g. its patient id).

  Returns:
    `(records, info)`: records by feature name (continuous float with NaN missing,
    categorical text with '' missing), and `{'clinical_unmatched': records without a
    CSV row}`.
  """
  if not enabled(clinical_config):
    return {}, {}
  path, key = clinical_config.path, clinical_config.get('key')
  if not key:
    raise ValueError('data.clinical.key: name the column to join on (e.g. "Patient ID").')
  specs = _column_specs(clinical_config)
  table = read_csv_columns(path, [key] + [s['column'] for s in specs], 'data.clinical.path')
  missing_tokens = set(clinical_config.get('missing_values', DEFAULT_MISSING_VALUES))
  csv_keys = normalize_keys(table[key])
  unique, counts = np.unique(csv_keys.astype(str), return_counts=True)
  if (counts > 1).any():
    raise ValueError(f'data.clinical.path: {path} has repeated {key!r} values '
                     f'{unique[counts > 1][:5].tolist()}; expected one row per key.')
  row_of = {k: i for i, k in enumerate(csv_keys)}
  rows = np.asarray([row_of.get(k, -1) for k in normalize_keys(keys)], np.int64)
  matched = rows >= 0
  records = {}
  for spec in specs:
    cells = table[spec['column']]
    if spec['kind'] == 'continuous':
      parsed = np.full(len(cells), np.nan)
      for i, text in enumerate(cells):
        if text in missing_tokens:
          continue
        try:
          parsed[i] = float(text)
        except ValueError:
          raise ValueError(f'data.clinical.path: {path} line {i + 2}, column {spec["column"]!r}: '
                           f'{text!r} is not a number (or one of the missing-value markers '
                           f'{sorted(missing_tokens)}).') from None
      values = np.full(len(rows), np.nan)
    else:
      categories = set(spec['categories'])
      parsed = np.asarray(['' if t in missing_tokens else t for t in cells], dtype=object)
      unknown = sorted({t for t in parsed if t and t not in categories})
      if unknown:
        raise ValueError(f'data.clinical.path: {path} column {spec["column"]!r} has values '
                         f'{unknown[:5]} outside data.clinical.columns[{spec["name"]!r}]'
                         f'.categories '
                         f'{tuple(spec["categories"])}.')
      values = np.full(len(rows), '', dtype=object)
    values[matched] = parsed[rows[matched]]
    records[spec['name']] = values
  return records, {'clinical_unmatched': int((~matched).sum())}
