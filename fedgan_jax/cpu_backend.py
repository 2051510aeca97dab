"""XLA CPU backend flags the binaries set before JAX starts.

jaxlib 0.10-0.11 hand XLA's CPU convolutions to YNNPACK fusions by default. On the 2-core
development machine these ran a client's local update ~1.7x slower than XLA's own (Eigen)
convolutions, for a naive per-client loop and for the engine alike (BENCHMARKS.md, issue 3):
`--xla_cpu_experimental_ynn_fusion_type=` (an empty list of fusion types) turns them off.
Only the library choice changes; the math is the same up to float rounding.

XLA aborts the process on a flag it does not know, and the flag list is not exposed, so the
flag is only set when the installed jaxlib's binary names it. It must be in `XLA_FLAGS`
before the first computation starts the backend; a user's own setting of the same flag in
`XLA_FLAGS` always wins. Binaries own the `--cpu_ynn_fusions` flag; this module only holds
its help text and applies its value.
"""

import glob
import mmap
import os

from absl import logging

YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
FLAG_HELP = ("Keep jaxlib's YNNPACK fusions for CPU convolutions (its default). Off by "
             'default: measured ~1.7x slower than XLA\'s own convolutions here (BENCHMARKS.md).')


def jaxlib_knows_flag(name: str) -> bool:
  """Whether the installed jaxlib's shared libraries contain the XLA flag `name`."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  needle = name.encode()
  for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), '*.so')):
    with open(path, 'rb') as handle:
      try:
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
          if data.find(needle) >= 0:
            return True
      except ValueError:  # An empty file cannot be mapped.
        continue
  return False


def backends_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return xla_bridge.backends_are_initialized()


def apply(ynn_fusions: bool) -> str:
  """Turns YNNPACK fusions off in `XLA_FLAGS` unless `ynn_fusions`; returns what was done."""
  if ynn_fusions:
    return 'kept (--cpu_ynn_fusions)'
  existing = os.environ.get('XLA_FLAGS', '')
  if YNN_FLAG in existing:
    return 'left to XLA_FLAGS'
  if backends_started():
    logging.warning('cpu_backend.apply: JAX already started its backends; %s stays at '
                    "jaxlib's default.", YNN_FLAG)
    return 'too late: backends already started'
  if not jaxlib_knows_flag(YNN_FLAG):
    return 'not known to this jaxlib'
  os.environ['XLA_FLAGS'] = f'{existing} --{YNN_FLAG}='.strip()
  return 'off'
