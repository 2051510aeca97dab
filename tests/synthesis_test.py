"""Sampling a trained G: the noise scale of `config.sampling` reaches every sampler."""

import dataclasses

import jax
import numpy as np
import pytest

from conftest import tiny_runlocal_config
from fedgan_jax import synthesis
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import task as task_lib


@pytest.fixture(scope='module')
def tiny_generator():
  config = tiny_runlocal_config()
  schema = conditions_lib.ConditionSchema.from_config(config.conditions)
  image_shape = (config.data.image_size, config.data.image_size, 1)
  task = task_lib.build_task(config, schema, image_shape)
  params = client_lib.init_params(task, jax.random.key(0), image_shape, schema.model_dim)
  conditions = synthesis.profile_conditions(schema, [dict(age=30), dict(age=70)])
  return config, schema, task, params['generator'], conditions


def test_build_task_reads_and_checks_the_noise_scale(tiny_generator):
  config, schema, task, _, _ = tiny_generator
  assert task.sample_noise_scale == config.sampling.noise_scale
  config = config.copy_and_resolve_references()
  config.sampling.noise_scale = 0.25
  assert task_lib.build_task(config, schema, (32, 32, 1)).sample_noise_scale == 0.25
  config.sampling.noise_scale = 1.5
  with pytest.raises(ValueError, match=r'sampling.noise_scale must be in \[0, 1\]'):
    task_lib.build_task(config, schema, (32, 32, 1))
  del config['sampling']
  with pytest.raises(ValueError, match='no `sampling` section'):
    task_lib.build_task(config, schema, (32, 32, 1))


def test_noise_scale_zero_makes_samples_deterministic_per_condition(tiny_generator):
  _, _, task, g_params, conditions = tiny_generator
  repeated = np.repeat(conditions, 3, axis=0)
  unscaled = dataclasses.replace(task, sample_noise_scale=1.0)
  varied = synthesis.synthesize(unscaled, g_params, repeated, seed=0)
  assert not np.array_equal(varied[0], varied[1])  # Different z, different films.
  mean_only = dataclasses.replace(task, sample_noise_scale=0.0)
  images = synthesis.synthesize(mean_only, g_params, repeated, seed=0)
  np.testing.assert_array_equal(images[0], images[1])
  np.testing.assert_array_equal(images[0], synthesis.synthesize(mean_only, g_params, repeated,
                                                                seed=5)[2])
  assert not np.array_equal(images[0], images[3])  # Still conditioned on age.


def test_sample_grid_columns_follow_the_noise_scale(tiny_generator):
  _, schema, task, g_params, _ = tiny_generator
  profiles = [dict(age=30), dict(age=70)]
  grid = synthesis.sample_grid(dataclasses.replace(task, sample_noise_scale=0.0), g_params,
                               schema, profiles, columns=3, seed=0)
  assert grid.shape[:2] == (2, 3)
  np.testing.assert_array_equal(grid[:, 0], grid[:, 2])
  grid = synthesis.sample_grid(dataclasses.replace(task, sample_noise_scale=1.0), g_params,
                               schema, profiles, columns=3, seed=0)
  assert not np.array_equal(grid[:, 0], grid[:, 2])


def test_noise_scale_scales_z_exactly(tiny_generator):
  _, _, task, g_params, conditions = tiny_generator
  half = dataclasses.replace(task, sample_noise_scale=0.5)
  rng = jax.random.key(3)
  z = jax.random.normal(rng, (len(conditions), task.z_dim))
  expected = task.generator.apply({'params': g_params}, conditions, 0.5 * z)
  np.testing.assert_allclose(client_lib.generate(half, g_params, conditions, rng, 0.5), expected,
                             rtol=1e-6, atol=1e-6)
