"""Builds the federation a config asks for: `load_federation(config)`.

Each data source module exposes `build_federation(data_config, conditions_config,
seed) -> FederatedDataset`; they are imported lazily so that, e.g., a phantom run
never imports the PNG decoding stack. `validation_config(config)` is the same experiment
scoring its validation split (for choosing a checkpoint or setting), hospitals unchanged.
"""

from __future__ import annotations

import importlib

from fedgan_jax.data import dataset as dataset_lib

SOURCES = {
    'phantom': 'fedgan_jax.data.phantom',
    'cxr14': 'fedgan_jax.data.cxr14',
    'medmnist': 'fedgan_jax.data.medmnist',
    'zhanglab': 'fedgan_jax.data.zhanglab',
}


def validation_config(config):
  """A copy of `config` whose federation scores the data source's validation split.

  The hospitals' data is the same as under `config` (the validation patients never reach a
  hospital in either), so a choice made on it holds for the run that scores the test split.
  """
  config = config.copy_and_resolve_references()
  data = config.data
  if data.name in ('zhanglab', 'cxr14'):
    if not data.split.validation_fraction:
      raise ValueError(f'data.split.validation_fraction is 0: this {data.name} config carves no '
                       'validation split to choose on; set it > 0 (and retrain).')
    data.split.score = 'validation'
  elif data.name == 'medmnist':
    if 'val' in data.train_splits:
      raise ValueError("data.train_splits includes 'val': MedMNIST's validation split trains "
                       'the hospitals here, so nothing is left to choose on.')
    data.test_split = 'val'  # The released validation split.
  else:
    raise ValueError(f'data.name={data.name!r} has no validation split to choose on (the '
                     'phantom draws its test split only); pick the step with --step.')
  return config


def load_federation(config) -> dataset_lib.FederatedDataset:
  """The hospitals' data (one pooled client when `fl.centralized`) and the test split."""
  name = config.data.name
  if name not in SOURCES:
    raise ValueError(f'data.name: {name!r} is not one of {sorted(SOURCES)}.')
  module = importlib.import_module(SOURCES[name])
  federation = module.build_federation(config.data, config.conditions, config.seed)
  if config.fl.centralized:
    federation = dataset_lib.FederatedDataset(
        schema=federation.schema, clients=[federation.pooled()], test=federation.test,
        normal_profiles=federation.normal_profiles,
        condition_prior=dataset_lib.restricted_prior(federation.condition_prior, [None]),
        info=dict(federation.info, centralized=True))
  return federation
