"""A hospital's Flower client: the simulation's local update on this site's data only.

    python -m fedgan_jax.deploy.hospital --config=configs/phantom.py --site=general \
        --data=/data/general.npz --server=fedgan.example.org:8080 \
        --root_certificates=certs/ca.crt --private_key=keys/general.key

The data file is read from this hospital's own disk (`common.load_site_data`) and never
leaves it. For each round the server sends the global params and the round index; the
hospital draws its batches with `sampling.client_batches(data, seed, round, client_id)`
and its key as `rngs.client_key(rngs.round_key(seed, round), client_id)`, runs
`client_init`, K `client_step`s and `client_final` (as the simulation's sequential
strategy does, each jitted once for the life of the process) and replies with the
parameter delta, its example count and its mean losses, signed with its private key.
The site's global client id is its position in the roster (`config.deploy.sites`).

`--exit_at_round=R` makes the process die after receiving round R's params, before
replying: a hospital dropping out mid-round, for fault-tolerance tests. `--misbehave=KIND`
makes it a rogue that signs what it sends with its real key (tests and
`benchmarks/soak.py`): `nan` or `huge` deltas, or a `stale_round` reply.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from absl import app
from absl import flags
from absl import logging
import flwr
import grpc
import jax
import numpy as np

from fedgan_jax import cpu_backend
from fedgan_jax import flags_common
from fedgan_jax import validation
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.deploy import common
from fedgan_jax.deploy import security
from fedgan_jax.deploy import settings
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import execution
from fedgan_jax.federated import sampling
from fedgan_jax.federated import server as server_lib
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import engine as privacy_engine

_CONFIG = flags_common.define_config('Experiment config file (the same as the server\'s).')
_SITE = flags.DEFINE_string('site', None, 'This hospital\'s name on the roster.')
_DATA = flags.DEFINE_string('data', None, 'This hospital\'s npz (see common.export_site_data).')
_SERVER = flags.DEFINE_string('server', None, 'Server host:port.')
_ROOT_CERTIFICATES = flags.DEFINE_string('root_certificates', None,
                                         'CA certificate (PEM) that signed the server\'s.')
_PRIVATE_KEY = flags.DEFINE_string('private_key', None, 'This site\'s Ed25519 key (PEM).')
_INSECURE = flags.DEFINE_bool('insecure', False, 'No TLS and unsigned messages: tests on '
                              'loopback only.')
_EXIT_AT_ROUND = flags.DEFINE_integer('exit_at_round', -1, 'Testing: die mid-round at this '
                                      '0-based round index (-1 = never).')
MISBEHAVIOURS = ('', 'nan', 'huge', 'stale_round')
_MISBEHAVE = flags.DEFINE_enum('misbehave', '', MISBEHAVIOURS, 'Testing: reply as a rogue site '
                               'would (nan or huge deltas, a stale round); signed as usual.')
_RUNTIME = flags_common.define_runtime_flags()
flags.mark_flags_as_required(['config', 'site', 'data', 'server'])


class LocalTrainer:
  """A hospital's local update, compiled as the simulation's `sequential` round compiles it."""

  def __init__(self, task: client_lib.GanTask, fuse_local_steps: bool = True,
               compiler_options: dict | None = None):
    self._client_update = execution.ClientUpdate(task, fuse_local_steps, compiler_options)

  def __call__(self, server_params, batches, rng):
    """Returns `(delta, mean losses over the K steps)`."""
    delta, metrics = self._client_update(server_params, batches, rng)
    return delta, {k: float(v) for k, v in jax.device_get(metrics).items()}


class Hospital(flwr.client.NumPyClient):
  """Answers the server: who it is (signed), and each round's local update (signed)."""

  def __init__(self, config, site: str, data: dataset_lib.ClientData,
               private_key=None, exit_at_round: int = -1, misbehave: str = ''):
    self._config = config
    self._site = site
    self._client_id = settings.client_id(config, site)
    self._data = data
    self._key = private_key
    self._exit_at_round = exit_at_round
    if misbehave not in MISBEHAVIOURS:
      raise ValueError(f'--misbehave={misbehave!r}: expected one of {MISBEHAVIOURS}.')
    self._misbehave = misbehave
    schema = conditions_lib.ConditionSchema.from_config(config.conditions)
    # Refuses what a deployment cannot account (example-level DP needs every site's size).
    plan = privacy_engine.PrivacyPlan.from_config(config, (),
                                                  num_clients=len(settings.site_names(config)))
    task = task_lib.build_task(config, schema, data.images.shape[1:], **plan.task_gradients())
    if task.public_fake_conditions:
      raise ValueError('fl.fake_conditions="public_prior" is not available to deployed hospitals '
                       '(no public condition prior reaches a site yet); set '
                       '--config.fl.fake_conditions=batch.')
    self._template = jax.eval_shape(lambda: client_lib.init_params(
        task, jax.random.key(0, impl='rbg'), tuple(data.images.shape[1:]), schema.model_dim))
    knobs = server_lib.runtime_options(config).execution
    self._train = LocalTrainer(task, knobs.fuse_local_steps,
                               cpu_backend.client_compiler_options(knobs.ynn_fusions))

  def get_properties(self, config):
    digest = security.properties_digest(config['nonce'], self._site, self._client_id)
    return {'site': self._site, 'client_id': self._client_id,
            'signature': security.sign(self._key, digest)}

  def local_update(self, server_params, round_index: int):
    """The pure local update of round `round_index` (no Flower involved)."""
    fl = self._config.fl
    batches = sampling.client_batches(self._data, self._config.seed, round_index,
                                      self._client_id, fl.local_steps, fl.batch_size)
    rng = common.client_round_rng(self._config.seed, round_index, self._client_id)
    return self._train(server_params, batches, rng)

  def fit(self, parameters, config):
    round_index = int(config['round'])
    if round_index == self._exit_at_round:
      logging.warning('--exit_at_round=%d: dying mid-round.', round_index)
      os._exit(3)  # pylint: disable=protected-access
    started = time.perf_counter()
    server_params = common.arrays_to_params(parameters, self._template)
    delta, losses = self.local_update(server_params, round_index)
    arrays = common.params_to_arrays(delta)
    if self._misbehave == 'nan':
      arrays[0] = np.full_like(arrays[0], np.nan)
    elif self._misbehave == 'huge':
      arrays = [a * np.float32(1e6) + np.float32(1.0) for a in arrays]
    elif self._misbehave == 'stale_round':
      round_index -= 1
    losses['local_update_s'] = time.perf_counter() - started
    digest = security.reply_digest(config['nonce'], self._site, self._client_id, round_index,
                                   arrays, len(self._data), losses)
    metrics = {'site': self._site, 'client_id': self._client_id, 'round': round_index,
               'signature': security.sign(self._key, digest), **losses}
    logging.info('Round %d done: %s', round_index + 1,
                 ' '.join(f'{k} {v:.3f}' for k, v in losses.items()))
    return arrays, len(self._data), metrics


def wait_for_server(address: str, max_wait_s: float, poll_s: float) -> None:
  """Blocks until `address` accepts TCP connections: Flower's legacy client gives up at once
  on a refused connection, and hospitals may well start before the server."""
  host, _, port = address.rpartition(':')
  host = host.strip('[]')
  deadline = time.monotonic() + max_wait_s
  while True:
    try:
      with socket.create_connection((host, int(port)), timeout=poll_s):
        return
    except OSError as error:
      if time.monotonic() > deadline:
        raise ConnectionError(f'--server={address}: no server after {max_wait_s} s '
                              f'(deploy.hospital_max_wait_s): {error}') from error
      time.sleep(poll_s)


def main(argv):
  flags_common.check_no_arguments(argv)
  config = _CONFIG.value
  validation.validate_config(config)
  flags_common.start(_RUNTIME)
  if _INSECURE.value:
    security.warn_insecure('fedgan_jax.deploy.hospital')
    private_key, root_certificates = None, None
  else:
    if not _ROOT_CERTIFICATES.value or not _PRIVATE_KEY.value:
      raise app.UsageError('TLS and authentication are on by default: set --root_certificates '
                           '(the consortium CA) and --private_key (this site\'s key), or '
                           '--insecure for a loopback test.')
    private_key = security.load_private_key(_PRIVATE_KEY.value)
    with open(_ROOT_CERTIFICATES.value, 'rb') as f:
      root_certificates = f.read()
  schema = conditions_lib.ConditionSchema.from_config(config.conditions)
  data = common.load_site_data(_DATA.value, _SITE.value, schema)
  hospital = Hospital(config, _SITE.value, data, private_key, _EXIT_AT_ROUND.value,
                      _MISBEHAVE.value)
  deploy = settings.deploy_config(config)
  logging.info('Site %s (client %d, %d examples) connecting to %s.', _SITE.value,
               settings.client_id(config, _SITE.value), len(data), _SERVER.value)
  wait_for_server(_SERVER.value, float(deploy.hospital_max_wait_s), float(deploy.hospital_poll_s))
  try:
    flwr.client.start_client(
        server_address=_SERVER.value, client=hospital.to_client(), insecure=_INSECURE.value,
        root_certificates=root_certificates,
        grpc_max_message_length=int(deploy.max_message_bytes),
        max_wait_time=float(deploy.hospital_max_wait_s))
  except grpc.RpcError as error:
    # The server closes the stream of a connection it refuses (fedgan_jax/deploy/README.md,
    # "Rogue hospitals"), or it stopped; say which checks to make instead of a gRPC trace.
    message = (f'the server at {_SERVER.value} closed the connection ({error.code().name}). '
               'If its log says "Refused connection ... (claims site '
               f'{_SITE.value!r})", check that --private_key matches the {_SITE.value}.pub the '
               'server holds and that this is the same config; otherwise the server stopped: '
               'rerun this hospital when it is back.')
    logging.error('%s', message)
    print(f'ERROR: {message}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
