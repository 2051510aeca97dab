"""Data section for ChestX-ray14 (NIH): `get_data_config(runlocal)` and `get_conditions()`.

An experiment config uses it as
  config.data = cxr14.get_data_config(runlocal)
  config.conditions = cxr14.get_conditions()
and the binary takes the data folder from the command line, e.g.
  python -m fedgan_jax.main --config configs/cxr14.py --config.data.root=/data/ChestX-ray14
The folder holds Data_Entry_2017.csv and images/ (or images_001/images ... images_012/images)
as published by the NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC.
"""

import ml_collections

from fedgan_jax.data import clinical
from fedgan_jax.data import cxr14


def get_conditions() -> list[dict]:
  """Condition vector features; age's mean/std are fitted on the training records."""
  return [
      dict(name='age', kind='continuous', group='PD'),
      dict(name='sex', kind='categorical', group='PD', categories=('F', 'M')),
      dict(name='view', kind='categorical', group='CD', categories=('PA', 'AP')),
      dict(name='follow_up', kind='continuous', group='CD'),
      dict(name='findings', kind='multi_hot', group='CD', categories=cxr14.FINDINGS),
  ]


def get_partition_config(num_clients: int) -> ml_collections.ConfigDict:
  """How training patients are dealt into hospitals (see fedgan_jax/data/partition.py)."""
  return ml_collections.ConfigDict(dict(
      method='iid',           # iid | demographic | dirichlet | quantity | column
      num_clients=num_clients,
      alpha=0.5,              # Dirichlet concentration of 'dirichlet' and 'quantity'.
      label='abnormal',       # Label column of 'dirichlet'.
      column='',              # 'demographic' (default 'age') or 'column' split column.
      bands=(),               # 'demographic' inner cut points; () = equal patient counts.
  ))


def get_clinical_config() -> ml_collections.ConfigDict:
  """Optional clinical CSV (see fedgan_jax/data/clinical.py); path '' = none."""
  return ml_collections.ConfigDict(dict(
      path='',
      key='Patient ID',       # or 'Image Index'
      # e.g. (dict(name='smoker', column='Smoker', kind='categorical', categories=('no', 'yes')),)
      columns=(),
      missing_values=clinical.DEFAULT_MISSING_VALUES,
  ))


def get_augment_config() -> ml_collections.ConfigDict:
  """Augmentation of real images in [-1, 1] (see fedgan_jax/data/augment.py)."""
  return ml_collections.ConfigDict(dict(
      enabled=True,
      max_rotation_deg=5.0,
      max_scale_delta=0.05,         # Scale ~ U(0.95, 1.05).
      max_translate_fraction=0.04,  # Shift ~ U(-4%, 4%) of the size, per axis.
      horizontal_flip=False,        # A flip moves the heart to the right: off.
      flip_probability=0.5,
      max_brightness=0.05,          # In [-1, 1] units.
      max_contrast_delta=0.1,
      max_gamma_delta=0.1,
      cutout_fraction=0.0,          # DiffAugment's cutout square side (0 = off).
      fill_value=-1.0,              # Black outside the film.
  ))


def get_data_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  """ChestX-ray14 loader settings; `runlocal` shrinks it for a laptop."""
  config = ml_collections.ConfigDict()
  config.name = 'cxr14'
  config.root = ''                      # Folder with Data_Entry_2017.csv and the images.
  config.image_size = 32 if runlocal else 128
  config.resample = 'bicubic'           # box | bilinear | bicubic | lanczos (all antialiased).
  config.sixteen_bit = 'full_range'     # 16-bit PNGs: full_range (/257) or min_max per image.
  config.max_images = 2000 if runlocal else 0   # First CSV rows used; 0 = all.
  config.max_valid_age = 120.0          # Older ages in the CSV are recording errors: missing.
  config.on_bad_image = 'skip'          # skip (count and report) | error (name the file).
  config.drop_overlapping_patients = True
  config.cache_dir = ''                 # '' = <root>/fedgan_cache.
  config.max_in_memory_bytes = 4 * 2**30   # Larger caches stay memory-mapped.
  config.decode_workers = 2
  config.png_decoder = 'auto'           # auto (libspng when pyspng is installed) | pil | spng.
  config.decode_chunk_size = 256        # Images per pool task and per cache write.
  config.split = ml_collections.ConfigDict(dict(
      test_fraction=0.2,                # Patients held out when the split lists are absent.
      # Training patients never trained on, scored while choosing models and settings.
      validation_fraction=0.2,
      # 'auto': the official test list when the lists are present, else validation;
      # 'validation' | 'test' force one (test: once, at the end).
      score='auto'))
  config.partition = get_partition_config(num_clients=2 if runlocal else 4)
  config.clinical = get_clinical_config()
  config.augment = get_augment_config()
  return config
