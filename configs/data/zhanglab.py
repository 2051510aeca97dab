"""Data section for the ZhangLab / Kermany paediatric pneumonia films: `get_data_config(runlocal)`.

An experiment config uses it as
  config.data = zhanglab.get_data_config(runlocal)
  config.conditions = zhanglab.get_conditions()
with the folder on the command line, e.g.
  python -m fedgan_jax.main --config configs/zhanglab.py --config.data.root=../shared/data/zhanglab
The root holds chest_xray/train/{NORMAL,PNEUMONIA} and, when present, chest_xray/test/...
"""

import ml_collections

from configs.data import cxr14 as cxr14_config
from fedgan_jax.data import zhanglab


def get_conditions() -> list[dict]:
  """The pneumonia type (bacterial, viral) as one multi-hot feature; normal = none."""
  return zhanglab.get_conditions()


def get_data_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  """ZhangLab loader settings; `runlocal` shrinks it for a laptop."""
  config = ml_collections.ConfigDict()
  config.name = 'zhanglab'
  config.root = ''                      # Folder holding chest_xray/train (and chest_xray/test).
  config.image_size = 32 if runlocal else 64
  config.resample = 'bicubic'           # box | bilinear | bicubic | lanczos (all antialiased).
  config.on_bad_image = 'skip'          # skip (count and report) | error (name the file).
  config.decode_workers = 2
  config.decode_chunk_size = 256        # Images per pool task.
  config.split = ml_collections.ConfigDict(dict(
      # Training patients held out as the test split when chest_xray/test is absent.
      test_fraction=0.2,
      # Training patients never trained on, scored while choosing models and settings.
      validation_fraction=0.2,
      # 'auto': the release's chest_xray/test when present, else validation; 'validation'
      # | 'test' force one (test: once, at the end).
      score='auto'))
  config.partition = cxr14_config.get_partition_config(num_clients=3)
  config.augment = cxr14_config.get_augment_config()
  return config
