"""Host-side, reproducible choice of clients and batches: pure functions of (seed, round).

Which hospitals take part in round r, and which of their examples each local step
sees, depend only on `(seed, r, client_id)`. So a run resumed from the checkpoint
of round r replays exactly what an uninterrupted run would have done, and the data
of clients that do not take part never leaves the host (only the participating
chunk is gathered and sent to the device).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.federated import rngs

# The batch key of public-prior conditions G's images are drawn for (`client_batches`).
FAKE_CONDITION_KEY = 'fake_condition'


def sample_clients(seed: int, round_index: int, num_clients: int,
                   clients_per_round: int) -> np.ndarray:
  """Sorted ids of the clients taking part in `round_index` (all when <= 0 or >= N)."""
  if clients_per_round <= 0 or clients_per_round >= num_clients:
    return np.arange(num_clients)
  rng = np.random.default_rng([seed, round_index, rngs.CLIENT_SAMPLING_STREAM])
  return np.sort(rng.choice(num_clients, clients_per_round, replace=False))


def batch_indices(seed: int, round_index: int, client_id: int, num_examples: int,
                  local_steps: int, batch_size: int) -> np.ndarray:
  """`(local_steps, batch_size)` example indices; without replacement within a batch
  when the client has enough examples."""
  rng = np.random.default_rng([seed, round_index, client_id, rngs.BATCH_STREAM])
  replace = num_examples < batch_size
  return np.stack([np.sort(rng.choice(num_examples, batch_size, replace=replace))
                   for _ in range(local_steps)])


def client_batches(client: dataset_lib.ClientData, seed: int, round_index: int, client_id: int,
                   local_steps: int, batch_size: int, condition_prior=None) -> dict[str, np.ndarray]:
  """`{'image': uint8 (K, B, H, W, 1), 'condition': float32 (K, B, C)}` for one client.

  With `condition_prior` (`FederatedDataset.condition_prior`), also `FAKE_CONDITION_KEY`:
  `(K, B, C)` conditions of this hospital's population drawn from the prior, for G's images.
  """
  index = batch_indices(seed, round_index, client_id, len(client), local_steps, batch_size)
  flat = index.reshape(-1)
  images = np.asarray(client.images[flat])
  conditions = np.asarray(client.conditions[flat], np.float32)
  batches = {'image': images.reshape(index.shape + images.shape[1:]),
             'condition': conditions.reshape(index.shape + conditions.shape[1:])}
  if condition_prior is not None:
    rng = np.random.default_rng([seed, round_index, client_id, rngs.PRIOR_STREAM])
    drawn = np.asarray(condition_prior(rng, flat.size, client_id), np.float32)
    if drawn.shape != (flat.size, conditions.shape[-1]):
      raise ValueError(f'condition_prior gave shape {drawn.shape}, expected '
                       f'{(flat.size, conditions.shape[-1])} like the records\' conditions.')
    batches[FAKE_CONDITION_KEY] = drawn.reshape(index.shape + drawn.shape[1:])
  return batches


def round_inputs(clients: Sequence[dataset_lib.ClientData], client_ids: np.ndarray, seed: int,
                 round_index: int, local_steps: int, batch_size: int, pad_to_multiple: int = 1,
                 condition_prior=None):
  """Stacked batches, example-count weights and ids of the round's clients.

  The client axis is padded to a multiple of `pad_to_multiple` (the device count)
  with zero-weight copies of the first client, which change nothing in the average.
  """
  per_client = [client_batches(clients[i], seed, round_index, int(i), local_steps, batch_size,
                               condition_prior)
                for i in client_ids]
  weights = [float(len(clients[i])) for i in client_ids]
  ids = [int(i) for i in client_ids]
  while len(per_client) % pad_to_multiple:
    per_client.append(per_client[0])
    weights.append(0.0)
    ids.append(ids[0])
  batches = {k: np.stack([b[k] for b in per_client]) for k in per_client[0]}
  return batches, np.asarray(weights, np.float32), np.asarray(ids, np.int32)
