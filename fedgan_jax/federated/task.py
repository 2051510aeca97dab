"""Builds the `GanTask` (models, losses, client optimizers) from a config.

Differential privacy enters only through the gradients passed in: whoever trains builds a
`privacy.engine.PrivacyPlan` from `config.dp` and passes `**plan.task_gradients()`, so this
package never reads `config.dp` nor imports the privacy one.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fedgan_jax import losses
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import optimizers
from fedgan_jax.models import discriminator as discriminator_lib
from fedgan_jax.models import generator as generator_lib


PRECISIONS = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(config):
  """`runtime.precision`'s dtype: what G and D compute in (params and optimizer state stay
  float32, and the losses are float32 either way)."""
  precision = config.runtime.precision
  if precision not in PRECISIONS:
    raise ValueError(f'runtime.precision must be one of {sorted(PRECISIONS)}, got '
                     f'{precision!r}.')
  return PRECISIONS[precision]


def build_generator(model_config, image_shape, dtype=jnp.float32) -> generator_lib.Generator:
  g = model_config.generator
  return generator_lib.Generator(
      image_size=image_shape[0], seed_size=g.seed_size, encoder_channels=tuple(g.encoder_channels),
      decoder_channels=tuple(g.decoder_channels), embedding_dim=g.embedding_dim,
      channels=image_shape[-1], output_shuffle=g.output_shuffle,
      output_blur=g.output_blur, smooth_upsampling=g.smooth_upsampling,
      dtype=dtype)


def build_discriminator(model_config, schema: conditions_lib.ConditionSchema,
                        dtype=jnp.float32):
  d = model_config.discriminator
  return discriminator_lib.Discriminator(channels=tuple(d.channels), value_dim=schema.value_dim,
                                         input_unshuffle=d.input_unshuffle,
                                         minibatch_std_group=d.minibatch_std_group, dtype=dtype)


def build_augment(augment_config):
  """`augment(images, rng)` from `data.augment`, or None when absent (phantom) or disabled."""
  if augment_config is None or not augment_config.enabled:
    return None
  from fedgan_jax.data import augment as augment_lib  # pylint: disable=g-import-not-at-top
  return lambda images, rng: augment_lib.augment(images, rng, augment_config)


def cond_complement_binary(config, schema: conditions_lib.ConditionSchema) -> bool:
  """`loss.cond_complement_binary`, refusing a schema whose L_cond would be identically 0."""
  complement = bool(config.loss.cond_complement_binary)
  continuous = np.asarray(schema.continuous_columns(), bool)
  if not complement and continuous.size == 1 and not continuous[0] and config.loss.cond_weight:
    raise ValueError('loss.cond_complement_binary: the condition is one 0/1 attribute, for which '
                     'the cosine L_cond is identically 0; set --config.loss.cond_complement_binary'
                     '=True (or loss.cond_weight=0).')
  return complement


def sample_noise_scale(config) -> float:
  """`config.sampling.noise_scale`, checked: the std of z when sampling a trained G."""
  if 'sampling' not in config:
    raise ValueError('the config has no `sampling` section; start from '
                     'configs/common.get_common_config() or add `config.sampling.noise_scale`.')
  scale = float(config.sampling.noise_scale)
  if not 0.0 <= scale <= 1.0:
    raise ValueError(f'sampling.noise_scale must be in [0, 1] (1 = z ~ N(0, I) as in training), '
                     f'got {scale}.')
  return scale


FAKE_CONDITIONS = ('batch', 'public_prior')


def public_fake_conditions(config) -> bool:
  """Whether `config.fl.fake_conditions` asks for G's images on public-prior conditions."""
  kind = config.fl.fake_conditions
  if kind not in FAKE_CONDITIONS:
    raise ValueError(f'fl.fake_conditions must be one of {FAKE_CONDITIONS}, got {kind!r}.')
  return kind == 'public_prior'


def training_condition_prior(task, federation, config):
  """The public condition prior G trains on (`fl.fake_conditions`), or None for 'batch'."""
  if not task.public_fake_conditions:
    return None
  if federation.condition_prior is None:
    raise ValueError(
        f'fl.fake_conditions="public_prior": data source {config.data.name!r} has no public '
        'condition prior (only phantom builds one from its config); set '
        '--config.fl.fake_conditions=batch.')
  return federation.condition_prior


def r1_gamma(config) -> float:
  gamma = float(config.loss.r1_gamma)
  if not gamma >= 0:
    raise ValueError(f'loss.r1_gamma must be >= 0 (0 = off), got {gamma}.')
  return gamma


def mode_seeking_weight(config) -> float:
  weight = float(config.loss.mode_seeking_weight)
  if not weight >= 0:
    raise ValueError(f'loss.mode_seeking_weight must be >= 0 (0 = off), got {weight}.')
  return weight


def build_task(config, schema: conditions_lib.ConditionSchema, image_shape,
               discriminator_gradient=None, fake_term_gradient=None) -> client_lib.GanTask:
  """The task of `config`, with D's gradient replaced where DP-SGD asks (see `GanTask`).

  Args:
    discriminator_gradient, fake_term_gradient: `GanTask`'s; from
      `PrivacyPlan.task_gradients()` when `config.dp.mode='example'`, else None (plain mean
      gradients). `PrivacyPlan.check_task` refuses a task built without them for a DP-SGD run.
  """
  if config.loss.gan not in losses.GAN_LOSSES:
    raise ValueError(f'loss.gan: {config.loss.gan!r} is not one of {losses.GAN_LOSSES}.')
  d_optimizer, g_optimizer = optimizers.build_client_optimizers(config.fl.client_optimizer)
  return client_lib.GanTask(
      generator=build_generator(config.model, image_shape, compute_dtype(config)),
      discriminator=build_discriminator(config.model, schema, compute_dtype(config)),
      z_dim=config.model.generator.z_dim,
      continuous_columns=np.asarray(schema.continuous_columns()),
      gan_loss=config.loss.gan,
      cond_weight=float(config.loss.cond_weight),
      attribute_weight=float(config.loss.attribute_weight),
      cond_complement_binary=cond_complement_binary(config, schema),
      d_optimizer=d_optimizer,
      g_optimizer=g_optimizer,
      augment=build_augment(config.data.get('augment')),  # Real-data sources have one.
      discriminator_gradient=discriminator_gradient,
      sample_noise_scale=sample_noise_scale(config),
      public_fake_conditions=public_fake_conditions(config),
      fake_term_gradient=fake_term_gradient,
      r1_gamma=r1_gamma(config),
      mode_seeking_weight=mode_seeking_weight(config))
