"""Client-level DP-FedAvg (McMahan et al. 2018) with adaptive clipping (Andrew et al. 2021).

The protected unit is a whole hospital. Each round the server (`DpFedAvg`, the
`federated.aggregation.Aggregator` every round strategy and the Flower coordinator use):
  1. clips every participating client's model update to global L2 norm `clip_norm`
     (`clip_update`);
  2. sums the clipped updates with uniform weights (weighting by example counts would let one
     large hospital exceed the sensitivity);
  3. adds N(0, (noise_multiplier * clip_norm)^2) to the sum (`noisy_sum`);
  4. divides by the EXPECTED number of clients per round, a fixed public number, not by the
     number that actually reported.

Adaptive clipping replaces the fixed `clip_norm` by a private estimate of the
`target_quantile` of the update norms: C <- C * exp(-learning_rate * (b_hat - target_quantile)),
where b_hat is the noised fraction of clients whose norm was <= C. The count is released with
its own Gaussian noise; `split_noise_multiplier` shares a total noise multiplier (the one the
accountant sees) between the update sum and the count, as in Andrew et al., Theorem 1. The clip
norm lives in `ServerState.privacy` (checkpointed). The noise keys are
`rngs.server_noise_keys(round_key)`, so a resumed run, every strategy and a deployment draw
the same noise.

All functions are pure, jittable and free of Python control flow on traced values.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from fedgan_jax.federated import aggregation
from fedgan_jax.federated import rngs
from fedgan_jax.privacy import dp_sgd

PyTree = Any

# Indicators are centered (b_i - 1/2) before summing, so adding or removing one client moves
# the count by at most 1/2: the count's sensitivity.
COUNT_SENSITIVITY = 0.5


def clip_update(update_tree: PyTree, clip_norm) -> tuple[PyTree, jax.Array]:
  """Clips one client's update to global L2 norm `clip_norm`; returns `(clipped, norm)`.

  `norm` is the pre-clip norm (what adaptive clipping needs). clip_norm=inf leaves the update
  unchanged; 0 zeroes it.
  """
  return dp_sgd.clip_by_global_norm(update_tree, clip_norm)


def noisy_sum(summed_tree: PyTree, rng: jax.Array, clip_norm, noise_multiplier) -> PyTree:
  """Adds Gaussian noise of std `noise_multiplier * clip_norm` to a sum of clipped updates."""
  dp_sgd.check_clip_and_noise(clip_norm, noise_multiplier)
  return dp_sgd.add_gaussian_noise(summed_tree, rng,
                                   dp_sgd.gaussian_noise_std(clip_norm, noise_multiplier))


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real)


def split_noise_multiplier(total_noise_multiplier: float, count_noise_multiplier: float) -> float:
  """Noise multiplier left for the update sum when the clipped count also spends privacy.

  Releasing the update sum (multiplier z_update) and the centered count (multiplier z_count,
  std `z_count * COUNT_SENSITIVITY`) in one round is, for the accountant, one Gaussian
  mechanism with z_total^-2 = z_update^-2 + z_count^-2 (Andrew et al. 2021, Thm. 1). Given the
  z_total that the accountant uses and z_count, this returns z_update.
  """
  if total_noise_multiplier == 0:
    return 0.0
  if not count_noise_multiplier > total_noise_multiplier:
    raise ValueError(
        f'dp.adaptive_clip.count_noise_multiplier ({count_noise_multiplier}) must exceed '
        f'dp.noise_multiplier ({total_noise_multiplier}): the count spends part of the privacy '
        'budget, so its noise multiplier must be larger than the total one.')
  return (total_noise_multiplier ** -2 - count_noise_multiplier ** -2) ** -0.5


def combined_noise_multiplier(update_noise_multiplier: float,
                              count_noise_multiplier: float) -> float:
  """Inverse of `split_noise_multiplier`: the one-mechanism noise multiplier of a round."""
  if update_noise_multiplier == 0 or count_noise_multiplier == 0:
    return 0.0
  if math.isinf(count_noise_multiplier):
    return update_noise_multiplier
  return (update_noise_multiplier ** -2 + count_noise_multiplier ** -2) ** -0.5


@flax.struct.dataclass
class AdaptiveClipState:
  """The server's current clip norm C for client updates (a float32 scalar)."""
  clip_norm: jax.Array

  @classmethod
  def create(cls, initial_clip_norm: float) -> 'AdaptiveClipState':
    if not initial_clip_norm > 0 or math.isinf(initial_clip_norm):
      raise ValueError('dp.clip_norm must be a finite number > 0 to start adaptive clipping, '
                       f'got {initial_clip_norm}.')
    return cls(clip_norm=jnp.asarray(initial_clip_norm, jnp.float32))


def centered_indicator(norms: jax.Array, clip_norm) -> jax.Array:
  """`1[norm <= C] - 1/2` per client: what one client adds to the adaptive clip's count."""
  return (jnp.asarray(norms, jnp.float32) <= clip_norm).astype(jnp.float32) - 0.5


def adaptive_clip_update(state: AdaptiveClipState, norms: jax.Array, mask: jax.Array,
                         rng: jax.Array, target_quantile, learning_rate, count_noise_multiplier,
                         expected_clients=None) -> tuple[AdaptiveClipState, dict]:
  """One geometric step of the clip norm toward the `target_quantile` of update norms.

  b_hat = (sum over reporting clients of (1[norm <= C] - 1/2) + noise) / m + 1/2, with noise
  N(0, (count_noise_multiplier * 1/2)^2) and m = `expected_clients` (default: the number of
  slots, `norms.shape[0]`, which is static and public). Then
  C <- C * exp(-learning_rate * (b_hat - target_quantile)).
  When every slot reports, b_hat is the noised fraction of clients with norm <= C.

  Args:
    state: current clip norm.
    norms: float (clients,) pre-clip update norms (`clip_update`'s second output).
    mask: bool (clients,); False marks padded slots.
    rng: key for the count noise.
    target_quantile: in [0, 1], e.g. 0.5 for the median norm.
    learning_rate: step size of the geometric update (0.2 in Andrew et al.).
    count_noise_multiplier: noise std on the centered count / its sensitivity 1/2; 0 = no noise.
    expected_clients: fixed public denominator m.

  Returns:
    `(new_state, metrics)` with metrics `unclipped_fraction` (b_hat, already noised, so safe to
    log) and `clip_norm` (the C used this round).
  """
  norms = jnp.asarray(norms, jnp.float32)
  mask = jnp.asarray(mask).astype(bool)
  slots = expected_clients if expected_clients is not None else norms.shape[0]
  centered_count = jnp.sum(jnp.where(mask, centered_indicator(norms, state.clip_norm), 0.0))
  return adaptive_clip_step(state, centered_count, rng, target_quantile, learning_rate,
                            count_noise_multiplier, slots)


def adaptive_clip_step(state: AdaptiveClipState, centered_count: jax.Array, rng: jax.Array,
                       target_quantile, learning_rate, count_noise_multiplier,
                       expected_clients) -> tuple[AdaptiveClipState, dict]:
  """`adaptive_clip_update` from the summed `centered_indicator`s of the reporting clients.

  Aggregators add each client's indicator as it arrives, so no per-client norm is kept.
  """
  if _is_number(target_quantile) and not 0 <= target_quantile <= 1:
    raise ValueError(f'dp.adaptive_clip.target_quantile must be in [0, 1], got '
                     f'{target_quantile}.')
  if _is_number(count_noise_multiplier) and not count_noise_multiplier >= 0:
    raise ValueError('dp.adaptive_clip.count_noise_multiplier must be >= 0, got '
                     f'{count_noise_multiplier}.')
  noise = count_noise_multiplier * COUNT_SENSITIVITY * jax.random.normal(rng, (), jnp.float32)
  unclipped_fraction = (centered_count + noise) / expected_clients + 0.5
  new_clip = state.clip_norm * jnp.exp(-learning_rate * (unclipped_fraction - target_quantile))
  metrics = {'unclipped_fraction': unclipped_fraction, 'clip_norm': state.clip_norm}
  return state.replace(clip_norm=new_clip.astype(jnp.float32)), metrics


@flax.struct.dataclass
class ClippedSum:
  """A DP-FedAvg round so far: the sum of clipped deltas, uniform metric sums, the number of
  reporting clients (`weight_sum`), the round's clip norm and the summed indicators."""
  delta_sum: PyTree
  metric_sums: PyTree
  weight_sum: jax.Array
  clip_norm: Any
  centered_count: jax.Array


@dataclasses.dataclass(frozen=True)
class DpFedAvg:
  """Client-level DP-FedAvg as a `federated.aggregation.Aggregator` (steps 1-4 above).

  Built by `engine.PrivacyPlan.aggregator` from `config.dp`.

  Attributes:
    clip_norm: fixed clip norm, or the initial one under adaptive clipping.
    noise_multiplier: noise std on the clipped sum / clip norm (after sharing with the count).
    expected_clients: the public denominator (fl.clients_per_round, or all clients).
    adaptive: move the clip norm toward `target_quantile` of the update norms each round.
    target_quantile, learning_rate, count_noise_multiplier: `adaptive_clip_step`'s.
  """
  clip_norm: float
  noise_multiplier: float
  expected_clients: int
  adaptive: bool = False
  target_quantile: float = 0.5
  learning_rate: float = 0.2
  count_noise_multiplier: float = 0.0

  def __post_init__(self):
    if not self.expected_clients > 0:
      raise ValueError(f'expected_clients must be > 0 (fl.clients_per_round), got '
                       f'{self.expected_clients}.')
    dp_sgd.check_clip_and_noise(self.clip_norm, self.noise_multiplier)

  def init_privacy(self) -> AdaptiveClipState | None:
    return AdaptiveClipState.create(self.clip_norm) if self.adaptive else None

  def current_clip_norm(self, privacy: AdaptiveClipState | None):
    """This round's C: the adaptive state's, else the fixed Python number (a constant to XLA)."""
    return privacy.clip_norm if self.adaptive else self.clip_norm

  def init(self, params, metrics, privacy) -> ClippedSum:
    sums = aggregation.zero_sums(params, metrics)
    return ClippedSum(delta_sum=sums.delta_sum, metric_sums=sums.metric_sums,
                      weight_sum=sums.weight_sum, clip_norm=self.current_clip_norm(privacy),
                      centered_count=jnp.zeros((), jnp.float32))

  def accumulate(self, agg: ClippedSum, delta, metrics, weight) -> ClippedSum:
    del weight  # Uniform: example counts would let a large hospital exceed the sensitivity.
    clipped, norm = clip_update(delta, agg.clip_norm)
    agg = agg.replace(delta_sum=jax.tree.map(jnp.add, agg.delta_sum, clipped),
                      centered_count=agg.centered_count + centered_indicator(norm,
                                                                             agg.clip_norm))
    return aggregation.add_metrics(agg, metrics, 1.0)

  def accumulate_clients(self, agg: ClippedSum, deltas, metrics, weights) -> ClippedSum:
    # Padding slots (weight 0) are masked out of the sum and the count, so they neither
    # release anything nor spend budget (the accountant counts each hospital once a round).
    mask = weights > 0
    clipped, norms = jax.vmap(clip_update, in_axes=(0, None))(deltas, agg.clip_norm)
    count = jnp.sum(jnp.where(mask, centered_indicator(norms, agg.clip_norm), 0.0))
    agg = agg.replace(
        delta_sum=jax.tree.map(lambda t, c: t + aggregation.masked_sum(c, mask), agg.delta_sum,
                               clipped),
        centered_count=agg.centered_count + count)
    return aggregation.add_client_metrics(agg, metrics, mask.astype(jnp.float32))

  def finish(self, agg: ClippedSum, privacy, round_rng):
    """Noise on the clipped sum, / expected clients, and the clip norm's step."""
    update_rng, count_rng = rngs.server_noise_keys(round_rng)
    noisy = noisy_sum(agg.delta_sum, update_rng, self.current_clip_norm(privacy),
                      self.noise_multiplier)
    mean = jax.tree.map(lambda x: x / self.expected_clients, noisy)
    metrics = aggregation.mean_metrics(agg)
    if self.adaptive:
      privacy, clip_metrics = adaptive_clip_step(
          privacy, agg.centered_count, count_rng, self.target_quantile, self.learning_rate,
          self.count_noise_multiplier, self.expected_clients)
      metrics = dict(metrics, **clip_metrics)
    return mean, privacy, metrics
