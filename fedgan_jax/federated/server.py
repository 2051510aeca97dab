"""The server of a run, built once from its config: state, round function, G's moving average
and checkpoints.

The simulation (`train.train_gan`), the Flower coordinator and the benchmarks all start a
server here, so they draw the same initial params (`rngs.init_key`), build the same server
optimizer, keep the same moving average of G and resume from a workdir the same way:

    server = server_lib.build(config, task, image_shape, condition_dim, aggregator, workdir)
    round_fn = server_lib.round_fn(config, task, server, strategy, mesh)
    state, metrics = round_fn(server.state, batches, weights, ids, rngs.round_key(seed, r))
    state = server.update_ema(state)

The aggregator comes from outside (`PrivacyPlan.aggregator()`: FedAvg, or client-level
DP-FedAvg), so this package stays free of the privacy one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from absl import logging
import jax
import optax

from fedgan_jax import checkpointing
from fedgan_jax import cpu_backend
from fedgan_jax.federated import aggregation
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import optimizers
from fedgan_jax.federated import rngs


@dataclasses.dataclass
class Server:
  """A run's server at start-up (resumed from the workdir's latest checkpoint when there is one).

  Attributes:
    state: the `ServerState` to start from.
    server_optimizer: `fl.server_optimizer`'s optax transformation.
    aggregator: how the rounds combine client deltas.
    update_ema: `state -> state` after each round: G's moving average (`fl.generator_ema`),
      the identity when the run keeps none.
    checkpoint_manager: the workdir's Orbax manager, or None when built without a workdir.
  """
  state: algorithm.ServerState
  server_optimizer: optax.GradientTransformation
  aggregator: aggregation.Aggregator
  update_ema: Callable[[algorithm.ServerState], algorithm.ServerState]
  checkpoint_manager: Any = None

  @property
  def resumed_round(self) -> int:
    return int(self.state.round)


def initial_params(config, task: client_lib.GanTask, image_shape, condition_dim: int):
  """The params every run of `config` starts from (simulated or deployed alike)."""
  return client_lib.init_params(task, rngs.init_key(config.seed), tuple(image_shape),
                                condition_dim)


def build(config, task: client_lib.GanTask, image_shape, condition_dim: int,
          aggregator: aggregation.Aggregator | None = None, workdir: str | None = None) -> Server:
  """The server of `config`; with `workdir`, its checkpoints, resumed from the latest."""
  aggregator = aggregation.FedAvg() if aggregator is None else aggregator
  server_optimizer = optimizers.build_server_optimizer(config.fl.server_optimizer)
  ema_decay = algorithm.generator_ema_decay(config.fl)
  state = algorithm.server_init(initial_params(config, task, image_shape, condition_dim),
                                server_optimizer, aggregator, ema_decay > 0)
  manager = None
  if workdir is not None:
    manager = checkpointing.manager(workdir, config.checkpoint.keep)
    # The newest step that reads back and holds sane params; unusable newer ones are moved
    # to WORKDIR/checkpoints_unusable with a warning.
    state, _, latest = checkpointing.restore_latest(manager, state, config)
    if latest is not None:
      logging.info('Resumed from the checkpoint of round %d in %s.', latest, workdir)
  if ema_decay > 0:
    update_ema = jax.jit(functools.partial(algorithm.update_generator_ema, decay=ema_decay))
  else:
    update_ema = lambda state: state
  return Server(state=state, server_optimizer=server_optimizer, aggregator=aggregator,
                update_ema=update_ema, checkpoint_manager=manager)


def round_fn(config, task, server: Server, strategy: str | None = None, mesh=None,
             ynn_fusions: bool | None = None) -> Callable:
  """`algorithm.make_round_fn` with the config's execution knobs (`runtime.strategy`,
  `runtime.client_threads`, `runtime.fuse_local_steps`, `runtime.ynn_fusions`); `strategy` and
  `ynn_fusions` override the config's."""
  runtime = config.runtime
  ynn_fusions = runtime.ynn_fusions if ynn_fusions is None else ynn_fusions
  return algorithm.make_round_fn(
      task, server.server_optimizer, runtime.strategy if strategy is None else strategy, mesh,
      server.aggregator, runtime.client_threads, runtime.fuse_local_steps,
      cpu_backend.client_compiler_options(ynn_fusions))
