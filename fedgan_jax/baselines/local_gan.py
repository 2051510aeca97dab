"""Baseline: local-only GANs, each hospital training the same GAN on its own data alone.

Each hospital runs the engine's own `train.train_gan` on `single_hospital(federation, i)`,
a federation of that one client, with the experiment config unchanged (same model, rounds,
local steps and optimizers), so the only difference from the federated GAN is that no
parameters are ever averaged across hospitals. Each writes a normal workdir (`checkpoints/`,
`metrics.jsonl`) under `WORKDIR/local_gans/<workdir_name(hospital)>` (`baselines.compare`
drives this), which the eval binary evaluates with the same config: its test split and
requested profiles are the federation's, not the hospital's, which is the point.
"""

from __future__ import annotations

import re

from fedgan_jax.data import dataset as dataset_lib


def single_hospital(federation: dataset_lib.FederatedDataset,
                    index: int) -> dataset_lib.FederatedDataset:
  """The federation reduced to hospital `index` (same test split and normal profiles)."""
  if not 0 <= index < len(federation.clients):
    raise IndexError(f'local GAN: hospital index {index} out of range for '
                     f'{len(federation.clients)} hospitals.')
  return dataset_lib.FederatedDataset(
      schema=federation.schema, clients=[federation.clients[index]], test=federation.test,
      normal_profiles=federation.normal_profiles,
      condition_prior=dataset_lib.restricted_prior(federation.condition_prior, [index]),
      info=dict(federation.info, local_only=federation.clients[index].name))


def workdir_name(hospital: str) -> str:
  """A directory name for a hospital (letters, digits, '_', '-' and '.' only)."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', hospital)
