"""Baseline: local-only GANs, each hospital training the same GAN on its own data alone.

Each hospital runs the engine's own `train.train_gan` on a federation of that one client,
with the experiment config unchanged (same model, rounds, local steps and optimizers), so
the only difference from the federated GAN is that no parameters are ever averaged across
hospitals. Each writes a normal workdir (`checkpoints/`, `metrics.jsonl`) under
`WORKDIR/<hospital>`, which the eval binary evaluates with the same config: its test split
and requested profiles are the federation's, not the hospital's, which is the point.
"""

from __future__ import annotations

import os
import re
import time

from fedgan_jax import train
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.federated import client as client_lib


def single_hospital(federation: dataset_lib.FederatedDataset,
                    index: int) -> dataset_lib.FederatedDataset:
  """The federation reduced to hospital `index` (same test split and normal profiles)."""
  if not 0 <= index < len(federation.clients):
    raise IndexError(f'local GAN: hospital index {index} out of range for '
                     f'{len(federation.clients)} hospitals.')
  return dataset_lib.FederatedDataset(
      schema=federation.schema, clients=[federation.clients[index]], test=federation.test,
      normal_profiles=federation.normal_profiles,
      info=dict(federation.info, local_only=federation.clients[index].name))


def workdir_name(hospital: str) -> str:
  """A directory name for a hospital (letters, digits, '_', '-' and '.' only)."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', hospital)


def train_local_gans(config, workdir: str, federation: dataset_lib.FederatedDataset,
                     task: client_lib.GanTask) -> list[dict]:
  """Trains (or resumes) one GAN per hospital under `workdir/<hospital>`.

  Returns:
    One `{'hospital', 'workdir', 'train_time_s'}` per hospital, in federation order.
  """
  runs = []
  for index, client in enumerate(federation.clients):
    hospital_workdir = os.path.join(workdir, workdir_name(client.name))
    started = time.perf_counter()
    train.train_gan(config, hospital_workdir, single_hospital(federation, index), task)
    runs.append({'hospital': client.name, 'workdir': hospital_workdir,
                 'train_time_s': time.perf_counter() - started})
  return runs
