"""What server and hospitals share: the wire format, its checks, and a site's data file.

On the wire a model is the list of its parameter arrays in `jax.tree` order (sorted
keys), float32. A hospital's reply to a round is exactly
  * its parameter delta: one array per model parameter, of that parameter's shape;
  * `num_examples`: its example count (the FedAvg weight);
  * scalar metrics: `site`, `client_id`, `round`, `signature`, the loss means named in
    `LOSS_METRICS` and the local update's wall time (`TIMING_METRICS`).
`check_reply` enforces that on the server, so a hospital cannot send anything else
(images, conditions, per-example values) even by mistake.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.federated import rngs

# Per-round loss means a hospital reports (the simulation logs their weighted means).
LOSS_METRICS = ('d_loss', 'g_loss', 'cond_loss', 'd_gan_loss', 'g_gan_loss', 'attribute_loss',
                'd_real', 'd_fake')
# Seconds the hospital spent in its local update (the server logs the slowest).
TIMING_METRICS = ('local_update_s',)
REPLY_METRICS = LOSS_METRICS + TIMING_METRICS
# Identity and authentication scalars of every hospital message.
IDENTITY_FIELDS = {'site': str, 'client_id': int, 'round': int, 'signature': bytes}
PROPERTY_FIELDS = {'site': str, 'client_id': int, 'signature': bytes}
SITE_ARRAYS = ('images', 'conditions', 'abnormal', 'patient_ids')


class InvalidReplyError(ValueError):
  """A hospital message that is not exactly parameter arrays plus allowed scalars."""


def params_to_arrays(params) -> list[np.ndarray]:
  return [np.asarray(leaf, np.float32) for leaf in jax.tree.leaves(jax.device_get(params))]


def arrays_to_params(arrays: Sequence[np.ndarray], template):
  """Inverse of `params_to_arrays`, into the tree structure of `template`."""
  leaves, treedef = jax.tree.flatten(template)
  if len(arrays) != len(leaves):
    raise InvalidReplyError(f'expected {len(leaves)} parameter arrays, got {len(arrays)}.')
  return jax.tree.unflatten(treedef, [np.asarray(a) for a in arrays])


def array_specs(params) -> list[tuple[tuple[int, ...], str]]:
  """`(shape, dtype)` of every wire array of a model (params or their `jax.eval_shape`)."""
  return [(tuple(leaf.shape), 'float32') for leaf in jax.tree.leaves(params)]


def check_reply(arrays: Sequence[Any], num_examples: Any, metrics: dict,
                specs: Sequence[tuple[tuple[int, ...], str]], site: str) -> None:
  """Raises `InvalidReplyError` unless the reply is parameter arrays + allowed scalars."""
  if len(arrays) != len(specs):
    raise InvalidReplyError(f'{site}: {len(arrays)} arrays in the reply, the model has '
                            f'{len(specs)} parameters.')
  for i, (array, (shape, dtype)) in enumerate(zip(arrays, specs)):
    if not isinstance(array, np.ndarray) or tuple(array.shape) != shape or str(
        array.dtype) != dtype:
      got = (getattr(array, 'shape', None), str(getattr(array, 'dtype', type(array).__name__)))
      raise InvalidReplyError(f'{site}: array {i} is {got}, the parameter is {(shape, dtype)}.')
    if not np.all(np.isfinite(array)):
      raise InvalidReplyError(f'{site}: array {i} holds NaN or inf.')
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or (
      num_examples <= 0):
    raise InvalidReplyError(f'{site}: num_examples must be a positive int, got {num_examples!r}.')
  check_scalars(metrics, IDENTITY_FIELDS, REPLY_METRICS, site)


def delta_norm(arrays: Sequence[np.ndarray]) -> float:
  """Global L2 norm of a reply's delta (float64, so huge entries give inf, not overflow)."""
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in arrays)))


def check_scalars(metrics: dict, required: dict, optional_floats: Sequence[str],
                  site: str) -> None:
  """`metrics` holds exactly `required` (name -> type) and optionally float `optional_floats`."""
  missing = sorted(set(required) - set(metrics))
  if missing:
    raise InvalidReplyError(f'{site}: the message lacks {missing}.')
  for name, value in metrics.items():
    if name in required:
      if not isinstance(value, required[name]) or isinstance(value, bool):
        raise InvalidReplyError(f'{site}: {name} must be {required[name].__name__}, got '
                                f'{type(value).__name__}.')
    elif name in optional_floats:
      if not isinstance(value, float):
        raise InvalidReplyError(f'{site}: metric {name} must be a float, got '
                                f'{type(value).__name__}.')
    else:
      raise InvalidReplyError(f'{site}: unexpected field {name!r} in the message; allowed: '
                              f'{sorted(required) + list(optional_floats)}.')


def export_site_data(client: dataset_lib.ClientData, path: str) -> str:
  """Writes one hospital's training data as the npz `hospital --data=PATH` reads.

  Holds `images` uint8 (N, H, W, 1), `conditions` float32 (N, model_dim) encoded with the
  config's schema, `abnormal` bool (N,) and `patient_ids` (N,).
  """
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, images=np.asarray(client.images), conditions=np.asarray(client.conditions),
           abnormal=np.asarray(client.abnormal), patient_ids=np.asarray(client.patient_ids))
  return path


def load_site_data(path: str, site: str,
                   schema: conditions_lib.ConditionSchema) -> dataset_lib.ClientData:
  """Reads a site's npz (see `export_site_data`), checking it against the config's schema."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'--data={path}: no such file (an npz written by '
                            'fedgan_jax.deploy.common.export_site_data).')
  with np.load(path, allow_pickle=False) as data:
    missing = [k for k in SITE_ARRAYS if k not in data.files]
    if missing:
      raise ValueError(f'--data={path}: lacks arrays {missing}; expected {list(SITE_ARRAYS)}.')
    arrays = {k: data[k] for k in SITE_ARRAYS}
  if arrays['conditions'].ndim != 2 or arrays['conditions'].shape[1] != schema.model_dim:
    raise ValueError(f'--data={path}: conditions are {arrays["conditions"].shape}, the config\'s '
                     f'schema (config.conditions) encodes (N, {schema.model_dim}).')
  return dataset_lib.ClientData(
      name=site, images=arrays['images'],
      conditions=arrays['conditions'].astype(np.float32),
      abnormal=arrays['abnormal'].astype(bool), patient_ids=arrays['patient_ids'])


def client_round_rng(seed: int, round_index: int, client_id: int) -> jax.Array:
  """A hospital's key of a round, derived as the simulation derives its twin's (`rngs`)."""
  return rngs.client_key(rngs.round_key(seed, round_index), client_id)
