"""Chooses a run's checkpoint on the validation split: `best_step_on_validation`.

A GAN's last round is not its best one: on PneumoniaMNIST one seed's F-AD validation AUC
fell from 0.93 at round 200 to 0.85 at round 300 while the others rose
(benchmarks/real_data.md). Every saved round is a candidate; each is scored by the
config's detector (F-AD trained on that round's synthetic normals) on the data source's
validation split (`registry.validation_config`: the hospitals' data is unchanged), and
the best one is evaluated on the scored split as usual. Choosing on validation keeps the
test split unseen; a number reported on the validation split itself after this choice is
optimistic, so the reports name the choice. The eval binary chooses with
`--select_on_validation`; the main job chooses whenever it scores a test split that has a
validation split beside it (`main_chooses`).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax

from fedgan_jax import checkpointing
from fedgan_jax.data import registry
from fedgan_jax.evaluation import driver

# Where each candidate round's validation results go, under the workdir.
SELECTION_DIR = 'eval_selection'
METRIC = 'anomaly auc (F-AD on the validation split)'


def main_chooses(config, federation) -> bool:
  """Whether the main job evaluates the round chosen on validation instead of its last.

  It does when it scores the test split of a data source with a validation split (the
  real-data protocol: choose on validation, score test once), on a single process (the
  candidates' restores are not collectives). Scoring validation itself, it evaluates its last
  round: choosing there and reporting there would be optimistic.
  """
  if federation.info.get('scored_split', 'test') != 'test' or jax.process_count() > 1:
    return False
  try:
    registry.validation_config(config)
  except ValueError:  # No validation split (the phantom, or validation_fraction = 0).
    return False
  return True


def best_step_on_validation(config, workdir: str) -> tuple[int, dict[str, Any]]:
  """`(step, record)`: the saved round whose F-AD scores the validation split best.

  `record` (results.json's `checkpoint_selection`) holds each candidate's AUC. Ties go to
  the later round. Only the detector runs per candidate: its baselines do not depend on G.
  """
  validation = registry.validation_config(config)
  validation.eval.evaluators = ('anomaly',)
  validation.eval.anomaly_baselines = ()
  federation = registry.load_federation(validation)
  steps = checkpointing.saved_steps(workdir)
  auc_by_step, unusable = {}, {}
  for index, step in enumerate(steps):
    try:
      results = driver.evaluate_checkpoint(
          validation, workdir, step, federation=federation,
          out_dir=os.path.join(workdir, SELECTION_DIR, f'round_{step}'))
    except checkpointing.IncompatibleCheckpointError:
      raise  # The config, not one round, is wrong: the message says which field.
    except Exception as error:  # pylint: disable=broad-except
      # A round that does not read back (a truncated copy) is not a candidate; the others are.
      unusable[str(step)] = f'{type(error).__name__}: {error}'
      logging.warning('checkpoint selection: round %d is unusable (%s); skipped.', step,
                      unusable[str(step)])
      continue
    auc_by_step[step] = float(results['anomaly']['auc'])
    logging.info('checkpoint selection %d/%d: round %d, validation AUC %.3f', index + 1,
                 len(steps), step, auc_by_step[step])
  if not auc_by_step:
    raise FileNotFoundError(f'no usable checkpoint to choose from in '
                            f'{checkpointing.checkpoint_directory(workdir)} (saved rounds '
                            f'{steps}; unusable: {unusable})')
  best = max(auc_by_step, key=lambda step: (auc_by_step[step], step))
  record = {'on': 'validation', 'metric': METRIC, 'selected_step': best,
            'auc_by_step': {str(step): auc for step, auc in auc_by_step.items()}}
  if unusable:
    record['unusable'] = unusable
  logging.info('Chose round %d of %s on the validation split (AUC %.3f).', best,
               sorted(auc_by_step), auc_by_step[best])
  return best, record
