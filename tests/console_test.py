"""What a run prints and draws: the library-log filter, the tables, the figures, the metric rows.

The binaries' whole console is checked end to end in train_test.py (default verbosity and
`--verbosity=1`); these tests pin the pieces with hand-made inputs.
"""

import json
import logging as std_logging
import os

from absl import logging
import jax
import numpy as np
from PIL import Image
import pytest

from fedgan_jax import console
from fedgan_jax import flags_common
from fedgan_jax import metrics_log
from fedgan_jax import plots
from fedgan_jax import synthesis
from fedgan_jax.data import conditions as conditions_lib


def _record(path: str, level: int) -> std_logging.LogRecord:
  return std_logging.LogRecord('absl', level, path, 1, 'message', None, None)


@pytest.fixture
def verbosity():
  before = logging.get_verbosity()
  yield logging.set_verbosity
  logging.set_verbosity(before)


def test_library_info_is_dropped_unless_verbosity_is_raised(verbosity):
  library = os.path.join(os.path.dirname(jax.__file__), '_src', 'xla_bridge.py')
  own = os.path.join(os.path.dirname(console.__file__), 'train.py')
  log_filter = console.LibraryInfoFilter()
  verbosity(logging.INFO)
  assert log_filter.filter(_record(own, std_logging.INFO))
  assert not log_filter.filter(_record(library, std_logging.INFO))
  assert log_filter.filter(_record(library, std_logging.WARNING))
  verbosity(logging.DEBUG)  # --verbosity=1
  assert log_filter.filter(_record(library, std_logging.INFO))


def test_quiet_library_logs_installs_one_filter_on_absl_handler():
  console.quiet_library_logs()
  console.quiet_library_logs()
  handler = logging.get_absl_handler()
  assert sum(isinstance(f, console.LibraryInfoFilter) for f in handler.filters) == 1


def test_binaries_share_one_definition_of_each_common_flag():
  # Each binary defined its own --config, --workdir, --step, ...: importing two of them in
  # one process raised DuplicateFlagError. Now the second import reuses the first's flags.
  from fedgan_jax import audit  # pylint: disable=g-import-not-at-top
  from fedgan_jax import eval as eval_binary  # pylint: disable=g-import-not-at-top
  from fedgan_jax import main  # pylint: disable=g-import-not-at-top
  for holder in (main._CONFIG, eval_binary._CONFIG, audit._CONFIG):  # pylint: disable=protected-access
    assert holder.name == 'config'
  assert audit._STEP.name == eval_binary._STEP.name == 'step'  # pylint: disable=protected-access
  assert main._RUNTIME.jax_distributed.name == 'jax_distributed'  # pylint: disable=protected-access
  assert eval_binary._RUNTIME.jax_distributed is None  # pylint: disable=protected-access
  assert flags_common.define_workdir('again').name == 'workdir'


def test_table_aligns_columns_and_formats_numbers():
  text = console.table(['name', 'n', 'x'], [('a', 12, 0.5), ('long name', 3, None)])
  assert text.splitlines() == ['  name        n      x',
                               '  a          12  0.500',
                               '  long name   3      -']


def test_results_table_shows_each_evaluators_headline_beside_its_real_images_counterpart():
  results = {
      'evaluators': ['inception_fid', 'memorization', 'conditioning', 'anomaly', 'personalized'],
      'inception_fid': {'skipped': 'eval.inception_weights is unset.'},
      'memorization': {'fraction_synthetic_below_floor': 0.0, 'held_out': 32},
      'conditioning': {
          'generated': {'age': {'kind': 'continuous', 'pearson_r': 0.81, 'mae': 9.0},
                        'sex': {'kind': 'categorical', 'auc': 0.99, 'accuracy': 0.9},
                        'history': {'kind': 'multi_hot', 'auc': {'copd': 0.7}, 'mean_auc': 0.7},
                        'cond_cosine': 0.5},
          'real_reference': {'age': {'pearson_r': 0.93}, 'sex': {'auc': 1.0},
                             'history': {'mean_auc': 0.8}, 'cond_cosine': 0.75}},
      'anomaly': {'auc': 0.9271, 'sensitivity': 1.0, 'specificity': 0.03, 'test_normal': 500,
                  'roc': {'fpr': [0, 1], 'tpr': [0, 1]}, 'ceiling': {'auc': 0.985}},
      'personalized': {'unconditioned': {'auc': 0.92}, 'note': 'x'},
      'privacy': {'mode': 'example', 'epsilon': 3.2, 'delta': 1e-5, 'protects': 'an image'},
      'rounds': 300, 'config': {'fl': {'num_rounds': 300}}}
  rows = [line.split('  ') for line in console.results_table(results).splitlines()]
  rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
  assert rows == [['evaluator', 'metric', 'value', 'real images'],
                  ['inception_fid', 'skipped (see eval/results.md)', '-', '-'],
                  ['memorization', 'fraction_synthetic_below_floor', '0.000', '-'],
                  ['conditioning', 'age pearson_r', '0.810', '0.930'],
                  ['sex auc', '0.990', '1.000'],
                  ['history mean_auc', '0.700', '0.800'],
                  ['cond_cosine', '0.500', '0.750'],
                  ['anomaly', 'auc', '0.927', '0.985'],
                  ['sensitivity', '1.000', '-'],
                  ['specificity', '0.030', '-'],
                  ['personalized', 'unconditioned auc', '0.920', '-'],
                  ['privacy', 'epsilon', '3.200', '-'],
                  ['delta', '1e-05', '-']]


def test_clients_table_has_a_row_per_hospital():
  rows = [{'name': 'general', 'examples': 1200, 'abnormal_ratio': 0.2},
          {'name': 'geriatric', 'examples': 900, 'abnormal_ratio': 0.25}]
  lines = console.clients_table(rows).splitlines()
  assert lines[0].split() == ['hospital', 'examples', 'abnormal_ratio']
  assert lines[2].split() == ['geriatric', '900', '0.250']


def test_profile_labels_name_the_schema_categories():
  schema = conditions_lib.ConditionSchema.from_config([
      dict(name='age', kind='continuous', mean=50.0, std=10.0),
      dict(name='sex', kind='categorical', categories=('F', 'M')),
      dict(name='history', kind='multi_hot', categories=('copd', 'cardiac_device', 'smoker'))])
  rows, columns = synthesis.sample_grid_labels(
      schema, [dict(age=75.0, sex=1), dict(history=[0, 2]), {}], 3)
  assert rows == ['age 75, sex M', 'history copd+smoker', 'reference']
  assert columns == ['z1', 'z2', 'z3']


def _png_size(path):
  with Image.open(path) as image:
    return image.size


def test_image_grid_keeps_pixels_and_adds_room_for_labels(tmp_path):
  grid = np.zeros((2, 3, 8, 8, 1), np.uint8)
  grid[1, 2] = 200
  canvas = plots.mosaic(grid, gap=2)
  assert canvas.shape == (2 * 10 + 2, 3 * 10 + 2)
  assert (canvas[12:20, 22:30] == 200).all() and (canvas[2:10, 2:10] == 0).all()
  bare, labelled = tmp_path / 'bare.png', tmp_path / 'labelled.png'
  plots.save_image_grid(str(bare), grid, scale=4)
  plots.save_image_grid(str(labelled), grid, ['age 25, sex F', 'age 75, sex M'],
                        ['z1', 'z2', 'z3'], title='round 10', scale=4)
  bare_width, bare_height = _png_size(bare)
  # The mosaic at 4x, plus the saved figure's padding (0.08 in at 100 dpi on each side).
  assert abs(bare_width - canvas.shape[1] * 4 - 16) <= 2
  assert abs(bare_height - canvas.shape[0] * 4 - 16) <= 2
  width, height = _png_size(labelled)
  assert width > bare_width + 40 and height > bare_height + 20


def test_roc_and_training_curves_are_written(tmp_path):
  roc = tmp_path / 'roc.png'
  plots.save_roc_png(str(roc), {'F-AD': (np.array([0, 0.1, 1]), np.array([0, 0.8, 1]), 0.85)})
  assert _png_size(roc)[0] > 300
  rows = [{'round': r, 'd_loss': 2.0 - r / 10, 'g_loss': 1.0, 'epsilon': r / 3} for r in (1, 2, 3)]
  assert plots.save_training_curves(str(tmp_path / 'curves.png'), rows)
  # Two panels (losses, epsilon) are wider than one.
  assert plots.save_training_curves(str(tmp_path / 'one.png'), [
      {'round': 1, 'd_loss': 1.0}])
  assert _png_size(tmp_path / 'curves.png')[0] > 1.6 * _png_size(tmp_path / 'one.png')[0]
  assert not plots.save_training_curves(str(tmp_path / 'none.png'), [{'round': 1}])
  assert not (tmp_path / 'none.png').exists()


class _Writer:
  """Records what a `clu.metric_writers.MetricWriter` would be given."""

  def __init__(self):
    self.scalars, self.closed = [], False

  def write_scalars(self, step, scalars):
    self.scalars.append((step, scalars))

  def flush(self):
    pass

  def close(self):
    self.closed = True


def test_metric_rows_reach_the_writer_and_the_jsonl_truncates_on_resume(tmp_path):
  writer = _Writer()
  log = metrics_log.MetricsLog(str(tmp_path / 'metrics.jsonl'), writer)
  for r in (1, 2, 3):
    log.append({'round': r, 'd_loss': 0.5 * r, 'clients': 4, 'diverged': False, 'note': 'x'})
  assert writer.scalars[1] == (2, {'d_loss': 1.0, 'clients': 4})
  log.truncate_after(2)
  assert [row['round'] for row in log.read()] == [1, 2]
  log.close()
  assert writer.closed and log.writer is None
  assert json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[0])['note'] == 'x'


def test_tensorboard_writer_is_clus_default_writer_or_none(tmp_path):
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError:
    assert metrics_log.tensorboard_writer(str(tmp_path)) is None
    return
  writer = metrics_log.tensorboard_writer(str(tmp_path))
  assert isinstance(writer, metric_writers.MetricWriter)
  writer.write_scalars(1, {'d_loss': 1.0})
  writer.close()
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(tmp_path))
