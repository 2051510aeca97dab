"""FedAvg for the small supervised baselines (classifier, autoencoder on real normals).

Each round every hospital starts from the server's parameters, takes `local_steps`
optimizer steps on batches of its own examples (its optimizer state is fresh each round:
nothing but parameters leaves a hospital), and the server replaces its parameters by the
example-weighted mean of the hospitals' (plain FedAvg, server learning rate 1; the same
`federated.algorithm.fedavg_aggregate` as the GAN uses, on deltas). Batches are a pure
function of `(seed, round, hospital, step)`. One hospital is plain centralized training.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedgan_jax.federated import algorithm
from fedgan_jax.federated import optimizers

LossFn = Callable[[Any, Mapping[str, jax.Array]], jax.Array]


class FedAvgTrainer:
  """Compiles one local step for `loss_fn(params, batch) -> scalar` and runs the rounds."""

  def __init__(self, loss_fn: LossFn, optimizer_spec: Mapping[str, Any],
               where: str = 'baselines.optimizer'):
    self._optimizer = optimizers.build_optimizer(optimizer_spec, where=where)
    self._step = jax.jit(functools.partial(self._step_fn, loss_fn, self._optimizer))
    self._init = jax.jit(self._optimizer.init)
    self._aggregate = jax.jit(self._aggregate_fn)

  @staticmethod
  def _step_fn(loss_fn, optimizer, params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @staticmethod
  def _aggregate_fn(server_params, client_params, weights):
    deltas = jax.tree.map(lambda *p: jnp.stack(p), *client_params)
    deltas = jax.tree.map(lambda d, s: d - s, deltas, server_params)
    average = algorithm.fedavg_aggregate(deltas, weights)
    return jax.tree.map(jnp.add, server_params, average)

  def train(self, params, clients: Sequence[Mapping[str, np.ndarray]], rounds: int,
            local_steps: int, batch_size: int, seed: int) -> tuple[Any, list[float]]:
    """Runs `rounds` FedAvg rounds over all `clients` (dicts of equally long arrays).

    Returns:
      `(params, losses)`: the server parameters and each round's example-weighted mean loss.
    """
    sizes = [_client_size(client, i) for i, client in enumerate(clients)]
    weights = jnp.asarray(sizes, jnp.float32)
    history = []
    for round_index in range(rounds):
      client_params, client_losses = [], []
      for client_index, client in enumerate(clients):
        local, opt_state = params, self._init(params)
        rng = np.random.default_rng([seed, round_index, client_index])
        for _ in range(local_steps):
          index = batch_indices(rng, sizes[client_index], batch_size)
          batch = {key: value[index] for key, value in client.items()}
          local, opt_state, loss = self._step(local, opt_state, batch)
        client_params.append(local)
        client_losses.append(loss)
      params = self._aggregate(params, client_params, weights)
      losses = np.asarray(jax.device_get(client_losses), np.float64)
      history.append(float(np.sum(losses * np.asarray(sizes)) / np.sum(sizes)))
    if history and not np.isfinite(history[-1]):
      raise FloatingPointError(f'FedAvg baseline: the loss is {history[-1]}; lower the '
                               'baseline optimizer learning_rate.')
    return params, history


def batch_indices(rng: np.random.Generator, size: int, batch_size: int) -> np.ndarray:
  """Sorted batch rows; with replacement only when the hospital has fewer than a batch."""
  return np.sort(rng.choice(size, batch_size, replace=size < batch_size))


def _client_size(client: Mapping[str, np.ndarray], index: int) -> int:
  lengths = {key: len(value) for key, value in client.items()}
  if len(set(lengths.values())) != 1 or not lengths or 0 in lengths.values():
    raise ValueError(f'FedAvg baseline: hospital {index} needs non-empty arrays of one length, '
                     f'got {lengths}.')
  return next(iter(lengths.values()))
