"""The persistent XLA compilation cache every binary turns on by default.

A resumed or repeated run (and each hospital process of a deployment) then loads the
compiled round instead of spending tens of seconds compiling it again. Binaries own the
`--compilation_cache` flag; this module only holds its default and applies its value.
"""

import os

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser('~'), '.cache', 'fedgan_jax', 'xla')
FLAG_HELP = 'Persistent XLA compilation cache directory ("" disables it).'
# Programs that compile faster than this are not worth a disk round trip.
MIN_COMPILE_TIME_S = 1.0
# The measured execution choices (`federated/autotune.py`) live inside the cache directory;
# JAX's own cache only ever reads and evicts its `*-cache` files there.
DECISIONS_FILE = 'fedgan_autotune.json'


def enable(directory: str) -> None:
  """Caches compiled programs under `directory`; an empty string leaves caching off."""
  if not directory:
    return
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_TIME_S)


def decisions_path() -> str | None:
  """The autotune decision file inside the compilation cache in use, or None when it is off."""
  directory = jax.config.jax_compilation_cache_dir
  return os.path.join(directory, DECISIONS_FILE) if directory else None
