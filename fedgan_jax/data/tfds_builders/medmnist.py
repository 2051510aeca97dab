"""TFDS builder for MedMNIST npz files (PneumoniaMNIST, ChestMNIST), resized as the loader does."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fedgan_jax.data import image_io
from fedgan_jax.data import medmnist

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Download the npz of the task from {medmnist.SOURCE} and place it in `manual_dir` under the
name given by the builder config's `npz_name` (default '<task>.npz', e.g. pneumoniamnist.npz;
the larger releases are named like pneumoniamnist_64.npz).
"""


@dataclasses.dataclass
class MedMnistConfig(tfds.core.BuilderConfig):
  task: str = 'pneumoniamnist'
  image_size: int = 28
  resample: str = 'bicubic'
  npz_name: str = ''   # '' = '<task>.npz'.


class MedMnist(tfds.core.GeneratorBasedBuilder):
  """MedMNIST chest X-ray tasks with their finding labels."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Gray uint8 images, finding labels as multi-hot.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [MedMnistConfig(name=f'{task}_{size}', task=task, image_size=size)
                     for task in sorted(medmnist.TASKS) for size in (28, 64, 128, 224)]

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'MedMNIST {config.task}, preprocessed for fedgan_jax.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(config.image_size, config.image_size, 1),
                                         encoding_format='png'),
            'image_index': tfds.features.Text(),   # '<split>_<row>'.
            'findings': tfds.features.Tensor(shape=(len(medmnist.TASKS[config.task]),),
                                             dtype=np.uint8),
        }),
        homepage='https://medmnist.com',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    path = pathlib.Path(dl_manager.manual_dir) / (config.npz_name or f'{config.task}.npz')
    if not path.is_file():
      raise ValueError(f'{path} not found.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
    with np.load(path) as npz:
      splits = {split: medmnist.load_split(npz, config.task, split, config.image_size,
                                           config.resample, path)
                for split in medmnist.SPLITS}
    return {split: self._generate_examples(split, *arrays) for split, arrays in splits.items()}

  def _generate_examples(self, split, images, findings):
    for i, (pixels, labels) in enumerate(zip(images, findings)):
      yield f'{split}_{i}', {'image': image_io.encode_png(pixels),
                             'image_index': f'{split}_{i}',
                             'findings': labels.astype(np.uint8)}
