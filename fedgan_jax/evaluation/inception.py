"""Inception-v3 as used for FID (pytorch-fid's `InceptionV3`, FID variant), in flax.linen.

The network is torchvision's Inception-v3 with the patches pytorch-fid applies so that it
matches the TensorFlow graph FID was defined with:
  * the pool branches of the A, C and first E blocks average without counting padding;
  * the second E block (`Mixed_7c`) max-pools in its pool branch.
Features are the 2048-d global average pool after `Mixed_7c`.

Module and parameter names mirror the torch state dict (`Mixed_5b/branch1x1/conv/kernel`
is `Mixed_5b.branch1x1.conv.weight`), so converting weights is a renaming plus a transpose;
see `fedgan_jax.tools.convert_inception`.

Images enter as NHWC floats in [-1, 1] (the range pytorch-fid produces after its own
`2x - 1`), with 1 or 3 channels, at any size: they are resized once to 299x299 with torch's
`F.interpolate(mode='bilinear', align_corners=False)` (no antialiasing), so features agree
with pytorch-fid for the same pixels.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

INPUT_SIZE = 299  # Fixed by the network: FID statistics are only comparable at this size.
FEATURE_DIM = 2048
BATCH_NORM_EPSILON = 1e-3  # torchvision's BasicConv2d; the TF graph used the same.
WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
               'pt_inception-2015-12-05-6726825d.pth')


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """`(out_size, in_size)` weights of torch's bilinear interpolation, `align_corners=False`.

  Torch samples at half-pixel centres, clamps negative source coordinates to 0 and never
  widens the kernel when shrinking (unlike `jax.image.resize`, which antialiases), so the
  weights are spelled out here instead of relying on a resize routine's conventions.
  """
  scale = in_size / out_size
  source = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  upper_weight = np.clip(source - lower, 0.0, 1.0)
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lower), 1.0 - upper_weight)
  np.add.at(matrix, (rows, upper), upper_weight)
  return matrix.astype(np.float32)


def resize_bilinear(images: jax.Array, height: int, width: int) -> jax.Array:
  """Resizes NHWC `images` like torch's bilinear `F.interpolate(align_corners=False)`."""
  _, in_height, in_width, _ = images.shape
  if (in_height, in_width) == (height, width):
    return images  # Torch's weights are the identity here too.
  rows = jnp.asarray(bilinear_resize_matrix(in_height, height))
  cols = jnp.asarray(bilinear_resize_matrix(in_width, width))
  # Separable resize as two matmuls; full f32 so TPUs/GPUs do not round inputs to bf16.
  images = jnp.einsum('oh,nhwc->nowc', rows, images, precision='highest')
  return jnp.einsum('pw,nowc->nopc', cols, images, precision='highest')


class ConvBatchNormRelu(nn.Module):
  """torchvision's `BasicConv2d`: bias-free conv, inference BatchNorm, ReLU."""
  features: int
  kernel_size: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=((pad_h, pad_h), (pad_w, pad_w)), use_bias=False,
                precision=self.precision, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPSILON, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TF's SAME average pool divides by the number of real pixels in the window.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  """35x35 block (`Mixed_5b..5d`), FID variant."""
  pool_features: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBatchNormRelu, precision=self.precision)
    branch1x1 = conv(64, name='branch1x1')(x)
    branch5x5 = conv(48, name='branch5x5_1')(x)
    branch5x5 = conv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(branch5x5)
    branch3x3dbl = conv(64, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = conv(self.pool_features, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """35x35 -> 17x17 reduction (`Mixed_6a`)."""
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBatchNormRelu, precision=self.precision)
    branch3x3 = conv(384, (3, 3), strides=2, name='branch3x3')(x)
    branch3x3dbl = conv(64, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, (3, 3), strides=2, name='branch3x3dbl_3')(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorized 7x7 convolutions (`Mixed_6b..6e`), FID variant."""
  channels_7x7: int
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBatchNormRelu, precision=self.precision)
    width = self.channels_7x7
    branch1x1 = conv(192, name='branch1x1')(x)
    branch7x7 = conv(width, name='branch7x7_1')(x)
    branch7x7 = conv(width, (1, 7), padding=(0, 3), name='branch7x7_2')(branch7x7)
    branch7x7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(branch7x7)
    branch7x7dbl = conv(width, name='branch7x7dbl_1')(x)
    branch7x7dbl = conv(width, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(branch7x7dbl)
    branch7x7dbl = conv(width, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(branch7x7dbl)
    branch7x7dbl = conv(width, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(branch7x7dbl)
    branch7x7dbl = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(branch7x7dbl)
    branch_pool = conv(192, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """17x17 -> 8x8 reduction (`Mixed_7a`)."""
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBatchNormRelu, precision=self.precision)
    branch3x3 = conv(192, name='branch3x3_1')(x)
    branch3x3 = conv(320, (3, 3), strides=2, name='branch3x3_2')(branch3x3)
    branch7x7x3 = conv(192, name='branch7x7x3_1')(x)
    branch7x7x3 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(branch7x7x3)
    branch7x7x3 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(branch7x7x3)
    branch7x7x3 = conv(192, (3, 3), strides=2, name='branch7x7x3_4')(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3/3x1 outputs (`Mixed_7b`: avg pool, `Mixed_7c`: max pool)."""
  pool: str  # 'avg' or 'max'
  precision: Any = 'highest'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(ConvBatchNormRelu, precision=self.precision)
    branch1x1 = conv(320, name='branch1x1')(x)
    branch3x3 = conv(384, name='branch3x3_1')(x)
    branch3x3 = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(branch3x3),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(branch3x3)], axis=-1)
    branch3x3dbl = conv(448, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(branch3x3dbl),
        conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(branch3x3dbl)], axis=-1)
    if self.pool == 'avg':
      pooled = _avg_pool_3x3(x)
    elif self.pool == 'max':
      # The FID graph max-pools here (a quirk of that TF graph, kept for comparability).
      pooled = _max_pool_3x3(x, stride=1, pad=1)
    else:
      raise ValueError(f'InceptionE.pool must be "avg" or "max", got {self.pool!r}.')
    branch_pool = conv(192, name='branch_pool')(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


def preprocess(images: jax.Array) -> jax.Array:
  """`(N, H, W, 1 or 3)` in [-1, 1] -> `(N, 299, 299, 3)`: one bilinear resize, gray -> RGB."""
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError('InceptionV3 expects images (N, H, W, C) with C = 1 or 3 in [-1, 1], '
                     f'got shape {images.shape}.')
  x = resize_bilinear(jnp.asarray(images, jnp.float32), INPUT_SIZE, INPUT_SIZE)
  return jnp.broadcast_to(x, x.shape[:-1] + (3,))


class InceptionV3(nn.Module):
  """pytorch-fid's FID Inception: images in [-1, 1] -> `(N, 2048)` pool features.

  Attributes:
    precision: matmul/conv precision; 'highest' keeps float32 on accelerators, whose
      default would round to bf16/tf32 and shift FID by more than seeds do.
  """
  precision: Any = 'highest'

  def setup(self):
    conv = functools.partial(ConvBatchNormRelu, precision=self.precision)
    self.Conv2d_1a_3x3 = conv(32, (3, 3), strides=2)
    self.Conv2d_2a_3x3 = conv(32, (3, 3))
    self.Conv2d_2b_3x3 = conv(64, (3, 3), padding=(1, 1))
    self.Conv2d_3b_1x1 = conv(80)
    self.Conv2d_4a_3x3 = conv(192, (3, 3))
    self.Mixed_5b = InceptionA(32, self.precision)
    self.Mixed_5c = InceptionA(64, self.precision)
    self.Mixed_5d = InceptionA(64, self.precision)
    self.Mixed_6a = InceptionB(self.precision)
    self.Mixed_6b = InceptionC(128, self.precision)
    self.Mixed_6c = InceptionC(160, self.precision)
    self.Mixed_6d = InceptionC(160, self.precision)
    self.Mixed_6e = InceptionC(192, self.precision)
    self.Mixed_7a = InceptionD(self.precision)
    self.Mixed_7b = InceptionE('avg', self.precision)
    self.Mixed_7c = InceptionE('max', self.precision)

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.features_of_preprocessed(preprocess(images))

  def features_of_preprocessed(self, x: jax.Array) -> jax.Array:
    """`(N, 299, 299, 3)` from `preprocess` -> `(N, 2048)`; one compile for any input size."""
    x = self.Conv2d_1a_3x3(x)
    x = self.Conv2d_2a_3x3(x)
    x = self.Conv2d_2b_3x3(x)
    x = _max_pool_3x3(x, stride=2)
    x = self.Conv2d_3b_1x1(x)
    x = self.Conv2d_4a_3x3(x)
    x = _max_pool_3x3(x, stride=2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                  self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))


def variable_shapes() -> dict[str, tuple[int, ...]]:
  """Flattened `collection/module/.../leaf` name -> shape of every variable of the network."""
  return dict(_variable_shapes())


@functools.cache
def _variable_shapes() -> dict[str, tuple[int, ...]]:
  # Tracing the network takes seconds; the shapes never change within a process.
  abstract = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = traverse_util.flatten_dict(abstract, sep='/')
  return {name: tuple(leaf.shape) for name, leaf in flat.items()}


def save_variables(variables: Any, path: str | pathlib.Path) -> None:
  """Writes the variable tree as an npz keyed by `collection/module/.../leaf`."""
  flat = traverse_util.flatten_dict(variables, sep='/')
  np.savez(path, **{name: np.asarray(value, np.float32) for name, value in flat.items()})


def load_variables(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads an npz written by `save_variables` and checks it holds this network's variables."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(
        f'Inception weights not found at {path}. Nothing is downloaded automatically: fetch '
        f'pytorch-fid\'s weights from {WEIGHTS_URL} and convert them with\n'
        '  python -m fedgan_jax.tools.convert_inception '
        f'--input=pt_inception-2015-12-05-6726825d.pth --output={path}\n'
        '(the conversion needs torch installed; loading afterwards does not).')
  with np.load(path) as data:
    flat = {name: data[name] for name in data.files}
  expected = variable_shapes()
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  wrong = sorted(name for name in set(expected) & set(flat)
                 if tuple(flat[name].shape) != expected[name])
  if missing or unexpected or wrong:
    raise ValueError(
        f'{path} is not an FID Inception variables file written by convert_inception: '
        f'missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]} '
        f'({len(missing)}, {len(unexpected)}, {len(wrong)} in all).')
  return traverse_util.unflatten_dict(flat, sep='/')


def load_inception(path: str | pathlib.Path) -> tuple[Callable[..., jax.Array], dict[str, Any]]:
  """Returns `(apply_fn, variables)`, `apply_fn(variables, images) -> (N, 2048)`, jitted."""
  variables = jax.tree.map(jnp.asarray, load_variables(path))
  return jax.jit(InceptionV3().apply), variables
