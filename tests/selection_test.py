"""Tests of checkpoint selection on the validation split and of `registry.validation_config`."""

import os

import pytest

from configs import cxr14 as cxr14_experiment
from configs import phantom
from configs import pneumoniamnist
from configs import zhanglab
from fedgan_jax import checkpointing
from fedgan_jax.data import registry
from fedgan_jax.evaluation import driver
from fedgan_jax.evaluation import report
from fedgan_jax.evaluation import selection


@pytest.mark.parametrize('experiment', [zhanglab, cxr14_experiment])
def test_patient_split_sources_score_their_validation_split(experiment):
  config = experiment.get_config('runlocal')
  validation = registry.validation_config(config)
  assert validation.data.split.score == 'validation'
  assert config.data.split.score == 'auto'  # The caller's config is not changed.
  config.data.split.validation_fraction = 0.0
  with pytest.raises(ValueError, match='validation_fraction'):
    registry.validation_config(config)


def test_medmnist_scores_its_released_val_split_and_phantom_has_none():
  config = pneumoniamnist.get_config('runlocal')
  assert registry.validation_config(config).data.test_split == 'val'
  assert config.data.test_split == 'test'
  config.data.train_splits = ('train', 'val')
  with pytest.raises(ValueError, match="train_splits includes 'val'"):
    registry.validation_config(config)
  with pytest.raises(ValueError, match='no validation split.*--step'):
    registry.validation_config(phantom.get_config('runlocal'))


def test_the_best_validation_round_is_chosen_later_on_ties(monkeypatch, tmp_path):
  config = pneumoniamnist.get_config('runlocal')
  aucs = {100: 0.70, 200: 0.91, 250: 0.85, 300: 0.91}
  calls = []

  def fake_evaluate(config, workdir, step, federation=None, out_dir=None):
    calls.append((config.data.test_split, tuple(config.eval.evaluators),
                  tuple(config.eval.anomaly_baselines), step, out_dir, federation))
    return {'anomaly': {'auc': aucs[step]}}

  monkeypatch.setattr(checkpointing, 'saved_steps', lambda workdir: sorted(aucs))
  monkeypatch.setattr(registry, 'load_federation', lambda config: ('federation',
                                                                   config.data.test_split))
  monkeypatch.setattr(driver, 'evaluate_checkpoint', fake_evaluate)
  step, record = selection.best_step_on_validation(config, str(tmp_path))
  assert step == 300  # 0.91 at rounds 200 and 300: the later one.
  assert record == {'on': 'validation', 'metric': selection.METRIC, 'selected_step': 300,
                    'auc_by_step': {'100': 0.70, '200': 0.91, '250': 0.85, '300': 0.91}}
  # Every saved round, the detector alone, on the validation split loaded once; results of
  # each round go beside eval/, never into it.
  assert [c[3] for c in calls] == [100, 200, 250, 300]
  assert all(c[:3] == ('val', ('anomaly',), ()) for c in calls)
  assert all(c[5] == ('federation', 'val') for c in calls)
  assert calls[0][4] == os.path.join(str(tmp_path), 'eval_selection', 'round_100')


def test_results_md_names_the_choice():
  results = {'workdir': '/w', 'step': 300, 'data': 'medmnist', 'reference': 'test',
             'privacy': {'mode': 'none'}, 'evaluators': [],
             'checkpoint_selection': {'on': 'validation', 'metric': selection.METRIC,
                                      'selected_step': 300,
                                      'auc_by_step': {'200': 0.9, '300': 0.95}}}
  markdown = report.results_markdown(results)
  assert 'Checkpoint: round 300, chosen on the validation split' in markdown
  assert '(200: 0.900, 300: 0.950)' in markdown and 'Unusable' not in markdown
  results['checkpoint_selection']['unusable'] = {'250': 'OSError: truncated'}
  assert "Unusable rounds, skipped: {'250': 'OSError: truncated'}" in report.results_markdown(
      results)


def test_saved_steps_names_a_missing_checkpoint_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match='train first'):
    checkpointing.saved_steps(str(tmp_path))


def test_an_unreadable_round_is_skipped_and_named_but_a_config_mismatch_stops(monkeypatch,
                                                                             tmp_path):
  config = pneumoniamnist.get_config('runlocal')
  monkeypatch.setattr(checkpointing, 'saved_steps', lambda workdir: [100, 200])
  monkeypatch.setattr(registry, 'load_federation', lambda config: 'federation')

  def truncated_200(config, workdir, step, federation=None, out_dir=None):
    if step == 200:
      raise OSError('params file truncated')
    return {'anomaly': {'auc': 0.6}}

  monkeypatch.setattr(driver, 'evaluate_checkpoint', truncated_200)
  step, record = selection.best_step_on_validation(config, str(tmp_path))
  assert step == 100 and record['unusable'] == {'200': 'OSError: params file truncated'}

  def all_broken(config, workdir, step, federation=None, out_dir=None):
    raise OSError('gone')

  monkeypatch.setattr(driver, 'evaluate_checkpoint', all_broken)
  with pytest.raises(FileNotFoundError, match='no usable checkpoint'):
    selection.best_step_on_validation(config, str(tmp_path))

  def other_config(config, workdir, step, federation=None, out_dir=None):
    raise checkpointing.IncompatibleCheckpointError('model.generator.z_dim differs')

  monkeypatch.setattr(driver, 'evaluate_checkpoint', other_config)
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match='z_dim'):
    selection.best_step_on_validation(config, str(tmp_path))
