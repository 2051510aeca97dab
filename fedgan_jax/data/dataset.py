"""Containers every data source returns, and the conversions the engine needs.

A data source (phantom, ChestX-ray14, MedMNIST, a site's own data) builds a
`FederatedDataset`: one `ClientData` per hospital plus a real test split. Images
are stored as uint8 `(N, H, W, 1)` (or a numpy memmap of that), so a federation
of many clients stays small on the host; the engine converts the sampled batches
to float in [-1, 1] on device.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping

import numpy as np

from fedgan_jax.data import conditions as conditions_lib


@dataclasses.dataclass
class ClientData:
  """One hospital's (or one split's) examples.

  Attributes:
    name: site name, used in logs and `clients.json`.
    images: uint8 `(N, H, W, 1)`.
    conditions: float32 `(N, schema.model_dim)`, i.e. `[values * mask, mask]`.
    abnormal: bool `(N,)`, True when any finding is present.
    patient_ids: `(N,)` ids; a patient never appears in two clients.
    records: raw attributes by feature name (age in years, sex code, ...), used for
      reports and evaluation; never fed to a model directly.
  """
  name: str
  images: np.ndarray
  conditions: np.ndarray
  abnormal: np.ndarray
  patient_ids: np.ndarray
  records: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    n = len(self.images)
    if self.images.ndim != 4 or self.images.shape[-1] != 1 or self.images.dtype != np.uint8:
      raise ValueError(f'client {self.name}: images must be uint8 (N, H, W, 1), got '
                       f'{self.images.dtype} {self.images.shape}.')
    for field in ('conditions', 'abnormal', 'patient_ids'):
      if len(getattr(self, field)) != n:
        raise ValueError(f'client {self.name}: {field} has {len(getattr(self, field))} rows, '
                         f'images have {n}.')

  def __len__(self) -> int:
    return len(self.images)

  def normal_images(self) -> np.ndarray:
    """The images without any finding, read into memory."""
    return np.asarray(self.images)[~np.asarray(self.abnormal, bool)]

  def subset(self, index: np.ndarray, name: str | None = None) -> 'ClientData':
    return ClientData(
        name=name or self.name,
        images=self.images[index],
        conditions=self.conditions[index],
        abnormal=self.abnormal[index],
        patient_ids=self.patient_ids[index],
        records={k: np.asarray(v)[index] for k, v in self.records.items()})


@dataclasses.dataclass
class FederatedDataset:
  """Hospitals' training data, a real test split and the schema that encodes them."""
  schema: conditions_lib.ConditionSchema
  clients: list[ClientData]
  test: ClientData
  # Draws condition vectors `(n, model_dim)` of *normal* patients for synthesis:
  # `normal_profiles(rng: np.random.Generator, n) -> np.ndarray`.
  normal_profiles: Any = None
  # Draws condition vectors `(n, model_dim)` of hospital `client_index` (None: any hospital),
  # normal and abnormal, from public numbers only (config, never records), for G's training
  # images under `fl.fake_conditions='public_prior'`:
  # `condition_prior(rng: np.random.Generator, n, client_index=None) -> np.ndarray`.
  condition_prior: Any = None
  info: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.clients:
      raise ValueError('the federation has no clients.')
    for c in self.clients:
      if len(c) == 0:
        raise ValueError(f'client {c.name} is empty after partitioning; use fewer clients or '
                         'another partition.')
    shapes = {c.images.shape[1:] for c in self.clients + [self.test]}
    if len(shapes) != 1:
      raise ValueError(f'clients have different image shapes {shapes}.')
    owners = {}
    for c in self.clients:
      for pid in np.unique(c.patient_ids):
        if owners.setdefault(pid, c.name) != c.name:
          raise ValueError(f'patient {pid} is in both {owners[pid]} and {c.name}; partitions '
                           'must be patient-level.')

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.clients[0].images.shape[1:])

  @property
  def client_sizes(self) -> np.ndarray:
    return np.array([len(c) for c in self.clients], np.int64)

  def pooled(self) -> ClientData:
    """All training data as one client: centralized training is one client."""
    records = {k: np.concatenate([np.asarray(c.records[k]) for c in self.clients])
               for k in self.clients[0].records}
    return ClientData(
        name='centralized',
        images=np.concatenate([c.images for c in self.clients]),
        conditions=np.concatenate([c.conditions for c in self.clients]),
        abnormal=np.concatenate([c.abnormal for c in self.clients]),
        patient_ids=np.concatenate([c.patient_ids for c in self.clients]),
        records=records)


def images_to_model(images: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return np.asarray(images, np.float32) / 127.5 - 1.0


def images_from_model(images) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255] (clipped)."""
  x = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255)
  return np.round(x).astype(np.uint8)


def client_summary(client: ClientData) -> dict[str, Any]:
  """One row of `clients.json`."""
  row = {'name': client.name, 'examples': int(len(client)),
         'patients': int(len(np.unique(client.patient_ids))),
         'abnormal_ratio': float(np.mean(client.abnormal)) if len(client) else 0.0}
  age = client.records.get('age')
  if age is not None:
    age = np.asarray(age, np.float64)
    row['mean_age'] = float(np.nanmean(age)) if np.isfinite(age).any() else None
  sex = client.records.get('sex')
  if sex is not None:
    sex = np.asarray(sex)
    known = sex[sex >= 0] if np.issubdtype(sex.dtype, np.integer) else sex
    # Sex codes follow the schema's categories; ('F', 'M') everywhere in this project.
    row['male_ratio'] = float(np.mean(known == 1)) if len(known) else None
  return row


class HospitalPrior:
  """`condition_prior` of a federation whose client i is hospital `hospitals[i]` of another
  (None: the whole population, as for the one pooled client of centralized training)."""

  def __init__(self, prior, hospitals: list[int | None]):
    self.prior, self.hospitals = prior, list(hospitals)

  def __call__(self, rng, n: int, client_index: int | None = None):
    return self.prior(rng, n, None if client_index is None else self.hospitals[client_index])


def restricted_prior(prior, hospitals: list[int | None]):
  """`HospitalPrior(prior, hospitals)`, or None without a prior."""
  return None if prior is None else HospitalPrior(prior, hospitals)


def data_root(root: str, required: str, layout: str, source: str) -> pathlib.Path:
  """`data.root` as a path, refusing an empty one or one without `root/required`.

  Both messages name the expected `layout` and who publishes the data (`source`).
  """
  if not root:
    raise ValueError(f'data.root is empty: set it to the folder holding {layout}; the data set '
                     f'is published by {source}.')
  path = pathlib.Path(root)
  if not (path / required).exists():
    raise ValueError(f'data.root: {path / required} not found; expected {layout} under {path}. '
                     f'The data set is published by {source}.')
  return path
