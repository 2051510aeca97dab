"""Round time of the Flower deployment over loopback vs the simulated round; prints JSON.

    python -m benchmarks.flower_overhead [--variant=] [--hospitals=3] [--rounds=4]

Both sides train the same 3 phantom hospitals (`--variant=runlocal` for the tiny sizes)
for `--rounds` rounds with the default model, batch and local steps:
  * simulation: `algorithm.make_round_fn` with the config's `runtime.strategy` (`auto`: `threads`
    on CPU, one client per core in flight) in this process, timed to `block_until_ready`;
  * Flower: `fedgan_jax.deploy.server` + one `fedgan_jax.deploy.hospital` process per
    site on 127.0.0.1 (`--insecure`), timed by the server per round (send params,
    hospitals' local updates in parallel, replies, checks, server update).
The first round of each (compilation) is left out of the medians. Needs the `flower`
extra. Hospitals train in parallel processes, the simulation loops over them in one, so
the ratio depends on the cores free: the JSON records the CPU count.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from fedgan_jax.data import registry
from fedgan_jax.deploy import common
from fedgan_jax.deploy import coordinator as coordinator_lib
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import rngs
from fedgan_jax.federated import sampling
from fedgan_jax.federated import server as server_lib

# The deployment's processes import the project from here (PYTHONPATH).
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_VARIANT = flags.DEFINE_string('variant', '', 'configs/phantom.py variant ("" = default sizes).')
_HOSPITALS = flags.DEFINE_integer('hospitals', 3, 'Participating hospitals.')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Rounds on each side (the first is compilation).')
_TIMEOUT = flags.DEFINE_integer('timeout_s', 1800, 'Longest wait for the Flower run.')

CONFIG_SOURCE = '''
from configs import phantom
from fedgan_jax.deploy import settings


def get_config(arg=None):
  config = phantom.get_config({variant!r})
  config.data.num_hospitals = {hospitals}
  config.fl.num_rounds = {rounds}
  config.checkpoint.every_rounds = {rounds}
  config.deploy = settings.get_deploy_config()
  return config
'''


def simulated_round_times(config) -> list[float]:
  federation = registry.load_federation(config)
  task = coordinator_lib.build_task(config)
  # The simulation's server and round (federated/server.py), whose clients compile their
  # local update with the runtime section's knobs as the hospitals do (deploy/hospital.py),
  # so the ratio does not also time YNN fusions.
  server = server_lib.build(config, task, federation.image_shape,
                            federation.schema.model_dim)
  state = server.state
  round_fn = server_lib.round_fn(task, server, server_lib.runtime_options(config).execution)
  times = []
  for round_index in range(config.fl.num_rounds):
    ids = sampling.sample_clients(config.seed, round_index, len(federation.clients),
                                  config.fl.clients_per_round)
    batches, weights, ids = sampling.round_inputs(federation.clients, ids, config.seed,
                                                  round_index, config.fl.local_steps,
                                                  config.fl.batch_size)
    started = time.perf_counter()
    state, metrics = round_fn(state, batches, weights, ids,
                              rngs.round_key(config.seed, round_index))
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - started)
  return times


def flower_round_times(config, root: pathlib.Path) -> tuple[list[float], list[float]]:
  """Server-timed rounds, and the slowest hospital's local update in each."""
  federation = registry.load_federation(config)
  for client in federation.clients:
    common.export_site_data(client, str(root / f'{client.name}.npz'))
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{sock.getsockname()[1]}'
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  shared = [f'--config={root / "config.py"}', '--insecure', '--compilation_cache=']
  commands = [['fedgan_jax.deploy.server', f'--workdir={root / "work"}', f'--address={address}']]
  commands += [['fedgan_jax.deploy.hospital', f'--site={c.name}', f'--data={root / c.name}.npz',
                f'--server={address}'] for c in federation.clients]
  processes = []
  try:
    for i, command in enumerate(commands):
      with open(root / f'process{i}.log', 'w') as log:
        processes.append(subprocess.Popen([sys.executable, '-m', *command, *shared], env=env,
                                          cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT))
    for process in processes:
      process.wait(timeout=_TIMEOUT.value)
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  if any(p.returncode for p in processes):
    raise RuntimeError(f'a Flower process failed; logs in {root}')
  with open(root / 'work' / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  return [r['round_time_s'] for r in rows], [r['slowest_local_update_s'] for r in rows]


def main(argv):
  del argv
  root = pathlib.Path(tempfile.mkdtemp(prefix='flower_overhead_'))
  source = CONFIG_SOURCE.format(variant=_VARIANT.value, hospitals=_HOSPITALS.value,
                                rounds=_ROUNDS.value)
  (root / 'config.py').write_text(source)
  namespace = {}
  exec(source, namespace)  # pylint: disable=exec-used
  config = namespace['get_config']()
  flower, slowest_hospital = flower_round_times(config, root)
  simulated = simulated_round_times(config)
  result = {
      'variant': _VARIANT.value or 'default', 'hospitals': _HOSPITALS.value,
      'image_size': int(config.data.image_size), 'batch_size': int(config.fl.batch_size),
      'local_steps': int(config.fl.local_steps), 'rounds': _ROUNDS.value,
      'cpu_count': os.cpu_count(), 'backend': jax.default_backend(),
      'simulated_strategy': algorithm.resolve_strategy(config.runtime.strategy),
      'simulated_round_s': simulated, 'flower_round_s': flower,
      'flower_slowest_local_update_s': slowest_hospital,
      'simulated_median_s': float(np.median(simulated[1:])),
      'flower_median_s': float(np.median(flower[1:])),
  }
  result['flower_over_simulated'] = result['flower_median_s'] / result['simulated_median_s']
  # What Flower adds on top of the hospitals' own work: transfer, (de)serialization, checks,
  # aggregation and server update.
  result['flower_protocol_median_s'] = float(np.median(
      np.asarray(flower[1:]) - np.asarray(slowest_hospital[1:])))
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main)
