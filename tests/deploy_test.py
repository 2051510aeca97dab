"""Tests of the Flower deployment: wire checks, signatures, the server update, and real
server + 3 hospital processes on loopback against the simulation.

The process tests need the `flower` extra (`pip install -e .[flower]`) and skip without
it. A subprocess computes the simulation's reference params first and fills a persistent
XLA cache that the 4 processes of each run then load instead of compiling (a subprocess,
because this pytest process's XLA compile options, hence cache keys, differ from theirs).
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import binary_env
from configs import deploy_smoke
from fedgan_jax import checkpointing
from fedgan_jax import cpu_backend
from fedgan_jax.data import registry
from fedgan_jax.deploy import common
from fedgan_jax.deploy import coordinator as coordinator_lib
from fedgan_jax.deploy import security
from fedgan_jax.deploy import settings
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import optimizers
from fedgan_jax.federated import sampling

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 120
REFERENCE_ROUNDS = 3
SITES = ('general', 'children_and_young', 'geriatric')
# The config every process of a test run loads (the soak's too, with its `soak` variant).
CONFIG_FILE = REPO_ROOT / 'configs' / 'deploy_smoke.py'


def make_config():
  return deploy_smoke.get_config()


# ----------------------------------------------------------------------------- unit tests


def _tiny_params():
  return {'b': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)},
          'a': {'bias': np.array([1.0, -2.0], np.float32)}}


def _reply(arrays, **overrides):
  metrics = {'site': 'general', 'client_id': 0, 'round': 4, 'signature': b'x', 'd_loss': 0.5}
  metrics.update(overrides)
  return arrays, 10, metrics


def test_wire_arrays_round_trip_in_sorted_key_order():
  params = _tiny_params()
  arrays = common.params_to_arrays(params)
  assert [a.shape for a in arrays] == [(2,), (2, 3)]  # 'a' before 'b'.
  back = common.arrays_to_params(arrays, params)
  np.testing.assert_array_equal(back['b']['kernel'], params['b']['kernel'])
  with pytest.raises(common.InvalidReplyError, match='expected 2 parameter arrays, got 1'):
    common.arrays_to_params(arrays[:1], params)


@pytest.mark.parametrize('mutate, message', [
    (lambda a, n, m: (a + [np.zeros(3, np.float32)], n, m), '3 arrays in the reply'),
    (lambda a, n, m: ([a[0], np.zeros((3, 2), np.float32)], n, m), 'array 1 is'),
    (lambda a, n, m: ([a[0].astype(np.float64), a[1]], n, m), 'array 0 is'),
    (lambda a, n, m: ([a[0] * np.nan, a[1]], n, m), 'NaN or inf'),
    (lambda a, n, m: (a, 0, m), 'num_examples must be a positive int'),
    (lambda a, n, m: (a, n, dict(m, images=b'raw pixels')), "unexpected field 'images'"),
    (lambda a, n, m: (a, n, dict(m, d_loss='0.5')), 'metric d_loss must be a float'),
    (lambda a, n, m: (a, n, {k: v for k, v in m.items() if k != 'signature'}), 'lacks'),
    (lambda a, n, m: (a, n, dict(m, round=True)), 'round must be int'),
])
def test_check_reply_rejects_anything_but_parameters_and_scalars(mutate, message):
  params = _tiny_params()
  specs = common.array_specs(params)
  arrays = common.params_to_arrays(params)
  common.check_reply(*_reply(arrays), specs, 'general')  # The well-formed reply passes.
  with pytest.raises(common.InvalidReplyError, match=message):
    common.check_reply(*mutate(*_reply(arrays)), specs, 'general')


def test_signature_binds_site_round_nonce_and_content(tmp_path):
  private_path, _ = security.write_hospital_key(str(tmp_path), 'general')
  security.write_hospital_key(str(tmp_path), 'geriatric')
  keys = security.load_hospital_keys(str(tmp_path), ('general', 'geriatric'))
  private_key = security.load_private_key(private_path)
  arrays = common.params_to_arrays(_tiny_params())
  args = (b'nonce', 'general', 0, 3, arrays, 10, {'d_loss': 0.5})
  signature = security.sign(private_key, security.reply_digest(*args))
  security.verify(keys['general'], security.reply_digest(*args), signature, 'general')
  tampered = [arrays[0], arrays[1] + 1e-6]
  for changed in [(b'other', *args[1:]), (*args[:3], 4, *args[4:]),
                  (*args[:4], tampered, *args[5:]), (*args[:5], 11, args[6]),
                  (*args[:6], {'d_loss': 0.25})]:
    with pytest.raises(security.AuthenticationError, match="claiming to be 'general'"):
      security.verify(keys['general'], security.reply_digest(*changed), signature, 'general')
  with pytest.raises(security.AuthenticationError):  # Another site's key.
    security.verify(keys['geriatric'], security.reply_digest(*args), signature, 'general')
  with pytest.raises(FileNotFoundError, match='no missing.pub'):
    security.load_hospital_keys(str(tmp_path), ('general', 'missing'))


def test_roster_defaults_to_the_data_hospitals_and_fixes_client_ids():
  config = make_config()
  assert settings.site_names(config) == SITES
  assert settings.client_id(config, 'geriatric') == 2
  assert settings.min_available(config) == 3
  with pytest.raises(ValueError, match='not in the roster'):
    settings.client_id(config, 'intensive_care')  # Beyond runlocal's 3 hospitals.
  config.deploy.sites = ('b', 'a')
  assert settings.client_id(config, 'a') == 1


def test_site_data_round_trip_and_schema_check(tmp_path):
  config = make_config()
  federation = registry.load_federation(config)
  client = federation.clients[1]
  path = common.export_site_data(client, str(tmp_path / 'site.npz'))
  loaded = common.load_site_data(path, client.name, federation.schema)
  np.testing.assert_array_equal(loaded.images, client.images)
  np.testing.assert_array_equal(loaded.conditions, client.conditions)
  np.savez(tmp_path / 'bad.npz', images=client.images, conditions=client.conditions[:, :3],
           abnormal=client.abnormal, patient_ids=client.patient_ids)
  with pytest.raises(ValueError, match='conditions are'):
    common.load_site_data(str(tmp_path / 'bad.npz'), 'x', federation.schema)


# ------------------------------------------------------- the server update, by hand


def _assert_params_close(actual, expected):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=2e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_coordinator_applies_weighted_fedavg_by_hand(tmp_path):
  coordinator = coordinator_lib.Coordinator(make_config(), str(tmp_path))
  start = jax.device_get(coordinator.state.params)
  ones = [np.ones(shape, np.float32) for shape, _ in coordinator.specs]
  replies = [coordinator_lib.Reply(2, 30, [2 * a for a in ones], {'d_loss': 1.0}),
             coordinator_lib.Reply(0, 10, [-2 * a for a in ones], {'d_loss': 3.0})]
  coordinator.participants()
  row = coordinator.apply(replies)
  coordinator.close()
  # (30 * 2 + 10 * -2) / 40 = 1: plain FedAvg (server SGD, lr 1) adds 1 everywhere.
  _assert_params_close(coordinator.state.params, jax.tree.map(lambda p: p + 1.0, start))
  assert row['d_loss'] == pytest.approx((30 * 1.0 + 10 * 3.0) / 40)
  assert row['sites'] == ['general', 'geriatric'] and int(coordinator.state.round) == 1


def test_coordinator_client_dp_clips_and_divides_by_expected_clients(tmp_path):
  config = make_config()
  config.dp = dict(mode='client', clip_norm=1.0, noise_multiplier=0.0, delta=1e-3,
                   target_epsilon=None, accountant='rdp')
  coordinator = coordinator_lib.Coordinator(config, str(tmp_path))
  start = jax.device_get(coordinator.state.params)
  size = sum(int(np.prod(shape)) for shape, _ in coordinator.specs)
  # Delta of global norm 4 (clipped to norm 1: each entry 1/sqrt(size)) and one of norm 0.5.
  big = [np.full(shape, 4 / np.sqrt(size), np.float32) for shape, _ in coordinator.specs]
  small = [np.full(shape, 0.5 / np.sqrt(size), np.float32) for shape, _ in coordinator.specs]
  coordinator.participants()
  coordinator.apply([coordinator_lib.Reply(0, 1000, big, {}),
                     coordinator_lib.Reply(1, 1, small, {})])
  coordinator.close()
  # Uniform weights, / 3 expected clients (not 2 reporting, not example counts).
  step = (1.0 + 0.5) / np.sqrt(size) / 3
  _assert_params_close(coordinator.state.params, jax.tree.map(lambda p: p + step, start))


# ----------------------------------------------------- simulation reference (subprocess)


def write_reference(root: pathlib.Path) -> None:
  """The simulation's params after rounds 0..3, and after a round 3 without `geriatric`.

  Runs in a subprocess set up like the hospitals, so the XLA cache it fills (client step,
  init) is the one they read.
  """
  config = make_config()
  federation = registry.load_federation(config)
  task = coordinator_lib.build_task(config)
  server_optimizer = optimizers.build_server_optimizer(config.fl.server_optimizer)
  state = algorithm.server_init(coordinator_lib.initial_params(config, task), server_optimizer)
  # The hospitals' client-update program, options included: the XLA cache is keyed on them,
  # and a miss makes 3 hospitals compile at once on the test machine's cores.
  round_fn = algorithm.make_round_fn(
      task, server_optimizer, 'sequential',
      fuse_local_steps=config.runtime.fuse_local_steps,
      client_compiler_options=cpu_backend.client_compiler_options(config.runtime.ynn_fusions))
  train_rng = jax.random.fold_in(jax.random.key(config.seed), 1)

  def run_round(state, round_index, client_ids):
    batches, weights, ids = sampling.round_inputs(
        federation.clients, np.asarray(client_ids), config.seed, round_index,
        config.fl.local_steps, config.fl.batch_size)
    return round_fn(state, batches, weights, ids, jax.random.fold_in(train_rng, round_index))[0]

  states = [state]
  for round_index in range(REFERENCE_ROUNDS):
    states.append(run_round(states[-1], round_index, range(len(SITES))))
  for rounds, saved in enumerate(states):
    np.savez(root / f'reference_{rounds}.npz', *common.params_to_arrays(saved.params))
  dropout = run_round(states[2], 2, [0, 1])
  np.savez(root / 'reference_dropout.npz', *common.params_to_arrays(dropout.params))


def _reference_arrays(reference, name):
  with np.load(reference['root'] / f'reference_{name}.npz') as data:
    return [data[f'arr_{i}'] for i in range(len(data.files))]


def _assert_arrays_close(params, expected_arrays):
  actual = common.params_to_arrays(params)
  assert len(actual) == len(expected_arrays)
  for i, (a, b) in enumerate(zip(actual, expected_arrays)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6, err_msg=f'array {i}')


# ------------------------------------------------------------ server + hospital processes


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """Site files, the test config file, a warm XLA cache and the simulation's params."""
  try:
    import flwr  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    pytest.skip('flwr not installed: pip install -e .[flower]')
  root = tmp_path_factory.mktemp('deploy')
  config = make_config()
  for client in registry.load_federation(config).clients:
    common.export_site_data(client, str(root / f'{client.name}.npz'))
  # The reference and all 4 processes inherit the session's XLA flags (conftest.TEST_XLA_FLAGS)
  # alike, so the warm cache serves the hospitals.
  env = binary_env(JAX_PLATFORMS='cpu')
  cache = root / 'xla_cache'
  subprocess.run([sys.executable, __file__, str(root), str(cache)], env=env, cwd=REPO_ROOT,
                 check=True, timeout=RUN_TIMEOUT_S)
  return dict(root=root, cache=cache, config=config, env=env,
              template=jax.eval_shape(lambda: coordinator_lib.initial_params(
                  config, coordinator_lib.build_task(config))))


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    return sock.getsockname()[1]


def run_federation(reference, workdir, rounds, credentials=None, exit_at=None):
  """Runs the server and one process per site until the server ends; returns the logs."""
  root = reference['root']
  address = f'127.0.0.1:{_free_port()}'
  common_flags = [f'--config={CONFIG_FILE}', f'--config.fl.num_rounds={rounds}',
                  f'--compilation_cache={reference["cache"]}']
  if credentials is None:
    server_security = hospital_security = lambda site: ['--insecure']
  else:
    server_security = lambda site: [f'--ssl_ca_certfile={credentials["ca"]}',
                                    f'--ssl_certfile={credentials["certificate"]}',
                                    f'--ssl_keyfile={credentials["key"]}',
                                    f'--hospital_keys={credentials["keys"]}']
    hospital_security = lambda site: [f'--root_certificates={credentials["ca"]}',
                                      f'--private_key={credentials["keys"]}/{site}.key']
  # --verbosity=1: the server's log then holds Flower's own INFO lines ('SSL is enabled'),
  # which the default console hides.
  commands = {'server': ['fedgan_jax.deploy.server', f'--workdir={workdir}',
                         f'--address={address}', '--verbosity=1', *server_security(None)]}
  for site in SITES:
    commands[site] = ['fedgan_jax.deploy.hospital', f'--site={site}',
                      f'--data={root / (site + ".npz")}', f'--server={address}',
                      *hospital_security(site)]
    if exit_at and site in exit_at:
      commands[site].append(f'--exit_at_round={exit_at[site]}')
  logs, processes = {}, {}
  os.makedirs(workdir, exist_ok=True)
  started = time.monotonic()
  try:
    for name, args in commands.items():
      logs[name] = pathlib.Path(workdir) / f'{name}.log'
      with open(logs[name], 'w') as log:
        processes[name] = subprocess.Popen([sys.executable, '-m', *args, *common_flags],
                                           env=reference['env'],
                                           cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    codes = {}
    for name, process in processes.items():
      try:
        codes[name] = process.wait(timeout=max(RUN_TIMEOUT_S - (time.monotonic() - started), 1))
      except subprocess.TimeoutExpired:
        codes[name] = 'timeout'
  finally:
    for process in processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
  tails = {name: path.read_text()[-2500:] for name, path in logs.items()}
  expected = {name: (3 if exit_at and name in exit_at else 0) for name in commands}
  assert codes == expected, '\n\n'.join(f'== {n} ({codes[n]})\n{t}' for n, t in tails.items())
  return {name: path.read_text() for name, path in logs.items()}


def restored_params(reference, workdir):
  params, meta, step = checkpointing.restore_params(
      str(workdir), reference['config'], reference['template'])
  return params, meta, step


@pytest.fixture(scope='module')
def secure_run(reference):
  """2 rounds with TLS and signed messages on: the configuration a consortium runs."""
  credentials = security.write_dev_certificates(str(reference['root'] / 'certs'), ['127.0.0.1'])
  credentials['keys'] = str(reference['root'] / 'keys')
  for site in SITES:
    security.write_hospital_key(credentials['keys'], site)
  workdir = reference['root'] / 'secure'
  logs = run_federation(reference, workdir, rounds=2, credentials=credentials)
  return dict(workdir=workdir, logs=logs)


def test_three_hospitals_over_tls_match_the_simulation(reference, secure_run):
  params, _, step = restored_params(reference, secure_run['workdir'])
  assert step == 2
  _assert_arrays_close(params, _reference_arrays(reference, 2))
  rows = [json.loads(line) for line in
          (secure_run['workdir'] / 'metrics.jsonl').read_text().splitlines()]
  assert [(r['round'], r['clients']) for r in rows] == [(1, 3), (2, 3)]
  assert 'SSL is enabled' in secure_run['logs']['server']
  assert 'authentication on' in secure_run['logs']['server']


def test_every_hospital_message_holds_only_parameter_arrays(reference, secure_run):
  specs = [[list(shape), dtype] for shape, dtype in
           common.array_specs(reference['template'])]
  entries = [json.loads(line) for line in
             (secure_run['workdir'] / 'deploy' / 'messages.jsonl').read_text().splitlines()]
  assert sorted(e['kind'] for e in entries) == ['fit'] * 6 + ['properties'] * 3
  loss_fields = set(common.REPLY_METRICS)
  for entry in entries:
    fields = entry['fields']
    if entry['kind'] == 'properties':
      assert fields == {'site': 'str', 'client_id': 'int', 'signature': 'bytes'}
      continue
    assert entry['arrays'] == specs
    assert isinstance(entry['num_examples'], int)
    identity = {k: v for k, v in fields.items() if k not in loss_fields}
    assert identity == {'site': 'str', 'client_id': 'int', 'round': 'int', 'signature': 'bytes'}
    assert all(fields[k] == 'float' for k in set(fields) & loss_fields)
  assert 'failed' not in secure_run['logs']['server']


@pytest.fixture(scope='module')
def resumed_run(reference, secure_run, tmp_path_factory):
  """The secure run's workdir, resumed for a 3rd round in which `geriatric` dies mid-round."""
  workdir = tmp_path_factory.mktemp('resumed')
  shutil.copytree(secure_run['workdir'] / 'checkpoints', workdir / 'checkpoints')
  shutil.copy(secure_run['workdir'] / 'metrics.jsonl', workdir / 'metrics.jsonl')
  logs = run_federation(reference, workdir, rounds=3, exit_at={'geriatric': 2})
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return dict(workdir=workdir, logs=logs, rows=rows)


def test_server_resumes_from_its_checkpoint(resumed_run):
  assert 'Resumed from the checkpoint of round 2' in resumed_run['logs']['server']
  assert 'Serving rounds 3..3' in resumed_run['logs']['server']
  assert [row['round'] for row in resumed_run['rows']] == [1, 2, 3]


def test_round_survives_a_hospital_dropping_out(reference, resumed_run):
  assert 'dying mid-round' in resumed_run['logs']['geriatric']
  assert resumed_run['rows'][2]['sites'] == ['general', 'children_and_young']
  params, _, step = restored_params(reference, resumed_run['workdir'])
  assert step == 3
  # Round 3 averaged the two sites that replied, as the simulation does with those two.
  _assert_arrays_close(params, _reference_arrays(reference, 'dropout'))
  assert not np.allclose(_reference_arrays(reference, 'dropout')[0],
                         _reference_arrays(reference, 3)[0])


if __name__ == '__main__':
  # `python tests/deploy_test.py ROOT CACHE`: the reference subprocess of the `reference` fixture.
  jax.config.update('jax_compilation_cache_dir', sys.argv[2])
  write_reference(pathlib.Path(sys.argv[1]))
