"""The ZhangLab / Kermany paediatric pneumonia films -> a federation of hospitals.

Layout (the release's, also Kaggle's `chest_xray`): `ROOT/chest_xray/train/{NORMAL,PNEUMONIA}`
and, when present, `ROOT/chest_xray/test/{NORMAL,PNEUMONIA}`, one JPEG per film. File names
carry the patient: `personN_bacteria_M.jpeg` / `personN_virus_M.jpeg` (pneumonia), and
`IM-XXXX-YYYY.jpeg` / `NORMAL2-IM-XXXX-YYYY.jpeg` (normal, patient `IM-XXXX` or
`NORMAL2-IM-XXXX`).

The condition is the label: one multi-hot feature `findings` over (Bacterial, Viral),
so a normal film has none (as PneumoniaMNIST's single label). There are no demographics.

Splits, whole patients throughout:
  * test: `chest_xray/test` when present; without it, `data.split.test_fraction` of the
    training patients are held out (`info['test_source']` says which).
  * validation: `data.split.validation_fraction` of the remaining training patients,
    never trained on. `data.split.score` picks the split the pipeline scores:
    'validation' while choosing models and settings, 'test' once at the end.
Byte-identical training files (the release has 32) are kept once, so a copy cannot sit
on both sides of the validation split; the test folder is kept whole (its copies of
training files are counted in `info['test_copies_of_training_files']`). The release's train and test folders share some `personN` numbers; the
split is fixed by the release, so they are counted (`info['overlapping_patients']`), not
dropped. The films are small JPEGs (5,216 decode in seconds), so no cache is kept.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import image_io
from fedgan_jax.data import partition as partition_lib

FINDINGS = ('Bacterial', 'Viral')
CLASSES = ('NORMAL', 'PNEUMONIA')
SUFFIXES = ('.jpeg', '.jpg', '.png')
LAYOUT = 'chest_xray/train/{NORMAL,PNEUMONIA}/*.jpeg (and optionally chest_xray/test/...)'
SOURCE = 'Kermany, Zhang, Goldbaum et al., Cell 2018 (Mendeley Data, doi:10.17632/rscbjbr9sj)'
_PATIENT = re.compile(r'^(person\d+)_|^((?:NORMAL2-)?IM-\d+)-')


def get_conditions() -> list[dict]:
  """The schema: the pneumonia type as one multi-hot feature (normal = none set)."""
  return [dict(name='findings', kind='multi_hot', group='CD', categories=FINDINGS)]


def parse_name(name: str) -> tuple[str, int | None]:
  """File name -> (patient, finding index or None for normal). Raises on unknown names."""
  match = _PATIENT.match(name)
  if match is None:
    raise ValueError(f'data.root: cannot read the patient from {name!r}; ZhangLab files are '
                     'named personN_bacteria_M / personN_virus_M / IM-XXXX-YYYY / '
                     'NORMAL2-IM-XXXX-YYYY.')
  if match.group(1):
    kind = name[len(match.group(1)) + 1:].split('_')[0]
    if kind not in ('bacteria', 'virus'):
      raise ValueError(f'data.root: pneumonia file {name!r} is neither bacteria nor virus.')
    return match.group(1), FINDINGS.index('Bacterial' if kind == 'bacteria' else 'Viral')
  return match.group(2), None


def list_split(folder: pathlib.Path) -> tuple[list[pathlib.Path], np.ndarray, np.ndarray]:
  """Files of one split folder, their patients and findings `(N, 2)`.

  A file's class folder must agree with its name (a normal name under PNEUMONIA is refused).
  """
  files, patients, findings = [], [], []
  for label in CLASSES:
    directory = folder / label
    if not directory.is_dir():
      raise ValueError(f'data.root: {directory} is missing; expected {LAYOUT}. The data set is '
                       f'published by {SOURCE}.')
    for path in sorted(directory.iterdir()):
      if path.suffix.lower() not in SUFFIXES or path.name.startswith('.'):
        continue
      patient, finding = parse_name(path.name)
      if (finding is None) != (label == 'NORMAL'):
        raise ValueError(f'data.root: {path} is named as {"normal" if finding is None else "pneumonia"} '
                         f'but sits in {label}/.')
      row = np.zeros(len(FINDINGS), np.float32)
      if finding is not None:
        row[finding] = 1.0
      files.append(path)
      patients.append(patient)
      findings.append(row)
  if not files:
    raise ValueError(f'data.root: no images under {folder}; expected {LAYOUT}.')
  return files, np.asarray(patients), np.stack(findings)


def _digests(files: Sequence[pathlib.Path]) -> list[bytes]:
  return [hashlib.sha1(path.read_bytes()).digest() for path in files]


def _first_copies(digests: Sequence[bytes]) -> np.ndarray:
  """Mask of files whose bytes were not seen before (in order)."""
  seen, keep = set(), np.ones(len(digests), bool)
  for i, digest in enumerate(digests):
    keep[i] = digest not in seen
    seen.add(digest)
  return keep


def build_federation(data_config, conditions_config: Sequence[Mapping[str, Any]],
                     seed: int) -> dataset_lib.FederatedDataset:
  """Reads `data_config.root` into hospitals and the scored split (validation or test)."""
  root = dataset_lib.data_root(data_config.root, 'chest_xray/train', LAYOUT, SOURCE)
  schema = conditions_lib.ConditionSchema.from_config(conditions_config)
  absent = sorted({f.name for f in schema.features} - {'findings'})
  if absent:
    raise ValueError(f'conditions: features {absent} are not in ZhangLab records; its only '
                     'condition is findings (the pneumonia type).')
  splits = {'train': list_split(root / 'chest_xray' / 'train')}
  has_test = (root / 'chest_xray' / 'test').is_dir()
  if has_test:
    splits['test'] = list_split(root / 'chest_xray' / 'test')
  files = [f for s in splits.values() for f in s[0]]
  origin = np.concatenate([[name] * len(s[0]) for name, s in splits.items()])
  patients = np.concatenate([s[1] for s in splits.values()])
  findings = np.concatenate([s[2] for s in splits.values()])
  # Copies within the training folder are dropped (a copy must not sit on both sides of the
  # validation split); the release's test split is kept whole, its copies of training films
  # only counted, so it stays the split others report on.
  digests = _digests(files)
  in_train = origin == 'train'
  keep = np.ones(len(files), bool)
  keep[in_train] = _first_copies([d for d, t in zip(digests, in_train) if t])
  train_digests = {d for d, t in zip(digests, in_train) if t}
  # One integer per patient name over both folders: a `personN` in train and test is one id.
  _, patient_ids = np.unique(patients, return_inverse=True)
  info: dict[str, Any] = {'source': 'zhanglab', 'duplicate_files_dropped': int((~keep).sum()),
                          'test_source': 'chest_xray/test' if has_test else
                          f'held-out training patients ({data_config.split.test_fraction:.0%})'}
  images = np.zeros((len(files), data_config.image_size, data_config.image_size, 1), np.uint8)
  bad = image_io.decode_into([str(f) for f in files], images, image_size=data_config.image_size,
                             resample=data_config.resample, sixteen_bit='full_range',
                             workers=data_config.decode_workers,
                             chunk_size=data_config.decode_chunk_size,
                             on_bad_image=data_config.on_bad_image)
  if bad:
    logging.warning('ZhangLab: skipped %d undecodable files (data.on_bad_image="skip"), first %s.',
                    len(bad), files[min(bad)])
    keep[list(bad)] = False
  info['bad_images'] = len(bad)

  records = {'findings': findings, 'file': np.asarray([f.name for f in files]),
             'patient': patients}
  values, mask = schema.encode({'findings': findings})
  everything = dataset_lib.ClientData(
      name='all', images=images, conditions=conditions_lib.model_condition(values, mask),
      abnormal=findings.any(axis=1), patient_ids=patient_ids.astype(np.int64), records=records)
  split_rng, partition_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
  if has_test:
    train = everything.subset(np.flatnonzero(keep & in_train), 'train')
    test = everything.subset(np.flatnonzero(keep & ~in_train), 'test')
    overlap = np.intersect1d(train.patient_ids, test.patient_ids)
    info['overlapping_patients'] = len(overlap)
    info['test_copies_of_training_files'] = sum(
        d in train_digests for d, t in zip(digests, in_train) if not t)
  else:
    train, test = partition_lib.hold_out_patients(
        everything.subset(np.flatnonzero(keep)), data_config.split.test_fraction, split_rng,
        'data.split.test_fraction')
  train, scored, split_info = partition_lib.scored_split(train, test, data_config.split,
                                                         split_rng, release_test=has_test)
  info.update(split_info)
  info.update(train_rows=len(train), scored_rows=len(scored),
              scored_abnormal=int(scored.abnormal.sum()))
  logging.info('ZhangLab: %s', info)
  schema = schema.fit_standardization(train.records)
  return partition_lib.federate(train, scored, schema, data_config.partition, partition_rng,
                                info)
