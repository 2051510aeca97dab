"""Phantom generation speed and attribute-model fit time; optionally a PNG grid to look at.

  OMP_NUM_THREADS=1 python -m benchmarks.phantom_speed --num_images=4000 --image_size=64 \
      --grid=/tmp/phantoms.png

Prints one JSON object: best-of-`repeats` wall and CPU seconds to sample records and render
`num_images` phantoms of each configured hospital style in turn (one process, so CPU seconds
are one core's), and to fit the attribute model (age, sex) on them. The grid shows one row per
(sex, age, view) and one column per finding plus COPD and a cardiac device.
"""

import json
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from configs.data import phantom as phantom_config
from fedgan_jax.data import phantom
from fedgan_jax.evaluation import attributes

_NUM_IMAGES = flags.DEFINE_integer('num_images', 4000, 'Phantoms per timed run.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 64, 'Side of the phantoms.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats; the best is reported.')
_GRID = flags.DEFINE_string('grid', '', 'Where to write a PNG grid of phantoms (empty: none).')
_GRID_SCALE = flags.DEFINE_integer('grid_scale', 4, 'Nearest-neighbour zoom of the grid.')


def _best(function, repeats):
  best_wall, best_cpu, result = np.inf, np.inf, None
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    best_wall = min(best_wall, time.perf_counter() - wall)
    best_cpu = min(best_cpu, time.process_time() - cpu)
  return best_wall, best_cpu, result


def _grid_records():
  """Normal, each finding, COPD and a device, for both sexes, ages 25/75 and both views."""
  columns = [('normal', None, None)] + [(f, f, None) for f in phantom.FINDINGS] + [
      (h, None, h) for h in ('copd', 'cardiac_device')]
  rows = []
  for sex in (0, 1):
    for age in (25.0, 75.0):
      for view in (0, 1):
        for _, finding, history in columns:
          findings = [int(finding == f) for f in phantom.FINDINGS]
          rows.append(dict(age=age, sex=sex, view=view, findings=findings,
                           history=[int(history == h) for h in phantom.HISTORY]))
  records = {k: np.array([r[k] for r in rows]) for k in rows[0]}
  num = len(rows)
  records.update(bmi=np.full(num, 27.0), crp=np.full(num, 3.0), severity_score=np.ones(num),
                 diuretic=np.zeros((num, 1), np.int64))
  return records, len(columns)


def _write_grid(path, image_size, hospital, scale):
  records, num_columns = _grid_records()
  images = phantom.render(records, image_size, hospital, np.random.default_rng(0))[..., 0]
  num_rows = len(images) // num_columns
  grid = images.reshape(num_rows, num_columns, image_size, image_size).transpose(0, 2, 1, 3)
  grid = grid.reshape(num_rows * image_size, num_columns * image_size)
  Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                               Image.NEAREST).save(path)


def main(argv):
  del argv
  config = phantom_config.get_data_config()
  num, size = _NUM_IMAGES.value, _IMAGE_SIZE.value
  results = {'num_images': num, 'image_size': size, 'render': {}}
  images = records = None
  for i, hospital in enumerate(config.hospitals):
    def generate(hospital=hospital, i=i):
      records = phantom.sample_records(num, np.random.default_rng([0, i]), config.demographics,
                                       hospital, config.abnormal_fraction)
      return records, phantom.render(records, size, hospital, np.random.default_rng([1, i]),
                                     chunk_pixels=config.render_chunk_pixels)
    wall, cpu, (records, images) = _best(generate, _REPEATS.value)
    results['render'][hospital.name] = {'wall_s': round(wall, 3), 'cpu_s': round(cpu, 3)}
  wall, cpu, _ = _best(lambda: attributes.AttributeModel.fit(images, records), _REPEATS.value)
  results['attribute_fit'] = {'wall_s': round(wall, 3), 'cpu_s': round(cpu, 3)}
  if _GRID.value:
    _write_grid(_GRID.value, size, config.hospitals[0], _GRID_SCALE.value)
    results['grid'] = _GRID.value
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  app.run(main)
