"""Data loading speed: ChestX-ray14 CSV parse+map, PNG decode+resize, reads from the cache.

  python -m benchmarks.data_speed --num_images=2000 --workers=2 [--png_decoder=pil]

Prints one JSON object. The PNGs are synthetic 1024x1024 8-bit chest-film-like
images (smooth anatomy plus noise, ~0.5 MB each, like the NIH files); a few
hundred distinct ones are written under several names to save generation time
(each file is still decoded in full). They sit in the page cache, so the PNG
rate measures decoding, not the disk.
"""

import concurrent.futures
import json
import os
import pathlib
import shutil
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from configs.data import cxr14 as cxr14_config
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import cxr14
from fedgan_jax.data import image_io

_REPO = pathlib.Path(__file__).resolve().parents[1]
_CSV = flags.DEFINE_string(
    'csv', str(_REPO.parent / 'shared' / 'data' / 'cxr14' / 'Data_Entry_2017_rows1-40000.csv'),
    'Real ChestX-ray14 CSV to parse.')
_NUM_IMAGES = flags.DEFINE_integer('num_images', 2000, 'PNG files to decode.')
_DISTINCT = flags.DEFINE_integer('distinct_images', 200, 'Distinct PNG contents among them.')
_PNG_SIZE = flags.DEFINE_integer('png_size', 1024, 'Side of the synthetic PNGs.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 128, 'Side after resizing.')
_WORKERS = flags.DEFINE_integer('workers', 2, 'Decode processes.')
_CHUNK = flags.DEFINE_integer('chunk_size', 64, 'Images per pool task.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats; the best is reported.')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Random batch size for cache reads.')
_PNG_DECODER = flags.DEFINE_enum('png_decoder', 'auto', image_io.PNG_DECODERS,
                                 'auto: libspng when pyspng is installed, else PIL.')


def _best_seconds(function, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return min(times)


def _film(seed: int, size: int) -> bytes:
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  lungs = np.exp(-((x - 0.3) ** 2 + (y - 0.5) ** 2) / 0.03) + np.exp(
      -((x - 0.7) ** 2 + (y - 0.5) ** 2) / 0.03)
  film = 200 - 120 * lungs + 20 * np.sin(40 * y + rng.uniform(0, 6)) + rng.normal(0, 2.5, x.shape)
  return image_io.encode_png(np.clip(film, 0, 255).astype(np.uint8))


def _write_pngs(folder: pathlib.Path) -> list[str]:
  with concurrent.futures.ProcessPoolExecutor(_WORKERS.value) as pool:
    contents = list(pool.map(_film, range(_DISTINCT.value), [_PNG_SIZE.value] * _DISTINCT.value))
  folder.mkdir(parents=True)
  paths = []
  for i in range(_NUM_IMAGES.value):
    path = folder / f'{i:08d}_000.png'
    path.write_bytes(contents[i % len(contents)])
    paths.append(str(path))
  return paths


def _csv_seconds():
  def parse_and_map():
    records, _ = cxr14.read_metadata(_CSV.value, max_valid_age=120)
    schema = conditions_lib.ConditionSchema.from_config(
        cxr14_config.get_conditions()).fit_standardization(records)
    conditions_lib.model_condition(*schema.encode(records))
  return _best_seconds(parse_and_map, _REPEATS.value)


def main(argv):
  del argv
  results = {'cpu_count': os.cpu_count(), 'workers': _WORKERS.value,
             'png_size': _PNG_SIZE.value, 'image_size': _IMAGE_SIZE.value,
             'png_decoder': _PNG_DECODER.value, 'pyspng_installed': image_io.pyspng is not None,
             # Others may share the machine; their load slows the wall-clock rates.
             'load_average_1min_at_start': os.getloadavg()[0]}
  if os.path.exists(_CSV.value):
    results['csv_rows'] = sum(1 for _ in open(_CSV.value)) - 1
    results['csv_parse_and_map_seconds'] = round(_csv_seconds(), 3)
  folder = pathlib.Path(tempfile.mkdtemp(prefix='fedgan_data_speed_'))
  try:
    paths = _write_pngs(folder / 'images')
    results['png_mean_bytes'] = int(np.mean([os.path.getsize(p) for p in paths[:50]]))
    names = [os.path.basename(p) for p in paths]
    kwargs = dict(prefix='bench', image_size=_IMAGE_SIZE.value, resample='bicubic',
                  sixteen_bit='full_range', chunk_size=_CHUNK.value, on_bad_image='error',
                  png_decoder=_PNG_DECODER.value)
    one = paths[:100]
    start, start_cpu = time.perf_counter(), time.process_time()
    image_io.cached_images(one, names[:100], cache_dir=folder / 'cache_one', workers=1,
                           max_in_memory_bytes=2**40, **kwargs)
    results['png_images_per_second_one_process'] = round(100 / (time.perf_counter() - start), 1)
    # CPU time is what other users of the machine cannot take away: cores / it bounds the rate.
    results['png_cpu_ms_per_image'] = round((time.process_time() - start_cpu) * 10, 2)
    start = time.perf_counter()
    _, _, info = image_io.cached_images(paths, names, cache_dir=folder / 'cache',
                                        workers=_WORKERS.value, max_in_memory_bytes=2**40,
                                        **kwargs)
    seconds = time.perf_counter() - start
    assert not info['cache_hit']
    results['png_images_per_second'] = round(len(paths) / seconds, 1)
    load = lambda: np.array(image_io.cached_images(
        paths, names, cache_dir=folder / 'cache', workers=1, max_in_memory_bytes=2**40,
        **kwargs)[0])
    results['cache_load_images_per_second'] = round(
        len(paths) / _best_seconds(load, _REPEATS.value), 1)
    images = image_io.cached_images(paths, names, cache_dir=folder / 'cache', workers=1,
                                    max_in_memory_bytes=0, **kwargs)[0]
    view = image_io.RowView(images, np.arange(len(paths)))
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, len(paths), _BATCH.value) for _ in range(20)]
    read = lambda: [view[batch] for batch in batches]
    results['cache_random_batch_images_per_second'] = round(
        20 * _BATCH.value / _best_seconds(read, _REPEATS.value), 1)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  app.run(main)
