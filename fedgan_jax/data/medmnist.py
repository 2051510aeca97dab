"""MedMNIST (PneumoniaMNIST, ChestMNIST) npz files -> a federation of hospitals.

The released npz holds `train_images`, `val_images`, `test_images` (uint8
`(N, S, S)` with S in 28, 64, 128, 224) and the matching `*_labels`:
PneumoniaMNIST `(N, 1)`, 1 = pneumonia; ChestMNIST `(N, 14)` multi-label in the
ChestX-ray14 finding order. A record is abnormal when any finding is present.

MedMNIST carries no demographics and no patient ids, so its condition vector is
the finding label(s) only (one multi-hot feature 'findings') and every image is
its own patient; hospitals come from a partitioner (`data.partition`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from fedgan_jax.data import clinical
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import cxr14
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import image_io
from fedgan_jax.data import partition as partition_lib

TASKS = {'pneumoniamnist': ('Pneumonia',), 'chestmnist': cxr14.FINDINGS}
SPLITS = ('train', 'val', 'test')
SOURCE = 'MedMNIST v2 (https://medmnist.com, files on Zenodo: pneumoniamnist.npz, chestmnist.npz)'
# Join key a clinical CSV may use (`data.clinical.key`): '<split>_<row>', e.g. 'train_12'.
CLINICAL_KEYS = {'Image Index': 'image_index'}


def conditions_for(task: str) -> list[dict]:
  """The schema of a task: its finding labels, multi-hot."""
  if task not in TASKS:
    raise ValueError(f'data.task: {task!r} is not one of {sorted(TASKS)}.')
  return [dict(name='findings', kind='multi_hot', group='CD', categories=TASKS[task])]


def load_split(npz: Mapping[str, np.ndarray], task: str, split: str, image_size: int,
               resample: str, path: str | os.PathLike = '') -> tuple[np.ndarray, np.ndarray]:
  """Returns `(images uint8 (N, S, S, 1), findings float32 (N, K))` of one split."""
  for key in (f'{split}_images', f'{split}_labels'):
    if key not in npz:
      raise ValueError(f'data.path: {path} has no array {key!r}; a MedMNIST npz holds '
                       f'{[f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]}, '
                       f'found {sorted(npz)}.')
  images, labels = np.asarray(npz[f'{split}_images']), np.asarray(npz[f'{split}_labels'])
  if images.ndim == 4 and images.shape[-1] == 3:
    # RGB MedMNIST sets: ITU-R 601 luma, as PIL's 'L' conversion does.
    images = np.rint(images @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
  elif images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
    raise ValueError(f'data.path: {path} {split}_images must be square uint8 (N, S, S), got '
                     f'{images.dtype} {images.shape}.')
  width = len(TASKS[task])
  if labels.shape != (len(images), width) or not np.isin(labels, (0, 1)).all():
    raise ValueError(f'data.task={task!r} expects {split}_labels of shape ({len(images)}, {width}) '
                     f'with values 0/1, got {labels.shape} in {path}; is data.task right?')
  images = image_io.resize_array(images, image_size, resample)
  return images[..., None], labels.astype(np.float32)


def build_federation(data_config, conditions_config: Sequence[Mapping[str, Any]],
                     seed: int) -> dataset_lib.FederatedDataset:
  """Reads `data_config.path` into hospitals (from `train_splits`) and the test split."""
  path = data_config.path
  if not path or not os.path.isfile(path):
    raise ValueError(f'data.path: MedMNIST npz {path!r} not found; download e.g. '
                     f'pneumoniamnist.npz from {SOURCE} and set data.path to it.')
  task = data_config.task
  conditions_for(task)
  if data_config.test_split in data_config.train_splits:
    raise ValueError(f'data.test_split {data_config.test_split!r} is also in data.train_splits '
                     f'{tuple(data_config.train_splits)}; the test images must be unseen.')
  clinical_config = data_config.get('clinical')
  schema = conditions_lib.ConditionSchema.from_config(
      clinical.with_clinical_features(conditions_config, clinical_config))
  needed = dict.fromkeys(tuple(data_config.train_splits) + (data_config.test_split,))
  with np.load(path) as npz:
    splits = {split: load_split(npz, task, split, data_config.image_size, data_config.resample,
                                path)
              for split in needed}

  def records_of(names: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    images = np.concatenate([splits[s][0] for s in names])
    findings = np.concatenate([splits[s][1] for s in names])
    image_index = np.concatenate([[f'{s}_{i}' for i in range(len(splits[s][0]))] for s in names])
    return {'findings': findings, 'image_index': image_index.astype(str)}, images, findings

  pool_records, pool_images, _ = records_of(tuple(data_config.train_splits))
  test_records, test_images, _ = records_of((data_config.test_split,))
  # Named in every report's anomaly table, so a val-split run never reads as a test result.
  info = {'source': 'medmnist', 'task': task, 'scored_split': data_config.test_split}
  if clinical.enabled(clinical_config):
    if clinical_config.key not in CLINICAL_KEYS:
      raise ValueError(f'data.clinical.key: {clinical_config.key!r} is not one of '
                       f'{sorted(CLINICAL_KEYS)} for MedMNIST.')
    for records in (pool_records, test_records):
      joined, joined_info = clinical.join_clinical(clinical_config, records['image_index'])
      records.update(joined)
      info['clinical_unmatched'] = info.get('clinical_unmatched', 0) + joined_info[
          'clinical_unmatched']
  absent = sorted({f.name for f in schema.features} - set(pool_records))
  if absent:
    raise ValueError(f'conditions: features {absent} are not in MedMNIST records '
                     f'{sorted(pool_records)}; MedMNIST conditions are its findings only '
                     '(plus data.clinical.columns).')
  schema = schema.fit_standardization(pool_records)

  def examples(name: str, records: dict[str, np.ndarray], images: np.ndarray,
               first_id: int) -> dataset_lib.ClientData:
    values, mask = schema.encode(records)
    return dataset_lib.ClientData(
        name=name, images=images, conditions=conditions_lib.model_condition(values, mask),
        abnormal=records['findings'].any(axis=1),
        patient_ids=first_id + np.arange(len(images), dtype=np.int64), records=records)

  pool = examples('train', pool_records, pool_images, 0)
  test = examples('test', test_records, test_images, len(pool))
  info.update(train_rows=len(pool), test_rows=len(test))
  logging.info('MedMNIST: %s', info)
  return partition_lib.federate(pool, test, schema, data_config.partition,
                                np.random.default_rng([seed, 1]), info)
