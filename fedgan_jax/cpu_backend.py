"""XLA CPU options for YNNPACK convolution fusions: per program, and process-wide.

jaxlib 0.10-0.11 hand XLA's CPU convolutions to YNNPACK fusions by default; the option
`xla_cpu_experimental_ynn_fusion_type` set to an empty list of fusion types turns them
off, so XLA uses its own (Eigen) convolutions: the same math up to float rounding. Which is
faster depends on the program (BENCHMARKS.md, issue 3, 2-core machine): XLA's own run a
client's small-batch local update ~7% faster, jaxlib's run synthesis and the autoencoders
(batches of 64-256) faster.

* `client_compiler_options` gives the option to the round's client-update programs only
  (`jax.jit(..., compiler_options=...)`), under `runtime.ynn_fusions=False`, the default.
* `apply` sets it process-wide in `XLA_FLAGS` (the binaries' opt-in
  `--cpu_ynn_fusions=false`); it must run before the first computation starts the backend.

XLA aborts the process on a flag it does not know (and rejects an unknown compile option),
and the flag list is not exposed, so either is only set when the installed jaxlib's binary
names it. A user's own setting in `XLA_FLAGS` always wins. Binaries own the
`--cpu_ynn_fusions` flag; this module only holds its help text and applies its value.
"""

import functools
import glob
import mmap
import os

from absl import logging

YNN_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
FLAG_HELP = ("Keep jaxlib's YNNPACK fusions for CPU convolutions (its default) in every program "
             "but the round's client updates, which runtime.ynn_fusions governs. false: XLA's "
             'own convolutions everywhere, slower synthesis and autoencoders (BENCHMARKS.md).')


@functools.cache
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


def client_compiler_options(ynn_fusions: bool, backend: str | None = None) -> dict | None:
  """XLA compile options for the client-update programs (`runtime.ynn_fusions`).

  Per program, so only the round's small-batch convolutions change: synthesis and the
  autoencoders keep jaxlib's default, which is faster for them (BENCHMARKS.md). None (the
  default options) unless `ynn_fusions` is False, the backend is CPU, this jaxlib knows the
  option, and the user's `XLA_FLAGS` does not set it already (theirs wins).
  """
  import jax  # pylint: disable=g-import-not-at-top
  if ynn_fusions or (backend or jax.default_backend()) != 'cpu':
    return None
  if YNN_FLAG in os.environ.get('XLA_FLAGS', '') or not jaxlib_knows_flag(YNN_FLAG):
    return None
  return {YNN_FLAG: ''}
