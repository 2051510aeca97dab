"""Shared fixtures: the real data beside the checkout, and small helpers."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path:
  """`$FEDGAN_SHARED_DATA`, else `../shared/data` beside the checkout."""
  return pathlib.Path(os.environ.get('FEDGAN_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))


@pytest.fixture
def pneumoniamnist_path() -> pathlib.Path:
  path = shared_data_dir() / 'medmnist' / 'pneumoniamnist.npz'
  if not path.exists():
    pytest.skip(f'real PneumoniaMNIST subset not found at {path} (set FEDGAN_SHARED_DATA to the '
                'folder holding medmnist/pneumoniamnist.npz)')
  return path


@pytest.fixture
def cxr14_csv_path() -> pathlib.Path:
  path = shared_data_dir() / 'cxr14' / 'Data_Entry_2017_rows1-40000.csv'
  if not path.exists():
    pytest.skip(f'real ChestX-ray14 metadata not found at {path} (set FEDGAN_SHARED_DATA to the '
                'folder holding cxr14/Data_Entry_2017_rows1-40000.csv)')
  return path


def tiny_runlocal_config():
  """The runlocal phantom config with the smallest networks the generator's geometry allows.

  For tests of mechanisms (recompiles, sampling) that do not depend on the networks' width.
  """
  from configs import phantom  # pylint: disable=g-import-not-at-top
  config = phantom.get_config('runlocal')
  config.model.generator.update(encoder_channels=(8,), decoder_channels=(8,), embedding_dim=8,
                                z_dim=4)
  config.model.discriminator.channels = (8,)
  return config


# Networks for end-to-end runs of the binaries, whose checks do not depend on the width: XLA's
# CPU compile of the client update, most of a short run's time, shrinks with them. 16 generator
# channels, not 8 (= GroupNorm's groups), so no conv bias gets a rounding-noise gradient.
TINY_MODEL = {'generator': dict(seed_size=16, encoder_channels=(16,), decoder_channels=()),
              'discriminator': dict(channels=(8,))}


def tiny_model_flags() -> tuple[str, ...]:
  """`TINY_MODEL` as a binary's `--config.model.*` overrides."""
  return tuple(f'--config.model.{network}.{field}={value!r}'
               for network, fields in TINY_MODEL.items() for field, value in fields.items())


def with_tiny_model(config):
  """`config` with `TINY_MODEL`'s networks, as `tiny_model_flags()` gives a binary."""
  for network, fields in TINY_MODEL.items():
    config.model[network].update(fields)
  return config


def initial_params(task, federation):
  """`client_lib.init_params` of `task` from the RBG key 0, as one compiled program (eager
  flax compiles op by op; RBG's key mixing is a fraction of threefry's program)."""
  import jax  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import client as client_lib  # pylint: disable=g-import-not-at-top
  init = jax.jit(lambda key: client_lib.init_params(task, key, tuple(federation.image_shape),
                                                    federation.schema.model_dim))
  return init(jax.random.key(0, impl='rbg'))


def main_command(workdir, cache_dir, *overrides):
  """`python -m fedgan_jax.main` on the runlocal config with `TINY_MODEL`'s networks."""
  return [sys.executable, '-m', 'fedgan_jax.main', '--config=configs/phantom.py:runlocal',
          f'--workdir={workdir}', f'--compilation_cache={cache_dir}', *tiny_model_flags(),
          *overrides]


def binary_env(cpu_devices: int | None = None, **extra) -> dict[str, str]:
  """The environment of the processes the tests start: this checkout on the path, and the
  session's XLA flags (`TEST_XLA_FLAGS`, inherited), so the session's compilation cache
  serves each program once (the eval binary's numbers then equal main's to the last digit);
  `cpu_devices` host CPU devices when given."""
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **extra)
  if cpu_devices is not None:
    env['XLA_FLAGS'] = (f"{env.get('XLA_FLAGS', '')} "
                        f'--xla_force_host_platform_device_count={cpu_devices}').strip()
  return env


def run_main(workdir, cache_dir, *overrides, check=True):
  return subprocess.run(main_command(workdir, cache_dir, *overrides), cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=900, check=check,
                        env=binary_env())


# The shared run's length: checkpoints at rounds 4, 8 and 12.
MAIN_RUN_OVERRIDES = ('--config.fl.num_rounds=12', '--config.checkpoint.every_rounds=4')


@pytest.fixture(scope='session')
def main_run(tmp_path_factory, compilation_cache_dir):
  """`(workdir, console)` of one 12-round run of the main binary at the default verbosity.

  The suite's one full training run through the real entry point: the pipeline and console
  tests read it, the resume test restarts its config, and the eval binary's tests evaluate a
  copy of it (so the binary is checked against the numbers `main` wrote). Read-only: copy it
  before anything may write into it.
  """
  workdir = tmp_path_factory.mktemp('main_run')
  result = run_main(workdir, compilation_cache_dir, *MAIN_RUN_OVERRIDES)
  return workdir, result.stdout + result.stderr


@pytest.fixture(scope='session')
def runlocal_config():
  from configs import phantom  # pylint: disable=g-import-not-at-top
  return phantom.get_config('runlocal')


@pytest.fixture(scope='session')
def runlocal_federation(runlocal_config):
  from fedgan_jax.data import registry  # pylint: disable=g-import-not-at-top
  return registry.load_federation(runlocal_config)


@pytest.fixture(scope='session')
def runlocal_task(runlocal_config, runlocal_federation):
  """One task object for the session, so jitted steps compile once across tests."""
  from fedgan_jax.federated import task as task_lib  # pylint: disable=g-import-not-at-top
  return task_lib.build_task(runlocal_config, runlocal_federation.schema,
                             runlocal_federation.image_shape)


# XLA flags of the whole test session, this process and every binary it starts: LLVM's backend
# optimizations off. The suite is compile-bound (hundreds of small programs, a few rounds each)
# and checks what programs compute, which the HLO fixes whatever LLVM makes of it; speed is
# measured in benchmarks/, at the default level. Roughly halves each compile.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0'
# Set by the first process of a session (pytest-xdist's controller), read by its workers.
_CACHE_ENV = 'FEDGAN_JAX_TEST_XLA_CACHE'


def pytest_configure(config):
  """The session's XLA flags and one fresh persistent XLA cache, shared by its processes.

  Identical programs (a task rebuilt by another test, the binaries' repeated runs, the same
  fixture in two pytest-xdist workers) then compile once per session, and nothing carries
  over from one session or CI run to the next. Set before collection, so no test module's
  import compiles without them.
  """
  if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
  import jax  # pylint: disable=g-import-not-at-top
  if _CACHE_ENV not in os.environ:
    os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix='fedgan_jax_test_xla_')
    config.xla_cache_owner = True
  config.xla_cache_dir = os.environ[_CACHE_ENV]
  jax.config.update('jax_compilation_cache_dir', config.xla_cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


@pytest.hookimpl(tryfirst=True)  # Before pytest-xdist's worker reads the groups.
def pytest_collection_modifyitems(items):
  """Under `--dist loadgroup`, one pytest-xdist worker runs a whole module (its module fixtures
  are then built once), unless the module names a group shared with others (`main_run`)."""
  for item in items:
    if item.get_closest_marker('xdist_group') is None:
      item.add_marker(pytest.mark.xdist_group(item.module.__name__))


def pytest_unconfigure(config):
  if getattr(config, 'xla_cache_owner', False):
    shutil.rmtree(config.xla_cache_dir, ignore_errors=True)
    del os.environ[_CACHE_ENV]


@pytest.fixture(scope='session')
def compilation_cache_dir(pytestconfig):
  """The session's persistent XLA cache, for the binaries the tests start."""
  return pytestconfig.xla_cache_dir
