"""Parity of the Flax FID Inception with pytorch-fid, on seeded random weights.

Builds pytorch-fid's `InceptionV3` (FID variant) through pytorch-fid's own constructor, with
its weight download replaced by `convert_inception.random_state_dict(seed)`, runs a few
seeded images through it and through the Flax port, prints the differences and writes the
torch features to the fixture `tests/inception_test.py` checks against (that test needs no
torch: it regenerates the same weights and images from the stored seeds).

Needs torch, torchvision and pytorch-fid beside this repo's dependencies, in a venv outside
the repo (CPU is enough):
  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.14.1 torchvision==0.29.1
  /tmp/torchenv/bin/pip install pytorch-fid scipy numpy jax==0.10.2 flax==0.12.8 absl-py \
      ml-collections
  /tmp/torchenv/bin/python -m benchmarks.inception_parity \
      --output=tests/fixtures/inception_parity.npz
"""

from __future__ import annotations

import time
from unittest import mock

import jax
import numpy as np
from absl import app
from absl import flags

from fedgan_jax.evaluation import inception
from fedgan_jax.tools import convert_inception

_OUTPUT = flags.DEFINE_string('output', 'tests/fixtures/inception_parity.npz',
                              'Where to write the fixture.')
_WEIGHT_SEED = flags.DEFINE_integer('weight_seed', 20151205, 'Seed of the random weights.')
# Grayscale images are upsampled (64 -> 299); the RGB ones are shrunk, non-square, so both
# directions of torch's resize and the gray -> RGB copy are covered.
_INPUT_SEEDS = flags.DEFINE_list('input_seeds', ['1', '2'], 'One seed per input batch.')
_INPUT_SHAPES = flags.DEFINE_list('input_shapes', ['2x64x64x1', '2x331x317x3'],
                                  'NHWC shape of each input batch, in [-1, 1].')
_FC_CLASSES = 1008  # The FID graph's classifier width; pytorch-fid's strict load needs fc.


def random_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
  """The parity inputs; tests/inception_test.py draws them the same way."""
  return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


def torch_features(state_dict: dict[str, np.ndarray], batches: list[np.ndarray],
                   weight_seed: int) -> list[np.ndarray]:
  """pytorch-fid's 2048-d features of NHWC [-1, 1] `batches` under `state_dict`."""
  import torch  # pylint: disable=g-import-not-at-top
  from pytorch_fid import inception as fid_inception  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(2)
  rng = np.random.default_rng(weight_seed)
  full = {key: torch.from_numpy(value) for key, value in state_dict.items()}
  # fc does not reach the pool features; it only has to exist for the strict load.
  full['fc.weight'] = torch.from_numpy(
      rng.normal(0.0, 0.01, (_FC_CLASSES, inception.FEATURE_DIM)).astype(np.float32))
  full['fc.bias'] = torch.zeros(_FC_CLASSES)
  # pytorch-fid's own constructor, so its block patches are used as released; only the
  # download is replaced. Its strict load_state_dict also proves our key names match.
  with mock.patch.object(fid_inception, 'load_state_dict_from_url', return_value=full):
    network = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                        resize_input=True, normalize_input=True)
  network.eval()
  outputs = []
  with torch.no_grad():
    for images in batches:
      rgb = np.broadcast_to(images, images.shape[:3] + (3,))
      # pytorch-fid takes NCHW in [0, 1] and applies 2x - 1 itself after resizing.
      batch = torch.from_numpy(np.ascontiguousarray(np.transpose((rgb + 1.0) / 2.0,
                                                                 (0, 3, 1, 2))))
      outputs.append(network(batch)[0].reshape(len(images), -1).numpy())
  return outputs


def main(argv):
  del argv
  import pytorch_fid  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  seeds = [int(seed) for seed in _INPUT_SEEDS.value]
  shapes = [tuple(int(size) for size in shape.split('x')) for shape in _INPUT_SHAPES.value]
  if len(seeds) != len(shapes):
    raise SystemExit('--input_seeds and --input_shapes need one entry per batch.')
  batches = [random_images(seed, shape) for seed, shape in zip(seeds, shapes)]
  state_dict = convert_inception.random_state_dict(_WEIGHT_SEED.value)

  start = time.perf_counter()
  expected = torch_features(state_dict, batches, _WEIGHT_SEED.value)
  torch_seconds = time.perf_counter() - start

  variables = convert_inception.variables_from_state_dict(state_dict)
  apply_fn = jax.jit(inception.InceptionV3().apply)
  report = []
  for images, want in zip(batches, expected):
    got = np.asarray(apply_fn(variables, images))
    abs_error = np.abs(got - want)
    report.append((images.shape, float(abs_error.max()),
                   float(abs_error.max() / np.abs(want).max()),
                   float(np.linalg.norm(got - want) / np.linalg.norm(want)),
                   float(np.abs(want).mean())))
  for shape, max_abs, max_rel, norm_rel, mean_magnitude in report:
    print(f'{shape}: max |flax - torch| = {max_abs:.3g}, / max |torch| = {max_rel:.3g}, '
          f'relative L2 = {norm_rel:.3g} (mean |feature| {mean_magnitude:.3g})')
  print(f'torch forward of all batches: {torch_seconds:.2f}s on CPU')

  fixture = {
      'weight_seed': np.int64(_WEIGHT_SEED.value),
      'input_seeds': np.array(seeds, np.int64),
      'input_shapes': np.array(shapes, np.int64),
      'max_abs_error_at_creation': np.array([row[1] for row in report]),
      'versions': np.array(f'torch {torch.__version__}, pytorch-fid {pytorch_fid.__version__}'),
  }
  for index, features in enumerate(expected):
    fixture[f'features_{index}'] = features.astype(np.float32)
  np.savez_compressed(_OUTPUT.value, **fixture)
  print(f'wrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
