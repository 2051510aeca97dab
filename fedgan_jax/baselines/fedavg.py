"""FedAvg for the small supervised baselines (classifier, autoencoder on real normals).

They run on the GAN's round engine: `SupervisedTask` gives a `loss_fn(params, batch)` the
client functions the engine runs (`execution.ClientTask`), and `algorithm.make_round_fn`
executes the rounds with the same strategies and the same `aggregation.FedAvg` as the GAN.
Each round every hospital starts from the server's parameters, takes `local_steps` optimizer
steps on batches of its own examples (its optimizer state is fresh each round: nothing but
the parameter delta leaves a hospital), and the server adds the example-weighted mean delta
(plain FedAvg: server SGD with learning rate 1). Batches are a pure function of
`(seed, round, hospital, step)`. One hospital is plain centralized training.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedgan_jax.federated import algorithm
from fedgan_jax.federated import optimizers
from fedgan_jax.federated import rngs

LossFn = Callable[[Any, Mapping[str, jax.Array]], jax.Array]


@dataclasses.dataclass(frozen=True, eq=False)
class SupervisedTask:
  """Local training of `loss_fn` with `optimizer`, as the engine's client functions.

  Hashed by identity, so the engine compiles its programs once per task.
  """
  loss_fn: LossFn
  optimizer: optax.GradientTransformation

  def client_init(self, server_params):
    return server_params, self.optimizer.init(server_params)

  def client_step(self, state, batch, rng):
    del rng  # Deterministic given the batch.
    params, opt_state = state
    loss, grads = jax.value_and_grad(self.loss_fn)(params, batch)
    updates, opt_state = self.optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {'loss': loss}

  def client_final(self, state, server_params):
    return jax.tree.map(jnp.subtract, state[0], server_params)


class FedAvgTrainer:
  """Runs FedAvg rounds of `loss_fn(params, batch) -> scalar` on the round engine."""

  def __init__(self, loss_fn: LossFn, optimizer_spec: Mapping[str, Any],
               where: str = 'baselines.optimizer', strategy: str = 'auto'):
    task = SupervisedTask(loss_fn, optimizers.build_optimizer(optimizer_spec, where=where))
    # The server adds the weighted mean delta: SGD with learning rate 1 on its negative.
    self._server_optimizer = optax.sgd(1.0)
    self._round = algorithm.make_round_fn(task, self._server_optimizer, strategy)

  def train(self, params, clients: Sequence[Mapping[str, np.ndarray]], rounds: int,
            local_steps: int, batch_size: int, seed: int) -> tuple[Any, list[float]]:
    """Runs `rounds` FedAvg rounds over all `clients` (dicts of equally long arrays).

    Returns:
      `(params, losses)`: the server parameters and each round's example-weighted mean of the
      hospitals' losses (each averaged over its local steps).
    """
    sizes = [_client_size(client, i) for i, client in enumerate(clients)]
    weights = np.asarray(sizes, np.float32)
    ids = np.arange(len(clients), dtype=np.int32)
    state = algorithm.server_init(params, self._server_optimizer)
    history = []
    for round_index in range(rounds):
      per_client = []
      for client_index, client in enumerate(clients):
        rng = np.random.default_rng([seed, round_index, client_index])
        index = np.stack([batch_indices(rng, sizes[client_index], batch_size)
                          for _ in range(local_steps)])
        per_client.append({key: value[index] for key, value in client.items()})
      batches = {key: np.stack([b[key] for b in per_client]) for key in per_client[0]}
      state, metrics = self._round(state, batches, weights, ids,
                                   rngs.round_key(seed, round_index))
      history.append(float(metrics['loss']))
    if history and not np.isfinite(history[-1]):
      raise FloatingPointError(f'FedAvg baseline: the loss is {history[-1]}; lower the '
                               'baseline optimizer learning_rate.')
    return state.params, history


def batch_indices(rng: np.random.Generator, size: int, batch_size: int) -> np.ndarray:
  """Sorted batch rows; with replacement only when the hospital has fewer than a batch."""
  return np.sort(rng.choice(size, batch_size, replace=size < batch_size))


def _client_size(client: Mapping[str, np.ndarray], index: int) -> int:
  lengths = {key: len(value) for key, value in client.items()}
  if len(set(lengths.values())) != 1 or not lengths or 0 in lengths.values():
    raise ValueError(f'FedAvg baseline: hospital {index} needs non-empty arrays of one length, '
                     f'got {lengths}.')
  return next(iter(lengths.values()))
