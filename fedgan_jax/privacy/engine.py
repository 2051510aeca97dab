"""How the training engine uses the DP library: config checks, the DP-SGD gradient of D, the
client-level settings of a round, and the ledger of privacy spent (epsilon per round, budget).

Threat model. A hospital's raw data never leaves it; what leaves is one parameter delta per
round (`algorithm.check_client_message` enforces its shapes). The adversary is the server or
anyone who sees the deltas or the final models.
  * `dp.mode = 'example'` (DP-SGD, Abadi et al. 2016): D's gradient at every local step is the
    sum of per-example gradients, each clipped to `dp.clip_norm`, plus Gaussian noise of std
    `noise_multiplier * clip_norm`, over the public batch size. An example's loss is
    `client.discriminator_loss` on a batch of one: its GAN loss on the real image and on one
    generated image, and the attribute head's loss on the real image, all clipped together.
    G's update reads only D's parameters, conditions and noise, never an image, so it is
    post-processing of the private D. The condition vectors G is trained on are those of the
    sampled batch: the guarantee covers images; conditions (age, sex, view, ...) reach G
    unclipped and are not covered. With `fl.fake_conditions = 'public_prior'` G's images are
    drawn for conditions from the data source's public prior instead: then D's loss splits
    into the real term (GAN loss on the real image and attribute loss, clipped per example
    and noised) and the fake term, which reads no record and is added without noise
    (post-processing of the released D and G), and the guarantee covers whole records. D's minibatch-std layer couples the examples of a group,
    so one example could move the others' gradients past the clip: it must be off
    (`model.discriminator.minibatch_std_group = 0`). Hospital sizes are treated as public
    (the accountant's sampling rate needs them and FedAvg weights by them).
  * `dp.mode = 'client'` (DP-FedAvg): the unit is a whole hospital; `client_dp.DpFedAvg`
    replaces FedAvg as the round's aggregator (`PrivacyPlan.aggregator`).

`config.dp.mode` is parsed once (`accounting.dp_mode`) into a `PrivacyPlan`; everything the
engine needs from DP comes from the plan: D's DP-SGD gradient for the task
(`task_gradients`), the round's aggregator (`aggregator`) and the ledger (`epsilon`,
`summary`). The federated package never imports this one: the plan's pieces are passed in.

The numbers that train (`accounting.query_from_config`) are the numbers the accountant sees.
Batches are drawn with a fixed size (`sampling.round_inputs`) and accounted as Poisson
sampling with rate `fl.batch_size / n`, the usual approximation of DP-SGD implementations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from fedgan_jax.federated import aggregation
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import execution
from fedgan_jax.privacy import accounting
from fedgan_jax.privacy import client_dp
from fedgan_jax.privacy import dp_sgd

# The batch key that marks padding examples (False) for DP-SGD; optional.
EXAMPLE_MASK_KEY = 'example_mask'


def _adaptive(dp) -> Any:
  adaptive = dp.get('adaptive_clip')
  return adaptive if adaptive is not None and adaptive.get('enabled', False) else None


def check_config(config, mode: str) -> None:
  """Rejects DP settings that would train something other than what is accounted."""
  if mode == 'none':
    return
  dp = config.dp
  group = config.model.discriminator.minibatch_std_group
  if mode == 'example' and group:
    raise ValueError(
        f'config.dp.mode="example" needs model.discriminator.minibatch_std_group=0 (got '
        f'{group}): minibatch std couples the examples of a group, so one example moves the '
        'others\' gradients and the per-example clip no longer bounds its influence.')
  adaptive = _adaptive(dp)
  count_noise = (dp.get('adaptive_clip') or {}).get('count_noise_multiplier')
  if adaptive is None and count_noise is not None:
    raise ValueError('config.dp.adaptive_clip.count_noise_multiplier is set but '
                     'dp.adaptive_clip.enabled is False; unset it or enable adaptive clipping.')
  if adaptive is not None:
    if mode != 'client':
      raise ValueError('config.dp.adaptive_clip.enabled is for dp.mode="client" (clip norms of '
                       f'hospital updates), got dp.mode={mode!r}.')
    if count_noise is None and (dp.get('target_epsilon') is not None or
                                dp.get('noise_multiplier', 0) > 0):
      raise ValueError('config.dp.adaptive_clip.enabled needs '
                       'dp.adaptive_clip.count_noise_multiplier: the clipped count is released '
                       'too and must be noised.')
  if dp.get('clip_fake_term', False) and not (
      mode == 'example' and config.fl.fake_conditions == 'public_prior'):
    raise ValueError('config.dp.clip_fake_term clips the fake term of DP-SGD\'s split D '
                     'gradient: it needs dp.mode="example" and fl.fake_conditions="public_prior" '
                     f'(got {mode!r} and {config.fl.fake_conditions!r}).')
  microbatch = dp.get('microbatch_size')
  if microbatch is not None and not (int(microbatch) == microbatch and microbatch >= 1):
    raise ValueError(f'config.dp.microbatch_size must be a positive integer or None, got '
                     f'{microbatch}.')
  for name in ('target_epsilon', 'max_epsilon'):
    value = dp.get(name)
    if value is not None and not value > 0:
      raise ValueError(f'config.dp.{name} must be > 0 or None, got {value}.')


def protected_unit(config, mode: str) -> str | None:
  """What adding or removing one unit means under `config`'s DP, in words (None without DP)."""
  if mode == 'client':
    return 'one hospital\'s whole data (client-level)'
  if mode == 'example':
    if config.fl.fake_conditions == 'public_prior':
      return 'one training record: its image and its condition vector (example-level)'
    return ('one training image (example-level); the condition vectors G trains on are not '
            'covered (fl.fake_conditions="batch")')
  return None


def accounting_fl(config, num_clients: int) -> dict:
  """`config.fl` as the accountant needs it: the real client count and per-round count."""
  per_round = int(config.fl.clients_per_round)
  return dict(config.fl.to_dict(), num_clients=int(num_clients),
              clients_per_round=per_round if 0 < per_round < num_clients else int(num_clients))


def example_level_gradient(query: dp_sgd.GaussianSumQuery, expected_batch_size: int,
                           microbatch_size: int | None = None):
  """A `GanTask.discriminator_gradient` running DP-SGD with `query`'s numbers.

  The returned function takes `batch_loss(params, batch, rng) -> (per-example losses (B,),
  aux)` and calls it on batches of ONE example (vmapped by `dp_sgd`), so no example's
  gradient depends on another's. A batch may carry `EXAMPLE_MASK_KEY` (False = padding).
  """

  def discriminator_gradient(batch_loss, d_params, batch, rng):
    batch = dict(batch)
    mask = batch.pop(EXAMPLE_MASK_KEY, None)

    def one_example_loss(params, example, example_rng):
      losses, aux = batch_loss(params, jax.tree.map(lambda x: x[None], example), example_rng)
      return losses[0], jax.tree.map(jnp.mean, aux)

    return dp_sgd.clipped_noisy_gradient(
        one_example_loss, d_params, batch, rng, clip_norm=query.clip_norm,
        noise_multiplier=query.noise_multiplier, expected_batch_size=expected_batch_size,
        example_mask=mask, microbatch_size=microbatch_size, has_aux=True)

  return discriminator_gradient


def _json_number(value: float) -> float | None:
  return None if value is None or math.isinf(value) else float(value)


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  """What DP does in one training run and what it has spent; built once from the config.

  Attributes:
    mode: 'none', 'example' or 'client'.
    query: clip norm and (update) noise multiplier that train; None without DP.
    noise_multiplier: the accounted noise multiplier (calibrated when dp.target_epsilon is set).
    delta: the delta epsilon is reported at.
    accountant: 'rdp' or 'pld'.
    budget: epsilon the run may not exceed (dp.max_epsilon, else dp.target_epsilon), or None.
  """
  mode: str
  query: dp_sgd.GaussianSumQuery | None = None
  noise_multiplier: float = 0.0
  delta: float | None = None
  accountant: str | None = None
  budget: float | None = None
  dp_config: Any = None
  fl_config: dict | None = None
  client_sizes: tuple[int, ...] = ()
  microbatch_size: int | None = None
  adaptive: Any = None
  # What one unit of the guarantee is, in words, for results and papers.
  protects: str | None = None
  # Epsilon by number of rounds, filled as the run asks (a dict mutates inside a frozen class).
  _epsilons: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  @classmethod
  def from_config(cls, config, client_sizes: Sequence[int],
                  num_clients: int | None = None) -> 'PrivacyPlan':
    """The plan of `config` for hospitals of `client_sizes` examples.

    A deployed server knows its roster but not the hospitals' sizes: it passes no sizes and
    `num_clients`, which client-level DP needs and example-level DP cannot do with.
    """
    mode = accounting.dp_mode(config.get('dp'))
    check_config(config, mode)
    if mode == 'none':
      return cls(mode='none')
    dp = config.dp
    sizes = tuple(int(n) for n in client_sizes)
    if mode == 'example' and not sizes:
      raise ValueError('config.dp.mode="example" needs every hospital\'s size (DP-SGD\'s noise '
                       'calibration and accounting); a deployment does not know them, so it '
                       'supports dp.mode "none" or "client" only.')
    fl = accounting_fl(config, len(sizes) if num_clients is None else num_clients)
    budget = dp.get('max_epsilon')
    if budget is None:
      budget = dp.get('target_epsilon')
    adaptive = _adaptive(dp)
    return cls(mode=mode, protects=protected_unit(config, mode),
               query=accounting.query_from_config(dp, fl, sizes),
               noise_multiplier=accounting.noise_multiplier_from_config(dp, fl, sizes),
               delta=accounting.delta_from_config(dp, fl, sizes), accountant=dp.accountant,
               budget=None if budget is None else float(budget), dp_config=dp.to_dict(),
               fl_config=fl, client_sizes=sizes, microbatch_size=dp.get('microbatch_size'),
               adaptive=None if adaptive is None else adaptive.to_dict())

  @property
  def private(self) -> bool:
    return self.mode != 'none'

  def task_gradients(self) -> dict:
    """`build_task`'s DP-SGD arguments: in example mode D's clipped, noised gradient and, with
    `dp.clip_fake_term`, the fake term's per-example-clipped gradient; else plain gradients.

    Clipping the fake term is for balance with the clipped real term, not privacy: the fake
    term reads no private data (`client.private_split_discriminator_gradient`).
    """
    if self.mode != 'example':
      return {'discriminator_gradient': None, 'fake_term_gradient': None}
    batch_size = int(self.fl_config['batch_size'])
    fake_term = None
    if self.dp_config.get('clip_fake_term', False):
      fake_term = example_level_gradient(dp_sgd.GaussianSumQuery(self.query.clip_norm, 0.0),
                                         batch_size, self.microbatch_size)
    return {'discriminator_gradient': example_level_gradient(self.query, batch_size,
                                                             self.microbatch_size),
            'fake_term_gradient': fake_term}

  def check_task(self, task) -> None:
    """Refuses to train `task` under this plan when it lacks the plan's DP-SGD gradient."""
    if self.mode == 'example' and task.discriminator_gradient is None:
      raise ValueError('config.dp.mode="example" trains D with DP-SGD, but the task was built '
                       'without it: pass **plan.task_gradients() to task.build_task.')

  def aggregator(self) -> aggregation.Aggregator:
    """The round's aggregator: DP-FedAvg in client mode, else FedAvg's weighted mean."""
    if self.mode != 'client':
      return aggregation.FedAvg()
    adaptive = self.adaptive or {}
    return client_dp.DpFedAvg(
        clip_norm=self.query.clip_norm, noise_multiplier=self.query.noise_multiplier,
        expected_clients=int(self.fl_config['clients_per_round']),
        adaptive=bool(adaptive), target_quantile=float(adaptive.get('target_quantile', 0.5)),
        learning_rate=float(adaptive.get('learning_rate', 0.2)),
        count_noise_multiplier=float(adaptive.get('count_noise_multiplier') or 0.0))

  def epsilon(self, rounds: int) -> float:
    """Epsilon at `delta` after `rounds` rounds (inf without DP)."""
    if not self.private:
      return math.inf
    rounds = int(rounds)
    if rounds not in self._epsilons:
      self._epsilons[rounds] = accounting.epsilon_after_rounds(
          self.dp_config, self.fl_config, list(self.client_sizes), rounds)
    return self._epsilons[rounds]

  def exceeds_budget(self, rounds: int) -> bool:
    """True when `rounds` rounds would spend more than the budget."""
    # Calibration meets the target to within the accountant's rounding; allow that much.
    return self.budget is not None and self.epsilon(rounds) > self.budget * (1 + 1e-9)

  def summary(self, rounds: int) -> dict:
    """JSON for checkpoint meta and results.json: what was spent after `rounds` rounds."""
    if not self.private:
      return {'mode': 'none', 'epsilon': None, 'rounds': int(rounds)}
    return {'mode': self.mode, 'epsilon': _json_number(self.epsilon(rounds)),
            'delta': self.delta, 'noise_multiplier': self.noise_multiplier,
            'update_noise_multiplier': self.query.noise_multiplier,
            'clip_norm': self.query.clip_norm, 'accountant': self.accountant,
            'rounds': int(rounds), 'budget': self.budget, 'protects': self.protects,
            'sampling': 'fixed-size batches accounted as Poisson'
                        if self.mode == 'example' else 'fixed-size client sample accounted as '
                                                       'Poisson'}


def client_message_shapes(task, params, client_batches):
  """Shapes of what one client sends, by tracing `execution.local_update` (no FLOPs)."""
  return jax.eval_shape(lambda p, b, r: execution.local_update(task, p, b, r)[0], params,
                        client_batches, jax.random.key(0))


def check_messages_of_task(task, params, client_batches) -> int:
  """`algorithm.check_client_message` on the traced message; returns its number of leaves."""
  message = client_message_shapes(task, params, client_batches)
  algorithm.check_client_message(message, params)
  return len(jax.tree.leaves(message))

