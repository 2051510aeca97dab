"""Data section for MedMNIST: `get_data_config(runlocal, task)` and `get_conditions(task)`.

task is 'pneumoniamnist' (labels (N, 1), 1 = pneumonia) or 'chestmnist' (14 findings).
An experiment config uses it as
  config.data = medmnist.get_data_config(runlocal, task='pneumoniamnist')
  config.conditions = medmnist.get_conditions('pneumoniamnist')
with the npz given on the command line, e.g.
  python -m fedgan_jax.main --config configs/pneumoniamnist.py \
      --config.data.path=../shared/data/medmnist/pneumoniamnist.npz
MedMNIST has no demographics: the condition vector is the finding label(s) only.
"""

import ml_collections

from configs.data import cxr14 as cxr14_config
from fedgan_jax.data import medmnist


def get_conditions(task: str = 'pneumoniamnist') -> list[dict]:
  """The task's finding labels as one multi-hot feature 'findings'."""
  return medmnist.conditions_for(task)


def get_data_config(runlocal: bool = False,
                    task: str = 'pneumoniamnist') -> ml_collections.ConfigDict:
  """MedMNIST loader settings; `runlocal` shrinks it for a laptop."""
  config = ml_collections.ConfigDict()
  config.name = 'medmnist'
  config.task = task
  config.path = ''                  # The released npz, e.g. pneumoniamnist.npz (any size).
  config.image_size = 28 if runlocal else 64   # Resized when the npz size differs.
  config.resample = 'bicubic'       # box | bilinear | bicubic | lanczos (all antialiased).
  config.train_splits = ('train',)  # Splits dealt to hospitals.
  config.test_split = 'test'
  config.partition = cxr14_config.get_partition_config(num_clients=2 if runlocal else 4)
  config.clinical = cxr14_config.get_clinical_config()
  config.clinical.key = 'Image Index'   # '<split>_<row>', e.g. 'train_12'.
  config.augment = cxr14_config.get_augment_config()
  return config
