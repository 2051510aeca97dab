"""Shared fixtures: the real data beside the checkout, and small helpers."""

import os
import pathlib

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


@pytest.fixture(scope='session')
def compilation_cache_dir(tmp_path_factory):
  """A persistent XLA cache shared by the subprocess tests of one session."""
  return str(tmp_path_factory.mktemp('xla_cache'))
