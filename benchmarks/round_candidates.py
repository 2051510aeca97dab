"""Candidate client-execution strategies, measured against the engine's before moving there.

Each candidate keeps the round's math (the same `execution.local_update` per client, the same
`aggregation.FedAvg` and server update) and changes only how XLA is asked to run it:

  * `naive`: the baseline, a Python loop of one jitted local update per client (what
    fedjax's default backend does), then FedAvg and the server update in one program.

  * `loop_chunk<N>`: one jitted program runs N clients one after another (unrolled, no
    vmap), accumulating their weighted deltas; a Python loop goes over chunks. Fewer
    dispatches, and XLA may overlap independent clients' operations.
  * `vmap_chunk<N>`: N clients vmapped in one program (per-client weights batched), chunks
    in a Python loop, so memory grows with N, not with the participants.
  * `*_matmul`: the same, with every 3x3 convolution computed as patches @ kernel
    (`matmul_conv`): under vmap a per-client kernel becomes a batched matmul instead of a
    grouped convolution, XLA CPU's slow path.

Names: `naive`, `loop_chunk4`, `vmap_chunk8_matmul`, `naive_matmul` (the naive loop with
matmul convolutions), ... (see `make`).
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedgan_jax.federated import aggregation
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import execution
from fedgan_jax.federated import rngs

_NAME = re.compile(r'^(loop|vmap)_chunk(\d+)(_matmul)?$')


def matmul_conv(inputs, kernel, strides, padding):
  """`lax.conv_general_dilated` (NHWC, HWIO) as one matmul over extracted patches.

  Args:
    inputs: `(B, H, W, C_in)`.
    kernel: `(kh, kw, C_in, C_out)`.
    strides: `(sh, sw)`.
    padding: 'SAME', 'VALID' or explicit `[(lo, hi), (lo, hi)]`, as flax passes it.
  """
  kh, kw, c_in, c_out = kernel.shape
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(inputs.shape[1:3], (kh, kw), strides, padding)
  padded = jnp.pad(inputs, [(0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)])
  out_h = (padded.shape[1] - kh) // strides[0] + 1
  out_w = (padded.shape[2] - kw) // strides[1] + 1
  patches = [
      jax.lax.slice(padded, (0, dy, dx, 0),
                    (padded.shape[0], dy + (out_h - 1) * strides[0] + 1,
                     dx + (out_w - 1) * strides[1] + 1, c_in),
                    (1, strides[0], strides[1], 1))
      for dy in range(kh) for dx in range(kw)]
  patches = jnp.concatenate(patches, axis=-1)  # (B, out_h, out_w, kh * kw * C_in), (dy, dx, c).
  return jnp.dot(patches, kernel.reshape(kh * kw * c_in, c_out))


def _as_pair(value):
  return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _conv_interceptor(next_fun, args, kwargs, context):
  """Routes plain 2-D `nn.Conv` calls to `matmul_conv`; anything else runs unchanged."""
  module = context.module
  if (context.method_name != '__call__' or type(module) is not nn.Conv or kwargs
      or len(args) != 1 or args[0].ndim != 4 or module.feature_group_count != 1
      or _as_pair(module.input_dilation or 1) != (1, 1)
      or _as_pair(module.kernel_dilation or 1) != (1, 1)):
    return next_fun(*args, **kwargs)
  kernel = module.get_variable('params', 'kernel')
  if kernel is None:  # Initialization: let flax create the parameters.
    return next_fun(*args, **kwargs)
  y = matmul_conv(args[0], kernel, _as_pair(module.strides or 1), module.padding)
  if module.use_bias:
    y = y + module.get_variable('params', 'bias')
  return y


def with_matmul_conv(function):
  """`function` whose traced flax convolutions are `matmul_conv`s (trace-time context)."""
  @functools.wraps(function)
  def wrapped(*args, **kwargs):
    with nn.intercept_methods(_conv_interceptor):
      return function(*args, **kwargs)
  return wrapped


class NaiveRound:
  """The baseline: a Python loop of jitted per-client `local_update`, then FedAvg.

  What fedjax's default backend does. Same signature and math as
  `algorithm.make_round_fn(...)`'s round functions.
  """

  def __init__(self, task, server_optimizer):
    self._local_update = jax.jit(functools.partial(execution.local_update, task))
    self._fold_in = jax.jit(rngs.client_key)
    self._finish = jax.jit(functools.partial(self._finish_fn, server_optimizer))

  @staticmethod
  def _finish_fn(server_optimizer, state, deltas, metrics, weights):
    stacked = jax.tree.map(lambda *d: jnp.stack(d), *deltas)
    stacked_metrics = jax.tree.map(lambda *m: jnp.stack(m), *metrics)
    fedavg = aggregation.FedAvg()
    agg = fedavg.accumulate_clients(fedavg.init(state.params, metrics[0]), stacked,
                                    stacked_metrics, weights)
    return algorithm.apply_aggregate(fedavg, server_optimizer, state, agg, None)

  def __call__(self, state, batches, weights, client_ids, round_rng):
    deltas, metrics = [], []
    for i, client_id in enumerate(client_ids):
      batch = jax.tree.map(lambda x, i=i: x[i], batches)
      delta, metric = self._local_update(state.params, batch, self._fold_in(round_rng, client_id))
      deltas.append(delta)
      metrics.append(metric)
    return self._finish(state, deltas, metrics, jnp.asarray(weights))


class ChunkedRound:
  """Clients in jitted chunks of `chunk` (vmapped or unrolled); same round as the engine's."""

  def __init__(self, task, server_optimizer, chunk: int, batched: bool, matmul: bool):
    self._chunk = chunk
    self._fedavg = aggregation.FedAvg()
    body = functools.partial(self._chunk_fn, task, batched, self._fedavg)
    self._run_chunk = jax.jit(with_matmul_conv(body) if matmul else body, donate_argnums=(1,))
    self._init = jax.jit(self._fedavg.init)
    self._finish = jax.jit(functools.partial(algorithm.apply_aggregate, self._fedavg,
                                             server_optimizer))
    self._task = task
    self._metric_shapes = None

  @staticmethod
  def _chunk_fn(task, batched, fedavg, params, agg, batches, weights, client_ids, round_rng):
    local = functools.partial(execution.local_update, task)
    keys = rngs.client_keys(round_rng, client_ids)
    if batched:
      deltas, metrics = jax.vmap(local, in_axes=(None, 0, 0))(params, batches, keys)
    else:
      outputs = [local(params, jax.tree.map(lambda x, i=i: x[i], batches), keys[i])
                 for i in range(weights.shape[0])]
      deltas = jax.tree.map(lambda *d: jnp.stack(d), *[o[0] for o in outputs])
      metrics = jax.tree.map(lambda *m: jnp.stack(m), *[o[1] for o in outputs])
    return fedavg.accumulate_clients(agg, deltas, metrics, weights)

  def __call__(self, state, batches, weights, client_ids, round_rng):
    weights = np.asarray(weights, np.float32)
    client_ids = np.asarray(client_ids, np.int32)
    if self._metric_shapes is None:  # Traced once: tracing the model is not free.
      one = jax.tree.map(lambda x: x[0], batches)
      self._metric_shapes = jax.eval_shape(
          functools.partial(execution.local_update, self._task), state.params, one,
          round_rng)[1]
    metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._metric_shapes)
    agg = self._init(state.params, metrics)
    for start in range(0, len(client_ids), self._chunk):
      part = slice(start, start + self._chunk)
      chunk_batches = {k: v[part] for k, v in batches.items()}
      agg = self._run_chunk(state.params, agg, chunk_batches, weights[part], client_ids[part],
                            round_rng)
    return self._finish(state, agg, round_rng)


class NaiveMatmulRound(NaiveRound):
  """The naive per-client loop, its local update traced with `matmul_conv`."""

  def __init__(self, task, server_optimizer):
    super().__init__(task, server_optimizer)
    self._local_update = jax.jit(
        with_matmul_conv(functools.partial(execution.local_update, task)))


def make(name: str, task, server_optimizer):
  """A candidate round function by name (see the module docstring)."""
  if name == 'naive':
    return NaiveRound(task, server_optimizer)
  if name == 'naive_matmul':
    return NaiveMatmulRound(task, server_optimizer)
  match = _NAME.match(name)
  if not match:
    raise ValueError(f'--strategies: unknown strategy {name!r}; expected naive, '
                     f'{algorithm.STRATEGIES}, naive_matmul or (loop|vmap)_chunk<N>[_matmul].')
  kind, chunk, matmul = match.groups()
  return ChunkedRound(task, server_optimizer, int(chunk), kind == 'vmap', bool(matmul))
