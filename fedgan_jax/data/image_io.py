"""Image decoding, resizing and the on-disk cache of preprocessed images.

Raw chest X-rays (1024x1024 PNGs, about 9 ms each to decode) are decoded once,
in a process pool, resized with antialiasing and written in chunks to a uint8
`.npy` cache keyed by the image size, the resampling and the file list. Later
runs memory-map that file, so they start in seconds and never hold more than
one chunk of raw pixels. Each row is tied to its file's content identity (size and
modification time, recorded in the cache's index): a file replaced or repaired since
it was decoded (e.g. a PNG that was "bad" in a skip run) is decoded again into its row
on the next run, not served stale.

This module imports no JAX: pool workers import it, and they should start fast.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

try:
  # Optional: libspng inflates 8-bit PNGs with ~20% less CPU than PIL's zlib-ng decoder
  # (benchmarks/real_data.md); without it every file goes through PIL.
  import pyspng  # pylint: disable=g-import-not-at-top
except ImportError:
  pyspng = None

RESAMPLING = {
    'box': Image.Resampling.BOX,
    'bilinear': Image.Resampling.BILINEAR,
    'bicubic': Image.Resampling.BICUBIC,
    'lanczos': Image.Resampling.LANCZOS,
}
SIXTEEN_BIT_SCALINGS = ('full_range', 'min_max')
# 'auto': libspng (pyspng) for 8-bit grayscale PNGs when installed, PIL for everything else.
PNG_DECODERS = ('auto', 'pil', 'spng')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# PIL first shrinks by an integer factor (cheap box reduce) as long as the
# remaining antialiased resize still covers at least this many source pixels per
# output pixel; 3 is visually indistinguishable from a full-support filter.
_REDUCING_GAP = 3.0
# 2: the index records each file's (size, mtime_ns); version-1 caches are decoded anew.
_CACHE_VERSION = 2


def _grayscale_float_or_uint8(image: Image.Image, sixteen_bit: str) -> Image.Image:
  """Any PNG mode -> 'L' (8-bit) or 'F' (wider integers mapped to [0, 255])."""
  if image.mode == 'L':
    return image
  if image.mode in ('I', 'F') or image.mode.startswith('I;16'):
    pixels = np.asarray(image).astype(np.float32)
    if sixteen_bit == 'min_max':
      low, high = float(pixels.min()), float(pixels.max())
      pixels = (pixels - low) * (255.0 / (high - low) if high > low else 0.0)
    else:
      # 16-bit PNGs keep their full range, so 65535 is white whatever the scanner's bit depth.
      pixels = np.clip(pixels, 0, 65535) * (255.0 / 65535.0)
    return Image.fromarray(pixels)  # float32 -> mode 'F'.
  # RGB, RGBA (alpha ignored), LA, P, 1, CMYK: PIL's ITU-R 601 luma.
  return image.convert('L')


def _spng_gray8(data: bytes) -> np.ndarray | None:
  """8-bit grayscale pixels decoded by libspng, or None where PIL should decode instead."""
  if not data.startswith(_PNG_SIGNATURE):
    return None
  try:
    pixels = pyspng.load(data)
  except Exception:  # pylint: disable=broad-except
    return None  # PIL decodes it, or raises the error that names what is wrong.
  if pixels.dtype != np.uint8 or pixels.ndim != 2:
    return None  # Colour, alpha, palette or 16-bit: PIL's conversions define the gray values.
  return pixels


def _resize(image: Image.Image, image_size: int, resample: str) -> Image.Image:
  if image.size == (image_size, image_size):
    return image
  return image.resize((image_size, image_size), RESAMPLING[resample], reducing_gap=_REDUCING_GAP)


def decode_grayscale(source: str | os.PathLike | bytes, image_size: int,
                     resample: str = 'bicubic', sixteen_bit: str = 'full_range',
                     png_decoder: str = 'auto') -> np.ndarray:
  """Decodes one image of any mode to uint8 `(image_size, image_size)`.

  The whole image is resized to a square (ChestX-ray14 images are square), with
  PIL's antialiased filters.

  Args:
    source: a path or the encoded bytes.
    image_size: output height and width.
    resample: one of `RESAMPLING`.
    sixteen_bit: 'full_range' maps 16-bit 0..65535 to 0..255; 'min_max' stretches each
      image's own range (for 12-bit data stored in 16-bit PNGs).
    png_decoder: one of `PNG_DECODERS`; both decoders give the same pixels.
  """
  if resample not in RESAMPLING:
    raise ValueError(f'data.resample: {resample!r} is not one of {sorted(RESAMPLING)}.')
  if sixteen_bit not in SIXTEEN_BIT_SCALINGS:
    raise ValueError(f'data.sixteen_bit: {sixteen_bit!r} is not one of {SIXTEEN_BIT_SCALINGS}.')
  if png_decoder not in PNG_DECODERS:
    raise ValueError(f'data.png_decoder: {png_decoder!r} is not one of {PNG_DECODERS}.')
  if png_decoder == 'spng' and pyspng is None:
    raise ValueError('data.png_decoder="spng" needs the pyspng package (pip install pyspng); '
                     'set data.png_decoder="auto" to use PIL without it.')
  if pyspng is not None and png_decoder != 'pil':
    if not isinstance(source, bytes):
      source = pathlib.Path(source).read_bytes()
    pixels = _spng_gray8(source)
    if pixels is not None:
      return np.asarray(_resize(Image.fromarray(pixels), image_size, resample))
  if isinstance(source, bytes):
    source = io.BytesIO(source)
  with Image.open(source) as image:
    image = _resize(_grayscale_float_or_uint8(image, sixteen_bit), image_size, resample)
    pixels = np.asarray(image)
  if pixels.dtype != np.uint8:
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
  return pixels


def resize_array(images: np.ndarray, image_size: int, resample: str = 'bicubic') -> np.ndarray:
  """Resizes uint8 `(N, H, W)` images to `(N, image_size, image_size)` with PIL."""
  if images.shape[1:3] == (image_size, image_size):
    return images
  out = np.empty((len(images), image_size, image_size), np.uint8)
  for i, pixels in enumerate(images):
    out[i] = np.asarray(Image.fromarray(pixels).resize(
        (image_size, image_size), RESAMPLING[resample], reducing_gap=_REDUCING_GAP))
  return out


def encode_png(pixels: np.ndarray) -> bytes:
  """uint8 `(H, W)` or `(H, W, 1)` -> PNG bytes (lossless)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(pixels, np.uint8).reshape(pixels.shape[:2])).save(buffer, 'PNG')
  return buffer.getvalue()


def _decode_chunk(paths: Sequence[str], image_size: int, resample: str, sixteen_bit: str,
                  png_decoder: str,
                  stop_at_first_error: bool) -> tuple[np.ndarray, list[tuple[int, str]]]:
  """Pool task: decodes `paths`; a file that fails becomes zeros plus an error entry."""
  out = np.zeros((len(paths), image_size, image_size), np.uint8)
  errors = []
  for i, path in enumerate(paths):
    try:
      out[i] = decode_grayscale(path, image_size, resample, sixteen_bit, png_decoder)
    except Exception as error:  # pylint: disable=broad-except
      # Any decoder failure (truncated file, bad CRC, not an image) is reported, not raised here,
      # so a corrupt file among 100k never kills a worker.
      errors.append((i, f'{type(error).__name__}: {error}'))
      if stop_at_first_error:
        break
  return out, errors


def _chunks(n: int, chunk_size: int) -> Iterable[tuple[int, int]]:
  for start in range(0, n, chunk_size):
    yield start, min(n, start + chunk_size)


def decode_into(paths: Sequence[str], out: np.ndarray, *, image_size: int, resample: str,
                sixteen_bit: str, workers: int, chunk_size: int,
                on_bad_image: str, png_decoder: str = 'auto') -> dict[int, str]:
  """Decodes `paths` into `out[:, :, :, 0]` chunk by chunk.

  Args:
    paths: image files, one per row of `out`.
    out: uint8 `(len(paths), image_size, image_size, 1)`, e.g. a memmap.
    workers: processes; <= 1 decodes in this process (no start-up cost, for tests).
    chunk_size: images per pool task and per write.
    on_bad_image: 'skip' (bad rows stay zero and are returned) or 'error'.
    png_decoder: one of `PNG_DECODERS` (see `decode_grayscale`).

  Returns:
    `{row: error message}` of the images that could not be decoded.

  Raises:
    ValueError: naming the first bad file, when `on_bad_image == 'error'`.
  """
  if on_bad_image not in ('skip', 'error'):
    raise ValueError(f'data.on_bad_image: {on_bad_image!r} is not "skip" or "error".')
  # Checked here, once: inside the workers a bad setting would read as every image being bad.
  decode_grayscale(encode_png(np.zeros((1, 1), np.uint8)), 1, resample, sixteen_bit, png_decoder)
  stop = on_bad_image == 'error'
  tasks = [(list(paths[a:b]), image_size, resample, sixteen_bit, png_decoder, stop)
           for a, b in _chunks(len(paths), chunk_size)]
  bad = {}
  if workers <= 1:
    results = (_decode_chunk(*task) for task in tasks)
    executor = None
  else:
    # 'spawn' because the parent may have started JAX's threads, which fork would copy half-held.
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context('spawn'))
    results = executor.map(_decode_chunk, *zip(*tasks)) if tasks else iter(())
  try:
    for (start, stop_row), (pixels, errors) in zip(_chunks(len(paths), chunk_size), results):
      out[start:stop_row, :, :, 0] = pixels
      for i, message in errors:
        if on_bad_image == 'error':
          raise ValueError(f'cannot decode image {paths[start + i]} ({message}); fix or remove '
                           'the file, or set data.on_bad_image="skip" to skip bad images.')
        bad[start + i] = message
  finally:
    if executor is not None:
      executor.shutdown(wait=True, cancel_futures=True)
  return bad


class RowView:
  """Rows `rows` of a memory-mapped image array, read from disk only when indexed.

  A client of a data set too large for memory holds one of these: it has the
  `shape`, `dtype`, `ndim` and `__getitem__` of a numpy array (indexing returns
  a numpy array), and `np.asarray(view)` reads all its rows.
  """

  def __init__(self, base: np.ndarray, rows: np.ndarray):
    self.base = base
    self.rows = np.asarray(rows, np.int64)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self.rows),) + tuple(self.base.shape[1:])

  @property
  def dtype(self) -> np.dtype:
    return self.base.dtype

  @property
  def ndim(self) -> int:
    return self.base.ndim

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, index):
    rest = ()
    if isinstance(index, tuple):
      index, rest = index[0], index[1:]
    rows = self.rows[index]
    if np.ndim(rows) == 0:
      return np.asarray(self.base[int(rows)])[rest]
    # Reading in ascending order keeps the disk access sequential.
    order = np.argsort(rows, kind='stable')
    out = np.empty((len(rows),) + tuple(self.base.shape[1:]), self.base.dtype)
    out[order] = self.base[rows[order]]
    return out[(slice(None),) + rest]

  def __array__(self, dtype=None, copy=None):
    del copy  # A read from disk is always a new array.
    return np.asarray(self[:], dtype)


def take_rows(images, rows: np.ndarray):
  """`images[rows]`, kept on disk (a `RowView`) when `images` is memory-mapped."""
  if isinstance(images, RowView):
    return RowView(images.base, images.rows[rows])
  if isinstance(images, np.memmap):
    return RowView(images, rows)
  return images[rows]


def cache_key(names: Sequence[str], image_size: int, resample: str, sixteen_bit: str) -> str:
  """Hash of everything that changes the cached pixels (file names, not absolute paths)."""
  digest = hashlib.sha256(json.dumps(
      {'version': _CACHE_VERSION, 'image_size': image_size, 'resample': resample,
       'sixteen_bit': sixteen_bit, 'files': list(names)}).encode())
  return digest.hexdigest()[:20]


def file_identities(paths: Sequence[str]) -> list[list[int]]:
  """`[size, mtime_ns]` of each file (`[-1, -1]` when it cannot be read): its content identity.
  A rewritten file changes both unless it is rewritten with the same size within the
  filesystem's timestamp resolution."""
  identities = []
  for path in paths:
    try:
      stat = os.stat(path)
      identities.append([int(stat.st_size), int(stat.st_mtime_ns)])
    except OSError:
      identities.append([-1, -1])
  return identities


def _write_index(index_path: pathlib.Path, index: dict) -> None:
  partial = index_path.with_name(index_path.name + '.partial')
  partial.write_text(json.dumps(index))
  os.replace(partial, index_path)  # Readers never see half an index.


def _refresh_rows(array_path: pathlib.Path, rows: Sequence[int], paths: Sequence[str],
                  bad: dict[int, str], **decode_args) -> dict[int, str]:
  """Decodes `rows` again into the cache array; returns `bad` updated for them."""
  image_size = decode_args['image_size']
  fresh = np.zeros((len(rows), image_size, image_size, 1), np.uint8)
  fresh_bad = decode_into([paths[i] for i in rows], fresh, **decode_args)
  images = np.load(array_path, mmap_mode='r+')
  images[np.asarray(rows)] = fresh
  images.flush()
  del images
  bad = {row: message for row, message in bad.items() if row not in set(rows)}
  bad.update({rows[i]: message for i, message in fresh_bad.items()})
  return dict(sorted(bad.items()))


def cached_images(paths: Sequence[str], names: Sequence[str], *, cache_dir: str | os.PathLike,
                  prefix: str, image_size: int, resample: str, sixteen_bit: str, workers: int,
                  chunk_size: int, on_bad_image: str,
                  max_in_memory_bytes: int,
                  png_decoder: str = 'auto') -> tuple[np.ndarray, dict[int, str], dict]:
  """Preprocessed images of `paths`, from the cache or decoded into it.

  Returns:
    `(images, bad, info)`: a read-only uint8 memmap `(N, S, S, 1)`, `{row: message}` of
    undecodable files (their rows are zero), and `{'cache_path', 'cache_hit',
    'refreshed_images', 'streaming'}` (`refreshed_images`: files changed since they were
    cached, decoded again) where `streaming` says the cache is larger than `max_in_memory_bytes`
    (so callers should keep it on disk, e.g. as `RowView`s, rather than read it whole).
  """
  cache_dir = pathlib.Path(cache_dir)
  try:
    cache_dir.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise ValueError(f'data.cache_dir: cannot create {cache_dir} ({error}); set data.cache_dir to '
                     'a writable folder.') from error
  stem = f'{prefix}_{image_size}px_{cache_key(names, image_size, resample, sixteen_bit)}'
  array_path, index_path = cache_dir / f'{stem}.npy', cache_dir / f'{stem}.json'
  hit = array_path.exists() and index_path.exists()
  identities = file_identities(paths)
  refreshed = 0
  if hit:
    index = json.loads(index_path.read_text())
    bad = {int(k): v for k, v in index['bad'].items()}
    recorded = index.get('identities') or [None] * len(paths)
    stale = [row for row, (was, now) in enumerate(zip(recorded, identities)) if was != now]
    if stale:
      # Decoded before the index is rewritten: a run killed in between leaves rows the
      # index still calls stale, so they are decoded again next time.
      bad = _refresh_rows(array_path, stale, paths, bad, image_size=image_size,
                          resample=resample, sixteen_bit=sixteen_bit,
                          workers=min(workers, max(len(stale) // chunk_size, 1)),
                          chunk_size=chunk_size, on_bad_image=on_bad_image,
                          png_decoder=png_decoder)
      _write_index(index_path, {'files': len(paths), 'bad': bad, 'identities': identities})
      refreshed = len(stale)
  else:
    partial = cache_dir / f'{stem}.partial.npy'
    out = np.lib.format.open_memmap(partial, mode='w+', dtype=np.uint8,
                                    shape=(len(paths), image_size, image_size, 1))
    try:
      bad = decode_into(paths, out, image_size=image_size, resample=resample,
                        sixteen_bit=sixteen_bit, workers=workers, chunk_size=chunk_size,
                        on_bad_image=on_bad_image, png_decoder=png_decoder)
      out.flush()
    except BaseException:
      del out
      partial.unlink()
      raise
    del out
    # The index is written last: a run killed mid-decode leaves no cache that looks complete.
    os.replace(partial, array_path)
    _write_index(index_path, {'files': len(paths), 'bad': bad, 'identities': identities})
  if bad and on_bad_image == 'error':
    row = min(bad)
    raise ValueError(f'cannot decode image {paths[row]} ({bad[row]}, recorded in {index_path}); '
                     'fix or remove the file, or set data.on_bad_image="skip".')
  streaming = len(paths) * image_size * image_size > max_in_memory_bytes
  images = np.load(array_path, mmap_mode='r')
  return images, bad, {'cache_path': str(array_path), 'cache_hit': hit,
                       'refreshed_images': refreshed, 'streaming': streaming}
