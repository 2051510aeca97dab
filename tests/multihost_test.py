"""Multi-host simulation: 2 CPU processes joined by `jax.distributed` equal 1 process.

The test process builds the runlocal phantom federation, the initial server state and
the first rounds' inputs once, saves them to an npz, then starts
  * 2 worker processes (`jax.distributed` on 127.0.0.1, 2 CPU devices each, gloo
    collectives), which run the `vmap` round over a mesh of all 4 global devices;
  * 1 reference process with 4 local CPU devices and no `jax.distributed`;
all three at once, and checks that the final params agree. Each worker turns every
input into a global array with `jax.make_array_from_callback`, as a multi-host job
must (every process holds the whole host-side round, and contributes its devices'
shards of it).

Run as a script (`python tests/multihost_test.py --worker ...`) this file is the worker.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_ROUNDS = 2
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 2
# A hang guard, not a speed target: setup + 3 concurrent compiles on 2 (possibly busy) cores.
TIMEOUT_S = 600
INIT_SCALE = 0.05  # Std of the initial params.


def _test_config():
  from configs import phantom  # pylint: disable=g-import-not-at-top
  config = phantom.get_config('runlocal')
  # One local step halves the unrolled round (and its XLA compile); the multi-host
  # mechanics under test do not depend on K.
  config.fl.local_steps = 1
  # Small networks: XLA's CPU compile of the vmapped round grows with depth. 16 generator
  # channels, not 8: with 8 (= GroupNorm's groups) the norm cancels each conv bias exactly,
  # their gradients are rounding noise and differ with the all-reduce order.
  config.model.generator.update(seed_size=16, encoder_channels=(16,), decoder_channels=())
  config.model.discriminator.channels = (8,)
  return config


def _flatten(tree, prefix=''):
  """Nested dict of arrays -> {'a/b/c': array}, the npz layout."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}/'))
    else:
      flat[prefix + key] = np.asarray(value)
  return flat


def _unflatten(flat):
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def write_inputs(path: pathlib.Path) -> None:
  """Initial params and every round's padded inputs (as the engine's `train_gan` pads them)."""
  import jax  # pylint: disable=g-import-not-at-top
  from fedgan_jax.data import registry  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import client as client_lib  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import sampling  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import task as task_lib  # pylint: disable=g-import-not-at-top

  config = _test_config()
  federation = registry.load_federation(config)
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  # Any params serve an equality test; drawn in numpy from the model's shapes, they cost no
  # XLA compile of the init (seconds of this test's budget).
  shapes = jax.eval_shape(lambda: client_lib.init_params(
      task, jax.random.key(config.seed, impl='rbg'), tuple(federation.image_shape),
      federation.schema.model_dim))
  draw = np.random.default_rng(config.seed)
  params = jax.tree.map(lambda s: (INIT_SCALE * draw.standard_normal(s.shape)).astype(s.dtype),
                        shapes)
  arrays = {f'params/{k}': v for k, v in _flatten(params).items()}
  pad = NUM_PROCESSES * DEVICES_PER_PROCESS
  for round_index in range(NUM_ROUNDS):
    client_ids = sampling.sample_clients(config.seed, round_index, len(federation.clients),
                                         config.fl.clients_per_round)
    batches, weights, ids = sampling.round_inputs(
        federation.clients, client_ids, config.seed, round_index, config.fl.local_steps,
        config.fl.batch_size, pad)
    for key, value in batches.items():
      arrays[f'round{round_index}/batch/{key}'] = value
    arrays[f'round{round_index}/weights'] = weights
    arrays[f'round{round_index}/ids'] = ids
  np.savez(path, **arrays)


def run_worker(inputs: str, output: str, coordinator: str | None, process_id: int) -> None:
  """Runs NUM_ROUNDS vmap rounds; process 0 writes the final params to `output`."""
  import jax  # pylint: disable=g-import-not-at-top
  if coordinator is None:
    jax.config.update('jax_num_cpu_devices', NUM_PROCESSES * DEVICES_PER_PROCESS)
  else:
    jax.config.update('jax_num_cpu_devices', DEVICES_PER_PROCESS)
    # gloo is this JAX's default CPU collectives; named so a changed default cannot
    # silently turn cross-process all-reduces into errors.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=NUM_PROCESSES,
                               process_id=process_id)
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from fedgan_jax.data import registry  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import algorithm  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import optimizers  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import task as task_lib  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == NUM_PROCESSES * DEVICES_PER_PROCESS, jax.devices()
  config = _test_config()
  federation = registry.load_federation(config)
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  server_optimizer = optimizers.build_server_optimizer(config.fl.server_optimizer)
  mesh = algorithm.client_mesh()  # All global devices, across processes.
  replicated = NamedSharding(mesh, PartitionSpec())
  by_client = NamedSharding(mesh, PartitionSpec('clients'))

  def global_array(value, sharding):
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  data = dict(np.load(inputs))
  params = _unflatten({k[len('params/'):]: v for k, v in data.items() if k.startswith('params/')})
  host_state = jax.device_get(algorithm.server_init(params, server_optimizer))
  state = jax.tree.map(lambda x: global_array(x, replicated), host_state)
  round_fn = algorithm.make_round_fn(task, server_optimizer, 'vmap', mesh)
  train_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
  for round_index in range(NUM_ROUNDS):
    prefix = f'round{round_index}/'
    batches = {k[len(prefix + 'batch/'):]: global_array(v, by_client)
               for k, v in data.items() if k.startswith(prefix + 'batch/')}
    round_key = jax.random.key_data(jax.random.fold_in(train_rng, round_index))
    round_rng = jax.random.wrap_key_data(global_array(round_key, replicated))
    state, _ = round_fn(state, batches, global_array(data[prefix + 'weights'], by_client),
                        global_array(data[prefix + 'ids'], by_client), round_rng)
  # Replicated outputs: every process holds the whole value on its first local device.
  final = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
  if jax.process_index() == 0:
    np.savez(output, **_flatten(final))
  if coordinator is not None:
    jax.distributed.shutdown()


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def _start(args, log_path):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # The worker sets its own device count.
  log = open(log_path, 'w')
  return subprocess.Popen([sys.executable, __file__, '--worker', *args], env=env, cwd=REPO_ROOT,
                          stdout=log, stderr=subprocess.STDOUT), log


def test_two_processes_match_one_process(tmp_path):
  started = time.monotonic()
  inputs = tmp_path / 'inputs.npz'
  write_inputs(inputs)
  coordinator = f'127.0.0.1:{_free_port()}'
  jobs = {
      'reference': _start(['--inputs', str(inputs), '--output', str(tmp_path / 'one.npz')],
                          tmp_path / 'reference.log'),
  }
  for process_id in range(NUM_PROCESSES):
    jobs[f'process{process_id}'] = _start(
        ['--inputs', str(inputs), '--output', str(tmp_path / 'two.npz'),
         '--coordinator', coordinator, '--process_id', str(process_id)],
        tmp_path / f'process{process_id}.log')
  try:
    for name, (process, log) in jobs.items():
      left = TIMEOUT_S - (time.monotonic() - started)
      try:
        code = process.wait(timeout=max(left, 1))
      except subprocess.TimeoutExpired:
        code = 'timeout'
      log.close()
      tail = (tmp_path / f'{name}.log').read_text()[-3000:]
      assert code == 0, f'{name} ended with {code}:\n{tail}'
  finally:
    for process, log in jobs.values():
      if process.poll() is None:
        process.kill()
        process.wait()
      log.close()

  one = np.load(tmp_path / 'one.npz')
  two = np.load(tmp_path / 'two.npz')
  initial = np.load(inputs)
  assert sorted(one.files) == sorted(two.files) and len(one.files) > 10
  for key in one.files:
    # Training moved every tensor, so agreement is not the initial params twice.
    assert not np.array_equal(one[key], initial[f'params/{key}']), key
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)



def test_main_trains_on_two_processes_and_only_process_0_writes(tmp_path):
  """`python -m fedgan_jax.main --jax_distributed` on 2 loopback processes, end to end."""
  workdir = tmp_path / 'work'
  overrides = ['--config.fl.num_rounds=2', '--config.fl.strategy=vmap',
               '--config.fl.local_steps=1', '--config.checkpoint.every_rounds=1',
               '--config.model.generator.seed_size=16',
               '--config.model.generator.encoder_channels=(16,)',
               '--config.model.generator.decoder_channels=()',
               '--config.model.discriminator.channels=(8,)']
  coordinator = f'127.0.0.1:{_free_port()}'
  jobs = []
  for process_id in range(NUM_PROCESSES):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu',
               XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES_PER_PROCESS}',
               JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(NUM_PROCESSES),
               JAX_PROCESS_ID=str(process_id))
    log = tmp_path / f'main{process_id}.log'
    with open(log, 'w') as log_file:
      jobs.append((subprocess.Popen(
          [sys.executable, '-m', 'fedgan_jax.main', '--config=configs/phantom.py:runlocal',
           f'--workdir={workdir}', '--jax_distributed', *overrides], env=env, cwd=REPO_ROOT,
          stdout=log_file, stderr=subprocess.STDOUT), log))
  try:
    for process, log in jobs:
      try:
        code = process.wait(timeout=TIMEOUT_S)
      except subprocess.TimeoutExpired:
        code = 'timeout'
      assert code == 0, f'{log.name} ended with {code}:\n{log.read_text()[-3000:]}'
  finally:
    for process, _ in jobs:
      if process.poll() is None:
        process.kill()
        process.wait()
  assert 'over 3 clients' in jobs[0][1].read_text()
  rows = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(row)['round'] for row in rows] == [1, 2]  # One writer, not two.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1', '2']
  results = json.loads((workdir / 'results.json').read_text())
  assert results['rounds'] == 2 and 0.0 <= results['anomaly']['auc'] <= 1.0

if __name__ == '__main__':
  parser = argparse.ArgumentParser()
  parser.add_argument('--worker', action='store_true', required=True)
  parser.add_argument('--inputs', required=True)
  parser.add_argument('--output', required=True)
  parser.add_argument('--coordinator', default=None)
  parser.add_argument('--process_id', type=int, default=0)
  flags = parser.parse_args()
  run_worker(flags.inputs, flags.output, flags.coordinator, flags.process_id)
