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

Faults (issue 22):
  * the checkpoint folder is checked up front (`prepare_directory`): a file in its place,
    or a folder that cannot be written, fails at once with a message naming it;
  * saves are synchronous, so a failed write raises where it happened (one
    `CheckpointWriteError` saying what, where and how much space a checkpoint needs)
    instead of surfacing minutes later from a background thread; the last finished
    checkpoint stays as it was;
  * a step that cannot be read back (truncated or zeroed files) or holds parameters that
    fail `validation.check_params` is skipped on restore for the newest intact one, with
    a warning; training moves it aside to `WORKDIR/checkpoints_unusable/` (never deletes
    it), since it will write that step number again.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from fedgan_jax import validation

# Config fields that change parameter shapes or the meaning of the condition vector.
SHAPE_FIELDS = ('model', 'data.image_size', 'conditions')
# Fields that must also match to *resume training* (the optimizer state's structure).
RESUME_FIELDS = SHAPE_FIELDS + ('fl.server_optimizer.name', 'fl.server_optimizer.kwargs',
                                 'fl.generator_ema')
GENERATOR_EMA_ITEM = 'generator_ema'
# Where training moves a step it cannot use (`restore_latest`), beside `checkpoints/`.
UNUSABLE_DIR = 'checkpoints_unusable'
# The item holding `meta` (JSON), as the error messages name it.
META_FILE = os.path.join('meta', 'metadata')


class IncompatibleCheckpointError(ValueError):
  pass


class CheckpointDirectoryError(OSError):
  """`WORKDIR/checkpoints` is not a folder this process can write."""


class CheckpointWriteError(OSError):
  """Writing a checkpoint failed (disk full, I/O error); the previous ones are intact."""


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
          f'config it was trained with (saved under "config" in the step\'s {META_FILE}, '
          'JSON) or another --workdir.')


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


def checkpoint_directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def prepare_directory(workdir: str) -> str:
  """Creates `WORKDIR/checkpoints` or checks the existing one; returns its path.

  Raises:
    CheckpointDirectoryError: it is a file, cannot be created, or cannot be written.
  """
  directory = checkpoint_directory(workdir)
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise CheckpointDirectoryError(
        f'{directory} is a file, not a folder: checkpoints cannot be written there. Move or '
        'remove it, or pass another --workdir.')
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as error:
    raise CheckpointDirectoryError(
        f'cannot create the checkpoint folder {directory} ({error.strerror or error}); pass '
        'a --workdir that is a writable folder.') from None
  if not os.access(directory, os.W_OK | os.X_OK):
    raise CheckpointDirectoryError(
        f'the checkpoint folder {directory} is not writable by this user; fix its permissions '
        'or pass another --workdir.')
  return directory


def manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A manager of `WORKDIR/checkpoints` (checked first) keeping the last `keep` steps."""
  directory = prepare_directory(workdir)
  # Synchronous saves: a checkpoint of these models takes well under a second, and a
  # failure then raises at the save that caused it rather than from a background thread
  # (the async path hung 5 minutes before a TimeoutError when the folder was a file).
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
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
  try:
    checkpoint_manager.save(round_index, args=ocp.args.Composite(**items), force=True)
    checkpoint_manager.wait_until_finished()
  except OSError as error:
    raise _write_error(checkpoint_manager, round_index, state, error) from None


def _tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
             if hasattr(x, 'shape'))


def _folder_bytes(path: str) -> int:
  total = 0
  for folder, _, files in os.walk(path):
    for name in files:
      try:
        total += os.path.getsize(os.path.join(folder, name))
      except OSError:
        pass
  return total


def _write_error(checkpoint_manager, round_index: int, state, error: OSError) -> OSError:
  """One message for a failed save: what, where, the space a checkpoint needs, what is kept.

  Removes this save's own unfinished temporary folder (never a finished step), so the
  space it took is free again.
  """
  directory = str(checkpoint_manager.directory)
  for partial in glob.glob(os.path.join(directory, f'{round_index}.orbax-checkpoint-tmp*')):
    shutil.rmtree(partial, ignore_errors=True)
  steps = [s for s in checkpoint_manager.all_steps() if s != round_index]
  kept = max(steps) if steps else None
  needed = (_folder_bytes(os.path.join(directory, str(kept))) if kept is not None else
            2 * _tree_bytes((state.params, getattr(state, 'opt_state', None),
                             getattr(state, 'generator_ema', None))))
  try:
    free = shutil.disk_usage(directory).free
  except OSError:
    free = -1
  reason = ('the disk is full' if error.errno == errno.ENOSPC else
            f'{error.strerror or type(error).__name__} (errno {error.errno})')
  kept_text = (f'the last finished checkpoint, round {kept}, is kept' if kept is not None else
               'no earlier checkpoint exists')
  return CheckpointWriteError(
      error.errno or errno.EIO,
      f'writing the checkpoint of round {round_index} to {directory} failed: {reason} '
      f'({error.filename or directory}). A checkpoint needs about {needed / 2**20:.1f} MiB; '
      f'{max(free, 0) / 2**20:.1f} MiB are free there. {kept_text}. Free space (or fix the '
      'error) and rerun the same command to resume.')


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


def _max_abs_param(config) -> float | None:
  train = config.get('train', None) if hasattr(config, 'get') else None
  return None if train is None else train.get('max_abs_param', None)


def _check_restored(params, config, what: str) -> None:
  limit = _max_abs_param(config)
  if limit is not None:
    validation.check_params(params, limit, what)


def _describe(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0][:300] if text else ""}'


def move_aside(checkpoint_manager: ocp.CheckpointManager, step: int) -> str:
  """Moves step `step` to `WORKDIR/checkpoints_unusable/` (kept for inspection); returns where."""
  directory = str(checkpoint_manager.directory)
  target_root = os.path.join(os.path.dirname(directory), UNUSABLE_DIR)
  target = os.path.join(target_root, f'{step}')
  if os.path.exists(target):
    target = f'{target}.{time.strftime("%Y%m%d-%H%M%S")}'
  if jax.process_index() == 0:
    os.makedirs(target_root, exist_ok=True)
    os.replace(os.path.join(directory, str(step)), target)
  checkpoint_manager.reload()
  return target


def restore_latest(checkpoint_manager: ocp.CheckpointManager, template_state, config):
  """The newest step that restores and passes the parameter check.

  Newer steps that do not are moved to `WORKDIR/checkpoints_unusable/` (training will
  write those step numbers again), each with a warning naming the step and the error.

  Returns:
    `(state, meta, step)`, or `(template_state, None, None)` when there is no checkpoint.

  Raises:
    IncompatibleCheckpointError: the newest readable step was made with another config
      (that is the user's to fix, not a fault to skip).
    RuntimeError: steps exist but none is usable; nothing is moved (starting over from
      round 0 is the user's call, e.g. after a code change that no longer reads them).
  """
  problems = []
  for step in sorted(checkpoint_manager.all_steps(), reverse=True):
    try:
      state, meta = restore_server_state(checkpoint_manager, step, template_state, config)
      _check_restored(state.params, config, f'checkpoint of round {step}: params')
      if getattr(state, 'generator_ema', None) is not None:
        _check_restored(state.generator_ema, config, f'checkpoint of round {step}: generator_ema')
    except IncompatibleCheckpointError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      # Whatever Orbax/TensorStore raise on truncated, zeroed or half-deleted files.
      problems.append((step, _describe(error)))
      continue
    for bad_step, reason in problems:
      target = move_aside(checkpoint_manager, bad_step)
      logging.warning('Checkpoint of round %d in %s is unusable (%s); moved it to %s and '
                      'resuming from round %d, the newest intact one.', bad_step,
                      checkpoint_manager.directory, reason, target, step)
    return state, meta, step
  if problems:
    raise RuntimeError(
        f'no checkpoint in {checkpoint_manager.directory} can be restored: '
        + '; '.join(f'round {s}: {r}' for s, r in problems) + '. Nothing was moved; to '
        'start over, move that folder away or pass another --workdir.')
  return template_state, None, None


def restore_params(workdir: str, config, template_params, step: int | None = None):
  """Restores only G/D params (no optimizer state) for evaluation. Returns (params, meta, step).

  Without `step`, the newest step that reads back and passes the parameter check; a newer
  unusable one is reported in the log and left where it is (evaluation never writes
  into `checkpoints/`).
  """
  steps = saved_steps(workdir)[::-1]
  directory = checkpoint_directory(workdir)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_params)
  with ocp.CheckpointManager(directory) as checkpoint_manager:
    if step is not None and step not in steps:
      raise FileNotFoundError(f'checkpoint step {step} not found in {directory}; have '
                              f'{sorted(steps)}.')
    if not steps:
      raise FileNotFoundError(f'checkpoint step None not found in {directory}; have [].')
    problems = []
    for candidate in ([step] if step is not None else steps):
      try:
        meta = restore_meta(checkpoint_manager, candidate)
        check_compatible(meta, config, SHAPE_FIELDS, where=f'{directory} step {candidate}')
        params = checkpoint_manager.restore(candidate, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract)))['params']
        _check_restored(params, config, f'checkpoint {directory} step {candidate}: params')
      except IncompatibleCheckpointError:
        raise
      except Exception as error:  # pylint: disable=broad-except
        problems.append(f'step {candidate}: {_describe(error)}')
        if step is None:
          logging.warning('Checkpoint %s step %d is unusable (%s); trying the next older one.',
                          directory, candidate, _describe(error))
        continue
      if problems:
        logging.warning('Evaluating step %d, the newest usable one in %s.', candidate, directory)
      return params, meta, candidate
  raise FileNotFoundError(f'no usable checkpoint in {directory}: ' + '; '.join(problems))


def saved_steps(workdir: str) -> list[int]:
  """The rounds saved under `workdir/checkpoints`, oldest first (none read back yet)."""
  directory = checkpoint_directory(workdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoints under {directory}; train first with '
                            f'`python -m fedgan_jax.main --workdir={workdir} ...`.')
  with ocp.CheckpointManager(directory) as checkpoint_manager:
    return sorted(int(step) for step in checkpoint_manager.all_steps())


def newest_usable_step(workdir: str, config) -> int:
  """The newest step whose meta and params read back and pass the parameter check.

  For binaries that pick a step before restoring with their own template (the eval
  binary); a newer unusable step is named in the log and left in place.
  """
  steps = saved_steps(workdir)
  directory = checkpoint_directory(workdir)
  problems = []
  with ocp.CheckpointManager(directory) as checkpoint_manager:
    for step in reversed(steps):
      try:
        restore_meta(checkpoint_manager, step)
        params = checkpoint_manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore()))['params']
        _check_restored(params, config, f'checkpoint {directory} step {step}: params')
      except Exception as error:  # pylint: disable=broad-except
        problems.append(f'step {step}: {_describe(error)}')
        logging.warning('Checkpoint %s step %d is unusable (%s); trying the next older one.',
                        directory, step, _describe(error))
        continue
      if problems:
        logging.warning('Using step %d, the newest usable one in %s.', step, directory)
      return int(step)
  raise FileNotFoundError(f'no usable checkpoint in {directory}'
                          + (': ' + '; '.join(problems) if problems else ' (it is empty).'))


def restore_sampling_generator(workdir: str, step: int, template_generator):
  """G's moving average saved at `step` (after `restore_params` checked it), else None."""
  directory = checkpoint_directory(workdir)
  if not os.path.isdir(os.path.join(directory, str(step), GENERATOR_EMA_ITEM)):
    return None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template_generator)
  with ocp.CheckpointManager(directory) as checkpoint_manager:
    return checkpoint_manager.restore(step, args=ocp.args.Composite(
        **{GENERATOR_EMA_ITEM: ocp.args.StandardRestore(abstract)}))[GENERATOR_EMA_ITEM]
