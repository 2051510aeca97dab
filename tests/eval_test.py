"""End-to-end tests of the eval binary on a tiny trained workdir, and its small helpers."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import binary_env
from conftest import tiny_model_flags
from conftest import with_tiny_model
from configs import eval_common
from configs import phantom
from fedgan_jax import checkpointing
from fedgan_jax import console as console_lib
from fedgan_jax.evaluation import report as eval_report
from fedgan_jax.evaluation import driver as evaluation
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.evaluation import context as context_lib
from fedgan_jax.evaluation import schema_attributes

# One worker builds conftest.main_run for this module and the other that reads it.
pytestmark = pytest.mark.xdist_group('main_run')

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  config = with_tiny_model(phantom.get_config('runlocal'))  # Evaluation is width-blind.
  if 'eval' not in config:
    config.eval = eval_common.get_eval_config(runlocal=True)
  return config


def _checkpoint_files(workdir):
  """Every file under checkpoints/ with its size and modification time."""
  listing = {}
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints')):
    for name in files:
      stat = os.stat(os.path.join(root, name))
      listing[os.path.relpath(os.path.join(root, name), workdir)] = (stat.st_size, stat.st_mtime_ns)
  return listing


@pytest.fixture(scope='module')
def trained(main_run, tmp_path_factory):
  """A copy of the suite's main run (checkpoints at rounds 4, 8, 12) and its results.json."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  shutil.copytree(main_run[0], workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    return workdir, json.load(f)


@pytest.fixture(scope='module')
def binary_run(trained, compilation_cache_dir):
  """Runs `python -m fedgan_jax.eval` once; returns what it wrote and the checkpoints around it."""
  workdir, _ = trained
  before = _checkpoint_files(workdir)
  process = subprocess.run(
      [sys.executable, '-m', 'fedgan_jax.eval', '--config=configs/phantom.py:runlocal',
       f'--workdir={workdir}', f'--compilation_cache={compilation_cache_dir}',
       *tiny_model_flags()], cwd=REPO_ROOT, check=True, capture_output=True, text=True,
      env=binary_env())
  out = os.path.join(workdir, 'eval')
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  with open(os.path.join(out, 'results.md')) as f:
    markdown = f.read()
  return {'results': results, 'markdown': markdown, 'files': sorted(os.listdir(out)),
          'before': before, 'after': _checkpoint_files(workdir),
          'console': process.stdout + process.stderr}


def test_binary_writes_results_plots_and_never_touches_checkpoints(binary_run):
  assert {'results.json', 'results.md', 'roc.png', 'samples.png', 'real_vs_generated.png',
          'real_vs_generated_by_class.png'} <= set(binary_run['files'])
  assert binary_run['after'] == binary_run['before']
  results = binary_run['results']
  assert results['step'] == 12  # The latest checkpoint.
  scale = results['sampling_noise_scale']
  assert scale == _config().sampling.noise_scale
  assert f'z ~ N(0, s^2 I) with s = {scale:g}' in binary_run['markdown']
  assert results['privacy']['mode'] == 'none' and 'DP was off' in results['privacy']['note']
  assert 'convert_inception' in results['inception_fid']['skipped']
  for name in ('domain_quality', 'conditioning', 'anomaly', 'personalized'):
    assert name in results and results['timing_s'][name] >= 0
  quality = results['domain_quality']
  assert quality['kid_subset_size'] == 32 and 0 <= quality['precision'] <= 1
  personal = results['personalized']
  assert set(personal) >= {'unconditioned', 'conditional_ae', 'generator_distance',
                           'profile_calibrated'}
  assert 0.0 <= personal['profile_calibrated']['profile_r2'] <= 1.0
  assert '| personalized: AE score calibrated to the PD profile |' in binary_run['markdown']
  assert set(results['anomaly']['per_finding_auc']) == {'pneumonia', 'nodule', 'effusion',
                                                        'cardiomegaly'}


def test_binary_console_ends_with_the_results_table_and_hides_library_info(binary_run):
  console = binary_run['console']
  auc = console_lib.format_value(binary_run['results']['anomaly']['auc'])
  assert 'Results of round 12' in console
  assert any(line.split()[:3] == ['anomaly', 'auc', auc] for line in console.splitlines())
  # jax's INFO line about the missing TPU backend is a library's: hidden at default verbosity.
  assert 'xla_bridge.py' not in console and len(console.splitlines()) <= 60, console


def test_results_md_tables_show_the_json_numbers(binary_run):
  results, markdown = binary_run['results'], binary_run['markdown']
  anomaly = results['anomaly']
  row = (f'| F-AD: AE on synthetic normals | {anomaly["auc"]:.3f} | '
         f'{anomaly["sensitivity"]:.3f} | {anomaly["specificity"]:.3f} |')
  assert row in markdown
  quality = results['domain_quality']
  assert f'| domain features | {eval_report.number(quality["fid"])} |' in markdown
  assert '| attribute | metric | generated | real |' in markdown
  age = results['conditioning']['generated']['age']['pearson_r']
  assert re.search(rf'\| age \| Pearson r \| {eval_report.number(age)} \|', markdown)
  # Every table row has as many cells as its header.
  for block in re.findall(r'((?:^\|.*\|\n)+)', markdown, flags=re.M):
    widths = {line.count('|') for line in block.strip().splitlines()}
    assert len(widths) == 1, block


def test_step_selection_and_missing_step(trained):
  workdir, _ = trained
  config = _config()
  config.eval.evaluators = ('anomaly',)
  results = evaluation.evaluate_checkpoint(config, workdir, step=8)
  assert results['step'] == 8
  with open(os.path.join(workdir, 'eval', 'results.json')) as f:
    assert json.load(f)['step'] == 8
  with pytest.raises(FileNotFoundError, match=r'\[4, 8, 12\]'):
    evaluation.evaluate_checkpoint(config, workdir, step=3)


def test_main_and_the_eval_binary_report_the_same_numbers(trained, binary_run):
  _, training_results = trained
  results = binary_run['results']
  assert training_results['step'] == results['step'] == 12
  # One evaluation path: the main job's final step is the eval binary's function. Both are
  # fresh processes of this machine, so they agree to the last digit.
  for name in ('anomaly', 'conditioning', 'domain_quality', 'memorization', 'personalized'):
    assert json.dumps(training_results[name], sort_keys=True) == json.dumps(
        results[name], sort_keys=True), name


def test_profile_calibration_without_a_profile_is_skipped_with_a_reason(trained):
  # A schema whose only features are labels (PneumoniaMNIST's) has no profile; here no schema
  # group is calibrated on, which leaves the same nothing to calibrate to.
  workdir, _ = trained
  config = _config()
  config.eval.evaluators = ('personalized',)
  config.eval.personalized = dataclasses.replace(
      config.eval.personalized, methods=('profile_calibrated',), calibration_groups=())
  results = evaluation.evaluate_checkpoint(config, workdir)
  assert 'no profile to calibrate to' in results['personalized']['profile_calibrated']['skipped']
  with open(os.path.join(workdir, 'eval', 'results.md')) as f:
    assert 'AE score calibrated to the PD profile: not run, the schema has no feature' in f.read()


@pytest.mark.parametrize('field, value', [('model.generator.z_dim', 4),
                                          ('data.image_size', 16)])
def test_refuses_a_checkpoint_of_an_incompatible_config(trained, field, value):
  workdir, _ = trained
  config = _config()
  section, _, leaf = field.rpartition('.')
  node = config
  for part in section.split('.'):
    node = node[part]
  node[leaf] = value
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match=re.escape(field)):
    evaluation.evaluate_checkpoint(config, workdir)


def test_inception_fid_with_missing_weights_names_the_convert_command(trained, tmp_path):
  workdir, _ = trained
  config = _config()
  config.eval.evaluators = ('inception_fid',)
  config.eval.inception_weights = str(tmp_path / 'fid_inception.npz')
  with pytest.raises(FileNotFoundError, match='fedgan_jax.tools.convert_inception'):
    evaluation.evaluate_checkpoint(config, workdir)


def test_unknown_evaluator_and_missing_section_are_named():
  config = _config()
  config.eval.evaluators = ('anomaly', 'fid_typo')
  with pytest.raises(ValueError, match='fid_typo'):
    evaluation.evaluate_checkpoint(config, '/nonexistent')
  bare = phantom.get_config('runlocal')
  if 'eval' in bare:
    del bare['eval']
  with pytest.raises(ValueError, match='eval_common.get_eval_config'):
    evaluation.evaluate_checkpoint(bare, '/nonexistent')


def test_privacy_report_reads_the_checkpoint_meta():
  spent = {'mode': 'example', 'epsilon': 3.2, 'delta': 1e-5}
  assert evaluation.privacy_report({'privacy': spent}) == spent
  assert evaluation.privacy_report({})['mode'] == 'none'
  assert evaluation.privacy_report({'privacy': {'mode': 'none', 'epsilon': float('inf')}})[
      'mode'] == 'none'


def test_shared_models_refuse_other_data():
  shared = context_lib.SharedModels()
  calls = []
  assert shared.get('encoder', 'data A', lambda: calls.append(1) or 'fitted') == 'fitted'
  assert shared.get('encoder', 'data A', lambda: calls.append(1) or 'refitted') == 'fitted'
  assert calls == [1]
  with pytest.raises(ValueError, match='another data config'):
    shared.get('encoder', 'data B', lambda: 'other')


def test_cosine_similarity_is_one_minus_l_cond_on_present_entries():
  predicted = np.array([[1.0, 0.0, 5.0], [0.0, 0.0, 1.0]])
  values = np.array([[1.0, 1.0, -3.0], [1.0, 1.0, 0.0]])
  mask = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  # Row 0: masked vectors [1, 0] and [1, 1] -> cos 1/sqrt(2). Row 1: [0, 0, 1] vs [1, 1, 0]
  # -> 0. Mean (1/sqrt(2) + 0) / 2.
  assert schema_attributes.cosine_similarity(predicted, values, mask) == pytest.approx(
      (1 / np.sqrt(2)) / 2, rel=1e-6)
  # A row with nothing to compare is left out rather than counted as a perfect match.
  mask[1] = 0.0
  assert schema_attributes.cosine_similarity(predicted, values, mask) == pytest.approx(
      1 / np.sqrt(2), rel=1e-6)


def test_schema_reader_reads_a_binary_and_a_continuous_feature():
  schema = conditions_lib.ConditionSchema.from_config([
      dict(name='level', kind='continuous', mean=0.0, std=1.0),
      dict(name='sex', kind='categorical', categories=('F', 'M')),
      dict(name='rare', kind='multi_hot', categories=('x',))])
  rng = np.random.default_rng(0)
  level, sex = rng.normal(size=200), rng.integers(0, 2, 200)
  rare = np.zeros((200, 1))
  rare[:2] = 1.0
  images = 100 + 10 * rng.standard_normal((200, 12, 12))
  images[:, :, :6] += 25 * level[:, None, None]
  images[:, :4, 8:] += 60 * sex[:, None, None]
  images = np.clip(images, 0, 255).astype(np.uint8)[..., None]
  values, mask = schema.encode({'level': level, 'sex': sex, 'rare': rare})
  conditions = conditions_lib.model_condition(values, mask)
  reader = schema_attributes.SchemaReader.fit(schema, images[:150], conditions[:150],
                                              min_class_examples=5)
  assert list(reader.not_fitted) == ['rare[0]']  # 2 positives < 5.
  report = reader.report(images[150:], conditions[150:])
  assert report['level']['pearson_r'] > 0.9
  assert report['sex']['auc'] > 0.95 and report['sex']['accuracy'] > 0.9
  assert np.isnan(report['rare']['auc']['x'])
  assert report['cond_cosine'] > 0.8


def test_number_and_jsonable_render_missing_values():
  assert eval_report.number(float('nan')) == '—' and eval_report.number(None) == '—'
  assert eval_report.number(0.12345) == '0.123' and eval_report.number(2e-5) == '2.00e-05'
  assert eval_report.jsonable({'a': np.float32(0.5), 'b': [float('nan'), np.int64(3)]}) == {
      'a': 0.5, 'b': [None, 3]}


def test_class_grid_pairs_each_hospitals_real_films_with_gs_for_their_records(monkeypatch):
  import types
  from fedgan_jax import synthesis
  from fedgan_jax.data import dataset as dataset_lib
  schema = conditions_lib.ConditionSchema.from_config(
      [dict(name='findings', kind='multi_hot', categories=('a', 'b', 'c'))])

  def client(name, findings):
    findings = np.asarray(findings, np.int64)
    n = len(findings)
    return dataset_lib.ClientData(
        name=name, images=np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(
            (1, 2, 2, 1), np.uint8), conditions=findings.astype(np.float32),
        abnormal=findings.any(axis=1), patient_ids=np.arange(n), records={'findings': findings})

  # 'b' is the most frequent finding, then 'a'; 'c' never occurs.
  clients = [client('h0', [[0, 0, 0], [0, 1, 0], [0, 1, 0], [1, 0, 0]]),
             client('h1', [[0, 1, 0], [0, 0, 0], [0, 0, 0]])]
  federation = types.SimpleNamespace(schema=schema, clients=clients)
  pooled = types.SimpleNamespace(
      records={'findings': np.concatenate([c.records['findings'] for c in clients])})
  context = types.SimpleNamespace(federation=federation, pooled_training=lambda: pooled,
                                  task=None, g_params=None, seed=0)
  # G's image for a record: 100 + the record's first finding index (normal: 100 + 3).
  monkeypatch.setattr(synthesis, 'synthesize', lambda task, params, conditions, seed, batch: (
      100 + np.where(conditions.any(axis=1), conditions.argmax(axis=1), 3)).astype(
          np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8))
  grid, labels = evaluation.class_hospital_grid(context, columns=2, num_findings=5)
  assert labels == ['h0 normal: real', 'h0 normal: G', 'h0 b: real', 'h0 b: G', 'h0 a: real',
                    'h0 a: G', 'h1 normal: real', 'h1 normal: G', 'h1 b: real', 'h1 b: G']
  assert grid.shape == (10, 2, 2, 2, 1)
  np.testing.assert_array_equal(grid[2, :, 0, 0, 0], [1, 2])      # h0's two 'b' films.
  np.testing.assert_array_equal(grid[3, :, 0, 0, 0], [101, 101])  # G for their records.
  np.testing.assert_array_equal(grid[4, :, 0, 0, 0], [3, 0])      # One 'a' film, then black.
  np.testing.assert_array_equal(grid[7, :, 0, 0, 0], [103, 103])  # h1's normals, G.
