"""Tests for fedgan_jax.privacy.dp_sgd against hand-clipped gradients of a linear model."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedgan_jax.privacy import dp_sgd

CLIP_NORMS = (0.0, 1.0, 2.0, math.inf)

# Residuals r = w.x + b - y span 0.5 to 4 so that clip norms 1 and 2 clip some examples only.
PARAMS = {'w': jnp.array([0.5, -1.0, 2.0]), 'b': jnp.array(0.25)}
X = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0],
              [0.5, -0.5, 0.0]], np.float32)
Y = np.array([0.25, 0.0, 4.0, 0.0, 1.0], np.float32)


def linear_loss(params, example, rng):
  del rng
  residual = jnp.dot(params['w'], example['x']) + params['b'] - example['y']
  return 0.5 * residual ** 2


def hand_per_example_gradients():
  """Gradient of 0.5 r^2 is (r x, r) for (w, b); returns a (B, 4) matrix [g_w, g_b]."""
  w, b = np.asarray(PARAMS['w']), float(PARAMS['b'])
  residual = X @ w + b - Y
  return np.concatenate([residual[:, None] * X, residual[:, None]], axis=1)


def hand_clip(gradients, clip_norm):
  norms = np.linalg.norm(gradients, axis=1)
  scale = np.minimum(1.0, clip_norm / np.where(norms > 0, norms, 1.0))
  return gradients * scale[:, None], norms


def flat(tree):
  return np.concatenate([np.ravel(tree['w']), np.ravel(tree['b'])])


def batch():
  return {'x': jnp.asarray(X), 'y': jnp.asarray(Y)}


@pytest.mark.parametrize('clip_norm', CLIP_NORMS)
def test_noise_free_gradient_is_sum_of_hand_clipped_gradients_over_expected_batch(clip_norm):
  expected_batch_size = 8.0  # Deliberately not the 5 examples: the denominator is public.
  gradient, metrics = dp_sgd.clipped_noisy_gradient(
      linear_loss, PARAMS, batch(), jax.random.PRNGKey(0), clip_norm=clip_norm,
      noise_multiplier=0.0, expected_batch_size=expected_batch_size)
  clipped, norms = hand_clip(hand_per_example_gradients(), clip_norm)
  np.testing.assert_allclose(flat(gradient), clipped.sum(0) / expected_batch_size, rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_allclose(metrics['grad_norm_mean'], norms.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['clipped_fraction'], np.mean(norms > clip_norm))
  assert float(metrics['valid_examples']) == len(X)


@pytest.mark.parametrize('clip_norm', CLIP_NORMS)
def test_each_example_contributes_at_most_clip_norm(clip_norm):
  hand_norms = np.linalg.norm(hand_per_example_gradients(), axis=1)
  for i in range(len(X)):
    only_i = jnp.arange(len(X)) == i
    gradient, _ = dp_sgd.clipped_noisy_gradient(
        linear_loss, PARAMS, batch(), jax.random.PRNGKey(0), clip_norm=clip_norm,
        noise_multiplier=0.0, expected_batch_size=1.0, example_mask=only_i)
    contribution = np.linalg.norm(flat(gradient))
    assert contribution <= clip_norm * (1 + 1e-6)
    np.testing.assert_allclose(contribution, min(hand_norms[i], clip_norm), rtol=1e-5)


def test_masked_examples_contribute_exactly_zero_even_when_nan():
  poisoned = {'x': jnp.asarray(X).at[1].set(jnp.nan), 'y': jnp.asarray(Y).at[3].set(jnp.inf)}
  mask = jnp.array([True, False, True, False, True])
  gradient, metrics = dp_sgd.clipped_noisy_gradient(
      linear_loss, PARAMS, poisoned, jax.random.PRNGKey(0), clip_norm=2.0, noise_multiplier=0.0,
      expected_batch_size=5.0, example_mask=mask)
  clipped, norms = hand_clip(hand_per_example_gradients()[[0, 2, 4]], 2.0)
  np.testing.assert_allclose(flat(gradient), clipped.sum(0) / 5.0, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics['grad_norm_mean'], norms.mean(), rtol=1e-5)
  assert float(metrics['valid_examples']) == 3


def zero_gradient_loss(params, example, rng):
  del rng
  return 0.0 * (jnp.sum(params['a']) + jnp.sum(params['b'])) * example


def test_noise_std_on_sum_is_noise_multiplier_times_clip_norm_before_division():
  params = {'a': jnp.zeros((32,)), 'b': jnp.zeros((4, 8))}
  clip_norm, noise_multiplier, expected_batch_size = 2.0, 1.5, 8.0

  def draw(rng):
    gradient, _ = dp_sgd.clipped_noisy_gradient(
        zero_gradient_loss, params, jnp.ones((3,)), rng, clip_norm=clip_norm,
        noise_multiplier=noise_multiplier, expected_batch_size=expected_batch_size)
    return gradient

  draws = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.PRNGKey(1), 4000))
  sum_noise_std = noise_multiplier * clip_norm  # 3.0 on the sum, 0.375 after dividing by 8.
  for leaf in jax.tree.leaves(draws):
    samples = np.asarray(leaf).ravel()  # 128000 draws: std estimate within ~0.2%.
    np.testing.assert_allclose(samples.std() * expected_batch_size, sum_noise_std, rtol=0.01)
    assert abs(samples.mean()) < 0.01
  # One draw per leaf from its own key: equal-sized leaves must not share noise.
  assert not np.allclose(np.asarray(draws['a']), np.asarray(draws['b']).reshape(4000, 32))


def test_query_carries_sensitivity_and_noise_std():
  query = dp_sgd.GaussianSumQuery(clip_norm=2.0, noise_multiplier=1.5)
  assert query.sensitivity == 2.0
  assert query.noise_std == 3.0
  assert dp_sgd.GaussianSumQuery(clip_norm=math.inf, noise_multiplier=0.0).noise_std == 0.0
  with pytest.raises(ValueError, match='dp.clip_norm'):
    dp_sgd.GaussianSumQuery(clip_norm=math.inf, noise_multiplier=1.0)
  with pytest.raises(ValueError, match='dp.noise_multiplier'):
    dp_sgd.GaussianSumQuery(clip_norm=1.0, noise_multiplier=-1.0)


def noisy_linear_loss(params, example, rng):
  # Uses the example's key, so equality below also checks keys do not move when chunking.
  return linear_loss(params, example, rng) * jax.random.uniform(rng, (), minval=0.5, maxval=2.0)


@pytest.mark.parametrize('microbatch_size', (1, 2, 3))
def test_microbatching_matches_whole_batch(microbatch_size):
  kwargs = dict(clip_norm=2.0, noise_multiplier=0.7, expected_batch_size=5.0,
                example_mask=jnp.array([True, True, False, True, True]))
  rng = jax.random.PRNGKey(3)
  whole, whole_metrics = dp_sgd.clipped_noisy_gradient(noisy_linear_loss, PARAMS, batch(), rng,
                                                       **kwargs)
  chunked, chunked_metrics = dp_sgd.clipped_noisy_gradient(
      noisy_linear_loss, PARAMS, batch(), rng, microbatch_size=microbatch_size, **kwargs)
  np.testing.assert_allclose(flat(chunked), flat(whole), rtol=1e-5, atol=1e-6)
  for name in whole_metrics:
    np.testing.assert_allclose(chunked_metrics[name], whole_metrics[name], rtol=1e-5)


def test_jit_and_vmap_over_a_client_axis_match_per_client_calls():
  clients = 3
  rngs = jax.random.split(jax.random.PRNGKey(4), clients)
  client_batches = jax.tree.map(lambda x: jnp.stack([x, x * 2, -x]), batch())
  masks = jnp.array([[True] * 5, [True, True, True, False, False], [False] * 4 + [True]])
  clip_norms = jnp.array([0.5, 1.0, math.inf])

  @jax.jit
  @chex.assert_max_traces(n=1)
  def all_clients(client_batches, rngs, masks, clip_norms):
    def one_client(client_batch, rng, mask, clip_norm):
      return dp_sgd.clipped_noisy_gradient(
          linear_loss, PARAMS, client_batch, rng, clip_norm=clip_norm, noise_multiplier=0.0,
          expected_batch_size=4.0, example_mask=mask, microbatch_size=2)
    return jax.vmap(one_client)(client_batches, rngs, masks, clip_norms)

  gradients, _ = all_clients(client_batches, rngs, masks, clip_norms)
  all_clients(client_batches, rngs, masks, clip_norms)  # A second call must not retrace.
  for c in range(clients):
    expected, _ = dp_sgd.clipped_noisy_gradient(
        linear_loss, PARAMS, jax.tree.map(lambda x: x[c], client_batches), rngs[c],
        clip_norm=float(clip_norms[c]), noise_multiplier=0.0, expected_batch_size=4.0,
        example_mask=masks[c])
    np.testing.assert_allclose(flat(jax.tree.map(lambda x: x[c], gradients)), flat(expected),
                               rtol=1e-5, atol=1e-7)


def test_clip_by_global_norm_keeps_zero_tree_finite():
  clipped, norm = dp_sgd.clip_by_global_norm({'a': jnp.zeros(3)}, 0.0)
  assert float(norm) == 0.0
  np.testing.assert_array_equal(clipped['a'], np.zeros(3))
