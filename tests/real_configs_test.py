"""Tests of the real-data experiment configs: variants, model shapes, and runs through main.

The end-to-end tests run `python -m fedgan_jax.main` itself on PneumoniaMNIST (the real
subset beside the checkout; skipped when absent) and on a ChestX-ray14 tree in the
official layout made here, and check what `results.json` says about the real test split.
"""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cxr14 as cxr14_experiment
from configs import pneumoniamnist as pneumoniamnist_experiment
from fedgan_jax.data import augment
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.evaluation import anomaly as anomaly_lib
from fedgan_jax.federated import task as task_lib
from conftest import binary_env
import data_fixtures

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = {'configs/pneumoniamnist.py': pneumoniamnist_experiment,
               'configs/cxr14.py': cxr14_experiment}


@pytest.mark.parametrize('config_file', sorted(EXPERIMENTS))
@pytest.mark.parametrize('variant', ['', 'runlocal', 'size=32', 'size=64', 'size=128', 'size=256',
                                     'runlocal,size=64', 'centralized'])
def test_models_fit_the_image_size_of_every_variant(config_file, variant):
  config = EXPERIMENTS[config_file].get_config(variant)
  size = config.data.image_size
  schema = conditions_lib.ConditionSchema.from_config(config.conditions)
  task = task_lib.build_task(config, schema, (size, size, 1))
  condition = jnp.zeros((4, schema.model_dim))
  # Shapes only (no compile): a model that does not fit its image size fails while tracing.
  g_params = jax.eval_shape(task.generator.init, jax.random.key(0), condition,
                            jnp.zeros((4, task.z_dim)))
  fake = jax.eval_shape(task.generator.apply, g_params, condition, jnp.zeros((4, task.z_dim)))
  assert fake.shape == (4, size, size, 1)
  d_out = jax.eval_shape(task.discriminator.init_with_output, jax.random.key(0), fake, condition)[0]
  assert d_out['logit'].shape == (4,) and d_out['attributes'].shape == (4, schema.value_dim)
  autoencoder = anomaly_lib.build_autoencoder(config.anomaly)
  reconstruction = jax.eval_shape(autoencoder.init_with_output, jax.random.key(0), fake)[0]
  assert reconstruction.shape == fake.shape
  assert config.fl.centralized == (variant == 'centralized')


def test_default_sizes_and_runlocal_shrink():
  assert pneumoniamnist_experiment.get_config().data.image_size == 28
  assert cxr14_experiment.get_config().data.image_size == 64
  assert cxr14_experiment.get_config('runlocal').data.image_size == 32
  full, small = cxr14_experiment.get_config('size=64'), cxr14_experiment.get_config(
      'runlocal,size=64')
  assert small.model.discriminator.channels == (8, 16, 32)
  assert len(small.model.generator.decoder_channels) == len(full.model.generator.decoder_channels)
  assert full.model.generator.decoder_channels == (32, 16)  # The phantom default at 64.


@pytest.mark.parametrize('config_file', sorted(EXPERIMENTS))
@pytest.mark.parametrize('variant,message', [
    ('runlocl', "unknown option 'runlocl' (did you mean 'runlocal'?)"),
    ('size=48', 'size=48 is not one of'),
    ('size=big', 'size=big is not a int'),
    ('runlocal=1', "option 'runlocal=1' takes no value"),
    ('size=32,size=64', "option 'size' given twice")])
def test_bad_variant_names_the_config_file(config_file, variant, message):
  with pytest.raises(ValueError, match=config_file) as error:
    EXPERIMENTS[config_file].get_config(variant)
  assert message in str(error.value)


def test_augment_gamma_has_finite_gradient_at_black_pixels():
  config = augment.AugmentParams(gamma=jnp.array([0.9]))
  images = jnp.array([-1.0, -0.5, 0.0, 0.5]).reshape(1, 1, 4, 1)
  gradient = jax.grad(lambda x: augment.apply_params(x, config).sum())(images)
  # d/dx (((x + 1) / 2) ** g * 2 - 1) = g * ((x + 1) / 2) ** (g - 1); black pixels get 0.
  unit = np.array([0.25, 0.5, 0.75])
  np.testing.assert_allclose(gradient.reshape(-1), [0.0, *(0.9 * unit ** -0.1)], rtol=1e-5)


def _run_main(config: str, workdir: pathlib.Path, cache_dir: str, *overrides: str,
              binary: str = 'fedgan_jax.main') -> dict:
  """Runs `binary` (main, or the eval binary on main's workdir) with the test's overrides;
  returns the results.json it wrote."""
  command = [sys.executable, '-m', binary, f'--config={config}',
             f'--workdir={workdir}', f'--compilation_cache={cache_dir}',
             '--config.fl.num_rounds=2', '--config.checkpoint.every_rounds=1',
             '--config.anomaly.steps=5',
             # XLA's CPU compile of the client update is most of this run: one local step, one
             # block less in G's encoder and in D, and XLA's backend optimizations off
             # (conftest.binary_env) shrink it (60 s -> 42 s for PneumoniaMNIST); the image-size
             # geometry (seed size, decoder) stays the config's own, and what is checked is the
             # data path and the outputs.
             '--config.fl.local_steps=1', '--config.model.generator.encoder_channels=(16,)',
             '--config.model.discriminator.channels=(8,)',
             # The evaluators that read the data source (its test split, its labels and
             # records); the others are data-blind and run end to end in train_test/eval_test.
             "--config.eval.evaluators=('conditioning', 'memorization', 'anomaly')", *overrides]
  process = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                           env=binary_env())
  assert process.returncode == 0, process.stderr[-3000:]
  results = workdir / ('results.json' if binary == 'fedgan_jax.main' else 'eval/results.json')
  return json.loads(results.read_text())


@pytest.mark.xdist_group('pneumoniamnist_end_to_end')  # No module fixture: any worker.
def test_pneumoniamnist_runs_end_to_end_through_main(pneumoniamnist_path, tmp_path,
                                                     compilation_cache_dir):
  results = _run_main('configs/pneumoniamnist.py:runlocal', tmp_path, compilation_cache_dir,
                      f'--config.data.path={pneumoniamnist_path}')
  with np.load(pneumoniamnist_path) as npz:
    test_labels, train_rows = npz['test_labels'][:, 0], len(npz['train_labels'])
  anomaly = results['anomaly']
  # Normal = label 0, anomaly = pneumonia, scored on the whole real test split.
  assert (anomaly['test_normal'], anomaly['test_abnormal']) == (
      int((test_labels == 0).sum()), int((test_labels == 1).sum()))
  assert 0.0 <= anomaly['auc'] <= 1.0
  assert {'sensitivity', 'specificity', 'threshold'} <= set(anomaly)
  assert results['rounds'] == 2 and 'findings' in results['conditioning']['generated']
  clients = json.loads((tmp_path / 'clients.json').read_text())
  assert sum(row['examples'] for row in clients) == train_rows
  assert sorted((tmp_path / 'samples').iterdir())
  # The eval binary choosing the round on the released val split, then scoring test.
  chosen = _run_main('configs/pneumoniamnist.py:runlocal', tmp_path, compilation_cache_dir,
                     f'--config.data.path={pneumoniamnist_path}', '--select_on_validation',
                     "--config.eval.evaluators=('anomaly',)", '--config.eval.anomaly_baselines=()',
                     binary='fedgan_jax.eval')
  selection = chosen['checkpoint_selection']
  assert sorted(selection['auc_by_step']) == ['1', '2'] and chosen['scored_split'] == 'test'
  assert chosen['step'] == selection['selected_step'] == max(
      (auc, int(step)) for step, auc in selection['auc_by_step'].items())[1]
  for step in (1, 2):
    validation = json.loads((tmp_path / 'eval_selection' / f'round_{step}' / 'results.json')
                            .read_text())
    assert validation['scored_split'] == 'val' and validation['step'] == step
    assert validation['anomaly']['test_normal'] + validation['anomaly']['test_abnormal'] == 270


@pytest.mark.xdist_group('cxr14_end_to_end')  # No module fixture: any worker.
def test_cxr14_runs_end_to_end_through_main(tmp_path, compilation_cache_dir):
  fixture = data_fixtures.make_cxr14(tmp_path / 'cxr14', layout='nih', num_patients=24)
  workdir = tmp_path / 'work'
  results = _run_main('configs/cxr14.py:runlocal', workdir, compilation_cache_dir,
                      f'--config.data.root={fixture.root}', '--config.data.decode_workers=1')
  test_names = set((fixture.root / 'test_list.txt').read_text().split())
  test_rows = [r for r in fixture.rows if r['image_index'] in test_names
               and r['image_index'] != fixture.corrupt]
  normal = sum(r['labels'] == 'No Finding' for r in test_rows)
  anomaly = results['anomaly']
  # Normal = 'No Finding', anomaly = any finding.
  assert (anomaly['test_normal'], anomaly['test_abnormal']) == (normal, len(test_rows) - normal)
  assert 0 < normal < len(test_rows)
  assert {'age', 'sex'} <= set(results['conditioning']['generated'])
  clients = json.loads((workdir / 'clients.json').read_text())
  assert len(clients) == 2 and all(row['patients'] > 0 for row in clients)
  train_patients = {r['patient_id'] for r in fixture.rows} - set(fixture.test_patients)
  # The official test list is scored ('auto'); 20% of the training patients are the
  # validation split, in no hospital.
  assert results['scored_split'] == 'test'
  validation = round(0.2 * len(train_patients))
  assert sum(row['patients'] for row in clients) == len(train_patients) - validation
  # Scoring test with a validation split beside it, main evaluates the saved round whose F-AD
  # scores validation best (the protocol), and says so.
  selection = results['checkpoint_selection']
  saved = sorted(int(step) for step in selection['auc_by_step'])
  assert selection['on'] == 'validation' and len(saved) >= 2 and saved[-1] == results['rounds']
  assert results['step'] == selection['selected_step'] == max(
      (auc, int(step)) for step, auc in selection['auc_by_step'].items())[1]
  assert (workdir / 'eval_selection' / f'round_{selection["selected_step"]}').is_dir()


@pytest.mark.xdist_group('zhanglab_end_to_end')  # No module fixture: any worker.
def test_zhanglab_runs_end_to_end_through_main(tmp_path, compilation_cache_dir):
  root = data_fixtures.make_zhanglab(tmp_path / 'zhanglab', with_test=False)
  workdir = tmp_path / 'work'
  results = _run_main('configs/zhanglab.py:runlocal', workdir, compilation_cache_dir,
                      f'--config.data.root={root}', '--config.data.decode_workers=1',
                      '--config.data.partition.num_clients=2')
  anomaly = results['anomaly']
  # Scored on the validation split while choosing settings; its baselines beside F-AD. Main
  # evaluates its last round there (choosing on the split it reports would be optimistic).
  assert results['scored_split'] == 'validation' and anomaly['test_abnormal'] > 0
  assert 'checkpoint_selection' not in results and results['step'] == results['rounds']
  assert {'ceiling', 'site_alone', 'site_calibrated', 'utility_ratio'} <= set(anomaly)
  assert set(anomaly['site_calibrated']) >= {'hospital_0', 'hospital_1', 'federated',
                                             'private_pooled'}
  assert anomaly['site_calibrated']['private_pooled']['epsilon'] <= 2.0
  assert 0.0 <= results['memorization']['fraction_synthetic_below_floor'] <= 1.0
  assert 'findings' in results['conditioning']['generated']
