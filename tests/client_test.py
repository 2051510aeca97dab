"""Client-side losses against hand-computed values: the R1 penalty on D's real inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import phantom
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import task as task_lib


class QuadraticDiscriminator(nn.Module):
  """logit = sum(w * x^2): grad_x logit = 2 w x, so R1 has a closed form per example."""

  @nn.compact
  def __call__(self, images, condition):
    w = self.param('w', nn.initializers.constant(0.5), images.shape[1:])
    logit = jnp.sum(w * jnp.square(images), axis=(1, 2, 3))
    return {'logit': logit, 'attributes': jnp.zeros((images.shape[0], 1))}


def _task(gamma: float) -> client_lib.GanTask:
  return client_lib.GanTask(
      generator=None, discriminator=QuadraticDiscriminator(), z_dim=1,
      continuous_columns=np.zeros(1, bool), gan_loss='non_saturating', cond_weight=0.0,
      attribute_weight=0.0, d_optimizer=optax.sgd(1.0), g_optimizer=optax.sgd(1.0),
      r1_gamma=gamma)


def _batch():
  real = np.array([[[[1.0], [0.0]]], [[[0.5], [-2.0]]]], np.float32)  # (2, 1, 2, 1)
  return {'image': real, 'fake': np.zeros_like(real),
          'condition': np.zeros((2, 2), np.float32)}


def test_r1_penalty_matches_the_closed_form_and_reaches_d_gradient():
  batch, gamma = _batch(), 3.0
  task = _task(gamma)
  d_params = {'w': jnp.full((1, 2, 1), 0.5)}
  losses_with, aux = client_lib.discriminator_loss(task, d_params, batch, jax.random.key(0))
  losses_without, _ = client_lib.discriminator_loss(_task(0.0), d_params, batch,
                                                    jax.random.key(0))
  # |grad_x logit|^2 = sum (2 * 0.5 * x)^2 = sum x^2: 1.0 and 4.25; times gamma / 2.
  expected = 0.5 * gamma * np.array([1.0, 4.25])
  np.testing.assert_allclose(aux['r1_penalty'], expected, rtol=1e-6)
  np.testing.assert_allclose(losses_with - losses_without, expected, rtol=1e-6)
  # d/dw of the mean penalty: gamma/2 * mean over examples of 8 w x^2 (per pixel).
  grad_with = jax.grad(lambda p: jnp.mean(client_lib.discriminator_loss(
      task, p, batch, jax.random.key(0))[0]))(d_params)['w']
  grad_without = jax.grad(lambda p: jnp.mean(client_lib.discriminator_loss(
      _task(0.0), p, batch, jax.random.key(0))[0]))(d_params)['w']
  x2 = np.square(batch['image']).mean(axis=0)
  np.testing.assert_allclose(grad_with - grad_without, 0.5 * gamma * 8 * 0.5 * x2, rtol=1e-5)


def test_r1_off_adds_no_metric_and_negative_gamma_names_the_field():
  _, aux = client_lib.discriminator_loss(_task(0.0), {'w': jnp.full((1, 2, 1), 0.5)}, _batch(),
                                         jax.random.key(0))
  assert 'r1_penalty' not in aux
  config = phantom.get_config('runlocal')
  config.loss.r1_gamma = -1.0
  with pytest.raises(ValueError, match='loss.r1_gamma'):
    task_lib.r1_gamma(config)
