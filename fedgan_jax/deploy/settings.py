"""The `deploy` config section of a cross-silo (Flower) run, and the site roster.

An experiment config may carry `config.deploy` (see `get_deploy_config`); a config
without it gets these defaults, so every experiment config can be deployed as is.

The roster `deploy.sites` fixes each hospital's global client id (its position), which
drives its batches (`sampling.client_batches`) and its rng exactly as in the simulation.
Left empty, it is the data config's hospital names (`data.hospitals[:num_hospitals]`),
the order the simulation numbers its clients in.
"""

from __future__ import annotations

import ml_collections


def get_deploy_config() -> ml_collections.ConfigDict:
  """Defaults of `config.deploy`."""
  return ml_collections.ConfigDict(dict(
      sites=(),                       # Roster: site names in client-id order; () = data hospitals.
      address='0.0.0.0:8080',         # Where the server listens (host:port).
      min_available_hospitals=0,      # Wait for this many before each round; 0 = whole roster.
      min_fit_hospitals=1,            # Fewer replies than this fail the round (run stops).
      accept_failures=True,           # False: any hospital failing in a round stops the run.
      round_timeout_s=3600.0,         # Longest wait for a round's replies.
      connect_timeout_s=3600.0,       # Longest wait for hospitals to connect before a round.
      # Longest wait for a new connection to say which site it is; one that does not answer
      # in time is refused.
      identify_timeout_s=60.0,
      # New connections asked at once: a flood of silent ones costs identify_timeout_s per
      # this many (a roster is a few dozen sites).
      identify_concurrency=32,
      # A reply whose delta has a larger global L2 norm is dropped before aggregation, so
      # one site cannot blow up the global model. Honest updates are far smaller: K local
      # Adam steps move each parameter by at most ~K x learning rate, ~1 in norm for the
      # 1.7M-parameter phantom model at the default rates (0.9 measured, configs/phantom_dp.py).
      # Set it to a few times your sites' update norms.
      max_delta_norm=100.0,
      hospital_max_wait_s=600.0,      # A hospital retries connecting to the server this long,
      hospital_poll_s=1.0,            # every this many seconds.
      max_message_bytes=536_870_912,  # gRPC message limit, both ends (Flower's default).
  ))


def deploy_config(config) -> ml_collections.ConfigDict:
  """`config.deploy` over the defaults; unknown fields are an error naming them."""
  merged = get_deploy_config()
  given = config.get('deploy', None)
  if given is not None:
    unknown = sorted(set(given.keys()) - set(merged.keys()))
    if unknown:
      raise ValueError(f'config.deploy: unknown field(s) {unknown}; known: '
                       f'{sorted(merged.keys())}.')
    merged.update(given.to_dict() if isinstance(given, ml_collections.ConfigDict) else given)
  return merged


def site_names(config) -> tuple[str, ...]:
  """The roster: site names in global client-id order."""
  sites = tuple(deploy_config(config).sites)
  if not sites:
    hospitals = config.data.get('hospitals', None)
    if not hospitals:
      raise ValueError('config.deploy.sites is empty and config.data has no `hospitals` list: '
                       'list the participating sites, e.g. --config.deploy.sites="(\'a\',\'b\')".')
    count = config.data.get('num_hospitals', len(hospitals))
    sites = tuple(h.name for h in hospitals[:count])
  if len(set(sites)) != len(sites):
    raise ValueError(f'config.deploy.sites: duplicate site names in {sites}.')
  return sites


def client_id(config, site: str) -> int:
  """The global client id of `site` (its index in the roster)."""
  sites = site_names(config)
  if site not in sites:
    raise ValueError(f'--site={site!r} is not in the roster {sites} (config.deploy.sites, or the '
                     'data config\'s hospital names).')
  return sites.index(site)


def min_available(config) -> int:
  wanted = int(deploy_config(config).min_available_hospitals)
  return wanted if wanted > 0 else len(site_names(config))
