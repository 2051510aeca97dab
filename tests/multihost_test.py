"""Multi-host simulation: 2 CPU processes joined by `jax.distributed` equal 1 process.

One run of the real entry point serves both tests: `python -m fedgan_jax.main
--jax_distributed` on 2 loopback processes (2 CPU devices each, gloo collectives), the
`vmap` round sharded over all 4 global devices, each process turning the host-side round
into global arrays (`train.global_arrays`, `jax.make_array_from_callback`) as a multi-host
job must; and beside it, at the same time, the same config in 1 process with 4 local CPU
devices and no `jax.distributed`. The tests check what only process 0 writes, and that
both runs end with the same params.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import binary_env
from conftest import tiny_model_flags
from conftest import with_tiny_model

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
# A hang guard, not a speed target: 3 processes compiling at once on 2 (possibly busy) cores.
TIMEOUT_S = 600
# One local step halves the unrolled round (and its XLA compile); the multi-host mechanics
# under test do not depend on K, nor on the networks' width (conftest.TINY_MODEL).
# SGD clients: Adam's first step from a fresh state is ~lr * sign(g), which turns the rounding
# differences of another all-reduce order into lr-sized ones wherever a gradient is near zero.
OVERRIDES = ('--config.fl.num_rounds=2', '--config.runtime.strategy=vmap', '--config.fl.local_steps=1',
             '--config.checkpoint.every_rounds=1', '--config.fl.client_optimizer.name=sgd',
             '--config.fl.client_optimizer.d_learning_rate=0.01',
             '--config.fl.client_optimizer.g_learning_rate=0.01',
             "--config.fl.client_optimizer.kwargs={'momentum': 0.9}", *tiny_model_flags())
# Process 0 of the 2-process run evaluates G as gathered from global arrays (one evaluator
# shows it; all of them run in train_test); the 1-process reference only trains.
TWO_PROCESS_EVALUATORS = "--config.eval.evaluators=('anomaly',)"
REFERENCE_EVALUATORS = '--config.eval.evaluators=()'


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _start_main(workdir, log_path, cache_dir, device_count, *extra_flags, **extra_env):
  # The session's XLA flags (conftest.TEST_XLA_FLAGS) in all 3 processes alike.
  env = binary_env(cpu_devices=device_count, JAX_PLATFORMS='cpu', **extra_env)
  with open(log_path, 'w') as log_file:
    return subprocess.Popen(
        [sys.executable, '-m', 'fedgan_jax.main', '--config=configs/phantom.py:runlocal',
         f'--workdir={workdir}', f'--compilation_cache={cache_dir}', *OVERRIDES, *extra_flags],
        env=env, cwd=REPO_ROOT,
        stdout=log_file, stderr=subprocess.STDOUT)


@pytest.fixture(scope='module')
def runs(tmp_path_factory, compilation_cache_dir):
  """Workdirs and logs of the 2-process run (`two`) and the 1-process, 4-device run (`one`)."""
  root = tmp_path_factory.mktemp('multihost')
  coordinator = f'127.0.0.1:{_free_port()}'
  jobs = {'one': _start_main(root / 'one', root / 'one.log', compilation_cache_dir,
                             NUM_PROCESSES * DEVICES_PER_PROCESS, REFERENCE_EVALUATORS)}
  for process_id in range(NUM_PROCESSES):
    jobs[f'main{process_id}'] = _start_main(
        root / 'two', root / f'main{process_id}.log', compilation_cache_dir, DEVICES_PER_PROCESS,
        '--jax_distributed', TWO_PROCESS_EVALUATORS,
        JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(NUM_PROCESSES),
        JAX_PROCESS_ID=str(process_id))
  started = time.monotonic()
  try:
    for name, process in jobs.items():
      try:
        code = process.wait(timeout=max(TIMEOUT_S - (time.monotonic() - started), 1))
      except subprocess.TimeoutExpired:
        code = 'timeout'
      assert code == 0, f'{name} ended with {code}:\n{(root / f"{name}.log").read_text()[-3000:]}'
  finally:
    for process in jobs.values():
      if process.poll() is None:
        process.kill()
        process.wait()
  return root


def _params(workdir, federation):
  """The run's final params (restored as the eval binary does) and its initial ones."""
  from configs import phantom  # pylint: disable=g-import-not-at-top
  from fedgan_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import client as client_lib  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import task as task_lib  # pylint: disable=g-import-not-at-top
  config = with_tiny_model(phantom.get_config('runlocal'))  # OVERRIDES' shape fields.
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  # train.train_gan's initialization.
  initial = client_lib.init_params(task, jax.random.key(config.seed, impl='rbg'),
                                   tuple(federation.image_shape), federation.schema.model_dim)
  final, _, step = checkpointing.restore_params(str(workdir), config, initial)
  assert step == 2
  flat = lambda tree: {jax.tree_util.keystr(path): np.asarray(leaf)
                       for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  return flat(final), flat(initial)


def test_two_processes_match_one_process(runs, runlocal_federation):
  two, initial = _params(runs / 'two', runlocal_federation)
  one, _ = _params(runs / 'one', runlocal_federation)
  assert sorted(one) == sorted(two) == sorted(initial) and len(one) > 10
  for key, value in one.items():
    # Training moved every tensor, so agreement is not the initial params twice.
    assert not np.array_equal(value, initial[key]), key
    np.testing.assert_allclose(two[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_main_trains_on_two_processes_and_only_process_0_writes(runs):
  """`python -m fedgan_jax.main --jax_distributed` on 2 loopback processes, end to end."""
  workdir = runs / 'two'
  assert 'over 3 clients' in (runs / 'main0.log').read_text()
  assert '4 device(s), process 0 of 1' in (runs / 'one.log').read_text()  # The reference.
  rows = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(row)['round'] for row in rows] == [1, 2]  # One writer, not two.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2']
  results = json.loads((workdir / 'results.json').read_text())
  assert results['rounds'] == 2 and 0.0 <= results['anomaly']['auc'] <= 1.0
