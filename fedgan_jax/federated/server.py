"""The server of a run, built once from its config: state, round function, G's moving average
and checkpoints.

The simulation (`train.train_gan`), the Flower coordinator and the benchmarks all start a
server here, so they draw the same initial params (`rngs.init_key`), build the same server
optimizer, keep the same moving average of G and resume from a workdir the same way:

    server = server_lib.build(config, task, image_shape, condition_dim, aggregator, workdir)
    chosen = server_lib.choose_execution(config, task, server, first_round, rounds)
    round_fn = chosen.round_fn or server_lib.round_fn(task, server, chosen.execution, mesh)
    state, metrics = round_fn(server.state, batches, weights, ids, rngs.round_key(seed, r))
    state = server.update_ema(state)

`choose_execution` is where the config's execution knobs are read: the configured strategy,
or under `runtime.strategy='auto'` the fastest candidate measured on this machine (`autotune`),
whose already-compiled round function it hands back.

The aggregator comes from outside (`PrivacyPlan.aggregator()`: FedAvg, or client-level
DP-FedAvg), so this package stays free of the privacy one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from absl import logging
import jax
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import optax

from fedgan_jax import checkpointing
from fedgan_jax import cpu_backend
from fedgan_jax import xla_cache
from fedgan_jax.federated import aggregation
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import autotune
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


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
  """How rounds execute (`runtime_options`).

  Attributes:
    execution: the configured execution; its strategy is 'auto' when it is to be chosen.
    autotune_rounds, autotune_budget_s, autotune_min_rounds, autotune_clients:
      `config.runtime`'s.
    autotune_cache: the decision file (None: measure every run).
  """
  execution: autotune.Execution
  autotune_rounds: int
  autotune_budget_s: float
  autotune_min_rounds: int
  autotune_clients: int
  autotune_cache: str | None


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


def runtime_options(config) -> RuntimeOptions:
  """The config's execution knobs: the one place that reads them."""
  runtime = config.runtime
  measure = runtime.autotune
  return RuntimeOptions(
      execution=autotune.Execution(runtime.strategy, int(runtime.client_threads),
                                   bool(runtime.fuse_local_steps), bool(runtime.ynn_fusions)),
      autotune_rounds=int(measure.rounds),
      autotune_budget_s=float(measure.budget_s),
      autotune_min_rounds=int(measure.min_rounds),
      autotune_clients=int(measure.clients),
      autotune_cache=measure.cache or xla_cache.decisions_path())


def round_fn(task, server: Server, execution: autotune.Execution, mesh=None) -> Callable:
  """`algorithm.make_round_fn` for `execution` (`runtime_options(config).execution`, or
  the one `choose_execution` picked)."""
  return algorithm.make_round_fn(
      task, server.server_optimizer, execution.strategy, mesh, server.aggregator,
      execution.client_threads, execution.fuse_local_steps,
      cpu_backend.client_compiler_options(execution.ynn_fusions))


def place_on_mesh(mesh, state, inputs=None, round_rng=None):
  """The vmap round's arguments with its shardings (state and key replicated, inputs split by
  client), as it returns them, so later rounds do not compile again (single process)."""
  replicated = NamedSharding(mesh, PartitionSpec())
  placed = [jax.device_put(state, replicated)]
  if inputs is not None:
    placed += [jax.device_put(inputs, NamedSharding(mesh, PartitionSpec('clients'))),
               jax.device_put(round_rng, replicated)]
  return placed[0] if inputs is None else tuple(placed)


@dataclasses.dataclass
class ChosenExecution:
  """`choose_execution`'s answer.

  Attributes:
    execution: how the run's rounds execute.
    note: what chose it, for the console (with the measured times when measured).
    round_fn: the round function already built (and compiled) while measuring, else None.
  """
  execution: autotune.Execution
  note: str
  round_fn: Callable | None = None


def choose_execution(config, task, server: Server, first_round: Callable[[], tuple],
                     rounds_to_run: int) -> ChosenExecution:
  """The run's execution: the configured one, or under `runtime.strategy='auto'` the fastest
  candidate measured on this machine for this program (`autotune`; cached across runs).

  Args:
    first_round: `() -> ((batches, weights, client_ids), round_rng)` of the first round to
      run, padded to a multiple of the device count, called only when measuring; the
      candidates time rounds on (the first `runtime.autotune.clients` clients of) them from
      `server.state` (the results are dropped, so training is unchanged).
    rounds_to_run: the rounds this process will run; fewer than
      `runtime.autotune.min_rounds` take the backend's default unmeasured (measuring would
      cost more than it could save).
  """
  options = runtime_options(config)
  configured = options.execution
  if configured.strategy != 'auto':
    return ChosenExecution(configured, f'{configured.name} (runtime.strategy)')
  default = dataclasses.replace(configured, strategy=algorithm.resolve_strategy('auto'))
  if jax.process_count() > 1:
    return ChosenExecution(default, f'{default.name} (auto: several processes)')
  if rounds_to_run < options.autotune_min_rounds:
    return ChosenExecution(default, f'{default.name} (auto: backend default; {rounds_to_run} '
                           f'rounds < runtime.autotune.min_rounds, not measured)')
  round_inputs, round_rng = first_round()
  participants = int(np.count_nonzero(np.asarray(round_inputs[1])))
  candidates = autotune.candidates(
      jax.default_backend(), participants, jax.process_count(),
      cpu_backend.client_compiler_options(False) is not None, configured.client_threads)
  facts = dict(autotune.platform_facts(), candidates=[c.name for c in candidates],
               **program_facts(config, server.state.params, round_inputs))
  if options.autotune_clients:
    # A round of a few clients ranks the candidates as a full one does (each client's work
    # is the same program) at a fraction of the cost; whole multiples of the device count.
    devices = jax.device_count()
    keep = -(-min(options.autotune_clients, len(round_inputs[1])) // devices) * devices
    round_inputs = jax.tree.map(lambda x: x[:keep], round_inputs)
  built = {}
  runs = {c.name: functools.partial(_run_candidate, task, server, c, round_inputs, round_rng,
                                    built) for c in candidates}
  decision = autotune.decide(autotune.cache_key(facts), runs, options.autotune_cache,
                             options.autotune_rounds, options.autotune_budget_s, facts)
  chosen = built.get(decision.choice)
  return ChosenExecution(next(c for c in candidates if c.name == decision.choice),
                         decision.describe(), chosen[0] if chosen else None)


def program_facts(config, params, round_inputs) -> dict:
  """What about the round's program decides its fastest execution: shapes, and the config
  sections that change its math (losses, DP, augmentation, precision)."""
  sections = {name: config[name].to_dict() for name in ('model', 'loss', 'augment')
              if name in config}
  return {'params': autotune.shapes_of(params), 'inputs': autotune.shapes_of(round_inputs),
          'participants': int(np.count_nonzero(np.asarray(round_inputs[1]))),
          'dp': [config.dp.mode, config.dp.get('microbatch_size')],
          'fake_conditions': config.fl.fake_conditions,
          'client_optimizer': config.fl.client_optimizer.name,
          'precision': config.runtime.precision, **sections}


def _run_candidate(task, server: Server, execution: autotune.Execution, round_inputs,
                   round_rng, built: dict, round_index: int):
  """One round of `execution` from the server's state (built on first use, kept in `built`)."""
  del round_index  # Every timed round repeats the first round: the same work each time.
  if execution.name not in built:
    mesh = algorithm.client_mesh() if execution.strategy == 'vmap' else None
    args = (server.state, round_inputs, round_rng)
    if mesh is not None:
      args = place_on_mesh(mesh, *args)
    built[execution.name] = (round_fn(task, server, execution, mesh), args)
  fn, (state, inputs, rng) = built[execution.name]
  return jax.block_until_ready(fn(state, *inputs, rng))
