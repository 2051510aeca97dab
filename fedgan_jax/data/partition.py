"""Patient-level partitions of a pool of examples into hospitals, and the federation they make.

Every method first groups rows by `metadata['patient_id']` (each row is its own
patient when that key is absent) and assigns whole patients, so a patient never
lands in two hospitals. A patient's value of a column is the mean of its rows
for 'demographic' (e.g. the mean age over visits) and the most frequent value of
its rows for 'dirichlet' labels and 'column' splits.

Methods:
  iid: patients shuffled and dealt into clients of equal patient counts.
  demographic: patients sorted by `column` (default 'age') and cut into contiguous
    bands, at `bands` (inner cut points, `num_clients - 1` of them) or at equal
    patient counts; patients with the value missing go to a random client.
  dirichlet: label skew: for each label value, client shares ~ Dirichlet(alpha).
  quantity: size skew: client shares of the patients ~ Dirichlet(alpha).
  column: natural split, one client per distinct value of `column` (e.g. a site id).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import image_io

METHODS = ('iid', 'demographic', 'dirichlet', 'quantity', 'column')
_OPTIONS = {'iid': (), 'demographic': ('column', 'bands'), 'dirichlet': ('alpha', 'label'),
            'quantity': ('alpha',), 'column': ('column',)}


def _group_patients(metadata: Mapping[str, np.ndarray]) -> tuple[int, np.ndarray]:
  """Returns `(number of patients, patient index of each row)`."""
  if 'patient_id' in metadata:
    _, row_patient = np.unique(np.asarray(metadata['patient_id']), return_inverse=True)
    return int(row_patient.max()) + 1 if len(row_patient) else 0, row_patient.reshape(-1)
  n = len(next(iter(metadata.values()))) if metadata else 0
  return n, np.arange(n)


def _column(metadata: Mapping[str, np.ndarray], name: str, method: str) -> np.ndarray:
  if name not in metadata:
    raise ValueError(f'partition {method!r}: metadata has no column {name!r}; set '
                     f'data.partition.column/label to one of {sorted(metadata)}.')
  values = np.asarray(metadata[name])
  if values.ndim != 1:
    raise ValueError(f'partition {method!r}: column {name!r} must be one value per row, got shape '
                     f'{values.shape}.')
  return values


def _patient_mean(values: np.ndarray, row_patient: np.ndarray, num_patients: int) -> np.ndarray:
  values = values.astype(np.float64)
  present = np.isfinite(values)
  total = np.bincount(row_patient[present], values[present], minlength=num_patients)
  count = np.bincount(row_patient[present], minlength=num_patients)
  with np.errstate(invalid='ignore', divide='ignore'):
    return total / count  # NaN for patients with no value.


def _patient_mode(values: np.ndarray, row_patient: np.ndarray,
                  num_patients: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns `(distinct values, index into them of each patient's most frequent value)`."""
  distinct, codes = np.unique(values, return_inverse=True)
  counts = np.zeros((num_patients, len(distinct)), np.int64)
  np.add.at(counts, (row_patient, codes.reshape(-1)), 1)
  return distinct, counts.argmax(axis=1)  # Ties go to the smallest value.


def _split_by_shares(patients: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
  cuts = np.round(np.cumsum(shares)[:-1] * len(patients)).astype(np.int64)
  return np.split(patients, cuts)


def partition(metadata: Mapping[str, np.ndarray], method: str, num_clients: int,
              rng: np.random.Generator, **options: Any) -> list[np.ndarray]:
  """Splits rows into `num_clients` patient-disjoint clients.

  Args:
    metadata: columns of equal length by name; 'patient_id' groups rows.
    method: one of `METHODS` (see the module docstring).
    num_clients: number of hospitals.
    rng: the only source of randomness.
    **options: `alpha` (dirichlet, quantity), `column` (demographic, column), `bands`
      (demographic), `label` (dirichlet, default 'abnormal').

  Returns:
    Sorted row indices of each client.

  Raises:
    ValueError: unknown method or option, or a client that would be empty.
  """
  if method not in METHODS:
    raise ValueError(f'data.partition.method: {method!r} is not one of {METHODS}.')
  unknown = set(options) - set(_OPTIONS[method])
  if unknown:
    raise ValueError(f'partition {method!r}: unknown options {sorted(unknown)}; it takes '
                     f'{_OPTIONS[method]}.')
  if num_clients < 1:
    raise ValueError(f'data.partition.num_clients must be >= 1, got {num_clients}.')
  num_patients, row_patient = _group_patients(metadata)
  hint = 'use fewer clients (data.partition.num_clients)'

  if method == 'iid':
    groups = np.array_split(rng.permutation(num_patients), num_clients)
  elif method == 'quantity':
    shares = rng.dirichlet(np.full(num_clients, float(options.get('alpha', 1.0))))
    groups = _split_by_shares(rng.permutation(num_patients), shares)
    hint += ' or a larger data.partition.alpha'
  elif method == 'dirichlet':
    labels = _column(metadata, options.get('label', 'abnormal'), method)
    _, patient_label = _patient_mode(labels, row_patient, num_patients)
    alpha = float(options.get('alpha', 0.5))
    per_label = [_split_by_shares(rng.permutation(np.flatnonzero(patient_label == value)),
                                  rng.dirichlet(np.full(num_clients, alpha)))
                 for value in range(patient_label.max() + 1 if num_patients else 0)]
    groups = [np.concatenate([p[k] for p in per_label]) if per_label else np.array([], int)
              for k in range(num_clients)]
    hint += ' or a larger data.partition.alpha'
  elif method == 'demographic':
    name = options.get('column') or 'age'
    values = _patient_mean(_column(metadata, name, method), row_patient, num_patients)
    known = np.flatnonzero(np.isfinite(values))
    bands = tuple(options.get('bands') or ())
    assignment = np.empty(num_patients, np.int64)
    if bands:
      if len(bands) != num_clients - 1 or list(bands) != sorted(bands):
        raise ValueError(f'data.partition.bands: {bands} must be {num_clients - 1} increasing cut '
                         f'points for {num_clients} clients.')
      assignment[known] = np.digitize(values[known], bands)
    else:
      # A random tie-break, so patients of equal age do not follow the input order.
      shuffled = rng.permutation(known)
      ordered = shuffled[np.argsort(values[shuffled], kind='stable')]
      for k, band in enumerate(np.array_split(ordered, num_clients)):
        assignment[band] = k
    missing = np.flatnonzero(~np.isfinite(values))
    assignment[missing] = rng.integers(0, num_clients, len(missing))
    groups = [np.flatnonzero(assignment == k) for k in range(num_clients)]
    hint += ' or other data.partition.bands'
  else:  # column
    name = options.get('column')
    if not name:
      raise ValueError('partition "column": set data.partition.column to the metadata column '
                       f'that names the site; have {sorted(metadata)}.')
    distinct, patient_value = _patient_mode(_column(metadata, name, method), row_patient,
                                            num_patients)
    if len(distinct) != num_clients:
      raise ValueError(f'partition "column": column {name!r} has {len(distinct)} distinct values '
                       f'{distinct.tolist()[:20]}; set data.partition.num_clients to '
                       f'{len(distinct)}.')
    groups = [np.flatnonzero(patient_value == k) for k in range(num_clients)]

  patient_client = np.empty(num_patients, np.int64)
  for k, group in enumerate(groups):
    if len(group) == 0:
      raise ValueError(f'partition {method!r}: client {k} of {num_clients} gets no patients '
                       f'({num_patients} patients in all); {hint}.')
    patient_client[group] = k
  row_client = patient_client[row_patient]
  return [np.flatnonzero(row_client == k) for k in range(num_clients)]


def partition_from_config(metadata: Mapping[str, np.ndarray], partition_config,
                          rng: np.random.Generator) -> list[np.ndarray]:
  """`partition` with the method, client count and the method's options from the config."""
  method = partition_config.method
  if method not in METHODS:
    raise ValueError(f'data.partition.method: {method!r} is not one of {METHODS}.')
  options = {name: partition_config[name] for name in _OPTIONS[method]
             if name in partition_config}
  return partition(metadata, method, partition_config.num_clients, rng, **options)


SCORED_SPLITS = ('auto', 'validation', 'test')


def held_out_patients(patient_ids: np.ndarray, fraction: float, rng: np.random.Generator,
                      field: str) -> np.ndarray:
  """Boolean mask over `patient_ids`: `fraction` of the distinct patients, held out whole.

  `field` names the config field of `fraction` in the error for a fraction that leaves
  either side without a patient.
  """
  patients = np.unique(patient_ids)
  count = int(round(fraction * len(patients)))
  if not 0 < count < len(patients):
    raise ValueError(f'{field}={fraction} holds out {count} of {len(patients)} patients; expected '
                     'a fraction in (0, 1) that leaves at least one patient on each side.')
  return np.isin(patient_ids, rng.permutation(patients)[:count])


def hold_out_patients(data: dataset_lib.ClientData, fraction: float, rng: np.random.Generator,
                      field: str) -> tuple[dataset_lib.ClientData, dataset_lib.ClientData]:
  """Splits `data` into (kept, held out) by whole patients (`held_out_patients`)."""
  held = held_out_patients(data.patient_ids, fraction, rng, field)
  return (data.subset(np.flatnonzero(~held), data.name),
          data.subset(np.flatnonzero(held), 'validation'))


def scored_split_name(split_config, release_test: bool) -> str:
  """'validation' or 'test': the split `split_config.score` asks to score.

  'auto' scores the test split when it is the data set's released one (`release_test`: a
  test folder or official split lists, which a development copy leaves out) and validation
  otherwise: one config then serves the development copy and the measurement on the full
  release.
  """
  if split_config.score not in SCORED_SPLITS:
    raise ValueError(f'data.split.score: {split_config.score!r} is not one of {SCORED_SPLITS}.')
  score = split_config.score
  if score == 'auto':
    score = 'test' if release_test else 'validation'
  if score == 'validation' and not split_config.validation_fraction:
    raise ValueError(f'data.split.score={split_config.score!r} scores the validation split, which '
                     'needs data.split.validation_fraction > 0.')
  return score


def check_scorable(scored: dataset_lib.ClientData, score: str) -> None:
  if scored.abnormal.all() or not scored.abnormal.any():
    raise ValueError(f'the {score} split has {int(scored.abnormal.sum())} abnormal '
                     f'films of {len(scored)}; it needs both normal and abnormal ones to score.')


def scored_split(train: dataset_lib.ClientData, test: dataset_lib.ClientData, split_config,
                 rng: np.random.Generator, release_test: bool
                 ) -> tuple[dataset_lib.ClientData, dataset_lib.ClientData, dict]:
  """Carves a patient-level validation split from `train`; returns (train, scored, info).

  `split_config.validation_fraction` of the training patients never reach a hospital, in
  every setting of `split_config.score` ('validation' while choosing models and settings,
  'test' to score the test split once, 'auto': see `scored_split_name`), so a setting
  chosen on validation is the same run that is then scored on test.
  """
  score = scored_split_name(split_config, release_test)
  info = {'scored_split': score}
  validation = None
  if split_config.validation_fraction:
    train, validation = hold_out_patients(train, split_config.validation_fraction, rng,
                                          'data.split.validation_fraction')
    info['validation_rows'] = len(validation)
  scored = validation if score == 'validation' else test
  check_scorable(scored, score)
  return train, scored, info


class NormalProfiles:
  """Draws condition vectors of normal patients by resampling normal training records.

  Each draw is the whole condition vector of a uniformly chosen normal training
  record (so demographics keep their joint distribution, and a patient with many
  visits weighs more); its findings are zero by definition of normal.
  """

  def __init__(self, normal_conditions: np.ndarray):
    self.normal_conditions = np.asarray(normal_conditions, np.float32)

  def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
    if len(self.normal_conditions) == 0:
      raise ValueError('the training data has no normal records to draw profiles from.')
    return self.normal_conditions[rng.integers(0, len(self.normal_conditions), n)]


def federate(pool: dataset_lib.ClientData, test: dataset_lib.ClientData,
             schema: conditions_lib.ConditionSchema, partition_config, rng: np.random.Generator,
             info: dict | None = None, in_memory: bool = True) -> dataset_lib.FederatedDataset:
  """Partitions the training pool into hospitals `hospital_0, ...` and wraps the federation.

  Metadata for the partitioner: 'patient_id', 'abnormal' and every 1-D record.
  Pool images on disk (a memmap or `image_io.RowView`) are read into memory client
  by client when `in_memory`, so the pool is never held twice; otherwise each client
  keeps a `RowView` and reads its rows when indexed.
  """
  metadata = {name: np.asarray(values) for name, values in pool.records.items()
              if np.ndim(values) == 1}
  metadata.update(patient_id=np.asarray(pool.patient_ids),
                  abnormal=np.asarray(pool.abnormal).astype(np.int64))
  clients = []
  for k, rows in enumerate(partition_from_config(metadata, partition_config, rng)):
    images = image_io.take_rows(pool.images, rows)
    if in_memory and isinstance(images, image_io.RowView):
      images = np.asarray(images)
    clients.append(dataset_lib.ClientData(
        name=f'hospital_{k}', images=images,
        conditions=pool.conditions[rows], abnormal=pool.abnormal[rows],
        patient_ids=pool.patient_ids[rows],
        records={name: np.asarray(values)[rows] for name, values in pool.records.items()}))
  info = dict(info or {})
  info['partition'] = {'method': partition_config.method, 'num_clients': len(clients),
                       'client_sizes': [len(c) for c in clients]}
  return dataset_lib.FederatedDataset(
      schema=schema, clients=clients, test=test,
      normal_profiles=NormalProfiles(pool.conditions[~np.asarray(pool.abnormal, bool)]),
      info=info)


def write_clients_json(path: str | os.PathLike,
                       federated_dataset: dataset_lib.FederatedDataset) -> list[dict]:
  """Prints a table with one row per hospital and saves the rows as a JSON list at `path`."""
  rows = [dataset_lib.client_summary(client) for client in federated_dataset.clients]
  columns = list(dict.fromkeys(key for row in rows for key in row))
  lines = ['  '.join(f'{c:>14}' for c in columns)]
  for row in rows:
    cells = [row.get(c) for c in columns]
    lines.append('  '.join(f'{v:>14.3f}' if isinstance(v, float) else f'{str(v):>14}'
                           for v in cells))
  print('\n'.join(lines))
  with open(path, 'w') as f:
    json.dump(rows, f, indent=2)
  return rows
