"""Fault injection, CI-sized (issue 22): rogue hospitals, poisoned and corrupt checkpoints,
a checkpoint folder that is a file, a full disk, and configs that lie.

Everything here runs in this process on the tiny networks of `conftest`: the Flower
server's checks are driven through its strategy with flwr's own client manager and
stand-in connections (no sockets); the longer, process-killing version of these faults is
`benchmarks/soak.py`.
"""

import errno
import os
import pathlib
import shutil
import time

from etils import epath
import jax
import numpy as np
import pytest

from configs import phantom
from configs import phantom_dp
from fedgan_jax import checkpointing
from fedgan_jax import train
from fedgan_jax import validation
from fedgan_jax.data import registry
from fedgan_jax.deploy import common
from fedgan_jax.deploy import coordinator as coordinator_lib
from fedgan_jax.deploy import security
from fedgan_jax.deploy import settings
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import engine as privacy_engine
from conftest import tiny_runlocal_config

flwr = pytest.importorskip('flwr')
from flwr import common as flwr_common  # pylint: disable=g-import-not-at-top
from flwr.server import client_manager as flwr_client_manager  # pylint: disable=g-import-not-at-top
from fedgan_jax.deploy import server as server_lib  # pylint: disable=g-import-not-at-top

SITES = ('general', 'children_and_young', 'geriatric')


def small_config():
  config = tiny_runlocal_config()
  config.deploy = settings.get_deploy_config()
  config.deploy.update(connect_timeout_s=5.0, identify_timeout_s=5.0, round_timeout_s=5.0)
  return config


# ------------------------------------------------------------------- rogue hospitals


class FakeBridge:
  closed = False

  def close(self):
    self.closed = True


class FakeConnection:
  """A hospital's connection as the strategy sees it: answers "who are you?" like
  `hospital.Hospital.get_properties`, signed with `key` (None: unsigned, --insecure)."""

  def __init__(self, cid, site, key, client_id=None, silent=False):
    self.cid, self.site, self.key, self.silent = cid, site, key, silent
    self.client_id = SITES.index(site) if client_id is None else client_id
    self.bridge = FakeBridge()

  def get_properties(self, ins, timeout, group_id):
    del timeout, group_id
    if self.silent:
      raise ConnectionError('stream closed by the client')
    digest = security.properties_digest(ins.config['nonce'], self.site, self.client_id)
    return flwr_common.GetPropertiesRes(
        status=flwr_common.Status(code=flwr_common.Code.OK, message=''),
        properties={'site': self.site, 'client_id': self.client_id,
                    'signature': security.sign(self.key, digest)})


@pytest.fixture(scope='module')
def keys(tmp_path_factory):
  root = tmp_path_factory.mktemp('keys')
  private = {}
  for site in SITES:
    path, _ = security.write_hospital_key(str(root / 'roster'), site)
    private[site] = security.load_private_key(path)
  impostor, _ = security.write_hospital_key(str(root / 'impostor'), 'geriatric')
  return dict(public=security.load_hospital_keys(str(root / 'roster'), SITES), private=private,
              impostor=security.load_private_key(impostor))


@pytest.fixture(scope='module')
def strategy(keys, tmp_path_factory):
  coordinator = coordinator_lib.Coordinator(small_config(), str(tmp_path_factory.mktemp('srv')))
  yield server_lib.FedGanStrategy(coordinator, keys['public'],
                                  str(tmp_path_factory.mktemp('audit') / 'messages.jsonl'))
  coordinator.close()


def test_unregistered_key_is_refused_and_the_round_goes_on(strategy, keys, caplog):
  """Probe 1: refusing a connection unregistered it while iterating flwr's live dict."""
  manager = flwr_client_manager.SimpleClientManager()
  honest = [FakeConnection(f'c{i}', site, keys['private'][site]) for i, site in
            enumerate(SITES[:2])]
  rogue = FakeConnection('rogue', 'geriatric', keys['impostor'])
  for connection in (honest[0], rogue, honest[1]):
    manager.register(connection)
  with caplog.at_level('WARNING'):
    chosen = strategy.configure_fit(1, flwr_common.Parameters([], ''), manager)
  assert sorted(proxy.cid for proxy, _ in chosen) == ['c0', 'c1']
  assert rogue.bridge.closed and 'rogue' not in manager.all()
  assert "Refused connection rogue (claims site 'geriatric')" in caplog.text
  assert 'signature does not match' in caplog.text
  # Next round: the refused site is not waited for (min_available is the whole roster).
  assert strategy._sites_to_wait_for() == 2
  strategy._site_of_proxy.clear()  # The next test starts with nobody identified.


def test_silent_and_off_roster_connections_are_refused(strategy, keys, caplog):
  manager = flwr_client_manager.SimpleClientManager()
  connections = [FakeConnection('ok', 'general', keys['private']['general']),
                 FakeConnection('silent', 'general', None, silent=True),
                 FakeConnection('stranger', 'general', keys['private']['general'], client_id=2),
                 FakeConnection('twin', 'general', keys['private']['general'])]
  for connection in connections:
    manager.register(connection)
  with caplog.at_level('WARNING'):
    chosen = strategy.configure_fit(1, flwr_common.Parameters([], ''), manager)
  assert [proxy.cid for proxy, _ in chosen] == ['ok']
  assert sorted(manager.all()) == ['ok']
  assert 'Refused connection silent' in caplog.text and 'not on the roster' in caplog.text
  assert "site 'general' is already connected" in caplog.text
  strategy._site_of_proxy.clear()


def _fit_res(strategy, keys, site, scale=1e-3, mutate=None, key=None):
  """A hospital's reply as `Hospital.fit` builds it; `mutate` edits (arrays, metrics)."""
  coordinator = strategy._coordinator
  arrays = [np.full(shape, scale, np.float32) for shape, _ in coordinator.specs]
  metrics = {'site': site, 'client_id': SITES.index(site), 'round': coordinator.round_index,
             'd_loss': 1.0}
  if mutate is not None:
    arrays, metrics = mutate(arrays, metrics)
  losses = {k: v for k, v in metrics.items() if k in common.REPLY_METRICS}
  digest = security.reply_digest(strategy._nonce, site, SITES.index(site), metrics['round'],
                                 arrays, 100, losses)
  metrics.setdefault('signature', security.sign(key or keys['private'][site], digest))
  return flwr_common.FitRes(status=flwr_common.Status(code=flwr_common.Code.OK, message=''),
                            parameters=flwr_common.ndarrays_to_parameters(arrays),
                            num_examples=100, metrics=metrics)


def _huge(arrays, metrics):
  return [a + 1e6 for a in arrays], metrics


ROGUE_REPLIES = {
    'nan': (lambda a, m: ([a[0] * np.nan] + a[1:], m), 'NaN or inf'),
    'huge': (_huge, 'exceeds deploy.max_delta_norm=100'),
    'shape': (lambda a, m: ([np.zeros(a[0].shape + (2,), np.float32)] + a[1:], m),
              'array 0 is'),
    'stale_round': (lambda a, m: (a, dict(m, round=m['round'] - 1)), 'stale or replayed'),
    'extra_field': (lambda a, m: (a, dict(m, images=b'raw')), "unexpected field 'images'"),
    'wrong_key': (None, 'signature does not match'),
}


@pytest.mark.parametrize('kind', sorted(ROGUE_REPLIES))
def test_rogue_reply_is_dropped_by_name_and_the_round_goes_on(strategy, keys, kind, caplog):
  coordinator = strategy._coordinator
  connections = {site: FakeConnection(f'{kind}-{site}', site, None) for site in SITES}
  strategy._site_of_proxy.update({c.cid: SITES.index(s) for s, c in connections.items()})
  strategy._chosen = {c.cid: SITES.index(s) for s, c in connections.items()}
  mutate, message = ROGUE_REPLIES[kind]
  rogue = _fit_res(strategy, keys, 'geriatric', mutate=mutate,
                   key=keys['impostor'] if kind == 'wrong_key' else None)
  results = [(connections['general'], _fit_res(strategy, keys, 'general')),
             (connections['children_and_young'], _fit_res(strategy, keys, 'children_and_young')),
             (connections['geriatric'], rogue)]
  before = coordinator.round_index
  start = jax.device_get(coordinator.state.params)
  with caplog.at_level('WARNING'):
    strategy.aggregate_fit(before + 1, results, [])
  assert coordinator.round_index == before + 1
  assert "'geriatric': " in caplog.text and message in caplog.text
  # FedAvg of the two honest deltas (both 1e-3 everywhere), server SGD with rate 1.
  moved = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - b - 1e-3)),
                       coordinator.state.params, start)
  assert max(jax.tree.leaves(moved)) < 1e-6
  strategy._site_of_proxy.clear()


def test_a_site_that_never_replies_is_named_and_too_few_replies_stop_cleanly(strategy, keys,
                                                                             caplog):
  connections = {site: FakeConnection(f'gone-{site}', site, None) for site in SITES}
  strategy._site_of_proxy.update({c.cid: SITES.index(s) for s, c in connections.items()})
  strategy._chosen = {c.cid: SITES.index(s) for s, c in connections.items()}
  before = strategy._coordinator.round_index
  nan = ROGUE_REPLIES['nan'][0]
  results = [(connections['general'], _fit_res(strategy, keys, 'general', mutate=nan))]
  with caplog.at_level('WARNING'), pytest.raises(server_lib.RoundFailedError,
                                                 match='0 valid replies'):
    strategy.aggregate_fit(before + 1, results, [TimeoutError('deadline')])
  assert strategy._coordinator.round_index == before  # Nothing applied.
  assert "'geriatric': no reply" in caplog.text and "'general': InvalidReplyError" in caplog.text
  # Sites that failed to reply are not waited for while disconnected (nobody is now).
  assert {'children_and_young', 'geriatric'} <= strategy._failed_sites
  strategy._site_of_proxy.clear()


def test_server_binary_exits_on_any_error_instead_of_hanging(monkeypatch, capsys):
  """Probe 1's hang: an error other than RoundFailedError left Flower's gRPC threads up."""
  def broken_serve(*args, **kwargs):
    raise RuntimeError('dictionary changed size during iteration')
  exits = []

  def fake_exit(code):
    exits.append(code)
    raise SystemExit(code)
  monkeypatch.setattr(server_lib, 'serve', broken_serve)
  monkeypatch.setattr(server_lib.os, '_exit', fake_exit)
  monkeypatch.setattr(server_lib.security, 'warn_insecure', lambda binary: None)
  monkeypatch.setattr(server_lib, '_INSECURE', type('Flag', (), {'value': True}))
  monkeypatch.setattr(server_lib, '_CONFIG', type('Flag', (), {'value': small_config()}))
  monkeypatch.setattr(server_lib, '_WORKDIR', type('Flag', (), {'value': '/nonexistent'}))
  monkeypatch.setattr(server_lib, '_ADDRESS', type('Flag', (), {'value': '127.0.0.1:1'}))
  monkeypatch.setattr(server_lib.flags_common, 'start', lambda runtime: None)
  with pytest.raises(SystemExit):
    server_lib.main(['server'])
  assert exits == [1]
  assert 'the server stopped: RuntimeError' in capsys.readouterr().err


def test_server_update_that_blows_up_the_params_is_not_applied(tmp_path):
  config = small_config()
  config.fl.server_optimizer.learning_rate = 1e30
  coordinator = coordinator_lib.Coordinator(config, str(tmp_path))
  ones = [np.ones(shape, np.float32) for shape, _ in coordinator.specs]
  coordinator.participants()
  with pytest.raises(validation.ParameterCheckError, match='max_abs_param'):
    coordinator.apply([coordinator_lib.Reply(0, 10, ones, {})])
  coordinator.close()
  assert coordinator.round_index == 0 and not os.listdir(tmp_path / 'checkpoints')


# ------------------------------------------------------------------------ checkpoints


def run_training(workdir, rounds, **overrides):
  """`train.train_gan` on the tiny runlocal config (the sequential strategy: one client
  program, compiled once per session)."""
  config = tiny_runlocal_config()
  config.fl.num_rounds = rounds
  config.runtime.strategy = 'sequential'
  config.checkpoint.every_rounds = 1
  config.train.update(sample_every_rounds=1000)
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for name in parents:
      node = node[name]
    node[leaf] = value
  validation.validate_config(config)
  return config, train.train_gan(config, str(workdir), *federation_and_task_cache())


_CACHE = {}


def federation_and_task_cache():
  """The tiny runlocal federation and task, built once for the module."""
  if not _CACHE:
    config = tiny_runlocal_config()
    federation = registry.load_federation(config)
    _CACHE['value'] = (federation, task_lib.build_task(config, federation.schema,
                                                       federation.image_shape))
  return _CACHE['value']


def _steps(workdir):
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / 'checkpoints').iterdir()
                if p.name.isdigit())


def _flat(state):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(
      (state.params, state.generator_ema))])


@pytest.fixture(scope='module')
def three_rounds(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('three_rounds')
  _, state = run_training(workdir, 3)
  return workdir, _flat(state)


def test_poisoned_server_step_is_never_checkpointed_and_the_advice_works(tmp_path):
  """Probe 2: losses come before the server step, so checkpoint 1 held max|param| 1.2e27."""
  with pytest.raises(train.TrainingDivergedError) as raised:
    run_training(tmp_path, 2, **{'fl.server_optimizer.learning_rate': 1e30})
  message = str(raised.value)
  assert 'round 1: params' in message and 'train.max_abs_param' in message
  assert 'resume from round 0 (no checkpoint was written)' in message
  assert _steps(tmp_path) == []
  # The advice: a sane rate, the same workdir.
  _, state = run_training(tmp_path, 2)
  assert int(state.round) == 2 and _steps(tmp_path) == [1, 2]


def _corrupt(step_dir: pathlib.Path, how: str) -> None:
  files = sorted(p for p in (step_dir / 'params').rglob('*') if p.is_file()
                 and p.stat().st_size > 64 and 'metadata' not in p.name.lower())
  assert files, f'no data files under {step_dir}'
  for path in files:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3] if how == 'truncate' else b'\0' * len(data))


# Orbax's reader leaves an asyncio callback behind when it fails on damaged files.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('how', ['truncate', 'zero'])
def test_corrupt_latest_step_falls_back_to_the_newest_intact_one(three_rounds, tmp_path, how,
                                                                  caplog):
  """Probe 3: a damaged latest step was fatal; the intact earlier ones were never tried."""
  workdir = tmp_path / 'run'
  shutil.copytree(three_rounds[0], workdir)
  _corrupt(workdir / 'checkpoints' / '3', how)
  config = tiny_runlocal_config()
  # Evaluation (read-only) falls back without moving anything.
  step = checkpointing.newest_usable_step(str(workdir), config)
  assert step == 2 and _steps(workdir) == [1, 2, 3]
  # Training falls back, moves the unusable step aside (kept), and finishes bit-identical.
  with caplog.at_level('WARNING'):
    _, state = run_training(workdir, 3)
  assert 'Checkpoint of round 3' in caplog.text and 'unusable' in caplog.text
  assert (workdir / checkpointing.UNUSABLE_DIR / '3').is_dir()
  assert _steps(workdir) == [1, 2, 3]
  np.testing.assert_array_equal(_flat(state), three_rounds[1])


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_no_usable_step_stops_instead_of_starting_over(three_rounds, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(three_rounds[0], workdir)
  for step in (1, 2, 3):
    _corrupt(workdir / 'checkpoints' / str(step), 'zero')
  with pytest.raises(RuntimeError, match='no checkpoint in .* can be restored: round 3'):
    run_training(workdir, 3)
  assert _steps(workdir) == [1, 2, 3] and not (workdir / checkpointing.UNUSABLE_DIR).exists()


def test_checkpoint_folder_that_is_a_file_fails_at_once(tmp_path):
  """Probe 4: the save failed, then the process hung 5 minutes before a TimeoutError."""
  (tmp_path / 'checkpoints').write_text('not a folder')
  started = time.monotonic()
  with pytest.raises(checkpointing.CheckpointDirectoryError, match='is a file, not a folder'):
    train.train_and_evaluate(small_config(), str(tmp_path))
  assert time.monotonic() - started < 5


def test_full_disk_gives_one_message_and_keeps_the_last_checkpoint(three_rounds, tmp_path,
                                                                   monkeypatch):
  """Probe 7: ENOSPC was buried in ~1,000 lines of Orbax/asyncio noise."""
  workdir = tmp_path / 'run'
  shutil.copytree(three_rounds[0], workdir)

  def full_disk(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device', str(path))
  original = epath.Path.write_text
  monkeypatch.setattr(epath.Path, 'write_text', full_disk)
  started = time.monotonic()
  with pytest.raises(checkpointing.CheckpointWriteError) as raised:
    run_training(workdir, 4)
  assert time.monotonic() - started < 60
  message = str(raised.value)
  assert 'round 4' in message and 'the disk is full' in message and str(workdir) in message
  assert 'MiB' in message and 'round 3, is kept' in message
  monkeypatch.setattr(epath.Path, 'write_text', original)
  assert _steps(workdir) == [1, 2, 3] and not list((workdir / 'checkpoints').glob('4.*'))
  assert checkpointing.newest_usable_step(str(workdir), tiny_runlocal_config()) == 3


def test_incompatible_checkpoint_message_names_a_file_that_exists(three_rounds):
  config = tiny_runlocal_config()
  config.model.generator.z_dim += 1
  meta_path = three_rounds[0] / 'checkpoints' / '3' / checkpointing.META_FILE
  assert meta_path.is_file()
  with pytest.raises(checkpointing.IncompatibleCheckpointError) as raised:
    checkpointing.restore_params(str(three_rounds[0]), config, {})
  assert checkpointing.META_FILE in str(raised.value)
  assert 'config.json' not in str(raised.value)


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize('field, value', [('fl.batch_size', 0), ('fl.num_rounds', -5),
                                          ('fl.generator_ema', 1.0),
                                          ('fl.client_optimizer.d_learning_rate', float('nan')),
                                          ('dp.delta', 2.0)])
def test_out_of_domain_config_fails_at_start_naming_the_field(tmp_path, field, value):
  """Probe 6: num_rounds=-5 exited 0 with an untrained G; batch_size=0 hit ZeroDivisionError."""
  config = small_config()
  section, name = field.rsplit('.', 1)
  node = config
  for part in section.split('.'):
    node = node[part]
  node[name] = value
  with pytest.raises(validation.ConfigValueError, match=f'config.{field} = '):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'clients.json').exists()  # Nothing ran.


def test_every_shipped_numeric_field_outside_data_has_a_domain():
  from configs import cxr14, cxr14_dp, pneumoniamnist  # pylint: disable=g-import-not-at-top
  unchecked = set()
  for module in (phantom, phantom_dp, cxr14, cxr14_dp, pneumoniamnist):
    for variant in (None, 'runlocal'):
      config = module.get_config(variant)
      config.deploy = settings.get_deploy_config()
      validation.validate_config(config)
      unchecked |= {path for path, _ in validation.numeric_fields(config)
                    if validation.domain_of(path) is None}
  # Only data-source descriptions (logits, means, windows) and condition means may be
  # merely finite.
  assert all(p.startswith(('data.', 'conditions.')) for p in unchecked), sorted(unchecked)


def test_phantom_dp_runlocal_client_noise_does_not_swamp_the_model():
  """Probe 6: the smoke variant diverged at round 4 (per-parameter noise std 0.32)."""
  config = phantom_dp.get_config('runlocal,client')
  federation, _ = federation_and_task_cache()
  plan = privacy_engine.PrivacyPlan.from_config(config, federation.client_sizes)
  privacy = plan.aggregator()  # DP-FedAvg: clip norm, noise multiplier, denominator.
  per_parameter_std = privacy.noise_multiplier * privacy.clip_norm / privacy.expected_clients
  # The runlocal weights' RMS is 0.13: noise must stay a small fraction of it per round.
  assert per_parameter_std < 0.01


def test_check_params_names_the_leaf():
  tree = {'a': np.ones(3, np.float32), 'b': np.array([1.0, np.inf], np.float32)}
  with pytest.raises(validation.ParameterCheckError, match=r"\['b'\] holds NaN or inf"):
    validation.check_params(tree, 10.0, 'test')
  with pytest.raises(validation.ParameterCheckError, match=r"max \|\['a'\]\| = 1 exceeds"):
    validation.check_params({'a': tree['a']}, 0.5, 'test')
  validation.check_params({'a': tree['a']}, 1.0, 'test')

