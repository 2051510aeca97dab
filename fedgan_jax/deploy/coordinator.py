"""The server's side of a deployed run, without any transport: state, update, checkpoints.

`Coordinator` owns what `train.train_gan` owns in the simulation (the `ServerState`, the
Orbax checkpoints and `metrics.jsonl` in the same workdir layout, so `fedgan_jax.eval`
reads a deployed run as it reads a simulated one) and applies the same server update to
the deltas hospitals send back:

  * `dp.mode != 'client'`: `algorithm.fedavg_aggregate` weighted by example counts, then
    `algorithm.server_update` with the config's server optimizer;
  * `dp.mode == 'client'`: `client_dp.private_mean` (clip every delta to `dp.clip_norm`,
    sum, add Gaussian noise, divide by the expected number of clients per round), then
    the same `server_update`. The noise key is `fold_in(fold_in(key(seed), 2), round)`, a
    stream the training keys (stream 1) never use. Deltas go to `private_mean` raveled
    into one vector per client (same global norm, same per-coordinate noise law): one
    normal draw instead of one per parameter leaf, whose XLA CPU compile takes minutes.

The transport (`server.py`) only decides who takes part and hands over checked replies.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time

from absl import logging
import jax
from jax import flatten_util
import jax.numpy as jnp
import ml_collections
import numpy as np

from fedgan_jax import checkpointing
from fedgan_jax import metrics_log
from fedgan_jax import validation
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.deploy import common
from fedgan_jax.deploy import settings
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import optimizers
from fedgan_jax.federated import sampling
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import accounting
from fedgan_jax.privacy import client_dp

_TRAIN_STREAM = 1  # As in train.train_gan: fold_in(key(seed), 1) seeds the clients.
_DP_NOISE_STREAM = 2


@dataclasses.dataclass
class Reply:
  """One hospital's checked contribution to a round."""
  client_id: int
  num_examples: int
  delta_arrays: list[np.ndarray]
  losses: dict[str, float]


def image_shape(config) -> tuple[int, int, int]:
  """The data's image shape, from the config alone (the server never loads data)."""
  size = int(config.data.image_size)
  return (size, size, int(config.data.get('channels', 1)))


def build_task(config) -> client_lib.GanTask:
  schema = conditions_lib.ConditionSchema.from_config(config.conditions)
  return task_lib.build_task(config, schema, image_shape(config))


def initial_params(config, task: client_lib.GanTask):
  """The initial params exactly as `train.train_gan` draws them."""
  schema = conditions_lib.ConditionSchema.from_config(config.conditions)
  return client_lib.init_params(task, jax.random.key(config.seed, impl='rbg'),
                                image_shape(config), schema.model_dim)


def dp_mode(config) -> str:
  dp = config.get('dp', None)
  return 'none' if dp is None else dp.get('mode', 'none')


class Coordinator:
  """Server state of a deployed run, resumed from `workdir` when it holds a checkpoint."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.sites = settings.site_names(config)
    fl = config.fl
    self._server_optimizer = optimizers.build_server_optimizer(fl.server_optimizer)
    params = initial_params(config, build_task(config))
    ema_decay = algorithm.generator_ema_decay(fl)
    self.state = algorithm.server_init(params, self._server_optimizer,
                                       generator_ema=ema_decay > 0)
    self._update_ema = jax.jit(functools.partial(algorithm.update_generator_ema,
                                                 decay=ema_decay))
    self.specs = common.array_specs(params)
    os.makedirs(workdir, exist_ok=True)
    self._manager = checkpointing.manager(workdir, config.checkpoint.keep)
    self.state, _, latest = checkpointing.restore_latest(self._manager, self.state, config)
    if latest is not None:
      logging.info('Resumed from the checkpoint of round %d in %s.', latest, workdir)
    self._log = metrics_log.MetricsLog(os.path.join(workdir, 'metrics.jsonl'))
    self._log.truncate_after(self.round_index)
    self._progress = metrics_log.Progress(fl.num_rounds, self.round_index)
    self._fedavg = jax.jit(functools.partial(_fedavg_update, self._server_optimizer))
    self._dp = self._dp_settings() if dp_mode(config) == 'client' else None
    self._round_started = time.perf_counter()

  @property
  def round_index(self) -> int:
    """Rounds completed, i.e. the 0-based index of the next round."""
    return int(self.state.round)

  @property
  def rounds_left(self) -> int:
    return max(int(self.config.fl.num_rounds) - self.round_index, 0)

  @property
  def expected_clients(self) -> int:
    per_round = int(self.config.fl.clients_per_round)
    return per_round if 0 < per_round < len(self.sites) else len(self.sites)

  def participants(self) -> np.ndarray:
    """Client ids the simulation would train in the next round."""
    self._round_started = time.perf_counter()
    return sampling.sample_clients(self.config.seed, self.round_index, len(self.sites),
                                   self.config.fl.clients_per_round)

  def _fl_for_accounting(self) -> dict:
    return dict(self.config.fl.to_dict(), num_clients=len(self.sites),
                clients_per_round=self.expected_clients)

  def _dp_settings(self):
    dp = self.config.dp
    adaptive = dp.get('adaptive_clip', None)
    if adaptive is not None and adaptive.get('count_noise_multiplier', None):
      raise NotImplementedError('config.dp.adaptive_clip: the deployed server supports a fixed '
                                'dp.clip_norm only; unset dp.adaptive_clip.count_noise_multiplier.')
    query = accounting.query_from_config(dp, self._fl_for_accounting(), [])
    update = functools.partial(_private_update, self._server_optimizer, query.clip_norm,
                               query.noise_multiplier, self.expected_clients)
    return jax.jit(update)

  def apply(self, replies: list[Reply]) -> dict:
    """One server update from the round's replies; checkpoints on the config's cadence."""
    if not replies:
      raise ValueError('a round needs at least one reply.')
    replies = sorted(replies, key=lambda r: r.client_id)
    round_index = self.round_index
    deltas = [common.arrays_to_params(r.delta_arrays, self.state.params) for r in replies]
    stacked = jax.tree.map(lambda *d: np.stack(d), *deltas)
    weights = np.asarray([r.num_examples for r in replies], np.float32)
    if self._dp is None:
      state = self._fedavg(self.state, stacked, weights)
    else:
      noise_rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seed),
                                                        _DP_NOISE_STREAM), round_index)
      state = self._dp(self.state, stacked, noise_rng)
    if state.generator_ema is not None:
      state = self._update_ema(state)
    # Bounded deltas cannot blow the model up, but a server learning rate can: the new
    # state is kept (and checkpointed) only when its params pass the check.
    limit = float(self.config.train.max_abs_param)
    for name, tree in (('params', state.params), ('generator_ema', state.generator_ema)):
      if tree is not None:
        validation.check_params(tree, limit, f'round {round_index + 1}: {name} after the '
                                'server update (not applied; the last checkpoint is kept; '
                                'lower fl.server_optimizer.learning_rate)')
    self.state = state
    metrics = {}
    names = set.intersection(*(set(r.losses) for r in replies))
    for name in sorted(names):
      values = np.asarray([r.losses[name] for r in replies], np.float64)
      if name in common.TIMING_METRICS:
        metrics[f'slowest_{name}'] = float(np.max(values))
      else:
        metrics[name] = float(np.sum(values * weights) / np.sum(weights))
    seconds = time.perf_counter() - self._round_started
    done = round_index + 1
    row = {'round': done, **metrics, 'clients': len(replies),
           'sites': [self.sites[r.client_id] for r in replies], 'round_time_s': seconds}
    self._log.append(row)
    self._progress.update(done, seconds)
    fl = self.config.fl
    if done % self.config.checkpoint.every_rounds == 0 or done == fl.num_rounds:
      checkpointing.save(self._manager, done, self.state, self.config, self._extra_meta(done))
    logging.info('%s | %d hospitals | %s', self._progress.line(), len(replies),
                 ' '.join(f'{k} {v:.3f}' for k, v in metrics.items()))
    return row

  def _extra_meta(self, rounds: int) -> dict:
    if self._dp is None:
      return {'deployment': 'flower'}
    epsilon = accounting.epsilon_after_rounds(self.config.dp, self._fl_for_accounting(), [],
                                              rounds)
    return {'deployment': 'flower', 'privacy': {'mode': 'client', 'rounds': rounds,
                                               'epsilon': None if math.isinf(epsilon) else epsilon}}

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _fedavg_update(server_optimizer, state, stacked_deltas, weights):
  average = algorithm.fedavg_aggregate(stacked_deltas, weights)
  return algorithm.server_update(server_optimizer, state, average)


def _private_update(server_optimizer, clip_norm, noise_multiplier, expected_clients, state,
                    stacked_deltas, noise_rng):
  _, unravel = flatten_util.ravel_pytree(jax.tree.map(lambda d: d[0], stacked_deltas))
  vectors = jax.vmap(lambda d: flatten_util.ravel_pytree(d)[0])(stacked_deltas)
  mask = jnp.ones(vectors.shape[0], bool)
  mean, _ = client_dp.private_mean(vectors, mask, noise_rng, clip_norm=clip_norm,
                                   noise_multiplier=noise_multiplier,
                                   expected_clients=expected_clients)
  return algorithm.server_update(server_optimizer, state, unravel(mean))
