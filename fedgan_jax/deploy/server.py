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

Every hospital is untrusted: a connection that does not identify itself within
`deploy.identify_timeout_s` with a valid signature is refused and closed; a reply with
the wrong shapes, NaN/inf, a delta norm above `deploy.max_delta_norm`, a stale or
replayed round, a bad signature, or anything else unexpected is dropped and logged by
site name; the round goes on with the rest or stops with a message, and any error ends
the process (exit 1) rather than leaving it hanging on Flower's threads.

Every hospital message is recorded (shapes, dtypes and scalar names only) in
`WORKDIR/deploy/messages.jsonl`, the audit trail of what left the hospitals.

Uses Flower's long-lived gRPC server (`flwr.server.start_server`), the Flower API whose
hospital processes stay up between rounds, so each compiles its local update once.
"""

from __future__ import annotations

import concurrent.futures
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
from fedgan_jax import validation
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


def _short(error: BaseException) -> str:
  """One line for the log: what a misbehaving hospital did, without a traceback."""
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:300] if lines else ""}'


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
    # Roster sites claimed by a refused connection, or that failed to reply, in this run:
    # not waited for before a round while they are not connected.
    self._failed_sites: set[str] = set()
    self._chosen: dict[str, int] = {}  # This round's connections -> client id.
    self._audit_path = audit_path
    self._audit_lock = threading.Lock()
    os.makedirs(os.path.dirname(audit_path), exist_ok=True)

  def _audit(self, entry: dict) -> None:
    with self._audit_lock, open(self._audit_path, 'a') as f:
      f.write(json.dumps(entry) + '\n')

  def initialize_parameters(self, client_manager):
    return flwr_common.ndarrays_to_parameters(
        common.params_to_arrays(self._coordinator.state.params))

  def _identify(self, proxy, server_round: int) -> tuple[int | None, str | None]:
    """Asks a new connection which site it is.

    Returns `(client id, claimed site)`, the id None when the answer is refused (logged
    with the reason: no or malformed answer, off the roster, bad signature, duplicate).
    """
    sites = self._coordinator.sites
    site = None
    try:
      answer = proxy.get_properties(flwr_common.GetPropertiesIns({'nonce': self._nonce}),
                                    timeout=float(self._deploy.identify_timeout_s),
                                    group_id=server_round)
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
    except Exception as error:  # pylint: disable=broad-except
      # Every connection is untrusted: whatever it sends (or fails to send) refuses it.
      logging.warning('Refused connection %s%s: %s', proxy.cid,
                      f' (claims site {site!r})' if site else '', _short(error))
      return None, site if site in sites else None
    return client_id, site

  def _refuse(self, proxy, client_manager) -> None:
    """Drops a connection: out of the client manager, and its stream closed, so it takes
    no part in any round and its process is told the server is gone."""
    client_manager.unregister(proxy)
    bridge = getattr(proxy, 'bridge', None)
    if bridge is not None:
      try:
        bridge.close()
      except Exception:  # pylint: disable=broad-except
        pass  # Already closed by its own disconnect.

  def _identify_new(self, proxies: dict, client_manager, server_round: int) -> None:
    """Identifies every not yet identified connection, `deploy.identify_concurrency` at a
    time, so silent connections cost `deploy.identify_timeout_s` per batch, not each."""
    new = [(cid, proxy) for cid, proxy in proxies.items() if cid not in self._site_of_proxy]
    if not new:
      return
    threads = min(len(new), int(self._deploy.identify_concurrency))
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
      answers = list(pool.map(lambda item: self._identify(item[1], server_round), new))
    for (cid, proxy), (client_id, site) in zip(new, answers):
      if client_id is not None and client_id in self._site_of_proxy.values():
        logging.warning('Refused connection %s: site %r is already connected.', cid, site)
        client_id = None
      elif client_id is None and site is not None:
        self._failed_sites.add(site)
      if client_id is None:
        self._refuse(proxy, client_manager)
        continue
      self._site_of_proxy[cid] = client_id
      self._failed_sites.discard(site)
      logging.info('Hospital %s (client %d) connected as %s.', site, client_id, cid)

  def _sites_to_wait_for(self) -> int:
    """`deploy.min_available_hospitals`, less roster sites that were refused or failed to
    reply in this run and are not connected now: waiting for them would stall every round
    for `deploy.connect_timeout_s`. They rejoin as soon as they connect again."""
    wanted = min(settings.min_available(self._config), len(self._coordinator.sites))
    connected = {self._coordinator.sites[i] for i in self._site_of_proxy.values()}
    return max(wanted - len(self._failed_sites - connected), 1)

  def _forget_disconnected(self, proxies: dict) -> None:
    for cid in set(self._site_of_proxy) - set(proxies):
      del self._site_of_proxy[cid]

  def configure_fit(self, server_round, parameters, client_manager):
    # Copies: flwr's client manager hands out its live dict, which connections (and
    # `_refuse` below) change while we go through it.
    self._forget_disconnected(dict(client_manager.all()))
    wanted = self._sites_to_wait_for()
    if not client_manager.wait_for(wanted, timeout=int(self._deploy.connect_timeout_s)):
      raise RoundFailedError(f'only {client_manager.num_available()} of the {wanted} hospitals '
                             '(deploy.min_available_hospitals) connected within '
                             f'deploy.connect_timeout_s={self._deploy.connect_timeout_s}.')
    proxies = dict(client_manager.all())
    self._forget_disconnected(proxies)
    self._identify_new(proxies, client_manager, server_round)
    participants = set(int(i) for i in self._coordinator.participants())
    round_index = self._coordinator.round_index
    # `parameters` is what initialize_parameters / the last aggregate_fit serialized from the
    # coordinator's state: reused rather than serialized again.
    instructions = flwr_common.FitIns(parameters, {'round': round_index, 'nonce': self._nonce})
    chosen = [(proxy, instructions) for cid, proxy in proxies.items()
              if self._site_of_proxy.get(cid) in participants]
    self._chosen = {proxy.cid: self._site_of_proxy[proxy.cid] for proxy, _ in chosen}
    if not chosen:
      raise RoundFailedError(f'round {round_index + 1}: none of the sampled sites '
                             f'{sorted(self._coordinator.sites[i] for i in participants)} is '
                             'connected.')
    return chosen

  def _site_name(self, cid: str) -> str:
    site_id = self._site_of_proxy.get(cid, self._chosen.get(cid))
    return repr(self._coordinator.sites[site_id]) if site_id is not None else f'connection {cid}'

  def _check(self, proxy, fit_res) -> coordinator_lib.Reply:
    site_id = self._site_of_proxy.get(proxy.cid)
    if site_id is None:
      raise common.InvalidReplyError('reply from a connection that was never identified.')
    arrays = flwr_common.parameters_to_ndarrays(fit_res.parameters)
    metrics = dict(fit_res.metrics)
    self._audit({'kind': 'fit', 'round': self._coordinator.round_index,
                 'arrays': [[list(a.shape), str(a.dtype)] for a in arrays],
                 'num_examples': fit_res.num_examples,
                 'fields': {k: type(v).__name__ for k, v in metrics.items()}})
    common.check_reply(arrays, fit_res.num_examples, metrics, self._coordinator.specs,
                       site=self._coordinator.sites[site_id])
    site = metrics['site']
    if self._coordinator.sites[site_id] != site or metrics['client_id'] != site_id:
      raise common.InvalidReplyError(f'reply names {site!r} from a connection identified as '
                                     f'{self._coordinator.sites[site_id]!r}.')
    if metrics['round'] != self._coordinator.round_index:
      raise common.InvalidReplyError(f'reply for round index {metrics["round"]}, expected '
                                     f'{self._coordinator.round_index} (stale or replayed).')
    norm = common.delta_norm(arrays)
    limit = float(self._deploy.max_delta_norm)
    if not norm <= limit:
      raise common.InvalidReplyError(f'delta of global norm {norm:.4g} exceeds '
                                     f'deploy.max_delta_norm={limit:g}.')
    losses = {k: v for k, v in metrics.items() if k in common.REPLY_METRICS}
    digest = security.reply_digest(self._nonce, site, site_id, metrics['round'], arrays,
                                   fit_res.num_examples, losses)
    security.verify(None if self._keys is None else self._keys[site], digest,
                    metrics['signature'], site)
    return coordinator_lib.Reply(site_id, int(fit_res.num_examples), arrays, losses)

  def aggregate_fit(self, server_round, results, failures):
    replies, problems, answered = [], [], set()
    for proxy, fit_res in results:
      answered.add(proxy.cid)
      try:
        replies.append(self._check(proxy, fit_res))
      except Exception as error:  # pylint: disable=broad-except
        # Untrusted input: any reply that does not pass every check is dropped.
        problems.append(f'{self._site_name(proxy.cid)}: {_short(error)}')
    lost = []
    for failure in failures:
      if isinstance(failure, tuple):  # (proxy, FitRes) with a status other than OK.
        answered.add(failure[0].cid)
        lost.append(failure[0].cid)
        problems.append(f'{self._site_name(failure[0].cid)}: failed '
                        f'({failure[1].status.code.name}: {failure[1].status.message})')
    for cid in sorted(set(self._chosen) - answered):
      # Flower reports these as bare exceptions without their connection.
      lost.append(cid)
      problems.append(f'{self._site_name(cid)}: no reply (crashed, dropped out or took '
                      f'longer than deploy.round_timeout_s={self._deploy.round_timeout_s})')
    for cid in lost:
      if cid in self._chosen:
        self._failed_sites.add(self._coordinator.sites[self._chosen[cid]])
    round_number = self._coordinator.round_index + 1
    if problems:
      logging.warning('Round %d: %d hospital(s) left out: %s', round_number, len(problems),
                      '; '.join(problems))
      if not self._deploy.accept_failures:
        raise RoundFailedError(f'round {round_number}: {problems} and deploy.accept_failures is '
                               'False. Rerun to resume from the last checkpoint.')
    if len(replies) < max(int(self._deploy.min_fit_hospitals), 1):
      raise RoundFailedError(f'round {round_number}: {len(replies)} valid replies, fewer than '
                             f'deploy.min_fit_hospitals={self._deploy.min_fit_hospitals}'
                             + (f' ({"; ".join(problems)})' if problems else '') +
                             '. Rerun to resume from the last checkpoint.')
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
  validation.validate_config(config)
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
  except BaseException as error:  # pylint: disable=broad-except
    # Anything else (a bug, a full disk, Ctrl-C) must end the process too: Flower leaves its
    # gRPC server running when a round raises, and its threads would keep us alive forever.
    logging.exception('The server stopped: %s', error)
    print(f'ERROR: the server stopped: {type(error).__name__}: {error}. Rerun the same '
          'command to resume from the last checkpoint.', file=sys.stderr, flush=True)
    os._exit(1)


if __name__ == '__main__':
  app.run(main)
