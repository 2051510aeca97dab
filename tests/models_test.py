"""Tests for the image-side contracts of the discriminator and the conv autoencoder."""


import jax
import jax.numpy as jnp
import pytest

from fedgan_jax.models import discriminator


def test_an_image_side_the_blocks_cannot_halve_is_refused_by_name():
  model = discriminator.Discriminator(channels=(8, 16, 32), value_dim=3, input_unshuffle=2,
                                      minibatch_std_group=0)
  condition = jnp.zeros((2, 6))
  shapes = jax.eval_shape(lambda: model.apply(
      model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 1)), condition),
      jnp.zeros((2, 32, 32, 1)), condition))
  assert shapes['logit'].shape == (2,) and shapes['attributes'].shape == (2, 3)
  # 28 = 4 * 7: the third halving would floor the pooled shortcut and ceil the strided path.
  with pytest.raises(ValueError, match=r'multiple of input_unshuffle \(2\) \* 2\*\*len\(channels\)'):
    model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)), condition)


def test_the_conv_autoencoder_refuses_a_side_it_cannot_mirror():
  from fedgan_jax.models import autoencoder  # pylint: disable=g-import-not-at-top
  model = autoencoder.Autoencoder(channels=(8, 16), latent_dim=4, pixel_shuffle=2)
  shape = jax.eval_shape(lambda: model.apply(
      model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))), jnp.zeros((1, 32, 32, 1))))
  assert shape.shape == (1, 32, 32, 1)
  with pytest.raises(ValueError, match="architecture='dense'"):
    model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_smooth_upsampling_blurs_only_the_named_stages_and_refuses_unknown_names():
  from fedgan_jax.models import generator  # pylint: disable=g-import-not-at-top
  condition, z = jnp.ones((2, 3)), jnp.ones((2, 4))
  modes = ('none', 'all', 'coarse', 'last')
  model = lambda mode: generator.Generator(image_size=16, seed_size=4, encoder_channels=(8, 8),
                                           decoder_channels=(4,), embedding_dim=8,
                                           output_shuffle=2, smooth_upsampling=mode)

  # One compiled program for every mode (eager flax compiles op by op), its compile cut by
  # an RBG key (threefry's bit mixing is most of an init's program).
  @jax.jit
  def outputs_of_every_mode():
    # The blurs hold no params: one set, drawn once, fits every mode.
    params = model('none').init(jax.random.key(0, impl='rbg'), condition, z)
    return {mode: model(mode).apply(params, condition, z) for mode in modes}

  outputs = outputs_of_every_mode()
  for mode in modes:
    assert outputs[mode].shape == (2, 16, 16, 1)
  # The same params in every mode: only the blurs differ.
  assert len({round(float(jnp.sum(jnp.abs(o))), 5) for o in outputs.values()}) == 4
  with pytest.raises(ValueError, match='smooth_upsampling'):
    jax.eval_shape(model('bilinear').init, jax.random.key(0), condition, z)
