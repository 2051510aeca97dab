"""Privacy accounting with Google's `dp_accounting` (RDP and PLD accountants).

Both DP modes are Poisson-subsampled Gaussian mechanisms composed over training:
  * example-level (`dp.mode = 'example'`): at each local step a hospital with n_i examples
    samples each example with probability q_i = fl.batch_size / n_i and runs
    `dp_sgd.clipped_noisy_gradient`; the unit protected is one example of one hospital.
  * client-level (`dp.mode = 'client'`): each round samples each hospital with probability
    q = fl.clients_per_round / fl.num_clients and runs `client_dp.DpFedAvg`; the unit
    protected is a whole hospital.
The events take the noise multiplier of the query that trains, so the number the accountant
sees is the number that drives the noise.

Config fields read (ml_collections ConfigDicts or plain mappings):
  dp: mode ('none'|'example'|'client'), noise_multiplier, clip_norm, delta (None = default_delta),
    target_epsilon (None or float: then the noise multiplier is calibrated to it),
    accountant ('rdp'|'pld'), and optionally adaptive_clip.count_noise_multiplier (client mode).
  fl: num_rounds, local_steps, batch_size, clients_per_round, num_clients.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, Sequence

import dp_accounting
import numpy as np

from fedgan_jax.privacy import client_dp
from fedgan_jax.privacy import dp_sgd

MODES = ('none', 'example', 'client')
ACCOUNTANTS = ('rdp', 'pld')


def _sampled_gaussian_event(noise_multiplier: float, sampling_probability: float,
                            steps: int) -> dp_accounting.DpEvent:
  if steps == 0:
    return dp_accounting.NoOpDpEvent()
  if noise_multiplier == 0:
    return dp_accounting.NonPrivateDpEvent()
  return dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(sampling_probability,
                                          dp_accounting.GaussianDpEvent(noise_multiplier)),
      steps)


def _check_counts(noise_multiplier, count, count_name, population, population_name, steps,
                  steps_name):
  if not noise_multiplier >= 0:
    raise ValueError(f'dp.noise_multiplier must be >= 0, got {noise_multiplier}.')
  if not count > 0:
    raise ValueError(f'{count_name} must be > 0, got {count}.')
  if not population > 0:
    raise ValueError(f'{population_name} must be > 0, got {population}.')
  if not steps >= 0 or int(steps) != steps:
    raise ValueError(f'{steps_name} must be a whole number >= 0, got {steps}.')


def example_level_event(noise_multiplier: float, batch_size: int, dataset_size: int,
                        steps: int) -> dp_accounting.DpEvent:
  """DP-SGD at one hospital: Poisson-sampled Gaussian, q = batch_size / dataset_size, `steps` times.

  q is capped at 1: a hospital smaller than a batch uses every example every step, which is
  what q = 1 accounts for.
  """
  _check_counts(noise_multiplier, batch_size, 'fl.batch_size', dataset_size,
                'the hospital dataset size', steps, 'steps (fl.num_rounds * fl.local_steps)')
  return _sampled_gaussian_event(noise_multiplier, min(1.0, batch_size / dataset_size),
                                 int(steps))


def client_level_event(noise_multiplier: float, clients_per_round: int, num_clients: int,
                       rounds: int) -> dp_accounting.DpEvent:
  """DP-FedAvg: Poisson-sampled Gaussian, q = clients_per_round / num_clients, `rounds` times."""
  _check_counts(noise_multiplier, clients_per_round, 'fl.clients_per_round', num_clients,
                'fl.num_clients', rounds, 'rounds (fl.num_rounds)')
  if clients_per_round > num_clients:
    raise ValueError(f'fl.clients_per_round ({clients_per_round}) exceeds fl.num_clients '
                     f'({num_clients}).')
  return _sampled_gaussian_event(noise_multiplier, clients_per_round / num_clients, int(rounds))


def make_accountant(accountant: str = 'rdp') -> dp_accounting.PrivacyAccountant:
  """A fresh accountant by name; both use the add-or-remove-one neighbouring relation."""
  if accountant == 'rdp':
    return dp_accounting.rdp.RdpAccountant()
  if accountant == 'pld':
    return dp_accounting.pld.PLDAccountant()
  raise ValueError(f'dp.accountant must be one of {ACCOUNTANTS}, got {accountant!r}.')


def epsilon(event: dp_accounting.DpEvent, delta: float, accountant: str = 'rdp') -> float:
  """Epsilon of `event` at `delta` (inf for a non-private event, 0 for a no-op)."""
  if not 0 < delta < 1:
    raise ValueError(f'dp.delta must be in (0, 1), got {delta}.')
  return float(make_accountant(accountant).compose(event).get_epsilon(delta))


def calibrate_noise_multiplier(target_epsilon: float, delta: float,
                               make_event: Callable[[float], dp_accounting.DpEvent],
                               accountant: str = 'rdp', relative_tolerance: float = 1e-4,
                               max_noise_multiplier: float = 1e4) -> float:
  """Smallest noise multiplier (within `relative_tolerance`) whose epsilon is <= target.

  A bracket is found by doubling/halving (epsilon falls as the noise multiplier grows), then
  `dp_accounting.calibrate_dp_mechanism` (Brent's method) narrows it; it returns a value that
  meets the target, never one just above it.
  """
  if not target_epsilon > 0:
    raise ValueError(f'dp.target_epsilon must be > 0, got {target_epsilon}.')

  @functools.lru_cache(maxsize=None)  # The bracket search revisits its end points.
  def meets_target(noise_multiplier: float) -> bool:
    return epsilon(make_event(noise_multiplier), delta, accountant) <= target_epsilon

  upper = 1.0
  while not meets_target(upper):
    upper *= 2
    if upper > max_noise_multiplier:
      raise ValueError(f'dp.target_epsilon={target_epsilon} needs a noise multiplier above '
                       f'{max_noise_multiplier}; raise the target or sample less.')
  lower = upper / 2
  while meets_target(lower):
    upper, lower = lower, lower / 2
    if lower < 1e-6:
      return upper
  return float(dp_accounting.calibrate_dp_mechanism(
      lambda: make_accountant(accountant), make_event, target_epsilon, delta,
      dp_accounting.ExplicitBracketInterval(lower, upper), tol=relative_tolerance * lower))


def default_delta(dataset_size: int) -> float:
  """The largest power of ten <= 1 / (10 * dataset_size), i.e. 10 ** -ceil(log10(10 N)).

  At least ten times below 1/N, so a mechanism that leaked whole records with probability
  delta would expect to leak fewer than 0.1 of them. N=60000 -> 1e-6; N=1000 -> 1e-4.
  """
  if not dataset_size >= 1:
    raise ValueError(f'dataset_size must be >= 1 to pick a default delta, got {dataset_size}.')
  exponent = len(str(10 * int(dataset_size) - 1))  # ceil(log10(10 N)) without float rounding.
  return 10.0 ** -exponent


def _field(config: Any, name: str, where: str) -> Any:
  try:
    return config[name]
  except (KeyError, AttributeError, TypeError):
    raise ValueError(f'config.{where}.{name} is missing; see fedgan_jax/privacy/accounting.py '
                     'for the fields the privacy accountant needs.') from None


def _optional_field(config: Any, name: str) -> Any:
  try:
    return config[name]
  except (KeyError, AttributeError, TypeError):
    return None


def dp_mode(dp_config) -> str:
  """`config.dp.mode`, checked: the one place it is parsed ('none' without a `dp` section)."""
  mode = 'none' if dp_config is None else _optional_field(dp_config, 'mode')
  mode = 'none' if mode is None else mode
  if mode not in MODES:
    raise ValueError(f'config.dp.mode must be one of {MODES}, got {mode!r}.')
  return mode


def delta_from_config(dp_config, fl_config, client_sizes: Sequence[int]) -> float:
  """`dp.delta`, or `default_delta` of the number of protected units.

  The units are all examples of the federation (example mode) or the hospitals (client mode);
  the larger population gives the smaller, safer delta for every hospital.
  """
  delta = _optional_field(dp_config, 'delta')
  if delta is not None:
    return float(delta)
  if dp_mode(dp_config) == 'client':
    return default_delta(int(_field(fl_config, 'num_clients', 'fl')))
  return default_delta(int(np.sum(client_sizes)))


def _count_noise_multiplier(dp_config) -> float | None:
  adaptive = _optional_field(dp_config, 'adaptive_clip')
  return None if adaptive is None else _optional_field(adaptive, 'count_noise_multiplier')


def _events(dp_config, fl_config, client_sizes, rounds, noise_multiplier):
  """One event per hospital (example mode) or one for the federation (client mode)."""
  mode = dp_mode(dp_config)
  if mode == 'none':
    return [dp_accounting.NonPrivateDpEvent()]
  if mode == 'client':
    return [client_level_event(noise_multiplier, int(_field(fl_config, 'clients_per_round', 'fl')),
                               int(_field(fl_config, 'num_clients', 'fl')), rounds)]
  steps = rounds * int(_field(fl_config, 'local_steps', 'fl'))
  batch_size = int(_field(fl_config, 'batch_size', 'fl'))
  if len(client_sizes) == 0:
    raise ValueError('client_sizes is empty: example-level accounting needs each hospital size.')
  return [example_level_event(noise_multiplier, batch_size, int(size), steps)
          for size in client_sizes]


def noise_multiplier_from_config(dp_config, fl_config, client_sizes: Sequence[int]) -> float:
  """The noise multiplier the accountant sees: `dp.noise_multiplier`, or the one calibrated to
  `dp.target_epsilon` over all `fl.num_rounds` when that is set (cached: cheap to call again)."""
  target = _optional_field(dp_config, 'target_epsilon')
  mode = dp_mode(dp_config)
  if mode == 'none' or target is None:
    return float(_field(dp_config, 'noise_multiplier', 'dp'))
  rounds = int(_field(fl_config, 'num_rounds', 'fl'))
  delta = delta_from_config(dp_config, fl_config, client_sizes)
  accountant = _field(dp_config, 'accountant', 'dp')
  if mode == 'client':
    return _calibrated_client_level(float(target), delta, accountant,
                                    int(_field(fl_config, 'clients_per_round', 'fl')),
                                    int(_field(fl_config, 'num_clients', 'fl')), rounds)
  if len(client_sizes) == 0:
    raise ValueError('client_sizes is empty: example-level accounting needs each hospital size.')
  # Epsilon grows with q = batch_size / n_i, so the smallest hospital decides.
  return _calibrated_example_level(float(target), delta, accountant,
                                   int(_field(fl_config, 'batch_size', 'fl')),
                                   int(np.min(client_sizes)),
                                   rounds * int(_field(fl_config, 'local_steps', 'fl')))


@functools.lru_cache(maxsize=64)
def _calibrated_example_level(target_epsilon, delta, accountant, batch_size, dataset_size, steps):
  return calibrate_noise_multiplier(
      target_epsilon, delta, lambda z: example_level_event(z, batch_size, dataset_size, steps),
      accountant)


@functools.lru_cache(maxsize=64)
def _calibrated_client_level(target_epsilon, delta, accountant, clients_per_round, num_clients,
                             rounds):
  return calibrate_noise_multiplier(
      target_epsilon, delta,
      lambda z: client_level_event(z, clients_per_round, num_clients, rounds), accountant)


def query_from_config(dp_config, fl_config, client_sizes: Sequence[int]) -> dp_sgd.GaussianSumQuery:
  """The clip norm and noise multiplier to train with.

  In client mode with `dp.adaptive_clip.count_noise_multiplier`, the accounted noise
  multiplier is shared with the clipped count, so the update sum gets the larger
  `client_dp.split_noise_multiplier`.
  """
  noise_multiplier = noise_multiplier_from_config(dp_config, fl_config, client_sizes)
  count_noise = _count_noise_multiplier(dp_config)
  if dp_mode(dp_config) == 'client' and count_noise:
    noise_multiplier = client_dp.split_noise_multiplier(noise_multiplier, float(count_noise))
  return dp_sgd.GaussianSumQuery(float(_field(dp_config, 'clip_norm', 'dp')), noise_multiplier)


def event_from_config(dp_config, fl_config, client_sizes: Sequence[int],
                      rounds: int | None = None) -> dp_accounting.DpEvent:
  """The worst-case event after `rounds` (default `fl.num_rounds`).

  Example mode is conservative: every hospital is accounted as if it took part in every round
  (steps = rounds * fl.local_steps), and the event returned is the smallest hospital's, whose
  q = batch_size / n_i is the largest and hence whose epsilon is the largest.
  """
  if rounds is None:
    rounds = int(_field(fl_config, 'num_rounds', 'fl'))
  noise_multiplier = noise_multiplier_from_config(dp_config, fl_config, client_sizes)
  sizes = [int(np.min(client_sizes))] if len(client_sizes) else []
  return _events(dp_config, fl_config, sizes, rounds, noise_multiplier)[0]


def hospital_epsilons(dp_config, fl_config, client_sizes: Sequence[int],
                      rounds: int | None = None) -> np.ndarray:
  """Example-level epsilon of each hospital after `rounds` (same conservative assumption)."""
  if dp_mode(dp_config) != 'example':
    raise ValueError(f'hospital_epsilons is for config.dp.mode="example", got '
                     f'{dp_mode(dp_config)!r}.')
  if rounds is None:
    rounds = int(_field(fl_config, 'num_rounds', 'fl'))
  noise_multiplier = noise_multiplier_from_config(dp_config, fl_config, client_sizes)
  delta = delta_from_config(dp_config, fl_config, client_sizes)
  accountant = _field(dp_config, 'accountant', 'dp')
  return np.array([epsilon(event, delta, accountant) for event in
                   _events(dp_config, fl_config, client_sizes, rounds, noise_multiplier)])


def epsilon_after_rounds(dp_config, fl_config, client_sizes: Sequence[int], rounds: int) -> float:
  """Epsilon spent after `rounds` rounds, for logging: max over hospitals in example mode,
  the federation's in client mode, inf with `dp.mode = 'none'`."""
  if dp_mode(dp_config) == 'none':
    return math.inf
  delta = delta_from_config(dp_config, fl_config, client_sizes)
  return epsilon(event_from_config(dp_config, fl_config, client_sizes, rounds), delta,
                 _field(dp_config, 'accountant', 'dp'))


def summary(dp_config, fl_config, client_sizes: Sequence[int]) -> Mapping[str, Any]:
  """Numbers to write next to results: mode, noise multiplier, clip norm, delta, final epsilon."""
  mode = dp_mode(dp_config)
  if mode == 'none':
    return {'mode': 'none', 'epsilon': math.inf}
  query = query_from_config(dp_config, fl_config, client_sizes)
  return {'mode': mode,
          'noise_multiplier': noise_multiplier_from_config(dp_config, fl_config, client_sizes),
          'update_noise_multiplier': query.noise_multiplier,
          'clip_norm': query.clip_norm,
          'delta': delta_from_config(dp_config, fl_config, client_sizes),
          'accountant': _field(dp_config, 'accountant', 'dp'),
          'epsilon': epsilon_after_rounds(dp_config, fl_config, client_sizes,
                                          int(_field(fl_config, 'num_rounds', 'fl')))}
