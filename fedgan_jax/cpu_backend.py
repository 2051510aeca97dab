"""An XLA CPU backend flag the binaries can set before JAX starts (`--cpu_ynn_fusions`).

jaxlib 0.10-0.11 hand XLA's CPU convolutions to YNNPACK fusions by default.
`--xla_cpu_experimental_ynn_fusion_type=` (an empty list of fusion types) turns them off, so
XLA uses its own (Eigen) convolutions; the math is the same up to float rounding. On the
2-core development machine (BENCHMARKS.md, issue 3) that made rounds of 32 clients 1.2x
(`threads`) to 1.5x (a naive per-client loop) faster, but the default 4-client pipeline was
no faster per round and its autoencoder phases slower (F-AD 67 s -> 94 s), so it is opt-in:
`--cpu_ynn_fusions=false` for large CPU simulations.

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
FLAG_HELP = ("Keep jaxlib's YNNPACK fusions for CPU convolutions (its default). false: XLA's "
             'own convolutions, 1.2-1.5x faster rounds of 32 CPU clients, slower autoencoder '
             'phases (BENCHMARKS.md).')


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
  """Whether JAX has started its backends (a private API; assumed not where it is missing)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  return getattr(xla_bridge, 'backends_are_initialized', lambda: False)()


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
