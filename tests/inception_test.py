"""Tests for the Flax FID Inception port and its weight conversion (no torch needed)."""

import pathlib

import jax
import numpy as np
import pytest

from fedgan_jax.evaluation import inception
from fedgan_jax.tools import convert_inception

FIXTURE = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'inception_parity.npz'


@pytest.fixture(scope='module')
def parity():
  """The fixture written by benchmarks/inception_parity.py, plus the weights rebuilt here."""
  with np.load(FIXTURE) as data:
    fixture = {name: data[name] for name in data.files}
  state_dict = convert_inception.random_state_dict(int(fixture['weight_seed']))
  return fixture, state_dict


def test_matches_pytorch_fid_features_on_random_weights(parity):
  fixture, state_dict = parity
  variables = convert_inception.variables_from_state_dict(state_dict)
  # Preprocessing each batch outside jit lets one compiled trunk serve every input size, which
  # keeps this test fast; benchmarks/inception_parity.py checks the composed `__call__`.
  preprocessed, expected = [], []
  for index, (seed, shape) in enumerate(zip(fixture['input_seeds'], fixture['input_shapes'])):
    # Same draw as benchmarks/inception_parity.random_images.
    images = np.random.default_rng(int(seed)).uniform(-1.0, 1.0, tuple(shape)).astype(np.float32)
    preprocessed.append(inception.preprocess(images))
    expected.append(fixture[f'features_{index}'])
  trunk = jax.jit(lambda variables, x: inception.InceptionV3().apply(
      variables, x, method='features_of_preprocessed'))
  features = np.asarray(trunk(variables, np.concatenate(preprocessed)))
  assert features.shape == (4, inception.FEATURE_DIM)
  # Features are O(1) (mean ~1.7, max ~15), so 1e-4 is ~1e-5 relative: float32 rounding.
  np.testing.assert_allclose(features, np.concatenate(expected), rtol=0, atol=1e-4)


def test_bilinear_resize_matrix_matches_torch_hand_values():
  # 2 -> 4: sources at (o + 0.5) / 2 - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25.
  np.testing.assert_allclose(inception.bilinear_resize_matrix(2, 4),
                             [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  # 4 -> 2: sources at 0.5 and 2.5, two taps each; an antialiasing resize would use four.
  np.testing.assert_allclose(inception.bilinear_resize_matrix(4, 2),
                             [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])


def test_resize_bilinear_is_separable_and_identity_at_same_size():
  images = np.arange(2 * 2 * 4 * 1, dtype=np.float32).reshape(2, 2, 4, 1)
  np.testing.assert_array_equal(inception.resize_bilinear(images, 2, 4), images)
  resized = np.asarray(inception.resize_bilinear(images, 4, 2))
  # Row 1 of the 2 -> 4 matrix mixes input rows 0.75 / 0.25; columns average pairs.
  row = 0.75 * images[0, 0, :, 0] + 0.25 * images[0, 1, :, 0]
  np.testing.assert_allclose(resized[0, 1, :, 0], [row[:2].mean(), row[2:].mean()])


def test_torch_and_flax_names_round_trip():
  shapes = convert_inception.state_dict_shapes()
  assert len(shapes) == 470  # 94 conv + BatchNorm layers, 5 tensors each.
  assert shapes['Mixed_7c.branch3x3_2a.conv.weight'] == (384, 384, 1, 3)
  assert (convert_inception.flax_name('Mixed_6b.branch7x7_2.bn.running_var')
          == 'batch_stats/Mixed_6b/branch7x7_2/bn/var')
  for key in shapes:
    assert convert_inception.torch_key(convert_inception.flax_name(key)) == key


def test_conv_weights_are_transposed_to_hwio(parity):
  _, state_dict = parity
  variables = convert_inception.variables_from_state_dict(state_dict)
  weight = state_dict['Conv2d_2a_3x3.conv.weight']  # (O=32, I=32, 3, 3)
  kernel = variables['params']['Conv2d_2a_3x3']['conv']['kernel']
  assert kernel[2, 1, 5, 7] == weight[7, 5, 2, 1]
  bn = state_dict['Conv2d_2a_3x3.bn.running_mean']
  np.testing.assert_array_equal(variables['batch_stats']['Conv2d_2a_3x3']['bn']['mean'], bn)


def test_state_dict_drops_classifier_and_rejects_unknown_or_missing(parity):
  _, state_dict = parity
  extra = dict(state_dict, **{'fc.weight': np.zeros((1008, 2048), np.float32),
                              'Conv2d_1a_3x3.bn.num_batches_tracked': np.array(0)})
  variables = convert_inception.variables_from_state_dict(extra)
  assert 'fc' not in variables['params']
  with pytest.raises(KeyError, match='Mixed_9z'):
    convert_inception.variables_from_state_dict(
        dict(state_dict, **{'Mixed_9z.branch1x1.conv.weight': np.zeros(1)}))
  missing = dict(state_dict)
  del missing['Mixed_5b.branch_pool.bn.bias']
  with pytest.raises(KeyError, match='lacks 1 tensors'):
    convert_inception.variables_from_state_dict(missing)
  wrong = dict(state_dict, **{'Mixed_5b.branch_pool.bn.bias': np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match='expected \\(32,\\)'):
    convert_inception.variables_from_state_dict(wrong)


def test_saved_variables_load_back_for_fid(parity, tmp_path):
  _, state_dict = parity
  variables = convert_inception.variables_from_state_dict(state_dict)
  path = tmp_path / 'inception_fid.npz'
  inception.save_variables(variables, path)
  apply_fn, loaded = inception.load_inception(path)
  assert callable(apply_fn)
  np.testing.assert_array_equal(loaded['params']['Mixed_7c']['branch_pool']['conv']['kernel'],
                                variables['params']['Mixed_7c']['branch_pool']['conv']['kernel'])
  np.testing.assert_array_equal(loaded['batch_stats']['Mixed_5d']['branch1x1']['bn']['var'],
                                variables['batch_stats']['Mixed_5d']['branch1x1']['bn']['var'])


def test_missing_weights_file_says_how_to_convert(tmp_path):
  with pytest.raises(FileNotFoundError, match='convert_inception'):
    inception.load_inception(tmp_path / 'absent.npz')


def test_foreign_npz_is_rejected_with_its_path(tmp_path):
  path = tmp_path / 'other.npz'
  np.savez(path, **{'params/Conv2d_1a_3x3/conv/kernel': np.zeros((3, 3, 3, 31), np.float32)})
  with pytest.raises(ValueError, match='other.npz'):
    inception.load_variables(path)


def test_rejects_images_without_one_or_three_channels():
  with pytest.raises(ValueError, match='C = 1 or 3'):
    jax.eval_shape(inception.InceptionV3().init, jax.random.key(0),
                   jax.ShapeDtypeStruct((1, 32, 32, 2), np.float32))
