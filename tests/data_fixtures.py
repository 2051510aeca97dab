"""Fixture makers: tiny data sets in the official ChestX-ray14 and MedMNIST formats.

The ChestX-ray14 fixture writes PNGs of every mode a release may hold (L, RGB,
RGBA, 16-bit) whose gray values are known exactly, a CSV with the real header,
split lists with one patient deliberately in both, and one corrupt PNG.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from PIL import Image

CXR14_HEADER = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,'
                'View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]')
MODES = ('L', 'RGB', 'RGBA', 'I;16')
LABELS = ('No Finding', 'Cardiomegaly', 'Effusion|Mass', 'No Finding', 'Hernia',
          'Pleural_Thickening|Nodule|Edema', 'No Finding', 'Pneumonia')
INVALID_AGE_PATIENT = 5  # Recorded as 412 years, as some rows of the real CSV are.


@dataclasses.dataclass
class Cxr14Fixture:
  root: pathlib.Path
  rows: list[dict]                 # One per CSV row, in CSV order.
  pixels: dict[str, np.ndarray]    # Image name -> its exact uint8 gray values.
  modes: dict[str, str]            # Image name -> PNG mode written.
  corrupt: str                     # Name of the truncated PNG.
  shared_patient: int              # In both split lists.
  test_patients: tuple[int, ...]   # Patients of test_list.txt (shared one included).


def save_png(path: pathlib.Path, pixels: np.ndarray, mode: str) -> None:
  """Writes `pixels` (uint8) so that decoding to gray gives them back exactly."""
  if mode == 'L':
    image = Image.fromarray(pixels)
  elif mode in ('RGB', 'RGBA'):
    channels = [pixels] * 3
    if mode == 'RGBA':
      # Alpha varies so a decoder that used it would show.
      channels.append(np.arange(pixels.size, dtype=np.uint8).reshape(pixels.shape))
    image = Image.fromarray(np.stack(channels, axis=-1))
  else:
    image = Image.fromarray(pixels.astype(np.uint16) * 257)  # 0..255 -> 0..65535.
  image.save(path, format='PNG')


def make_cxr14(root: pathlib.Path, layout: str = 'flat', num_patients: int = 16,
               image_size: int = 16, split_lists: bool = True, seed: int = 0) -> Cxr14Fixture:
  """Writes a ChestX-ray14 tree: `layout` 'flat' (images/) or 'nih' (images_00k/images)."""
  rng = np.random.default_rng(seed)
  root.mkdir(parents=True, exist_ok=True)
  rows, pixels, modes = [], {}, {}
  for patient in range(1, num_patients + 1):
    for visit in range(1 + patient % 3):
      name = f'{patient:08d}_{visit:03d}.png'
      row = dict(image_index=name, labels=LABELS[len(rows) % len(LABELS)], follow_up=visit,
                 patient_id=patient,
                 age=412 if patient == INVALID_AGE_PATIENT else 30 + 3 * patient + visit,
                 sex='MF'[patient % 2], view=('PA', 'AP')[len(rows) % 2])
      rows.append(row)
      pixels[name] = rng.integers(0, 256, (image_size, image_size), dtype=np.uint8)
      modes[name] = MODES[len(rows) % len(MODES)]
  corrupt = f'{2:08d}_{1:03d}.png'
  folders = [root / 'images'] if layout == 'flat' else [root / 'images_001' / 'images',
                                                        root / 'images_002' / 'images']
  for folder in folders:
    folder.mkdir(parents=True, exist_ok=True)
  for i, row in enumerate(rows):
    name = row['image_index']
    path = folders[i % len(folders)] / name
    save_png(path, pixels[name], modes[name])
    if name == corrupt:
      path.write_bytes(path.read_bytes()[:60])
  lines = [CXR14_HEADER] + [
      f'{r["image_index"]},{r["labels"]},{r["follow_up"]},{r["patient_id"]},{r["age"]},'
      f'{r["sex"]},{r["view"]},1024,1024,0.143,0.143' for r in rows]
  (root / 'Data_Entry_2017.csv').write_text('\n'.join(lines) + '\n')
  test_patients = tuple(p for p in range(1, num_patients + 1) if p % 4 == 0)
  shared_patient = next(p for p in test_patients if 1 + p % 3 >= 2)
  if split_lists:
    train, test = [], []
    for r in rows:
      first_visit_of_shared = r['patient_id'] == shared_patient and r['follow_up'] == 0
      in_test = r['patient_id'] in test_patients and not first_visit_of_shared
      (test if in_test else train).append(r['image_index'])
    (root / 'train_val_list.txt').write_text('\n'.join(train) + '\n')
    (root / 'test_list.txt').write_text('\n'.join(test) + '\n')
  return Cxr14Fixture(root=root, rows=rows, pixels=pixels, modes=modes, corrupt=corrupt,
                      shared_patient=shared_patient, test_patients=test_patients)


def make_medmnist_npz(path: pathlib.Path, task: str = 'pneumoniamnist', size: int = 28,
                      split_sizes: tuple[int, int, int] = (24, 6, 8), seed: int = 0) -> dict:
  """Writes a MedMNIST-format npz; returns its arrays."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in zip(('train', 'val', 'test'), split_sizes):
    arrays[f'{split}_images'] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    if task == 'pneumoniamnist':
      arrays[f'{split}_labels'] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    else:
      labels = (rng.random((n, 14)) < 0.1).astype(np.uint8)
      labels[::3] = 0  # Some normal images in every split.
      arrays[f'{split}_labels'] = labels
  np.savez(path, **arrays)
  return arrays


def write_jpeg(path: pathlib.Path, value: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.full((40, 40), value, np.uint8)
  pixels[::4] = 255 - value  # Some structure, so JPEG copies of different films differ.
  Image.fromarray(pixels).convert('RGB').save(path, 'JPEG')


def make_zhanglab(root: pathlib.Path, with_test: bool) -> pathlib.Path:
  """12 normal patients (2 films each), 12 pneumonia patients (bacteria and virus), a copy."""
  for split in ('train', 'test') if with_test else ('train',):
    offset = 0 if split == 'train' else 100
    for patient in range(12):
      for film in range(2):
        write_jpeg(root / 'chest_xray' / split / 'NORMAL' /
               f'IM-{patient + offset:04d}-{film + 1:04d}.jpeg', 10 + patient * 8 + film)
      kind = 'bacteria' if patient % 2 else 'virus'
      write_jpeg(root / 'chest_xray' / split / 'PNEUMONIA' /
             f'person{patient + offset}_{kind}_{patient}.jpeg', 120 + patient * 8)
  # A byte-identical copy under another patient's name: kept once.
  train = root / 'chest_xray' / 'train' / 'NORMAL'
  (train / 'NORMAL2-IM-0999-0001.jpeg').write_bytes((train / 'IM-0000-0001.jpeg').read_bytes())
  return root
