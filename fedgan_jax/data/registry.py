"""Builds the federation a config asks for: `load_federation(config)`.

Each data source module exposes `build_federation(data_config, conditions_config,
seed) -> FederatedDataset`; they are imported lazily so that, e.g., a phantom run
never imports the PNG decoding stack.
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
