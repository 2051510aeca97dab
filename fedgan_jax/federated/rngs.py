"""Every random stream of a federated run, derived from `config.seed` in this one module.

The simulation (`train.py`, every round strategy), the Flower server and hospitals, the
privacy audit and the benchmarks all draw through these functions, so a deployed hospital
draws exactly what its simulated twin draws and a resumed run replays an uninterrupted one.

JAX keys (device randomness):

    init_key(seed)                            parameter initialization ('rbg' generator)
    round_key(seed, r)        = fold_in(fold_in(key(seed), TRAIN_STREAM), r)
    client_key(round_key, i)  = fold_in(round_key, i)          client i's local update
    fold_in(client_key, k)                                      its local step k (`client`)
    server_noise_keys(round_key) = split(fold_in(round_key, SERVER_NOISE_STREAM))
                                                                DP-FedAvg's update and count noise

NumPy streams (host randomness, `np.random.default_rng([seed, ..., stream])`): which clients
take part (`CLIENT_SAMPLING_STREAM`), which examples each local step sees (`BATCH_STREAM`), the
public-prior conditions G's images are drawn for (`PRIOR_STREAM`), all in `sampling.py`; the
examples the membership audit holds out of training (`HOLDOUT_STREAM`, `privacy/membership.py`).
Evaluation draws its profiles and noise from its own seeds (`evaluation/driver.py`), after training.
"""

from __future__ import annotations

import jax

TRAIN_STREAM = 1
# Client keys fold in small client ids; the server's noise uses an id no client reaches.
SERVER_NOISE_STREAM = 2**31 - 1

CLIENT_SAMPLING_STREAM = 1
BATCH_STREAM = 2
PRIOR_STREAM = 3
HOLDOUT_STREAM = 7


def init_key(seed: int) -> jax.Array:
  """The key of the initial params. The 'rbg' generator: XLA compiles the many threefry draws
  of a network's init ~4x slower on CPU. Training keys stay threefry, whose vmapped draws
  equal looped ones, so the round strategies agree exactly."""
  return jax.random.key(seed, impl='rbg')


def train_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), TRAIN_STREAM)


def round_key(seed: int, round_index: int) -> jax.Array:
  """The key of round `round_index` (0-based): every client's and the server's derive from it."""
  return jax.random.fold_in(train_key(seed), round_index)


def client_key(round_rng: jax.Array, client_id) -> jax.Array:
  """Client `client_id`'s key in a round: independent of who else takes part, or how."""
  return jax.random.fold_in(round_rng, client_id)


def client_keys(round_rng: jax.Array, client_ids: jax.Array) -> jax.Array:
  """`client_key` of each id (vmapped; equal to the looped draws)."""
  return jax.vmap(lambda i: client_key(round_rng, i))(client_ids)


def server_noise_keys(round_rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(update_noise_key, count_noise_key)` of DP-FedAvg in a round."""
  update_rng, count_rng = jax.random.split(jax.random.fold_in(round_rng, SERVER_NOISE_STREAM))
  return update_rng, count_rng
