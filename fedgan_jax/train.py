"""The main job: federated GAN training, then the evaluation of the result.

`train_and_evaluate(config, workdir)` builds the federation, runs FedAvg rounds
(resuming from the latest checkpoint in `workdir`), then runs the evaluators of
`config.eval.evaluators` on the final G, the same function the eval binary runs on a
checkpoint (`evaluation.evaluate_generator`): F-AD on synthetic normals scored on the
real scored split, conditioning, sample quality, personalization. It writes
`workdir/eval/results.{json,md}`, `roc.png`, sample grids, and `workdir/results.json`
(the same results plus the rounds run and the config).

With `config.dp.mode != 'none'` (fedgan_jax/privacy/engine.py) the run is differentially
private: the noise multiplier is calibrated to `dp.target_epsilon` before training when that is
set, every metrics row carries the epsilon spent so far, checkpoints and results.json record
the spend under "privacy", and the run stops, with a final checkpoint, before a round that
would exceed `dp.max_epsilon` (default: the target).
"""

from __future__ import annotations

import json
import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from fedgan_jax import checkpointing
from fedgan_jax import console
from fedgan_jax.evaluation import report as eval_report
from fedgan_jax.evaluation import driver as evaluation
from fedgan_jax.evaluation import selection as selection_lib
from fedgan_jax import metrics_log
from fedgan_jax import plots
from fedgan_jax import synthesis
from fedgan_jax import validation
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import registry
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import rngs
from fedgan_jax.federated import sampling
from fedgan_jax.federated import server as server_lib
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import membership as audit_lib
from fedgan_jax.privacy import engine as privacy_engine


class TrainingDivergedError(RuntimeError):
  pass


def is_chief() -> bool:
  """Only process 0 writes logs, figures and results; checkpoints are collective (Orbax)."""
  return jax.process_index() == 0


def global_arrays(tree, sharding):
  """Values every process holds whole -> global arrays of `sharding` (multi-host jit inputs).

  Each process contributes its own devices' shards, as `make_array_from_callback` asks.
  Single-process runs pass through untouched.
  """
  if jax.process_count() == 1:
    return tree

  def place(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(place(jax.random.key_data(x)))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(place, tree)


def host_local(tree):
  """Replicated global arrays -> this process's whole copy (for work one process does alone)."""
  return jax.tree.map(
      lambda x: x.addressable_data(0) if isinstance(x, jax.Array)
      and not x.is_fully_addressable else x, tree)


def check_finite(row: dict, max_abs_loss: float) -> None:
  """Raises when a loss is NaN/inf or beyond `max_abs_loss`."""
  for key, value in row.items():
    if key.endswith('loss') and not (np.isfinite(value) and abs(value) <= max_abs_loss):
      raise TrainingDivergedError(
          f'round {row["round"]}: {key} = {value} (limit train.max_abs_loss={max_abs_loss}). '
          'Training stopped; the last good checkpoint is kept. Lower '
          'fl.client_optimizer.d_learning_rate / g_learning_rate or the server learning rate, '
          'then rerun with the same --workdir to resume from it.')


def check_params(state, max_abs_param: float, round_number: int, kept: int | None) -> None:
  """Raises before a round's params (and G's moving average) can reach a checkpoint when
  they are NaN/inf or beyond `max_abs_param`: the losses are those of the clients' steps,
  before the server step, so they cannot catch a server step that blew the model up."""
  try:
    validation.check_params(host_local(state.params), max_abs_param,
                            f'round {round_number}: params')
    if state.generator_ema is not None:
      validation.check_params(host_local(state.generator_ema), max_abs_param,
                              f'round {round_number}: generator_ema')
  except validation.ParameterCheckError as error:
    resume = (f'the checkpoint of round {kept}' if kept is not None else
              'round 0 (no checkpoint was written)')
    raise TrainingDivergedError(
        f'{error} (limit train.max_abs_param). Training stopped; these params were not '
        f'checkpointed. Lower fl.server_optimizer.learning_rate or '
        'fl.client_optimizer.d_learning_rate / g_learning_rate, then rerun with the same '
        f'--workdir to resume from {resume}.') from None


def train_gan(config, workdir: str, federation: dataset_lib.FederatedDataset,
              task: client_lib.GanTask,
              plan: privacy_engine.PrivacyPlan | None = None) -> algorithm.ServerState:
  """Runs `fl.num_rounds` FedAvg rounds (fewer if the privacy budget runs out),
  checkpointing and resuming in `workdir`."""
  fl = config.fl
  if plan is None:
    plan = privacy_engine.PrivacyPlan.from_config(config, federation.client_sizes)
  if plan.private:
    logging.info('DP %s-level: noise multiplier %.4f (%s), clip norm %g, delta %g, epsilon '
                 'after %d rounds %.3f (%s accountant), budget %s.', plan.mode,
                 plan.noise_multiplier, 'calibrated to dp.target_epsilon'
                 if config.dp.get('target_epsilon') is not None else 'dp.noise_multiplier',
                 plan.query.clip_norm, plan.delta, fl.num_rounds, plan.epsilon(fl.num_rounds),
                 plan.accountant, plan.budget)
  plan.check_task(task)
  condition_prior = task_lib.training_condition_prior(task, federation, config)
  server = server_lib.build(config, task, federation.image_shape, federation.schema.model_dim,
                            plan.aggregator(), workdir)
  state, update_ema = server.state, server.update_ema
  checkpoint_manager = server.checkpoint_manager
  start_round = int(state.round)
  log = metrics_log.MetricsLog(os.path.join(workdir, 'metrics.jsonl'),
                               metrics_log.tensorboard_writer(workdir) if is_chief() else None)
  if is_chief():
    log.truncate_after(start_round)

  clients = federation.clients

  def first_round():
    """The first round's inputs, padded for any strategy ('auto' times candidates on them)."""
    ids = sampling.sample_clients(config.seed, start_round, len(clients), fl.clients_per_round)
    return (sampling.round_inputs(clients, ids, config.seed, start_round, fl.local_steps,
                                  fl.batch_size, jax.device_count(), condition_prior),
            rngs.round_key(config.seed, start_round))

  chosen = server_lib.choose_execution(config, task, server, first_round,
                                       fl.num_rounds - start_round)
  strategy = chosen.execution.strategy
  if jax.process_count() > 1 and strategy != 'vmap':
    raise ValueError(f'runtime.strategy={config.runtime.strategy!r} resolves to {strategy!r}, but '
                     'a multi-host run needs runtime.strategy=vmap (one round sharded over all '
                     'hosts).')
  mesh = algorithm.client_mesh() if strategy == 'vmap' else None
  if mesh is not None:
    # Give the state its mesh sharding up front; otherwise the round compiles twice (the
    # first state is unsharded, every later one comes back sharded).
    replicated = NamedSharding(mesh, PartitionSpec())
    by_client = NamedSharding(mesh, PartitionSpec('clients'))
    if jax.process_count() > 1:
      state = global_arrays(jax.device_get(state), replicated)
    else:
      state = jax.device_put(state, replicated)
  round_fn = chosen.round_fn or server_lib.round_fn(task, server, chosen.execution, mesh)
  pad = mesh.size if mesh is not None else 1
  logging.info('Training %d rounds (from %d) over %d clients, %s per round, execution %s on %s; '
               'G %s, D %s parameters; checkpoint every %d rounds; metrics to %s.',
               fl.num_rounds, start_round, len(clients), fl.clients_per_round or 'all',
               chosen.note,
               jax.default_backend(), *(f'{metrics_log.parameter_count(state.params[k]):,}'
                                        for k in ('generator', 'discriminator')),
               config.checkpoint.every_rounds,
               'metrics.jsonl and TensorBoard events' if log.writer is not None else
               'metrics.jsonl (TensorBoard events: pip install -e ".[tensorboard]")')
  progress = metrics_log.Progress(fl.num_rounds, start_round)
  samples_dir = os.path.join(workdir, 'samples')
  for round_index in range(start_round, fl.num_rounds):
    if plan.exceeds_budget(round_index + 1):
      logging.warning('Privacy budget: round %d would spend epsilon %.4f > %g (delta %g); '
                      'stopping after %d rounds with epsilon %.4f.', round_index + 1,
                      plan.epsilon(round_index + 1), plan.budget, plan.delta, round_index,
                      plan.epsilon(round_index))
      if checkpoint_manager.latest_step() != round_index:
        checkpointing.save(checkpoint_manager, round_index, state, config,
                           {'privacy': plan.summary(round_index)})
      break
    client_ids = sampling.sample_clients(config.seed, round_index, len(clients),
                                         fl.clients_per_round)
    batches, weights, ids = sampling.round_inputs(
        clients, client_ids, config.seed, round_index, fl.local_steps, fl.batch_size, pad,
        condition_prior)
    round_rng = rngs.round_key(config.seed, round_index)
    if mesh is not None:
      batches, weights, ids = global_arrays((batches, weights, ids), by_client)
      round_rng = global_arrays(round_rng, replicated)
    started = time.perf_counter()
    state, metrics = round_fn(state, batches, weights, ids, round_rng)
    if state.generator_ema is not None:
      state = update_ema(state)
    metrics = {k: float(v) for k, v in jax.device_get(host_local(metrics)).items()}
    seconds = time.perf_counter() - started
    examples = len(client_ids) * fl.local_steps * fl.batch_size
    row = {'round': round_index + 1, **metrics, 'clients': len(client_ids),
           'round_time_s': seconds, 'examples_per_s': examples / seconds}
    if plan.private:
      row['epsilon'] = plan.epsilon(round_index + 1)
    if is_chief():
      log.append(row)
    try:
      check_finite(row, config.train.max_abs_loss)
      check_params(state, config.train.max_abs_param, round_index + 1,
                   checkpoint_manager.latest_step())
    except TrainingDivergedError:
      checkpoint_manager.wait_until_finished()
      raise
    done = round_index + 1
    progress.update(done, seconds)
    if done % config.checkpoint.every_rounds == 0 or done == fl.num_rounds:
      checkpointing.save(checkpoint_manager, done, state, config,
                         {'privacy': plan.summary(done)})
    if done % config.train.log_every_rounds == 0 or done == fl.num_rounds:
      logging.info('%s | d_loss %.3f g_loss %.3f cond %.3f', progress.line(), row['d_loss'],
                   row['g_loss'], row['cond_loss'])
    if is_chief() and (done % config.train.sample_every_rounds == 0 or done == fl.num_rounds):
      os.makedirs(samples_dir, exist_ok=True)
      grid = synthesis.sample_grid(task, host_local(algorithm.sampling_generator(state)),
                                   federation.schema, config.train.profiles,
                                   config.eval.sample_columns, config.seed)
      rows, columns = synthesis.sample_grid_labels(federation.schema, config.train.profiles,
                                                   config.eval.sample_columns)
      plots.save_image_grid(os.path.join(samples_dir, f'round_{done:06d}.png'), grid, rows,
                            columns, title=f'round {done}')
      plots.save_training_curves(os.path.join(workdir, 'training_curves.png'), log.read())
  checkpoint_manager.wait_until_finished()
  checkpoint_manager.close()
  log.close()
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The whole pipeline; returns (and writes) `results.json`'s content."""
  started = time.time()
  validation.validate_config(config)
  evaluation.check_eval_config(config)
  os.makedirs(workdir, exist_ok=True)
  checkpointing.prepare_directory(workdir)  # Before minutes of data loading and compiling.
  federation = registry.load_federation(config)
  rows = [dataset_lib.client_summary(c) for c in federation.clients]
  if is_chief():
    with open(os.path.join(workdir, 'clients.json'), 'w') as f:
      json.dump(rows, f, indent=1)
  logging.info('Data: %s, %d hospitals, %d training images, test split %d images (%d abnormal), '
               'images %s; hospitals (clients.json):\n%s',
               federation.info.get('source', config.data.name), len(federation.clients),
               sum(len(c) for c in federation.clients), len(federation.test),
               int(np.sum(federation.test.abnormal)), 'x'.join(map(str, federation.image_shape)),
               console.clients_table(rows))
  # Examples held out for the membership audit never reach training (fedgan_jax/audit.py).
  federation = audit_lib.hold_out(federation, config)
  plan = privacy_engine.PrivacyPlan.from_config(config, federation.client_sizes)
  task = task_lib.build_task(config, federation.schema, federation.image_shape,
                             **plan.task_gradients())
  state = train_gan(config, workdir, federation, task, plan)
  if not is_chief():
    return {}
  # The very evaluation the eval binary runs, on the checkpoint just written: one set of
  # evaluators (`config.eval.evaluators`), one results.json/results.md under workdir/eval.
  rounds = int(state.round)
  if config.eval.evaluators and selection_lib.main_chooses(config, federation):
    # The real-data protocol: the saved round whose F-AD scores validation best, on test.
    step, selection = selection_lib.best_step_on_validation(config, workdir)
    logging.info('Evaluating round %d (chosen on the validation split): %s.', step,
                 ', '.join(config.eval.evaluators))
    results = evaluation.evaluate_checkpoint(config, workdir, step, federation=federation,
                                             selection=selection)
    written = 'results.json, eval/ (results.md, roc.png, sample grids), eval_selection/, '
  elif config.eval.evaluators:
    logging.info('Evaluating round %d: %s.', rounds, ', '.join(config.eval.evaluators))
    results = evaluation.evaluate_generator(
        config, workdir, rounds, {'privacy': plan.summary(rounds)}, federation, task,
        host_local(algorithm.sampling_generator(state)),
        d_params=host_local(state.params['discriminator']))
    written = 'results.json, eval/ (results.md, roc.png, sample grids), '
  else:
    # Training only (sweeps, resume checks): the eval binary scores the checkpoint later.
    logging.info('Evaluation off (config.eval.evaluators is empty); `python -m fedgan_jax.eval '
                 '--workdir=%s` scores round %d later.', workdir, rounds)
    results = {'step': rounds, 'evaluators': [],
               'privacy': evaluation.privacy_report({'privacy': plan.summary(rounds)})}
    written = 'results.json, '
  results.update(rounds=rounds, wall_time_s=time.time() - started,
                 config=json.loads(config.to_json_best_effort()))
  path = os.path.join(workdir, 'results.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(eval_report.jsonable(results), f, indent=1)
  os.replace(path + '.tmp', path)
  logging.info('Results after %d rounds (%s):\n%s\nWrote %straining_curves.png and samples/ in %s.',
               rounds, metrics_log.format_duration(results['wall_time_s']),
               console.results_table(results), written, workdir)
  return results
