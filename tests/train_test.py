"""End to end through the real entry point (`python -m fedgan_jax.main`), tiny config.

Covers: the whole pipeline's outputs, resume after SIGKILL ending with the same
params as an uninterrupted run, and a diverging run stopping with a clear message
while keeping the last good checkpoint.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from conftest import MAIN_RUN_OVERRIDES
from conftest import REPO_ROOT
from conftest import binary_env
from conftest import main_command
from conftest import run_main
from conftest import with_tiny_model

# One worker builds conftest.main_run for this module and the other that reads it.
pytestmark = pytest.mark.xdist_group('main_run')

# The shared run's config (conftest.main_run), training only: a resume is checked on params.
RESUME_OVERRIDES = (*MAIN_RUN_OVERRIDES, '--config.eval.evaluators=()')


def final_params(workdir, runlocal_federation):
  from configs import phantom  # pylint: disable=g-import-not-at-top
  from fedgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import client as client_lib  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import task as task_lib  # pylint: disable=g-import-not-at-top
  config = with_tiny_model(phantom.get_config('runlocal'))  # As main_command runs it.
  task = task_lib.build_task(config, runlocal_federation.schema, runlocal_federation.image_shape)
  template = jax.eval_shape(lambda: client_lib.init_params(
      task, jax.random.key(0, impl='rbg'), tuple(runlocal_federation.image_shape),
      runlocal_federation.schema.model_dim))
  params, _, step = checkpointing.restore_params(str(workdir), config, template)
  # G's moving average (fl.generator_ema, on by default) must resume exactly too.
  ema = checkpointing.restore_sampling_generator(str(workdir), step, template['generator'])
  assert ema is not None
  return step, np.concatenate([np.ravel(x) for x in jax.tree.leaves((params, ema))])


@pytest.fixture(scope='module')
def uninterrupted(main_run):
  return main_run[0]


def test_pipeline_writes_every_output(uninterrupted):
  results = json.loads((uninterrupted / 'results.json').read_text())
  for key in ('auc', 'threshold', 'threshold_percentile', 'sensitivity', 'specificity'):
    assert np.isfinite(results['anomaly'][key]), key
  assert 0.0 <= results['anomaly']['auc'] <= 1.0
  assert {'age', 'sex'} <= set(results['conditioning']['generated'])
  assert results['rounds'] == 12 and results['wall_time_s'] > 0
  assert results['config']['fl']['num_rounds'] == 12
  assert results['sampling_noise_scale'] == results['config']['sampling']['noise_scale']
  rows = [json.loads(line) for line in (uninterrupted / 'metrics.jsonl').read_text().splitlines()]
  assert [r['round'] for r in rows] == list(range(1, 13))
  assert all(np.isfinite(r['d_loss']) and r['examples_per_s'] > 0 for r in rows)
  assert (uninterrupted / 'eval' / 'roc.png').stat().st_size > 0
  assert 'anomaly' in (uninterrupted / 'eval' / 'results.md').read_text().lower()
  assert (uninterrupted / 'samples' / 'round_000012.png').exists()
  assert (uninterrupted / 'training_curves.png').stat().st_size > 0
  clients = json.loads((uninterrupted / 'clients.json').read_text())
  assert len(clients) == 3 and all(c['examples'] > 0 for c in clients)


def test_console_reads_as_setup_progress_and_results(main_run):
  _, console = main_run
  lines = console.splitlines()
  # Setup, one progress line per round (runlocal logs every round), the evaluators, the table.
  assert len(lines) <= 60, console
  assert 'Data: phantom, 3 hospitals' in console and 'children_and_young' in console
  assert 'round 12/12 (100%)' in console and 'ETA' in console
  assert 'Results after 12 rounds' in console
  assert re.search(r'^ +anomaly +auc +\d\.\d{3}', console, re.M), console
  # Orbax's INFO chatter (dozens of lines per checkpoint) stays out of the default console.
  assert 'checkpoint_manager.py' not in console and 'orbax' not in console.lower()


def test_sigkill_and_restart_ends_with_the_same_params(uninterrupted, tmp_path,
                                                       compilation_cache_dir, runlocal_federation):
  log = tmp_path / 'killed_run.log'
  with open(log, 'w') as log_file:
    process = subprocess.Popen(main_command(tmp_path, compilation_cache_dir, *RESUME_OVERRIDES),
                               cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                               env=binary_env())
  checkpoint = tmp_path / 'checkpoints' / '4'
  deadline = time.time() + 600
  while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL, (
      'the run ended before it could be killed:\n' + log.read_text()[-3000:])
  assert not (tmp_path / 'results.json').exists()

  run_main(tmp_path, compilation_cache_dir, *RESUME_OVERRIDES)
  # Only the params are compared: the resumed run skips the evaluation (and says so).
  assert json.loads((tmp_path / 'results.json').read_text())['evaluators'] == []
  assert not (tmp_path / 'eval').exists()
  step_a, resumed = final_params(tmp_path, runlocal_federation)
  step_b, reference = final_params(uninterrupted, runlocal_federation)
  assert step_a == step_b == 12
  np.testing.assert_array_equal(resumed, reference)
  rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['round'] for r in rows] == list(range(1, 13))


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    uninterrupted, tmp_path, compilation_cache_dir):
  # Continue a copy of the finished 12-round run: round 13's losses exceed the bound.
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  before = sorted(os.listdir(workdir / 'checkpoints'))
  # --verbosity=1 (checked here, on a run the suite makes anyway) shows the libraries' INFO
  # logs that the default console hides: Orbax's restore of round 12.
  result = run_main(workdir, compilation_cache_dir, '--config.fl.num_rounds=16',
                    '--config.checkpoint.every_rounds=1', '--config.train.max_abs_loss=1e-9',
                    '--verbosity=1', check=False)
  assert result.returncode != 0
  assert 'round 13' in result.stderr and 'last good checkpoint is kept' in result.stderr
  assert 'checkpoint_manager.py' in result.stderr
  assert sorted(os.listdir(workdir / 'checkpoints')) == before
  assert '12' in before
  assert json.loads((workdir / 'results.json').read_text())['rounds'] == 12


def test_config_typo_is_rejected_by_the_binary(tmp_path, compilation_cache_dir):
  result = run_main(tmp_path, compilation_cache_dir, '--config.fl.num_roundz=3', check=False)
  assert result.returncode != 0
  assert 'num_roundz' in result.stderr
