"""The consortium's Flower server: the simulation's server update over the network.

    python -m fedgan_jax.deploy.server --config=configs/phantom.py --workdir=/srv/fedgan \
        --ssl_ca_certfile=certs/ca.crt --ssl_certfile=certs/server.pem \
        --ssl_keyfile=certs/server.key --hospital_keys=keys/ [--address=0.0.0.0:8080]

Each round it waits for `deploy.min_available_hospitals`, identifies every newly
connected hospital (a signed answer naming its roster site), sends the current params
to the sites `sampling.sample_clients` picks for this round (the simulation's choice),
checks and authenticates every reply (`common.check_reply`, `security.verify`) and
hands the valid ones to `coordinator.Coordinator`, which applies FedAvg (or client-level
DP) and the server optimizer, logs and checkpoints. A hospital that fails or drops out
mid-round is left out of that round when `deploy.accept_failures` (and the run goes on
while at least `deploy.min_fit_hospitals` replied); otherwise the run stops, and
rerunning the same command resumes from the last checkpoint.

Every hospital message is recorded (shapes, dtypes and scalar names only) in
`WORKDIR/deploy/messages.jsonl`, the audit trail of what left the hospitals.

Uses Flower's long-lived gRPC server (`flwr.server.start_server`), the Flower API whose
hospital processes stay up between rounds, so each compiles its local update once.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading

from absl import app
from absl import flags
from absl import logging
import flwr
from flwr import common as flwr_common
from flwr.server import strategy as flwr_strategy

from fedgan_jax import flags_common
from fedgan_jax.deploy import common
from fedgan_jax.deploy import coordinator as coordinator_lib
from fedgan_jax.deploy import security
from fedgan_jax.deploy import settings

_CONFIG = flags_common.define_config()
_WORKDIR = flags_common.define_workdir('Checkpoints, metrics and the message audit.')
_ADDRESS = flags.DEFINE_string('address', None, 'host:port to listen on (default deploy.address).')
_SSL_CA = flags.DEFINE_string('ssl_ca_certfile', None, 'CA certificate (PEM) the hospitals trust.')
_SSL_CERT = flags.DEFINE_string('ssl_certfile', None, "Server's TLS certificate (PEM).")
_SSL_KEY = flags.DEFINE_string('ssl_keyfile', None, "Server's TLS private key (PEM).")
_HOSPITAL_KEYS = flags.DEFINE_string('hospital_keys', None,
                                     'Directory with SITE.pub, the Ed25519 public key of every '
                                     'roster site (node authentication).')
_INSECURE = flags.DEFINE_bool('insecure', False, 'No TLS and no hospital authentication: tests '
                              'on loopback only.')
_RUNTIME = flags_common.define_runtime_flags()
flags.mark_flags_as_required(['config', 'workdir'])


class RoundFailedError(RuntimeError):
  pass


class FedGanStrategy(flwr_strategy.Strategy):
  """Flower strategy that delegates the math to a `Coordinator`."""

  def __init__(self, coordinator: coordinator_lib.Coordinator, hospital_keys: dict | None,
               audit_path: str):
    super().__init__()
    self._coordinator = coordinator
    self._config = coordinator.config
    self._deploy = settings.deploy_config(coordinator.config)
    self._keys = hospital_keys  # None = authentication off (--insecure).
    self._nonce = secrets.token_bytes(16)  # Binds signatures to this run.
    self._site_of_proxy: dict[str, int] = {}  # Flower cid -> client id, once identified.
    self._audit_path = audit_path
    self._audit_lock = threading.Lock()
    os.makedirs(os.path.dirname(audit_path), exist_ok=True)

  def _audit(self, entry: dict) -> None:
    with self._audit_lock, open(self._audit_path, 'a') as f:
      f.write(json.dumps(entry) + '\n')

  def initialize_parameters(self, client_manager):
    return flwr_common.ndarrays_to_parameters(
        common.params_to_arrays(self._coordinator.state.params))

  def _identify(self, proxy, server_round: int) -> int | None:
    """Asks a new connection which site it is; returns its client id when authenticated."""
    sites = self._coordinator.sites
    try:
      answer = proxy.get_properties(flwr_common.GetPropertiesIns({'nonce': self._nonce}),
                                    timeout=self._deploy.round_timeout_s, group_id=server_round)
      properties = dict(answer.properties)
      self._audit({'kind': 'properties', 'round': self._coordinator.round_index,
                   'fields': {k: type(v).__name__ for k, v in properties.items()}})
      common.check_scalars(properties, common.PROPERTY_FIELDS, (), site=proxy.cid)
      site, client_id = properties['site'], properties['client_id']
      if site not in sites or sites.index(site) != client_id:
        raise common.InvalidReplyError(f'{site!r} with client id {client_id} is not on the '
                                       f'roster {sites}.')
      security.verify(None if self._keys is None else self._keys[site],
                      security.properties_digest(self._nonce, site, client_id),
                      properties['signature'], site)
      if client_id in self._site_of_proxy.values():
        raise common.InvalidReplyError(f'site {site!r} is already connected.')
    except Exception as error:  # pylint: disable=broad-except
      logging.warning('Refused connection %s: %s', proxy.cid, error)
      return None
    logging.info('Hospital %s (client %d) connected as %s.', site, client_id, proxy.cid)
    return client_id

  def configure_fit(self, server_round, parameters, client_manager):
    wanted = min(settings.min_available(self._config), len(self._coordinator.sites))
    if not client_manager.wait_for(wanted, timeout=int(self._deploy.connect_timeout_s)):
      raise RoundFailedError(f'only {client_manager.num_available()} of the {wanted} hospitals '
                             '(deploy.min_available_hospitals) connected within '
                             f'deploy.connect_timeout_s={self._deploy.connect_timeout_s}.')
    proxies = client_manager.all()
    for cid in set(self._site_of_proxy) - set(proxies):
      del self._site_of_proxy[cid]  # Disconnected.
    for cid, proxy in proxies.items():
      if cid not in self._site_of_proxy:
        client_id = self._identify(proxy, server_round)
        if client_id is None:
          client_manager.unregister(proxy)
        else:
          self._site_of_proxy[cid] = client_id
    participants = set(int(i) for i in self._coordinator.participants())
    round_index = self._coordinator.round_index
    # `parameters` is what initialize_parameters / the last aggregate_fit serialized from the
    # coordinator's state: reused rather than serialized again.
    instructions = flwr_common.FitIns(parameters, {'round': round_index, 'nonce': self._nonce})
    chosen = [(proxy, instructions) for cid, proxy in proxies.items()
              if self._site_of_proxy.get(cid) in participants]
    if not chosen:
      raise RoundFailedError(f'round {round_index + 1}: none of the sampled sites '
                             f'{sorted(participants)} is connected.')
    return chosen

  def _check(self, proxy, fit_res) -> coordinator_lib.Reply:
    arrays = flwr_common.parameters_to_ndarrays(fit_res.parameters)
    metrics = dict(fit_res.metrics)
    self._audit({'kind': 'fit', 'round': self._coordinator.round_index,
                 'arrays': [[list(a.shape), str(a.dtype)] for a in arrays],
                 'num_examples': fit_res.num_examples,
                 'fields': {k: type(v).__name__ for k, v in metrics.items()}})
    site_id = self._site_of_proxy.get(proxy.cid)
    common.check_reply(arrays, fit_res.num_examples, metrics, self._coordinator.specs,
                       site=str(metrics.get('site', proxy.cid)))
    site = metrics['site']
    if site_id is None or self._coordinator.sites[site_id] != site or (
        metrics['client_id'] != site_id):
      raise common.InvalidReplyError(f'reply names {site!r} from a connection identified as '
                                     f'{site_id}.')
    if metrics['round'] != self._coordinator.round_index:
      raise common.InvalidReplyError(f'{site}: reply for round {metrics["round"]}, expected '
                                     f'{self._coordinator.round_index}.')
    losses = {k: v for k, v in metrics.items() if k in common.REPLY_METRICS}
    digest = security.reply_digest(self._nonce, site, site_id, metrics['round'], arrays,
                                   fit_res.num_examples, losses)
    security.verify(None if self._keys is None else self._keys[site], digest,
                    metrics['signature'], site)
    return coordinator_lib.Reply(site_id, int(fit_res.num_examples), arrays, losses)

  def aggregate_fit(self, server_round, results, failures):
    replies, problems = [], [repr(f) for f in failures]
    for proxy, fit_res in results:
      try:
        replies.append(self._check(proxy, fit_res))
      except (common.InvalidReplyError, security.AuthenticationError) as error:
        problems.append(str(error))
    round_number = self._coordinator.round_index + 1
    if problems:
      logging.warning('Round %d: %d hospital(s) failed: %s', round_number, len(problems),
                      '; '.join(problems))
      if not self._deploy.accept_failures:
        raise RoundFailedError(f'round {round_number}: {problems} and deploy.accept_failures is '
                               'False. Rerun to resume from the last checkpoint.')
    if len(replies) < max(int(self._deploy.min_fit_hospitals), 1):
      raise RoundFailedError(f'round {round_number}: {len(replies)} valid replies, fewer than '
                             f'deploy.min_fit_hospitals={self._deploy.min_fit_hospitals}.')
    row = self._coordinator.apply(replies)
    metrics = {k: v for k, v in row.items() if isinstance(v, (int, float))}
    return (flwr_common.ndarrays_to_parameters(
        common.params_to_arrays(self._coordinator.state.params)), metrics)

  def configure_evaluate(self, server_round, parameters, client_manager):
    return []  # Evaluation runs afterwards on the checkpoint (`fedgan_jax.eval`).

  def aggregate_evaluate(self, server_round, results, failures):
    return None, {}

  def evaluate(self, server_round, parameters):
    return None


def tls_certificates(ca: str | None, certificate: str | None,
                     key: str | None) -> tuple[bytes, bytes, bytes]:
  missing = [name for name, value in (('--ssl_ca_certfile', ca), ('--ssl_certfile', certificate),
                                      ('--ssl_keyfile', key)) if not value]
  if missing:
    raise app.UsageError(f'TLS is on by default: set {missing} (or --insecure for a loopback '
                         'test). See fedgan_jax/deploy/README.md.')
  contents = []
  for path in (ca, certificate, key):
    with open(path, 'rb') as f:
      contents.append(f.read())
  return tuple(contents)


def serve(config, workdir: str, address: str, certificates: tuple[bytes, bytes, bytes] | None,
          hospital_keys: dict | None) -> coordinator_lib.Coordinator:
  """Runs the remaining rounds of `config.fl.num_rounds`; returns the finished coordinator."""
  coordinator = coordinator_lib.Coordinator(config, workdir)
  try:
    rounds = coordinator.rounds_left
    if rounds == 0:
      logging.info('All %d rounds already done in %s.', config.fl.num_rounds, workdir)
      return coordinator
    deploy = settings.deploy_config(config)
    strategy = FedGanStrategy(coordinator, hospital_keys,
                              os.path.join(workdir, 'deploy', 'messages.jsonl'))
    logging.info('Serving rounds %d..%d to %s on %s (TLS %s, authentication %s).',
                 coordinator.round_index + 1, config.fl.num_rounds, coordinator.sites, address,
                 'on' if certificates else 'OFF', 'on' if hospital_keys else 'OFF')
    flwr.server.start_server(
        server_address=address, strategy=strategy,
        config=flwr.server.ServerConfig(num_rounds=rounds, round_timeout=deploy.round_timeout_s),
        grpc_max_message_length=int(deploy.max_message_bytes), certificates=certificates)
  finally:
    coordinator.close()
  return coordinator


def main(argv):
  flags_common.check_no_arguments(argv)
  config = _CONFIG.value
  flags_common.start(_RUNTIME)
  if _INSECURE.value:
    security.warn_insecure('fedgan_jax.deploy.server')
    certificates, hospital_keys = None, None
  else:
    certificates = tls_certificates(_SSL_CA.value, _SSL_CERT.value, _SSL_KEY.value)
    if not _HOSPITAL_KEYS.value:
      raise app.UsageError('hospital authentication is on by default: set --hospital_keys=DIR '
                           '(SITE.pub per roster site) or --insecure for a loopback test.')
    hospital_keys = security.load_hospital_keys(_HOSPITAL_KEYS.value,
                                                settings.site_names(config))
  address = _ADDRESS.value or settings.deploy_config(config).address
  try:
    serve(config, _WORKDIR.value, address, certificates, hospital_keys)
  except RoundFailedError as error:
    logging.error('%s', error)
    print(f'ERROR: {error}', file=sys.stderr, flush=True)
    os._exit(1)  # gRPC server threads would otherwise keep the process alive.


if __name__ == '__main__':
  app.run(main)
