"""The server's side of a deployed run, without any transport: state, update, checkpoints.

`Coordinator` owns what `train.train_gan` owns in the simulation (the `ServerState`, the
Orbax checkpoints and `metrics.jsonl` in the same workdir layout, so `fedgan_jax.eval`
reads a deployed run as it reads a simulated one) and applies the simulation's server half
of a round to the deltas hospitals send back: the same aggregator (`PrivacyPlan.aggregator`:
FedAvg weighted by example counts, or client-level DP-FedAvg with its clipping, noise and
adaptive clip norm) fed in client order by the same `algorithm.ServerRound` as the
`sequential` strategy, with the round key `rngs.round_key(seed, round)`, so a deployment
draws the simulation's DP noise.

The transport (`server.py`) only decides who takes part and hands over checked replies.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import logging
import jax
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
from fedgan_jax.federated import rngs
from fedgan_jax.federated import sampling
from fedgan_jax.federated import server as server_lib
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import engine as privacy_engine


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
  """The initial params exactly as the simulation draws them (`server.initial_params`)."""
  schema = conditions_lib.ConditionSchema.from_config(config.conditions)
  return server_lib.initial_params(config, task, image_shape(config), schema.model_dim)


class Coordinator:
  """Server state of a deployed run, resumed from `workdir` when it holds a checkpoint."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.sites = settings.site_names(config)
    fl = config.fl
    # The server never sees the hospitals' sizes: only client-level DP can be accounted here.
    self._plan = privacy_engine.PrivacyPlan.from_config(config, (), num_clients=len(self.sites))
    os.makedirs(workdir, exist_ok=True)
    schema = conditions_lib.ConditionSchema.from_config(config.conditions)
    server = server_lib.build(config, build_task(config), image_shape(config), schema.model_dim,
                              self._plan.aggregator(), workdir)
    self.state, self._update_ema = server.state, server.update_ema
    self._manager = server.checkpoint_manager
    self._server = algorithm.ServerRound(server.aggregator, server.server_optimizer)
    self.specs = common.array_specs(self.state.params)
    self._log = metrics_log.MetricsLog(os.path.join(workdir, 'metrics.jsonl'))
    self._log.truncate_after(self.round_index)
    self._progress = metrics_log.Progress(fl.num_rounds, self.round_index)
    self._round_started = time.perf_counter()

  @property
  def round_index(self) -> int:
    """Rounds completed, i.e. the 0-based index of the next round."""
    return int(self.state.round)

  @property
  def rounds_left(self) -> int:
    return max(int(self.config.fl.num_rounds) - self.round_index, 0)

  def participants(self) -> np.ndarray:
    """Client ids the simulation would train in the next round."""
    self._round_started = time.perf_counter()
    return sampling.sample_clients(self.config.seed, self.round_index, len(self.sites),
                                   self.config.fl.clients_per_round)

  def apply(self, replies: list[Reply]) -> dict:
    """One server update from the round's replies; checkpoints on the config's cadence."""
    if not replies:
      raise ValueError('a round needs at least one reply.')
    replies = sorted(replies, key=lambda r: r.client_id)
    round_index = self.round_index
    # The loss means every hospital reported go through the aggregator, weighted as the
    # simulation weights them; wall times are reported as the slowest hospital's.
    names = sorted(set.intersection(*(set(r.losses) for r in replies)))
    loss_names = [name for name in names if name not in common.TIMING_METRICS]
    results = [(common.arrays_to_params(r.delta_arrays, self.state.params),
                {name: np.float32(r.losses[name]) for name in loss_names},
                np.float32(r.num_examples)) for r in replies]
    state, metrics = self._server(self.state, results,
                                  rngs.round_key(self.config.seed, round_index))
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
    metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
    for name in names:
      if name in common.TIMING_METRICS:
        metrics[f'slowest_{name}'] = max(float(r.losses[name]) for r in replies)
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
    return {'deployment': 'flower', 'privacy': self._plan.summary(rounds)}

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
