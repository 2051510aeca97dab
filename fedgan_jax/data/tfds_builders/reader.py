"""Prepare a builder from the manually downloaded files and read splits back as numpy arrays."""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds


def prepare(builder_class, config, data_dir: str | os.PathLike,
            manual_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
  """Builds (once) `builder_class` with `config` from the files in `manual_dir`."""
  builder = builder_class(config=config, data_dir=os.fspath(data_dir), file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def read_split(builder_dir: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
  """Reads every example of `split` by random access, in stored (= generation) order.

  Args:
    builder_dir: the prepared dataset folder, e.g. `builder.data_dir`.
    split: 'train', 'test', ...

  Returns:
    Each feature stacked over examples; text features as `str` arrays.
  """
  source = tfds.builder_from_directory(os.fspath(builder_dir)).as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  if not examples:
    return {}
  arrays = {}
  for key in examples[0]:
    values = [e[key] for e in examples]
    if isinstance(values[0], bytes):
      values = [v.decode() for v in values]
    arrays[key] = np.asarray(values)
  return arrays
