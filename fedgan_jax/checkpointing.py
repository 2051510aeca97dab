"""Orbax checkpoints of the server state; the step is the round number.

A checkpoint holds three or four items, so readers take only what they need:
  * `params`: `{'generator': ..., 'discriminator': ...}` (all the eval binary restores);
  * `server`: the server optimizer state, round counter and, under adaptive client-level
    clipping, the clip norm (only training resumes it);
  * `generator_ema`: the moving average of G's params over rounds, when `fl.generator_ema`
    keeps one (sampling and evaluation use it instead of `params['generator']`);
  * `meta`: JSON with the config fields that fix parameter shapes, the full config
    for the record, and privacy spent so far.
Anything that restores compares `meta` with its own config first and refuses a
checkpoint made with an incompatible config, naming the mismatching field.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

# Config fields that change parameter shapes or the meaning of the condition vector.
SHAPE_FIELDS = ('model', 'data.image_size', 'conditions')
# Fields that must also match to *resume training* (the optimizer state's structure).
RESUME_FIELDS = SHAPE_FIELDS + ('fl.server_optimizer.name', 'fl.server_optimizer.momentum',
                                 'fl.generator_ema')
GENERATOR_EMA_ITEM = 'generator_ema'


class IncompatibleCheckpointError(ValueError):
  pass


def _lookup(config, dotted: str):
  node = config
  for part in dotted.split('.'):
    if isinstance(node, (dict, ml_collections.ConfigDict)) and part in node:
      node = node[part]
    else:
      return None
  return node


def _jsonable(value):
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, 'tolist')
                               else str(v)))


def fingerprint(config, fields=RESUME_FIELDS) -> dict[str, Any]:
  return {f: _jsonable(_lookup(config, f)) for f in fields}


def check_compatible(meta: dict, config, fields=SHAPE_FIELDS, where: str = '') -> None:
  """Raises naming the first field whose value differs from the checkpoint's."""
  saved = meta.get('fingerprint', {})
  current = fingerprint(config, fields)
  for field in fields:
    if field not in saved:
      continue
    mismatch = _first_difference(saved[field], current[field], field)
    if mismatch:
      path, was, now = mismatch
      raise IncompatibleCheckpointError(
          f'checkpoint {where} was made with {path}={was!r} but the config has {now!r}; use the '
          f'config it was trained with (saved in its meta/config.json) or another --workdir.')


def _first_difference(saved, current, path):
  if isinstance(saved, dict) and isinstance(current, dict):
    # A key the checkpoint lacks is a field added to the code after it was written (e.g.
    # model.generator.smooth_upsampling); there is nothing to compare it with, so older
    # checkpoints stay usable.
    for key in sorted(set(saved)):
      found = _first_difference(saved.get(key), current.get(key), f'{path}.{key}')
      if found:
        return found
    return None
  if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
    for i, (a, b) in enumerate(zip(saved, current)):
      found = _first_difference(a, b, f'{path}[{i}]')
      if found:
        return found
    return None
  return None if saved == current else (path, saved, current)


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def _server_item(state) -> dict:
  item = {'opt_state': state.opt_state, 'round': state.round}
  if getattr(state, 'privacy', None) is not None:
    item['privacy'] = state.privacy  # The adaptive clip norm: resuming must continue from it.
  return item


def save(checkpoint_manager: ocp.CheckpointManager, round_index: int, state, config,
         extra_meta: dict | None = None) -> None:
  """Saves `state` at step `round_index`; `extra_meta` (e.g. `{'privacy': ...}`) joins meta."""
  meta = {'round': int(round_index), 'fingerprint': fingerprint(config),
          'config': _jsonable(config), **(extra_meta or {})}
  items = dict(params=ocp.args.StandardSave(state.params),
               server=ocp.args.StandardSave(_server_item(state)),
               meta=ocp.args.JsonSave(meta))
  if getattr(state, 'generator_ema', None) is not None:
    items[GENERATOR_EMA_ITEM] = ocp.args.StandardSave(state.generator_ema)
  checkpoint_manager.save(round_index, args=ocp.args.Composite(**items), force=True)


def restore_meta(checkpoint_manager: ocp.CheckpointManager, step: int) -> dict:
  return checkpoint_manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']


def _placed_like(restored: dict, templates: dict) -> dict:
  """Each restored item's arrays, uncommitted to a device where the template item's are.

  Orbax returns arrays committed to their device where a fresh state's are not; a jitted
  round lowers differently for committed inputs (a sharding annotation), so a resumed run
  would miss the XLA cache entries of a fresh one and compile its round again. The values
  are unchanged.
  """
  def place(value, template):
    if not isinstance(template, jax.Array) or template.committed:
      return value
    return jax.device_put(np.asarray(value))  # Through the host: the way to uncommit.
  return {name: jax.tree.map(place, restored[name], template)
          for name, template in templates.items() if name in restored}


def restore_server_state(checkpoint_manager, step: int, template_state, config):
  """Restores params + optimizer state into the structure of `template_state`."""
  meta = restore_meta(checkpoint_manager, step)
  check_compatible(meta, config, RESUME_FIELDS, where=f'at round {step}')
  abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  items = dict(params=ocp.args.StandardRestore(abstract(template_state.params)),
               server=ocp.args.StandardRestore(abstract(_server_item(template_state))))
  if getattr(template_state, 'generator_ema', None) is not None:
    items[GENERATOR_EMA_ITEM] = ocp.args.StandardRestore(abstract(template_state.generator_ema))
  restored = _placed_like(checkpoint_manager.restore(step, args=ocp.args.Composite(**items)),
                          {'params': template_state.params,
                           'server': _server_item(template_state),
                           GENERATOR_EMA_ITEM: getattr(template_state, 'generator_ema', None)})
  if GENERATOR_EMA_ITEM in restored:
    template_state = template_state.replace(generator_ema=restored[GENERATOR_EMA_ITEM])
  state = template_state.replace(params=restored['params'],
                                 opt_state=restored['server']['opt_state'],
                                 round=restored['server']['round'])
  if 'privacy' in restored['server']:
    state = state.replace(privacy=restored['server']['privacy'])
  return state, meta


def restore_params(workdir: str, config, template_params, step: int | None = None):
  """Restores only G/D params (no optimizer state) for evaluation. Returns (params, meta, step)."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoints under {directory}; train first with '
                            f'`python -m fedgan_jax.main --workdir={workdir} ...`.')
  with ocp.CheckpointManager(directory) as checkpoint_manager:
    step = checkpoint_manager.latest_step() if step is None else step
    if step is None or step not in checkpoint_manager.all_steps():
      raise FileNotFoundError(f'checkpoint step {step} not found in {directory}; have '
                              f'{sorted(checkpoint_manager.all_steps())}.')
    meta = restore_meta(checkpoint_manager, step)
    check_compatible(meta, config, SHAPE_FIELDS, where=f'{directory} step {step}')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_params)
    params = checkpoint_manager.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract)))['params']
  return params, meta, step


def restore_sampling_generator(workdir: str, step: int, template_generator):
  """G's moving average saved at `step` (after `restore_params` checked it), else None."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  if not os.path.isdir(os.path.join(directory, str(step), GENERATOR_EMA_ITEM)):
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_generator)
  with ocp.CheckpointManager(directory) as checkpoint_manager:
    return checkpoint_manager.restore(step, args=ocp.args.Composite(
        **{GENERATOR_EMA_ITEM: ocp.args.StandardRestore(abstract)}))[GENERATOR_EMA_ITEM]
