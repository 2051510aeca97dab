"""Sampling images from a trained generator: profiles -> conditions -> images.

Generation runs in fixed-size jitted batches (the last one padded), so synthesizing
any number of images compiles once.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.federated import client as client_lib


def profile_records(schema: conditions_lib.ConditionSchema,
                    profiles: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """Records for hand-written patient profiles, e.g. `{'age': 75, 'sex': 1}`.

  Unspecified features take a reference value: a continuous feature its declared
  mean, a categorical one its first category, a multi-hot one no entries (so a
  profile is *normal* unless it names findings).
  """
  records = {}
  for f in schema.features:
    unknown = [k for p in profiles for k in p if k not in {g.name for g in schema.features}]
    if unknown:
      raise ValueError(f'train.profiles: unknown feature(s) {sorted(set(unknown))}; the schema has '
                       f'{[g.name for g in schema.features]}.')
    if f.kind == 'continuous':
      records[f.name] = np.array([float(p.get(f.name, f.mean)) for p in profiles])
    elif f.kind == 'categorical':
      records[f.name] = np.array([int(p.get(f.name, 0)) for p in profiles], np.int64)
    else:
      rows = []
      for p in profiles:
        row = np.zeros(f.width)
        for index in np.atleast_1d(p.get(f.name, [])):
          row[int(index)] = 1.0
        rows.append(row)
      records[f.name] = np.stack(rows)
  return records


def profile_label(schema: conditions_lib.ConditionSchema, profile: Mapping[str, Any]) -> str:
  """A sample grid's row label: `{'age': 75, 'sex': 1}` -> 'age 75, sex M'.

  Categories are named as the schema names them; a profile naming nothing is 'reference'
  (every feature at its reference value, see `profile_records`).
  """
  features = {f.name: f for f in schema.features}
  parts = []
  for name, value in profile.items():
    feature = features.get(name)
    if feature is not None and feature.kind == 'categorical':
      value = feature.categories[int(value)]
    elif feature is not None and feature.kind == 'multi_hot':
      value = '+'.join(feature.categories[int(i)] for i in np.atleast_1d(value)) or 'none'
    elif isinstance(value, float) and value.is_integer():
      value = int(value)
    parts.append(f'{name} {value}')
  return ', '.join(parts) or 'reference'


def sample_grid_labels(schema, profiles, columns: int) -> tuple[list[str], list[str]]:
  """Row labels (the profiles) and column labels (`z1`..: one fixed noise draw per column)."""
  return ([profile_label(schema, p) for p in profiles],
          [f'z{i + 1}' for i in range(columns)])


def profile_conditions(schema, profiles) -> np.ndarray:
  values, mask = schema.encode(profile_records(schema, profiles))
  return conditions_lib.model_condition(values, mask)


@functools.partial(jax.jit, static_argnums=0)
def _generate_batch(task, g_params, conditions, rng):
  return client_lib.generate(task, g_params, conditions, rng, task.sample_noise_scale)


def synthesize(task: client_lib.GanTask, g_params, conditions: np.ndarray, seed: int,
               batch_size: int = 256) -> np.ndarray:
  """uint8 images `(N, H, W, C)` for condition vectors `(N, C)`; noise from `seed`.

  z is drawn with standard deviation `task.sample_noise_scale` (`config.sampling`).
  """
  conditions = np.asarray(conditions, np.float32)
  n = len(conditions)
  rng = jax.random.key(seed)
  batch_size = min(batch_size, max(n, 1))
  chunks = []
  for start in range(0, n, batch_size):
    chunk = conditions[start:start + batch_size]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), 0)])
    images = _generate_batch(task, g_params, padded, jax.random.fold_in(rng, start))
    chunks.append(dataset_lib.images_from_model(images)[:len(chunk)])
  return np.concatenate(chunks)


def sample_grid(task, g_params, schema, profiles, columns: int, seed: int) -> np.ndarray:
  """uint8 `(rows, columns, H, W, C)`: one row per profile, one column per fixed z."""
  conditions = np.repeat(profile_conditions(schema, profiles), columns, axis=0)
  rng = jax.random.key(seed)
  z_columns = task.sample_noise_scale * jax.random.normal(rng, (columns, task.z_dim))
  z = np.tile(np.asarray(z_columns), (len(profiles), 1))
  images = jax.jit(task.generator.apply)({'params': g_params}, conditions, z)
  images = dataset_lib.images_from_model(images)
  return images.reshape((len(profiles), columns) + images.shape[1:])
