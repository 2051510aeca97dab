"""How client deltas become the one delta the server applies: an `Aggregator`, written once.

Every way of running a round (the `vmap`, `sequential` and `threads` strategies, the Flower
coordinator, the supervised baselines) only produces client deltas; the aggregator alone
decides how they are combined (and, for DP-FedAvg, clipped and noised):

    agg = aggregator.init(params, metrics, privacy)
    agg = aggregator.accumulate(agg, delta_i, metrics_i, weight_i)   # per client, in id order
      or aggregator.accumulate_clients(agg, deltas, metrics, weights)  # a leading client axis
    mean_delta, privacy, metrics = aggregator.finish(agg, privacy, round_rng)

(fedjax's `for_each_client` plus one weighted sum.) `weight_i` is the client's example count,
0 for the padding slots `sampling.round_inputs` adds; per-client strategies skip padding, the
client-axis form must ignore it. `privacy` is the aggregator's state across rounds, kept in
`ServerState.privacy` and checkpointed (`init_privacy()` makes the first; None for FedAvg).
`metrics` are the clients' step-mean diagnostics, averaged with the weights the aggregator
gives clients. All methods are pure and jittable.

`FedAvg` (example-weighted mean) lives here. Client-level DP-FedAvg implements the same
protocol in `privacy/client_dp.py` and is passed in by whoever builds the round
(`privacy.engine.PrivacyPlan.aggregator`), so this package never imports the privacy one.
"""

from __future__ import annotations

from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp

PyTree = Any


class Aggregator(Protocol):
  """Combines client deltas into the round's mean delta (see the module docstring)."""

  def init_privacy(self) -> Any:
    """The state this aggregator keeps across rounds (`ServerState.privacy`), or None."""

  def init(self, params: PyTree, metrics: PyTree, privacy: Any) -> Any:
    """An empty accumulator for deltas shaped like `params` and metrics like `metrics`."""

  def accumulate(self, agg: Any, delta: PyTree, metrics: PyTree, weight) -> Any:
    """Adds one reporting client (weight > 0)."""

  def accumulate_clients(self, agg: Any, deltas: PyTree, metrics: PyTree, weights) -> Any:
    """Adds every slot of a leading client axis; slots of weight 0 must contribute nothing."""

  def finish(self, agg: Any, privacy: Any, round_rng: jax.Array) -> tuple[PyTree, Any, dict]:
    """`(mean delta, next privacy state, metrics)` of the round."""


@flax.struct.dataclass
class WeightedSum:
  """Running sums of a round: `sum_i w_i delta_i`, `sum_i w_i metrics_i` and `sum_i w_i`."""
  delta_sum: PyTree
  metric_sums: PyTree
  weight_sum: jax.Array


def zero_sums(params: PyTree, metrics: PyTree) -> WeightedSum:
  return WeightedSum(delta_sum=jax.tree.map(jnp.zeros_like, params),
                     metric_sums=jax.tree.map(jnp.zeros_like, metrics),
                     weight_sum=jnp.zeros((), jnp.float32))


def masked_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum over the leading client axis of the slots where `mask` is True (NaN-safe)."""
  return jnp.sum(jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0), axis=0)


def add_metrics(agg: WeightedSum, metrics: PyTree, weight) -> WeightedSum:
  """Adds one client's metrics with `weight` (uniform aggregators add them unscaled)."""
  return agg.replace(metric_sums=jax.tree.map(lambda s, m: s + weight * m, agg.metric_sums,
                                              metrics),
                     weight_sum=agg.weight_sum + weight)


def add_client_metrics(agg: WeightedSum, metrics: PyTree, weights: jax.Array) -> WeightedSum:
  """`add_metrics` over a leading client axis."""
  return agg.replace(metric_sums=jax.tree.map(lambda s, m: s + jnp.sum(m * weights),
                                              agg.metric_sums, metrics),
                     weight_sum=agg.weight_sum + jnp.sum(weights))


def mean_metrics(agg: WeightedSum) -> dict:
  return jax.tree.map(lambda m: m / agg.weight_sum, agg.metric_sums)


class FedAvg:
  """The example-weighted mean `sum_i w_i delta_i / sum_i w_i` (McMahan et al. 2017).

  Per client the sum grows as `total + w_i * delta_i` in client order (so `threads` equals
  `sequential` to the bit); over a client axis it is one `tensordot` with the weights, a
  reduction XLA shards over the devices holding the clients.
  """

  def init_privacy(self) -> None:
    return None

  def init(self, params, metrics, privacy=None) -> WeightedSum:
    del privacy
    return zero_sums(params, metrics)

  def accumulate(self, agg: WeightedSum, delta, metrics, weight) -> WeightedSum:
    agg = agg.replace(delta_sum=jax.tree.map(lambda t, d: t + weight * d, agg.delta_sum, delta))
    return add_metrics(agg, metrics, weight)

  def accumulate_clients(self, agg: WeightedSum, deltas, metrics, weights) -> WeightedSum:
    agg = agg.replace(delta_sum=jax.tree.map(
        lambda t, d: t + jnp.tensordot(weights, d, axes=1), agg.delta_sum, deltas))
    return add_client_metrics(agg, metrics, weights)

  def finish(self, agg: WeightedSum, privacy, round_rng=None):
    del round_rng
    mean = jax.tree.map(lambda t: t / agg.weight_sum, agg.delta_sum)
    return mean, privacy, mean_metrics(agg)
