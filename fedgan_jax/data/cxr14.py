"""ChestX-ray14 (NIH): official layout -> patient-level federation of hospitals.

Expected under `data.root` (the NIH release, https://nihcc.app.box.com/v/ChestXray-NIHCC):
  Data_Entry_2017.csv                      metadata, one row per image
  images/*.png  or  images_001/images/*.png ... images_012/images/*.png
  train_val_list.txt, test_list.txt        official patient-wise split (optional)

Metadata -> records: age in years (values outside [0, `data.max_valid_age`], known
errors of this CSV, and text that is not a number become missing, counted and logged;
an empty cell is plainly missing), sex (F/M), view position (PA/AP),
follow-up number, and the 14 findings as multi-hot ('No Finding' = all zero =
normal). Without split lists the test split is a seeded draw of whole patients.
Images are decoded once into a cache (see `image_io.cached_images`).
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from fedgan_jax.data import clinical
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import image_io
from fedgan_jax.data import partition as partition_lib

FINDINGS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule',
            'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis',
            'Pleural_Thickening', 'Hernia')
NO_FINDING = 'No Finding'
CSV_NAME = 'Data_Entry_2017.csv'
TRAIN_LIST, TEST_LIST = 'train_val_list.txt', 'test_list.txt'
CSV_COLUMNS = {'image_index': 'Image Index', 'labels': 'Finding Labels',
               'follow_up': 'Follow-up #', 'patient_id': 'Patient ID', 'age': 'Patient Age',
               'sex': 'Patient Gender', 'view': 'View Position'}
# Join keys a clinical CSV may use (`data.clinical.key`) -> the record holding them.
CLINICAL_KEYS = {'Patient ID': 'patient_id', 'Image Index': 'image_index'}
DEFAULT_CATEGORIES = {'sex': ('F', 'M'), 'view': ('PA', 'AP')}
SOURCE = 'NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC'
LAYOUT = (f'{CSV_NAME}, images/*.png (or images_001/images ... images_012/images), and optionally '
          f'{TRAIN_LIST} and {TEST_LIST}')


def _parse_age(text: str) -> float | None:
  """Years, NaN for an empty cell, None for text that is not a finite number."""
  # The first NIH release wrote ages as '058Y'; later ones as '58'.
  text = text.strip().upper().removesuffix('Y')
  if not text:
    return np.nan
  try:
    value = float(text)
  except ValueError:
    return None
  return value if np.isfinite(value) else None


def parse_ages(texts: Sequence[str], max_valid_age: float) -> tuple[np.ndarray, dict[str, int]]:
  """Age cells -> years with NaN where missing or invalid, and the counts of invalid ones.

  Ages below 0 or above `max_valid_age` (recording errors) and unparsable text ('abc',
  'nan', 'inf') become missing rather than values the model would be conditioned on.
  """
  parsed = [_parse_age(t) for t in texts]
  unparsable = np.asarray([v is None for v in parsed], bool)
  age = np.asarray([np.nan if v is None else v for v in parsed], np.float64)
  with np.errstate(invalid='ignore'):
    out_of_range = (age < 0) | (age > max_valid_age)
  age[out_of_range] = np.nan
  counts = {'out_of_range_ages': int(out_of_range.sum()), 'unparsable_ages': int(unparsable.sum())}
  counts['invalid_ages'] = counts['out_of_range_ages'] + counts['unparsable_ages']
  return age, counts


def parse_findings(labels: Sequence[str], image_names: Sequence[str],
                   csv_path: str | os.PathLike) -> np.ndarray:
  """'A|B' label strings -> float32 multi-hot `(N, 14)` in `FINDINGS` order."""
  column = {name: i for i, name in enumerate(FINDINGS)}
  parsed = {}  # A few hundred distinct label strings cover 112k rows.
  out = np.zeros((len(labels), len(FINDINGS)), np.float32)
  for row, text in enumerate(labels):
    if text not in parsed:
      names = [t.strip() for t in text.split('|')]
      unknown = [t for t in names if t not in column and t != NO_FINDING]
      if unknown or not text or (NO_FINDING in names and len(names) > 1):
        raise ValueError(f'{csv_path}: image {image_names[row]} has Finding Labels {text!r}; '
                         f'expected "{NO_FINDING}" alone or "|"-separated names from {FINDINGS}.')
      parsed[text] = [column[t] for t in names if t != NO_FINDING]
    out[row, parsed[text]] = 1.0
  return out


def _category_codes(values: np.ndarray, categories: Sequence[str], csv_column: str,
                    image_names: np.ndarray, csv_path) -> np.ndarray:
  lookup = {c: i for i, c in enumerate(categories)}
  codes = np.asarray([lookup.get(v, -1) if v else -1 for v in values], np.int64)
  unknown = (codes < 0) & (values != '')
  if unknown.any():
    row = int(np.flatnonzero(unknown)[0])
    raise ValueError(f'{csv_path}: image {image_names[row]} has {csv_column} {values[row]!r}; '
                     f'expected one of {tuple(categories)} (or empty for missing).')
  return codes


def read_metadata(csv_path: str | os.PathLike, *, max_valid_age: float, max_images: int = 0,
                  categories: Mapping[str, Sequence[str]] | None = None
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Parses `Data_Entry_2017.csv` into records.

  Args:
    csv_path: the CSV.
    max_valid_age: ages above it (or below 0, or not numbers) are recorded errors and
      become NaN.
    max_images: use only the first rows (0 = all).
    categories: categories of 'sex' and 'view' (codes index them), default F/M and PA/AP.

  Returns:
    `(records, info)`: 'image_index', 'patient_id' (int64), 'age' (float, NaN missing),
    'sex' and 'view' (int codes, -1 missing), 'follow_up' (float), 'findings' (N, 14);
    info counts the ages dropped as invalid (`invalid_ages`, split into
    `out_of_range_ages` and `unparsable_ages`).
  """
  categories = {**DEFAULT_CATEGORIES, **(categories or {})}
  table = clinical.read_csv_columns(csv_path, list(CSV_COLUMNS.values()), 'data.root')
  if max_images:
    table = {k: v[:max_images] for k, v in table.items()}
  column = lambda name: table[CSV_COLUMNS[name]]
  names = column('image_index').astype(str)
  patient_text = column('patient_id')
  bad_ids = [i for i, t in enumerate(patient_text) if not t.isdigit()]
  if bad_ids:
    raise ValueError(f'{csv_path}: image {names[bad_ids[0]]} has Patient ID '
                     f'{patient_text[bad_ids[0]]!r}; expected an integer.')
  age, age_counts = parse_ages(column('age'), max_valid_age)
  if age_counts['invalid_ages']:
    first = next(i for i, t in enumerate(column('age')) if np.isnan(age[i]) and t.strip())
    logging.warning('%s: %d ages treated as missing: %d outside [0, %g] (data.max_valid_age), '
                    '%d not a number; first: image %s, age %r.', csv_path,
                    age_counts['invalid_ages'], age_counts['out_of_range_ages'], max_valid_age,
                    age_counts['unparsable_ages'], names[first], column('age')[first])
  follow_up = np.asarray([float(t) if t else np.nan for t in column('follow_up')])
  records = {
      'image_index': names,
      'patient_id': patient_text.astype(np.int64),
      'age': age,
      'sex': _category_codes(column('sex'), categories['sex'], 'Patient Gender', names, csv_path),
      'view': _category_codes(column('view'), categories['view'], 'View Position', names,
                              csv_path),
      'follow_up': follow_up,
      'findings': parse_findings(column('labels'), names, csv_path),
  }
  return records, {'rows_in_csv': len(names), **age_counts}


def find_images(root: pathlib.Path) -> dict[str, str]:
  """Image file name -> path, from `images/` and/or `images_*/images/` under `root`."""
  folders = [root / 'images'] + sorted(root.glob('images_*/images')) + sorted(
      p for p in root.glob('images_*') if p.is_dir())
  paths = {}
  for folder in folders:
    if folder.is_dir():
      with os.scandir(folder) as entries:
        for entry in entries:
          if entry.name.lower().endswith('.png'):
            paths.setdefault(entry.name, entry.path)
  if not paths:
    raise ValueError(f'data.root: no PNG images under {root}; expected {LAYOUT}. ChestX-ray14 is '
                     f'published by the {SOURCE}.')
  return paths


def _read_list(path: pathlib.Path) -> set[str] | None:
  if not path.exists():
    return None
  return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def split_rows(records: Mapping[str, np.ndarray], root: pathlib.Path, test_fraction: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Train and test row indices: the official lists when present, else seeded patients.

  With lists, a patient with images in both is counted (`overlapping_patient_ids`);
  rows in neither list are left out.
  """
  names, patients = records['image_index'], records['patient_id']
  train_list, test_list = _read_list(root / TRAIN_LIST), _read_list(root / TEST_LIST)
  if train_list is None and test_list is None:
    unique = np.unique(patients)
    num_test = int(round(test_fraction * len(unique)))
    if not 0 < num_test < len(unique):
      raise ValueError(f'data.split.test_fraction={test_fraction} leaves {num_test} of '
                       f'{len(unique)} patients for testing; expected a fraction in (0, 1) that '
                       'keeps at least one patient on each side.')
    in_test = np.isin(patients, rng.permutation(unique)[:num_test])
    return np.flatnonzero(~in_test), np.flatnonzero(in_test), {'split': 'seeded patients'}
  in_test = np.asarray([n in test_list for n in names]) if test_list is not None else None
  in_train = np.asarray([n in train_list for n in names]) if train_list is not None else None
  in_train = ~in_test if in_train is None else in_train
  in_test = ~in_train if in_test is None else in_test
  overlap = np.intersect1d(patients[in_train], patients[in_test])
  info = {'split': 'official lists', 'unlisted_rows': int((~in_train & ~in_test).sum()),
          'overlapping_patient_ids': overlap}
  return np.flatnonzero(in_train & ~in_test), np.flatnonzero(in_test), info


def load_images(records: Mapping[str, np.ndarray], rows: np.ndarray, root: pathlib.Path,
                paths: Mapping[str, str], settings, *, on_bad_image: str,
                max_in_memory_bytes: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """Decodes the images of CSV `rows` into the cache, or reads them from it.

  Args:
    records: from `read_metadata`.
    rows: CSV rows whose images are wanted.
    root: the data set folder.
    paths: image name -> file, from `find_images(root)`.
    settings: has `image_size`, `resample`, `sixteen_bit`, `decode_workers`,
      `decode_chunk_size`, `cache_dir` ('' = `<root>/fedgan_cache`) and optionally
      `png_decoder`.
    on_bad_image: 'skip' (count, warn and leave out) or 'error' (raise naming the file).
    max_in_memory_bytes: above it, `info['streaming']` is set.

  Returns:
    `(images, image_row, info)`: the cache memmap; for each CSV row its row in `images`,
    or -1 when not requested, missing on disk or undecodable; and counts for reports.
  """
  on_disk = np.asarray([n in paths for n in records['image_index'][rows]], bool)
  missing = records['image_index'][rows][~on_disk]
  if len(missing) and on_bad_image == 'error':
    raise ValueError(f'data.root: image {missing[0]} (listed in {CSV_NAME}) is not under '
                     f'{root}/images or images_*/images; set data.on_bad_image="skip" to skip '
                     f'the {len(missing)} missing images.')
  rows = rows[on_disk]
  names = records['image_index'][rows]
  images, bad, info = image_io.cached_images(
      [paths[n] for n in names], names,
      cache_dir=settings.cache_dir or root / 'fedgan_cache', prefix='cxr14',
      image_size=settings.image_size, resample=settings.resample,
      sixteen_bit=settings.sixteen_bit, workers=settings.decode_workers,
      chunk_size=settings.decode_chunk_size, on_bad_image=on_bad_image,
      max_in_memory_bytes=max_in_memory_bytes, png_decoder=getattr(settings, 'png_decoder', 'auto'))
  info.update(missing_images=len(missing), bad_images=len(bad),
              bad_image_files=[str(names[i]) for i in sorted(bad)][:20])
  if len(missing) or bad:
    warnings.warn(f'ChestX-ray14: skipped {len(missing)} missing and {len(bad)} undecodable '
                  f'images (data.on_bad_image="skip"); first: '
                  f'{(list(missing) + info["bad_image_files"])[:3]}.')
  image_row = np.full(len(records['image_index']), -1, np.int64)
  image_row[rows] = np.arange(len(rows))
  image_row[rows[sorted(bad)]] = -1
  return images, image_row, info


def build_federation(data_config, conditions_config: Sequence[Mapping[str, Any]],
                     seed: int) -> dataset_lib.FederatedDataset:
  """Reads ChestX-ray14 under `data_config.root` into hospitals and a test split."""
  root = dataset_lib.data_root(data_config.root, CSV_NAME, LAYOUT, f'the {SOURCE}')
  csv_path = root / CSV_NAME
  schema = conditions_lib.ConditionSchema.from_config(
      clinical.with_clinical_features(conditions_config, data_config.get('clinical')))
  names_in_schema = {f.name for f in schema.features}
  records, info = read_metadata(
      csv_path, max_valid_age=data_config.max_valid_age, max_images=data_config.max_images,
      categories={n: schema.feature(n).categories for n in ('sex', 'view') if n in names_in_schema})
  info['source'] = 'cxr14'
  clinical_config = data_config.get('clinical')
  clinical_keys = None
  if clinical.enabled(clinical_config):
    if clinical_config.key not in CLINICAL_KEYS:
      raise ValueError(f'data.clinical.key: {clinical_config.key!r} is not one of '
                       f'{sorted(CLINICAL_KEYS)} for ChestX-ray14.')
    clinical_keys = records[CLINICAL_KEYS[clinical_config.key]]
  clinical_records, clinical_info = clinical.join_clinical(clinical_config, clinical_keys)
  records.update(clinical_records)
  info.update(clinical_info)
  absent = sorted(names_in_schema - set(records))
  if absent:
    raise ValueError(f'conditions: features {absent} are not provided by ChestX-ray14 records '
                     f'{sorted(records)} nor declared in data.clinical.columns.')

  if not len(records['image_index']):
    raise ValueError(f'data.root: {csv_path} has a header but no rows.')
  paths = find_images(root)
  split_rng, partition_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
  train_rows, test_rows, split_info = split_rows(records, root, data_config.split.test_fraction,
                                                 split_rng)
  # Decoded before dropping overlapping patients, so both settings share one cache.
  images, image_row, image_info = load_images(
      records, np.union1d(train_rows, test_rows), root, paths, data_config,
      on_bad_image=data_config.on_bad_image, max_in_memory_bytes=data_config.max_in_memory_bytes)
  info.update(image_info)
  overlap = split_info.pop('overlapping_patient_ids', np.array([], np.int64))
  info.update(split_info, overlapping_patients=len(overlap))
  if len(overlap):
    action = ('their training images are dropped (data.drop_overlapping_patients=True)'
              if data_config.drop_overlapping_patients else
              'they stay in both splits; set data.drop_overlapping_patients=True to drop them '
              'from training')
    warnings.warn(f'ChestX-ray14: {len(overlap)} patients have images in both {TRAIN_LIST} and '
                  f'{TEST_LIST}; {action}.')
    if data_config.drop_overlapping_patients:
      keep = ~np.isin(records['patient_id'][train_rows], overlap)
      info['dropped_overlapping_rows'] = int((~keep).sum())
      train_rows = train_rows[keep]

  train_rows, test_rows = (rows[image_row[rows] >= 0] for rows in (train_rows, test_rows))
  # The validation patients leave before the standardization is fitted: nothing of theirs
  # reaches training.
  score = partition_lib.scored_split_name(
      data_config.split, release_test=split_info['split'] == 'official lists')
  validation_rows = np.array([], np.int64)
  if data_config.split.validation_fraction:
    held = partition_lib.held_out_patients(
        records['patient_id'][train_rows], data_config.split.validation_fraction, split_rng,
        'data.split.validation_fraction')
    train_rows, validation_rows = train_rows[~held], train_rows[held]
    info['validation_rows'] = len(validation_rows)
  schema = schema.fit_standardization({k: np.asarray(v)[train_rows] for k, v in records.items()})

  def examples(rows: np.ndarray, name: str, in_memory: bool) -> dataset_lib.ClientData:
    subset = {k: np.asarray(v)[rows] for k, v in records.items()}
    values, mask = schema.encode(subset)
    view = image_io.RowView(images, image_row[rows])
    return dataset_lib.ClientData(
        name=name, images=np.asarray(view) if in_memory else view,
        conditions=conditions_lib.model_condition(values, mask),
        abnormal=subset['findings'].any(axis=1), patient_ids=subset['patient_id'],
        records=subset)

  # The pool stays on disk: `federate` reads each hospital's rows once.
  in_memory = not info['streaming']
  pool = examples(train_rows, 'train', False)
  scored = examples(validation_rows if score == 'validation' else test_rows, score, in_memory)
  partition_lib.check_scorable(scored, score)
  info.update(scored_split=score, train_rows=len(pool), test_rows=len(test_rows),
              scored_rows=len(scored), scored_abnormal=int(scored.abnormal.sum()))
  logging.info('ChestX-ray14: %s', {k: v for k, v in info.items() if k != 'bad_image_files'})
  return partition_lib.federate(pool, scored, schema, data_config.partition, partition_rng, info,
                                in_memory=in_memory)
