"""Converts pytorch-fid's Inception weights (a torch state dict) into the Flax port's npz.

  python -m fedgan_jax.tools.convert_inception \
      --input=pt_inception-2015-12-05-6726825d.pth --output=inception_fid.npz

The weight file is pytorch-fid's release asset (see `inception.WEIGHTS_URL`); it is never
downloaded here. torch is needed only by `main`; the mapping itself works on numpy arrays, so
the parity benchmark and the tests share it without torch.

Mapping (Flax names mirror torch's module names):
  `<module>.conv.weight` (O, I, kh, kw) -> `params/<module>/conv/kernel` (kh, kw, I, O)
  `<module>.bn.weight` / `.bn.bias`     -> `params/<module>/bn/scale` / `bias`
  `<module>.bn.running_mean` / `_var`   -> `batch_stats/<module>/bn/mean` / `var`
The classifier (`fc.*`), the auxiliary head (`AuxLogits.*`) and BatchNorm step counters
(`*.num_batches_tracked`) do not feed the 2048-d pool features and are dropped.
"""

from __future__ import annotations

import zlib
from typing import Any, Mapping

import numpy as np
from absl import app
from absl import flags
from flax import traverse_util

from fedgan_jax import flags_common
from fedgan_jax.evaluation import inception

_TORCH_SUFFIX_TO_FLAX = {
    'conv.weight': ('params', 'conv/kernel'),
    'bn.weight': ('params', 'bn/scale'),
    'bn.bias': ('params', 'bn/bias'),
    'bn.running_mean': ('batch_stats', 'bn/mean'),
    'bn.running_var': ('batch_stats', 'bn/var'),
}
_FLAX_TO_TORCH_SUFFIX = {flax: torch for torch, flax in _TORCH_SUFFIX_TO_FLAX.items()}


def _ignored(torch_key: str) -> bool:
  return (torch_key.startswith(('fc.', 'AuxLogits.'))
          or torch_key.endswith('.num_batches_tracked'))


def flax_name(torch_key: str) -> str:
  """`Mixed_5b.branch1x1.conv.weight` -> `params/Mixed_5b/branch1x1/conv/kernel`."""
  parts = torch_key.split('.')
  suffix = '.'.join(parts[-2:])
  if suffix not in _TORCH_SUFFIX_TO_FLAX or len(parts) < 3:
    raise KeyError(f'state dict key {torch_key!r} is not a conv/BatchNorm tensor of the '
                   'FID Inception network.')
  collection, leaf = _TORCH_SUFFIX_TO_FLAX[suffix]
  return '/'.join([collection, *parts[:-2], leaf])


def torch_key(name: str) -> str:
  """Inverse of `flax_name`."""
  collection, *modules, layer, leaf = name.split('/')
  suffix = _FLAX_TO_TORCH_SUFFIX[(collection, f'{layer}/{leaf}')]
  return '.'.join([*modules, suffix])


def _to_flax_layout(name: str, array: np.ndarray) -> np.ndarray:
  if name.endswith('/kernel'):
    return np.transpose(array, (2, 3, 1, 0))  # OIHW -> HWIO
  return array


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """torch key -> torch shape of every tensor the port needs (derived from the Flax net)."""
  shapes = {}
  for name, shape in inception.variable_shapes().items():
    if name.endswith('/kernel'):
      shape = (shape[3], shape[2], shape[0], shape[1])
    shapes[torch_key(name)] = shape
  return shapes


def variables_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Builds the Flax `{'params', 'batch_stats'}` tree from a state dict of numpy arrays."""
  expected = state_dict_shapes()
  flat = {}
  for key, value in state_dict.items():
    if _ignored(key):
      continue
    if key not in expected:
      raise KeyError(f'state dict key {key!r} has no counterpart in the FID Inception port; '
                     'is the file pytorch-fid\'s pt_inception-2015-12-05 weights?')
    array = np.asarray(value, np.float32)
    if array.shape != expected[key]:
      raise ValueError(f'state dict key {key!r}: shape {array.shape}, expected {expected[key]}.')
    name = flax_name(key)
    flat[name] = _to_flax_layout(name, array)
  missing = sorted(set(expected) - set(state_dict))
  if missing:
    raise KeyError(f'state dict lacks {len(missing)} tensors of the FID Inception network, '
                   f'e.g. {missing[:5]}.')
  return traverse_util.unflatten_dict(flat, sep='/')


def random_state_dict(seed: int) -> dict[str, np.ndarray]:
  """A torch-named state dict of random weights whose activations stay O(1).

  Each tensor is drawn from its own generator seeded by `(seed, crc32(key))`, so the values
  depend on the key only, not on iteration order: torch (in the parity benchmark) and numpy
  (in the tests) rebuild identical weights.
  Distributions: conv weights N(0, 2 / fan_in) (He: ReLU halves the variance), BN scale
  U(0.8, 1.2), BN bias and running mean N(0, 0.1^2), running variance U(0.5, 1.5).
  """
  state_dict = {}
  for key, shape in sorted(state_dict_shapes().items()):
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if key.endswith('conv.weight'):
      fan_in = int(np.prod(shape[1:]))
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    elif key.endswith('bn.weight'):
      value = rng.uniform(0.8, 1.2, shape)
    elif key.endswith(('bn.bias', 'bn.running_mean')):
      value = rng.normal(0.0, 0.1, shape)
    else:
      value = rng.uniform(0.5, 1.5, shape)
    state_dict[key] = value.astype(np.float32)
  return state_dict


def define_flags() -> None:
  """Flags of the binary; not defined at import so the mapping can be imported anywhere."""
  flags.DEFINE_string('input', None, 'pytorch-fid weight file (torch state dict, .pth).')
  flags.DEFINE_string('output', None, 'Where to write the Flax variables (.npz).')
  flags.mark_flags_as_required(['input', 'output'])


def main(argv):
  flags_common.check_no_arguments(argv)
  flags_common.start()  # No JAX computation here: only the library logs to quiet.
  input_path, output_path = flags.FLAGS.input, flags.FLAGS.output
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise SystemExit('convert_inception needs torch to read the .pth file (pip install torch, '
                     'CPU build is enough); loading the converted npz does not.') from error
  state_dict = torch.load(input_path, map_location='cpu', weights_only=True)
  arrays = {key: tensor.detach().cpu().numpy() for key, tensor in state_dict.items()}
  inception.save_variables(variables_from_state_dict(arrays), output_path)
  print(f'wrote {output_path} ({len(arrays)} tensors read from {input_path}).')


if __name__ == '__main__':
  define_flags()
  app.run(main)
