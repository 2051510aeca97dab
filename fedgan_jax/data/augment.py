"""Chest X-ray augmentation in pure JAX (jit-able, reproducible from the rng).

`augment(images, rng, config)` takes float images `(B, H, W, C)` in [-1, 1] and
applies, per image with its own random draw:
  * one affine resample (bilinear) combining rotation, isotropic scaling,
    translation and an optional horizontal flip, about the image center;
  * intensity changes: contrast around the image's mean, brightness shift, gamma.

Horizontal flips are off by default: a flipped chest film puts the heart on the
right, which is a different (and rare) anatomy, not the same patient.

Config fields (the `augment` section): enabled, max_rotation_deg,
max_scale_delta (scale ~ U(1 - d, 1 + d)), max_translate_fraction (shift ~
U(-f, f) * size per axis), horizontal_flip, flip_probability, max_brightness
(shift ~ U(-b, b) in [-1, 1] units), max_contrast_delta (factor ~ U(1 - c, 1 + c)),
max_gamma_delta (gamma ~ U(1 - g, 1 + g) on [0, 1] intensities), cutout_fraction
(DiffAugment's cutout: a square of this side fraction, centered anywhere, set to
fill_value; 0 = off), fill_value (for pixels that come from outside the image). A stage whose magnitudes are all
zero is skipped at trace time, so a disabled or all-zero config returns the
input unchanged, bit for bit. Everything is differentiable in the images, so the
same call can augment real and generated images before the discriminator.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AugmentParams(NamedTuple):
  """Per-image draws `(B,)` (shift `(B, 2)` in pixels, (y, x)); None = stage off."""
  angle: jax.Array | None = None     # Radians; positive turns the image counter-clockwise.
  scale: jax.Array | None = None
  shift: jax.Array | None = None
  flip: jax.Array | None = None      # bool
  contrast: jax.Array | None = None
  brightness: jax.Array | None = None
  gamma: jax.Array | None = None
  cutout: jax.Array | None = None    # `(B, 2)` centers (y, x) in pixels of the erased square.


_COLUMNS = ('angle', 'scale', 'shift_y', 'shift_x', 'flip', 'contrast', 'brightness', 'gamma')


def _geometric(config) -> bool:
  return bool(config.max_rotation_deg or config.max_scale_delta or config.max_translate_fraction
              or config.horizontal_flip)


def sample_params(rng: jax.Array, batch_size: int, height: int, width: int,
                  config) -> AugmentParams:
  """Draws the parameters of each active stage; stages with zero magnitude stay None."""
  # One uniform draw for every stage: each threefry call costs seconds of XLA compile on CPU.
  unit = jax.random.uniform(rng, (len(_COLUMNS), batch_size), jnp.float32, -1.0, 1.0)
  draw = dict(zip(_COLUMNS, unit))
  params = {}
  if _geometric(config):
    params['angle'] = draw['angle'] * jnp.deg2rad(config.max_rotation_deg)
    params['scale'] = 1.0 + draw['scale'] * config.max_scale_delta
    params['shift'] = jnp.stack([draw['shift_y'] * height, draw['shift_x'] * width],
                                axis=1) * config.max_translate_fraction
    flip_probability = config.flip_probability if config.horizontal_flip else 0.0
    params['flip'] = (draw['flip'] + 1.0) / 2.0 < flip_probability
  if config.max_contrast_delta:
    params['contrast'] = 1.0 + draw['contrast'] * config.max_contrast_delta
  if config.max_brightness:
    params['brightness'] = draw['brightness'] * config.max_brightness
  if config.max_gamma_delta:
    params['gamma'] = 1.0 + draw['gamma'] * config.max_gamma_delta
  if config.cutout_fraction:
    # Drawn from their own key, so configs without cutout keep their draws bit for bit.
    centers = jax.random.uniform(jax.random.fold_in(rng, 1), (batch_size, 2), jnp.float32)
    params['cutout'] = centers * jnp.array([height, width], jnp.float32)
  return AugmentParams(**params)


def _cutout(images: jax.Array, centers: jax.Array, fraction: float,
            fill_value: float) -> jax.Array:
  """Sets a square of side `fraction` of the image around each center to `fill_value`."""
  height, width = images.shape[1:3]
  half_y, half_x = fraction * height / 2, fraction * width / 2
  ys = jnp.arange(height, dtype=jnp.float32)[None, :, None]
  xs = jnp.arange(width, dtype=jnp.float32)[None, None, :]
  inside = ((jnp.abs(ys + 0.5 - centers[:, 0, None, None]) < half_y)
            & (jnp.abs(xs + 0.5 - centers[:, 1, None, None]) < half_x))
  return jnp.where(inside[..., None], fill_value, images)


def _resample(image: jax.Array, angle, scale, shift, flip, fill_value: float) -> jax.Array:
  """One image `(H, W, C)`: output pixel p reads input `A^-1 (p - center - shift) + center`."""
  height, width = image.shape[:2]
  center = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  ys, xs = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing='ij')
  dy, dx = ys - center[0] - shift[0], xs - center[1] - shift[1]
  # The inverse of a counter-clockwise turn as displayed (rows run downwards).
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  source_y = (cos * dy + sin * dx) / scale
  source_x = (cos * dx - sin * dy) / scale
  source_x = jnp.where(flip, -source_x, source_x)
  coordinates = [source_y + center[0], source_x + center[1]]
  channels = [jax.scipy.ndimage.map_coordinates(image[..., c], coordinates, order=1,
                                                mode='constant', cval=fill_value)
              for c in range(image.shape[-1])]
  return jnp.stack(channels, axis=-1)


def apply_params(images: jax.Array, params: AugmentParams, fill_value: float = -1.0,
                 cutout_fraction: float = 0.0) -> jax.Array:
  """Applies the stages present in `params` to `(B, H, W, C)` images in [-1, 1]."""
  if params.angle is not None:
    images = jax.vmap(_resample, in_axes=(0, 0, 0, 0, 0, None))(
        images, params.angle, params.scale, params.shift, params.flip, fill_value)
  per_image = lambda x: x[:, None, None, None]
  intensity = False
  if params.contrast is not None:
    mean = images.mean(axis=(1, 2, 3), keepdims=True)
    images = (images - mean) * per_image(params.contrast) + mean
    intensity = True
  if params.brightness is not None:
    images = images + per_image(params.brightness)
    intensity = True
  if params.gamma is not None:
    unit = jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)
    # x**gamma has an infinite slope at black pixels (gamma < 1), which turns D's gradient
    # through an augmented fake image into NaN; black stays black with a zero slope instead.
    black = unit <= 0.0
    lifted = jnp.where(black, 1.0, unit) ** per_image(params.gamma)
    images = jnp.where(black, 0.0, lifted) * 2.0 - 1.0
    intensity = True
  images = jnp.clip(images, -1.0, 1.0) if intensity else images
  if params.cutout is not None:
    images = _cutout(images, params.cutout, cutout_fraction, fill_value)
  return images


def augment(images: jax.Array, rng: jax.Array, config) -> jax.Array:
  """Augments float images `(B, H, W, C)` in [-1, 1]; identity when `config.enabled` is False.

  `config` is read at trace time: jit with it closed over (or static), e.g.
  `jax.jit(functools.partial(augment, config=config))`.
  """
  if not config.enabled:
    return images
  batch_size, height, width = images.shape[:3]
  params = sample_params(rng, batch_size, height, width, config)
  return apply_params(images, params, config.fill_value, config.cutout_fraction)
