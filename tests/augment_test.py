"""Tests of the JAX augmentation against hand-computed resamples and intensity maps."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.data import cxr14 as cxr14_config
from fedgan_jax.data import augment

GRID = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1) / 10  # [[0, .1, .2], ...]
# One jitted function for all tests: one compile per shape and set of stages, not per primitive.
_apply = jax.jit(augment.apply_params, static_argnames='fill_value')


def _geometry(angle=0.0, scale=1.0, shift=(0.0, 0.0), flip=False):
  return augment.AugmentParams(angle=jnp.array([angle]), scale=jnp.array([scale]),
                               shift=jnp.array([shift]), flip=jnp.array([flip]))


def _zero_config(**overrides):
  config = cxr14_config.get_augment_config()
  config.update({'max_rotation_deg': 0.0, 'max_scale_delta': 0.0, 'max_translate_fraction': 0.0,
                 'horizontal_flip': False, 'max_brightness': 0.0, 'max_contrast_delta': 0.0,
                 'max_gamma_delta': 0.0, 'cutout_fraction': 0.0, **overrides})
  return config


def _images(batch=4, size=8):
  return np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 1)).astype(np.float32)


def test_disabled_or_zero_magnitudes_return_the_input_exactly():
  images = _images()
  disabled = cxr14_config.get_augment_config()
  disabled.enabled = False
  assert augment.augment(images, jax.random.key(1), disabled) is images
  out = jax.jit(functools.partial(augment.augment, config=_zero_config()))(images,
                                                                           jax.random.key(1))
  np.testing.assert_array_equal(out, images)


def test_quarter_turn_is_rot90_counter_clockwise():
  out = _apply(GRID, _geometry(angle=np.pi / 2))
  np.testing.assert_allclose(out[0, :, :, 0], np.rot90(GRID[0, :, :, 0]), atol=1e-6)


def test_one_pixel_shift_moves_columns_and_fills_the_edge():
  out = _apply(GRID, _geometry(shift=(0.0, 1.0)), fill_value=-1.0)
  np.testing.assert_allclose(out[0, :, :, 0], [[-1, 0, .1], [-1, .3, .4], [-1, .6, .7]],
                             atol=1e-6)


def test_half_pixel_shift_averages_neighbours_bilinearly():
  out = _apply(GRID, _geometry(shift=(0.5, 0.0)), fill_value=-1.0)
  # Row 1 reads y = 0.5: the mean of rows 0 and 1; row 0 reads y = -0.5, half fill.
  np.testing.assert_allclose(out[0, 1, :, 0], [.15, .25, .35], atol=1e-6)
  np.testing.assert_allclose(out[0, 0, :, 0], [-.5, -.45, -.4], atol=1e-6)


def test_doubling_the_scale_zooms_about_the_center():
  out = _apply(GRID, _geometry(scale=2.0))
  # Corner (0, 0) reads (0.5, 0.5): the mean of 0, .1, .3, .4; the center stays.
  assert out[0, 0, 0, 0] == pytest.approx(0.2, abs=1e-6)
  assert out[0, 1, 1, 0] == pytest.approx(0.4, abs=1e-6)


def test_flip_mirrors_columns_exactly():
  images = _images()
  params = augment.AugmentParams(angle=jnp.zeros(4), scale=jnp.ones(4), shift=jnp.zeros((4, 2)),
                                 flip=jnp.array([True, False, True, False]))
  out = _apply(images, params)
  np.testing.assert_array_equal(out[0], images[0, :, ::-1])
  np.testing.assert_array_equal(out[1], images[1])


def test_intensity_maps_match_hand_values():
  x = jnp.array([-1.0, 0.0, 0.5, 1.0]).reshape(1, 1, 4, 1)  # Mean 0.125.
  contrast = _apply(x, augment.AugmentParams(contrast=jnp.array([2.0])))
  np.testing.assert_allclose(contrast[0, 0, :, 0], [-1.0, -0.125, 0.875, 1.0], atol=1e-6)
  brighter = _apply(x, augment.AugmentParams(brightness=jnp.array([0.25])))
  np.testing.assert_allclose(brighter[0, 0, :, 0], [-0.75, 0.25, 0.75, 1.0], atol=1e-6)
  gamma = _apply(x, augment.AugmentParams(gamma=jnp.array([2.0])))
  # ((x + 1) / 2) ** 2 * 2 - 1
  np.testing.assert_allclose(gamma[0, 0, :, 0], [-1.0, -0.5, 0.125, 1.0], atol=1e-6)


def test_draws_stay_within_the_configured_magnitudes():
  config = cxr14_config.get_augment_config()
  params = jax.jit(lambda rng: augment.sample_params(rng, 1000, 64, 32, config))(
      jax.random.key(3))
  assert np.abs(np.rad2deg(params.angle)).max() <= config.max_rotation_deg + 1e-4
  assert np.abs(params.scale - 1).max() <= config.max_scale_delta + 1e-6
  limits = config.max_translate_fraction * np.array([64, 32])
  assert (np.abs(params.shift) <= limits + 1e-5).all()
  assert np.abs(params.shift[:, 1]).max() > 0.9 * limits[1]
  assert not params.flip.any()  # Flips are off by default.
  assert np.abs(params.brightness).max() <= config.max_brightness + 1e-6
  assert np.abs(params.gamma - 1).max() <= config.max_gamma_delta + 1e-6
  flip_config = _zero_config(horizontal_flip=True, flip_probability=0.25)
  flips = jax.jit(lambda rng: augment.sample_params(rng, 1000, 8, 8, flip_config).flip)(
      jax.random.key(3))
  assert 0.2 < float(flips.mean()) < 0.3


def test_reproducible_from_the_rng_and_jit_compiles_once():
  config = cxr14_config.get_augment_config()
  images = _images()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(images, rng):
    return augment.augment(images, rng, config)

  a, b, c = run(images, jax.random.key(5)), run(images, jax.random.key(5)), run(
      images, jax.random.key(6))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0


def test_gradients_through_every_stage_are_finite_at_black_fill_pixels():
  config = cxr14_config.get_augment_config()
  config.update({'max_rotation_deg': 30.0, 'max_gamma_delta': 0.5, 'horizontal_flip': True})
  images = _images().copy()
  images[:, :2] = -1.0  # Black rows and black fill: where u ** gamma has an infinite slope.

  @jax.jit
  def gradient(images):
    return jax.grad(lambda x: augment.augment(x, jax.random.key(2), config).sum())(images)

  grads = gradient(images)
  assert np.isfinite(grads).all() and np.abs(grads).sum() > 0


def test_cutout_erases_the_square_around_its_center_only():
  images = np.ones((2, 8, 8, 1), np.float32)
  params = augment.AugmentParams(cutout=jnp.array([[2.0, 2.0], [8.0, 0.0]]))
  out = np.asarray(jax.jit(augment.apply_params, static_argnames=(
      'fill_value', 'cutout_fraction'))(images, params, fill_value=-1.0, cutout_fraction=0.5))
  # Side 4 around (2, 2): pixel centers 0.5..3.5 are within 2 of it -> rows/cols 0-3.
  expected = np.ones((8, 8), np.float32)
  expected[0:4, 0:4] = -1.0
  np.testing.assert_array_equal(out[0, ..., 0], expected)
  # Around the corner (8, 0): rows 6-7, cols 0-1.
  expected = np.ones((8, 8), np.float32)
  expected[6:8, 0:2] = -1.0
  np.testing.assert_array_equal(out[1, ..., 0], expected)


def test_cutout_off_keeps_the_draws_of_the_other_stages():
  rng = jax.random.key(3)
  base = augment.sample_params(rng, 4, 8, 8, _zero_config(max_brightness=0.2))
  with_cutout = augment.sample_params(rng, 4, 8, 8, _zero_config(max_brightness=0.2,
                                                                 cutout_fraction=0.5))
  np.testing.assert_array_equal(base.brightness, with_cutout.brightness)
  assert base.cutout is None and with_cutout.cutout.shape == (4, 2)
  assert float(jnp.max(with_cutout.cutout)) <= 8.0
