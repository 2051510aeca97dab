"""Soak under faults (issue 22): random SIGKILLs, rogue hospitals; asserts what survives.

    python -m benchmarks.soak --kills=50 [--phases=train,flower,rogue] [--out=soak.json]

Phases (each on the tiny runlocal phantom networks, loopback addresses only):
  * train: `fedgan_jax.main` (training, a checkpoint every round, then F-AD evaluation)
    is killed with SIGKILL at a random moment, or right when a checkpoint write is in
    flight, and rerun until it finishes; its final params and G's moving average must be
    bit-identical to an uninterrupted run's, and `results.json` must exist.
  * flower: the server and 3 hospital processes (`deploy.accept_failures=False`, so every
    applied round has all three replies); a random one of the four is killed and rerun,
    until the server finishes; final params bit-identical to an uninterrupted federation.
  * rogue: one federation per rogue kind among 3 hospitals (a bad key, NaN, huge or stale
    replies, a drop-out mid-round); it must finish every round with the others and name
    the rogue in the server's log.
Kills are spread over the phases that are run until `--kills` is reached (bounded:
each trial stops after `--max_kills_per_trial`). A hang is a live process whose log has
not grown for `--hang_s` seconds (60): the target is none. Prints and writes JSON.
"""

import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

from configs import deploy_smoke
from fedgan_jax import checkpointing
from fedgan_jax.data import registry
from fedgan_jax.deploy import common
from fedgan_jax.deploy import coordinator as coordinator_lib
from fedgan_jax.deploy import security

_KILLS = flags.DEFINE_integer('kills', 50, 'Total SIGKILLs over the kill phases.')
_PHASES = flags.DEFINE_list('phases', ['train', 'flower', 'rogue'], 'Phases to run.')
_ROUNDS = flags.DEFINE_integer('rounds', 6, 'Rounds of every run.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the kill schedule.')
_HANG_S = flags.DEFINE_float('hang_s', 60.0, 'A live process silent this long is a hang.')
_MAX_KILLS_PER_TRIAL = flags.DEFINE_integer('max_kills_per_trial', 4, 'Kills before a trial '
                                            'is left to finish.')
_TRIAL_TIMEOUT_S = flags.DEFINE_float('trial_timeout_s', 900.0, 'Longest trial.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path ("" = print only).')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Scratch folder ("" = a temporary one).')

SITES = ('general', 'children_and_young', 'geriatric')
# The config every process loads (`tests/deploy_test.py`'s, with its `soak` variant); the
# rounds come as a flag.
CONFIG_FILE = REPO_ROOT / 'configs' / 'deploy_smoke.py'


def config_flags(variant='soak'):
  return [f'--config={CONFIG_FILE}:{variant}', f'--config.fl.num_rounds={_ROUNDS.value}']


def load_config(variant='soak'):
  config = deploy_smoke.get_config(variant)
  config.fl.num_rounds = _ROUNDS.value
  return config


def final_arrays(workdir: pathlib.Path, config) -> tuple[int, np.ndarray]:
  """(step, params and G's moving average raveled) of the latest checkpoint."""
  template = jax.eval_shape(lambda: coordinator_lib.initial_params(
      config, coordinator_lib.build_task(config)))
  params, _, step = checkpointing.restore_params(str(workdir), config, template)
  ema = checkpointing.restore_sampling_generator(str(workdir), step, template['generator'])
  leaves = jax.tree.leaves((params, ema))
  return step, np.concatenate([np.ravel(np.asarray(x)) for x in leaves])


class Process:
  """A binary run with its log, and hang detection on the log's growth."""

  def __init__(self, name, args, log_path, env):
    self.name, self.args, self.log_path, self.env = name, args, log_path, env
    self.popen = None
    self.last_size, self.last_change = 0, time.monotonic()

  def start(self):
    with open(self.log_path, 'a') as log:
      log.write(f'\n===== start {time.strftime("%H:%M:%S")} =====\n')
      self.popen = subprocess.Popen([sys.executable, '-m', *self.args], cwd=REPO_ROOT,
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT)
    self.last_size, self.last_change = os.path.getsize(self.log_path), time.monotonic()

  def alive(self) -> bool:
    return self.popen is not None and self.popen.poll() is None

  def silent_for(self) -> float:
    size = os.path.getsize(self.log_path)
    if size != self.last_size:
      self.last_size, self.last_change = size, time.monotonic()
    return time.monotonic() - self.last_change

  def kill(self):
    if self.alive():
      self.popen.send_signal(signal.SIGKILL)
      self.popen.wait()

  def log(self) -> str:
    return self.log_path.read_text()


def _env(cache: pathlib.Path) -> dict:
  return dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


# --------------------------------------------------------------------------- training


def main_args(root, workdir):
  return ['fedgan_jax.main', *config_flags(), f'--workdir={workdir}',
          f'--compilation_cache={root / "xla_cache"}']


def kill_moment(workdir: pathlib.Path, log: str, rounds: int) -> str:
  """What the run was doing when killed (from its files and log)."""
  if list((workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*')):
    return 'checkpoint_write'
  if f'round {rounds}/{rounds}' in log:
    return 'evaluation'
  if 'round 1/' in log:
    return 'training'
  return 'startup'


def train_trial(root, workdir, reference_s, budget, rng, record):
  """Kills `fedgan_jax.main` up to `budget` times, then lets it finish."""
  process = Process('main', main_args(root, workdir), workdir.parent / f'{workdir.name}.log',
                    _env(root / 'xla_cache'))
  workdir.mkdir(parents=True)
  kills, started = 0, time.monotonic()
  while True:
    process.start()
    at_checkpoint = kills < budget and rng.random() < 0.4
    delay = rng.uniform(2.0, reference_s) if kills < budget else float('inf')
    t0 = time.monotonic()
    while process.alive():
      time.sleep(0.01)
      if process.silent_for() > _HANG_S.value:
        record['hangs'].append({'phase': 'train', 'process': 'main', 'log': process.log()[-600:]})
        process.kill()
        break
      writing = at_checkpoint and list((workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*'))
      if writing or time.monotonic() - t0 > delay:
        moment = kill_moment(workdir, process.log(), _ROUNDS.value)
        process.kill()
        kills += 1
        record['kills'].append({'phase': 'train', 'moment': moment,
                                'after_s': round(time.monotonic() - t0, 2)})
        break
    if process.popen.returncode == 0:
      return kills
    if time.monotonic() - started > _TRIAL_TIMEOUT_S.value:
      raise RuntimeError(f'train trial {workdir} did not finish:\n{process.log()[-3000:]}')
    if process.popen.returncode not in (0, -signal.SIGKILL):
      raise RuntimeError(f'main exited {process.popen.returncode}:\n{process.log()[-3000:]}')


def run_train_phase(root, kills_wanted, rng, record):
  config = load_config()
  # Twice: the first fills the XLA cache (the killed runs load it, so they are as fast as
  # the second), and the two must agree bit for bit.
  for name in ('train_reference_cold', 'train_reference'):
    started = time.monotonic()
    subprocess.run([sys.executable, '-m', *main_args(root, root / name)], cwd=REPO_ROOT,
                   env=_env(root / 'xla_cache'), check=True, capture_output=True)
    reference_s = time.monotonic() - started
    record[f'{name}_s'] = round(reference_s, 1)
  expected = final_arrays(root / 'train_reference', config)
  cold = final_arrays(root / 'train_reference_cold', config)
  record['train_references_identical'] = bool(np.array_equal(cold[1], expected[1]))
  trials, done = 0, 0
  while done < kills_wanted:
    workdir = root / f'train_trial_{trials}'
    budget = min(_MAX_KILLS_PER_TRIAL.value, kills_wanted - done)
    done += train_trial(root, workdir, reference_s, budget, rng, record)
    step, arrays = final_arrays(workdir, config)
    identical = step == expected[0] and np.array_equal(arrays, expected[1])
    record['trials'].append({'phase': 'train', 'workdir': str(workdir),
                             'bit_identical': bool(identical),
                             'results_json': (workdir / 'results.json').exists()})
    trials += 1


# ---------------------------------------------------------------------------- Flower


def federation(root, workdir, extra_hospital_flags=None, server_flags=('--insecure',),
               variant='soak'):
  """The server and one process per site, not started."""
  address = f'127.0.0.1:{_free_port()}'
  common_flags = [*config_flags(variant), f'--compilation_cache={root / "xla_cache"}']
  env = _env(root / 'xla_cache')
  workdir.mkdir(parents=True, exist_ok=True)
  processes = {'server': Process('server', ['fedgan_jax.deploy.server', f'--workdir={workdir}',
                                            f'--address={address}', *server_flags,
                                            *common_flags], workdir / 'server.log', env)}
  for site in SITES:
    flags_ = (extra_hospital_flags or {}).get(site, ['--insecure'])
    processes[site] = Process(site, ['fedgan_jax.deploy.hospital', f'--site={site}',
                                     f'--data={root / (site + ".npz")}', f'--server={address}',
                                     *flags_, *common_flags], workdir / f'{site}.log', env)
  return processes


def supervise(processes, record, phase, kills=0, rng=None, restart=True):
  """Runs until the server exits 0 (rerunning killed or failed processes when `restart`);
  kills a random process `kills` times at random moments. Returns the server's exit code."""
  for process in processes.values():
    process.start()
  started = time.monotonic()

  def schedule():
    """Half the kills at a random moment, half just after a round (a mid-round kill when
    more rounds follow): rounds of the tiny model take a fraction of a second."""
    if not kills:
      return float('inf'), False
    return time.monotonic() + rng.uniform(5.0, 40.0), rng.random() < 0.5
  next_kill, after_round = schedule()
  rounds_seen = processes['server'].log().count('coordinator.py')
  while True:
    time.sleep(0.05)
    server = processes['server']
    if not server.alive() and server.popen.returncode == 0:
      break
    for process in processes.values():
      if process.alive() and process.silent_for() > _HANG_S.value:
        record['hangs'].append({'phase': phase, 'process': process.name,
                                'log': process.log()[-600:]})
        process.kill()
      if process.alive():
        continue
      if not restart:
        if process.name == 'server':
          return server.popen.returncode
        continue
      if process.name != 'server' and not server.alive():
        continue  # Hospitals end when their server dies; they restart after it.
      process.start()
    if after_round and kills:
      seen = processes['server'].log().count('coordinator.py')  # One line per round done.
      due = seen > rounds_seen
      rounds_seen = seen
    else:
      due = time.monotonic() > next_kill
    if kills and due:
      victim = processes[rng.choice(sorted(processes))]
      if victim.alive():
        victim.kill()
        kills -= 1
        record['kills'].append({'phase': phase, 'after_round': after_round,
                                'moment': f'flower_{victim.name}',
                                'after_s': round(time.monotonic() - started, 2)})
        victim.start()
      next_kill, after_round = schedule()
    if time.monotonic() - started > _TRIAL_TIMEOUT_S.value:
      raise RuntimeError(f'{phase}: the federation did not finish:\n'
                         + processes['server'].log()[-3000:])
  deadline = time.monotonic() + 15
  for process in processes.values():  # Hospitals are told to disconnect at the end.
    while process.alive() and time.monotonic() < deadline:
      time.sleep(0.1)
    process.kill()
  return 0


def run_flower_phase(root, kills_wanted, rng, record):
  config = load_config()
  reference = root / 'flower_reference'
  started = time.monotonic()
  code = supervise(federation(root, reference), record, 'flower', restart=False)
  if code != 0:
    raise RuntimeError(f'the reference federation failed (server exit {code}):\n'
                       + (reference / 'server.log').read_text()[-3000:])
  record['flower_reference_s'] = round(time.monotonic() - started, 1)
  expected = final_arrays(reference, config)
  trials, done = 0, 0
  while done < kills_wanted:
    workdir = root / f'flower_trial_{trials}'
    budget = min(_MAX_KILLS_PER_TRIAL.value, kills_wanted - done)
    before = len(record['kills'])
    supervise(federation(root, workdir), record, 'flower', budget, rng)
    done += len(record['kills']) - before
    step, arrays = final_arrays(workdir, config)
    record['trials'].append({'phase': 'flower', 'workdir': str(workdir),
                             'bit_identical': bool(step == expected[0] and
                                                   np.array_equal(arrays, expected[1]))})
    trials += 1


ROGUES = {
    'bad_key': None,  # Filled with credentials in run_rogue_phase.
    'nan': ['--insecure', '--misbehave=nan'],
    'huge': ['--insecure', '--misbehave=huge'],
    'stale_round': ['--insecure', '--misbehave=stale_round'],
    'drop_out': ['--insecure', '--exit_at_round=1'],
}


def run_rogue_phase(root, record):
  credentials = security.write_dev_certificates(str(root / 'certs'), ['127.0.0.1'])
  for site in SITES:
    security.write_hospital_key(str(root / 'keys'), site)
  security.write_hospital_key(str(root / 'impostor'), 'geriatric')
  secure_server = [f'--ssl_ca_certfile={credentials["ca"]}',
                   f'--ssl_certfile={credentials["certificate"]}',
                   f'--ssl_keyfile={credentials["key"]}', f'--hospital_keys={root / "keys"}']
  for kind, rogue_flags in ROGUES.items():
    workdir = root / f'rogue_{kind}'
    if kind == 'bad_key':
      secure = lambda key: [f'--root_certificates={credentials["ca"]}', f'--private_key={key}']
      hospital_flags = {site: secure(root / 'keys' / f'{site}.key') for site in SITES}
      hospital_flags['geriatric'] = secure(root / 'impostor' / 'geriatric.key')
      server_flags = secure_server
    else:
      hospital_flags, server_flags = {'geriatric': rogue_flags}, ['--insecure']
    started = time.monotonic()
    processes = federation(root, workdir, hospital_flags, server_flags, variant='soak,tolerant')
    code = supervise(processes, record, f'rogue_{kind}', restart=False)
    metrics = workdir / 'metrics.jsonl'
    rows = ([json.loads(line) for line in metrics.read_text().splitlines()]
            if metrics.exists() else [])
    log = processes['server'].log()
    record['trials'].append({
        'phase': f'rogue_{kind}', 'server_exit': code, 'seconds': round(
            time.monotonic() - started, 1),
        'rounds_done': len(rows), 'all_rounds': len(rows) == _ROUNDS.value,
        'rogue_named': "'geriatric'" in log,
        'sites_per_round': sorted({tuple(r['sites']) for r in rows})})


def main(argv):
  del argv
  rng = random.Random(_SEED.value)
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix='fedgan_soak_'))
  root.mkdir(parents=True, exist_ok=True)
  config = load_config()
  for client in registry.load_federation(config).clients:
    common.export_site_data(client, str(root / f'{client.name}.npz'))
  record = {'kills': [], 'hangs': [], 'trials': [], 'rounds': _ROUNDS.value,
            'cpus': os.cpu_count(), 'phases': _PHASES.value}
  started = time.monotonic()
  kill_phases = [p for p in _PHASES.value if p in ('train', 'flower')]
  for i, phase in enumerate(kill_phases):
    share = _KILLS.value // len(kill_phases) + (i < _KILLS.value % len(kill_phases))
    {'train': run_train_phase, 'flower': run_flower_phase}[phase](root, share, rng, record)
  if 'rogue' in _PHASES.value:
    run_rogue_phase(root, record)
  record['seconds'] = round(time.monotonic() - started, 1)
  record['summary'] = {
      'kills': len(record['kills']),
      'kills_by_moment': {m: sum(k['moment'] == m for k in record['kills'])
                          for m in sorted({k['moment'] for k in record['kills']})},
      'hangs': len(record['hangs']),
      'kill_trials_bit_identical': all(t.get('bit_identical', True) for t in record['trials']),
      'rogue_runs_finished_and_named': all(t['all_rounds'] and t['rogue_named']
                                           for t in record['trials']
                                           if t['phase'].startswith('rogue_')),
  }
  text = json.dumps(record, indent=1)
  print(json.dumps(record['summary'], indent=1))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + '\n')
  if not _WORKDIR.value:
    shutil.rmtree(root, ignore_errors=True)
  ok = (record['summary']['hangs'] == 0 and record['summary']['kill_trials_bit_identical'] and
        record['summary']['rogue_runs_finished_and_named'])
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  app.run(main)
