"""TFDS builder for ChestX-ray14 images preprocessed like the plain loader (`data/cxr14.py`).

Images are decoded, converted to gray and resized exactly as `data/cxr14.py` does
(through the same on-disk cache), then stored as PNG. Splits: 'train' and 'test'
from the official lists (else a seeded patient-level split), with overlapping
patients kept as listed (the federation builder decides whether to drop them).
Undecodable or missing images are left out with a warning.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fedgan_jax.data import cxr14
from fedgan_jax.data import image_io

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Download ChestX-ray14 from the {cxr14.SOURCE} and place in `manual_dir`:
{cxr14.LAYOUT}
(the images_001.tar.gz ... images_012.tar.gz archives unpack to images_0XX/images/).
"""


@dataclasses.dataclass
class Cxr14Config(tfds.core.BuilderConfig):
  """Preprocessing of one variant; mirrors the plain loader's data config fields."""
  image_size: int = 128
  resample: str = 'bicubic'
  sixteen_bit: str = 'full_range'
  max_valid_age: float = 120.0
  max_images: int = 0
  test_fraction: float = 0.2   # Used when the split lists are absent.
  seed: int = 0
  cache_dir: str = ''          # '' = <manual_dir>/fedgan_cache, shared with the plain loader.
  decode_workers: int = 2
  decode_chunk_size: int = 256


class Cxr14(tfds.core.GeneratorBasedBuilder):
  """ChestX-ray14 frontal chest X-rays with demographics and 14 findings."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Gray uint8 images resized with antialiasing; NIH metadata.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [Cxr14Config(name=f'{size}px', image_size=size) for size in (64, 128, 256)]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description='NIH ChestX-ray14, preprocessed for fedgan_jax.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(size, size, 1), encoding_format='png'),
            'image_index': tfds.features.Text(),
            'patient_id': tfds.features.Scalar(np.int64),
            'age': tfds.features.Scalar(np.float32),        # NaN = missing.
            'sex': tfds.features.Scalar(np.int64),          # 0 F, 1 M, -1 missing.
            'view': tfds.features.Scalar(np.int64),         # 0 PA, 1 AP, -1 missing.
            'follow_up': tfds.features.Scalar(np.float32),
            'findings': tfds.features.Tensor(shape=(len(cxr14.FINDINGS),), dtype=np.uint8),
        }),
        homepage='https://nihcc.app.box.com/v/ChestXray-NIHCC',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    root = pathlib.Path(dl_manager.manual_dir)
    csv_path = root / cxr14.CSV_NAME
    if not csv_path.is_file():
      raise ValueError(f'{csv_path} not found.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
    records, _ = cxr14.read_metadata(csv_path, max_valid_age=config.max_valid_age,
                                     max_images=config.max_images)
    train_rows, test_rows, _ = cxr14.split_rows(records, root, config.test_fraction,
                                                np.random.default_rng([config.seed, 0]))
    images, image_row, _ = cxr14.load_images(
        records, np.union1d(train_rows, test_rows), root, cxr14.find_images(root), config,
        on_bad_image='skip', max_in_memory_bytes=0)
    return {split: self._generate_examples(records, rows[image_row[rows] >= 0], images, image_row)
            for split, rows in (('train', train_rows), ('test', test_rows))}

  def _generate_examples(self, records, rows, images, image_row):
    for row in rows:
      name = str(records['image_index'][row])
      yield name, {
          'image': image_io.encode_png(images[image_row[row]]),
          'image_index': name,
          'patient_id': records['patient_id'][row],
          'age': np.float32(records['age'][row]),
          'sex': records['sex'][row],
          'view': records['view'][row],
          'follow_up': np.float32(records['follow_up'][row]),
          'findings': records['findings'][row].astype(np.uint8),
      }
