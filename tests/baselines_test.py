"""Tests for the baselines: FedAvg loop, AE on real normals, FedAvg classifier, local GANs."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import baselines as baselines_config
from configs import phantom
from fedgan_jax.baselines import autoencoder as autoencoder_baseline
from fedgan_jax.baselines import classifier
from fedgan_jax.baselines import fedavg
from fedgan_jax.baselines import local_gan
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import registry

SGD_HALF = dict(name='sgd', learning_rate=0.5, kwargs=dict(momentum=0.0, nesterov=False))


def _mean_squared_distance(params, batch):
  return 0.5 * jnp.mean(jnp.square(params['w'] - batch['x']))


@pytest.mark.parametrize('strategy', ['sequential', 'threads', 'vmap'])
def test_fedavg_matches_hand_computed_weighted_average(strategy):
  # One hospital with a single example 2, one with three examples equal to 6. From w = 0, one
  # SGD step (lr 0.5) on 0.5 (w - x)^2 gives w - 0.5 (w - x): 1 and 3. Weighted by example
  # counts: (1 * 1 + 3 * 3) / 4 = 2.5. Round two from 2.5: 2.25 and 4.25 -> (2.25 + 3 * 4.25) / 4.
  # Every strategy of the GAN's round engine runs the baseline alike.
  trainer = fedavg.FedAvgTrainer(_mean_squared_distance, SGD_HALF, strategy=strategy)
  clients = [{'x': np.array([2.0], np.float32)}, {'x': np.full(3, 6.0, np.float32)}]
  params, losses = trainer.train({'w': jnp.zeros(())}, clients, rounds=1, local_steps=1,
                                 batch_size=1, seed=0)
  assert float(params['w']) == pytest.approx(2.5)
  # The round's loss is each hospital's last-step loss (0.5 * 4 and 0.5 * 36), weighted 1:3.
  assert losses == [pytest.approx((2.0 + 3 * 18.0) / 4)]
  params, _ = trainer.train({'w': jnp.zeros(())}, clients, rounds=2, local_steps=1, batch_size=1,
                            seed=0)
  assert float(params['w']) == pytest.approx((2.25 + 3 * 4.25) / 4)


def test_fedavg_with_one_hospital_is_plain_training():
  trainer = fedavg.FedAvgTrainer(_mean_squared_distance, SGD_HALF)
  # Three local steps toward 4 from 0: 2, 3, 3.5.
  params, _ = trainer.train({'w': jnp.zeros(())}, [{'x': np.full(5, 4.0, np.float32)}], rounds=1,
                            local_steps=3, batch_size=2, seed=0)
  assert float(params['w']) == pytest.approx(3.5)


def test_batch_indices_sample_with_replacement_only_when_needed():
  rng = np.random.default_rng(0)
  assert len(set(fedavg.batch_indices(rng, 10, 10).tolist())) == 10
  small = fedavg.batch_indices(rng, 3, 8)
  assert len(small) == 8 and set(small.tolist()) <= {0, 1, 2}
  with pytest.raises(ValueError, match='hospital 1'):
    fedavg.FedAvgTrainer(_mean_squared_distance, SGD_HALF).train(
        {'w': jnp.zeros(())}, [{'x': np.ones(2)}, {'x': np.ones(0)}], 1, 1, 1, 0)


def test_classifier_metrics_match_hand_counts():
  probabilities = np.array([0.9, 0.6, 0.4, 0.2, 0.7])
  abnormal = np.array([True, True, True, False, False])
  report = classifier.evaluate(probabilities, abnormal, 0.5)
  # Pairs (abnormal > normal): 0.9 beats 0.2 and 0.7; 0.6 and 0.4 beat only 0.2 -> 4 / 6.
  assert report['auc'] == pytest.approx(4 / 6)
  assert report['sensitivity'] == pytest.approx(2 / 3)  # 0.9, 0.6 >= 0.5.
  assert report['specificity'] == pytest.approx(1 / 2)  # 0.2 < 0.5, 0.7 is not.


def test_class_balancing_gives_each_class_half_the_loss():
  weights = classifier.class_balancing_weights(np.array([1, 0, 0, 0]))
  # P(abnormal) = 1/4: the abnormal image weighs 0.5 / 0.25 = 2, each normal 0.5 / 0.75 = 2/3,
  # so both classes sum to 2 (half of the 4 examples' total).
  np.testing.assert_allclose(weights, [2.0, 2 / 3, 2 / 3, 2 / 3], rtol=1e-6)
  np.testing.assert_array_equal(classifier.class_balancing_weights(np.zeros(3)), np.ones(3))


@pytest.fixture(scope='module')
def tiny_federation():
  return registry.load_federation(phantom.get_config('runlocal'))


def test_fedavg_classifier_learns_on_phantom_hospitals(tiny_federation):
  settings = baselines_config.get_baselines_config(runlocal=True).classifier
  settings.update(rounds=6, local_steps=3, batch_size=16)
  model, params, losses = classifier.train(tiny_federation, settings, seed=0)
  probabilities = classifier.predict(model, params, tiny_federation.test.images, 32)
  assert probabilities.shape == (len(tiny_federation.test),)
  assert ((probabilities > 0) & (probabilities < 1)).all()
  assert np.isfinite(losses).all() and len(losses) == 6
  # It learned: its class-balanced loss on all training images fell from the initial params'
  # (per-round losses are minibatch means, too noisy over 6 rounds to show it).
  pooled = tiny_federation.pooled()
  labels = np.asarray(pooled.abnormal, np.float32)
  batch = {'image': pooled.images, 'label': labels,
           'weight': classifier.class_balancing_weights(labels)}
  initial = model.init(jax.random.key(0), dataset_lib.images_to_model(pooled.images[:1]))['params']
  assert classifier._loss(model, params, batch) < classifier._loss(model, initial, batch)  # pylint: disable=protected-access


def test_real_normal_autoencoders_train_and_threshold_on_training_normals(tiny_federation):
  config = phantom.get_config('runlocal')
  settings = baselines_config.get_baselines_config(runlocal=True).autoencoder
  federated = autoencoder_baseline.train_federated(tiny_federation, config.anomaly, settings, 0)
  centralized = autoencoder_baseline.train_centralized(tiny_federation, config.anomaly, 0)
  for detector in (federated, centralized):
    # Both score by the configured rule, like the GANs' detectors they are compared with.
    assert detector.score == autoencoder_baseline.anomaly_lib.score_config(config.anomaly)
    assert detector.score.kind == config.anomaly.score
    report = autoencoder_baseline.evaluate(detector, tiny_federation, 90.0)
    assert 0.0 <= report['auc'] <= 1.0 and report['threshold_percentile'] == 90.0
    normals = tiny_federation.pooled().normal_images()
    training_scores = autoencoder_baseline.anomaly_lib.anomaly_scores(detector, normals)
    assert report['threshold'] == pytest.approx(np.percentile(training_scores, 90.0), rel=1e-6)
    assert report['test_scores'].shape == (len(tiny_federation.test),)


def test_single_hospital_keeps_the_shared_test_split(tiny_federation):
  local = local_gan.single_hospital(tiny_federation, 1)
  assert [c.name for c in local.clients] == [tiny_federation.clients[1].name]
  assert local.test is tiny_federation.test
  assert local.info['local_only'] == tiny_federation.clients[1].name
  with pytest.raises(IndexError, match='out of range'):
    local_gan.single_hospital(tiny_federation, len(tiny_federation.clients))
  assert local_gan.workdir_name('St. Mary / ICU') == 'St._Mary_ICU'


def test_baselines_config_sizes_ae_like_the_centralized_detector():
  config = baselines_config.get_baselines_config()
  anomaly_steps = phantom.get_config().anomaly.steps
  assert config.autoencoder.rounds * config.autoencoder.local_steps == anomaly_steps
  assert isinstance(config, ml_collections.ConfigDict)


def test_compare_writes_one_table_for_the_supervised_baselines(tmp_path):
  from configs import eval_common  # pylint: disable=g-import-not-at-top
  from fedgan_jax.baselines import compare  # pylint: disable=g-import-not-at-top
  config = phantom.get_config('runlocal')
  if 'eval' not in config:
    config.eval = eval_common.get_eval_config(runlocal=True)
  config.baselines = baselines_config.get_baselines_config(runlocal=True)
  config.baselines.methods = ('ae_real_federated', 'fedavg_classifier')
  comparison = compare.compare(config, str(tmp_path))
  assert [row['method'] for row in comparison['rows']] == [
      'AE on real normals (FedAvg)', 'FedAvg classifier (supervised)']
  with open(tmp_path / 'comparison.json') as f:
    assert len(json.load(f)['rows']) == 2
  markdown = (tmp_path / 'comparison.md').read_text()
  auc = comparison['rows'][1]['auc']
  assert f'| FedAvg classifier (supervised) | — | — | — | — | {auc:.3f} |' in markdown
  config.baselines.methods = ('fedavg_classifier', 'typo_gan')
  with pytest.raises(ValueError, match='typo_gan'):
    compare.compare(config, str(tmp_path))


def test_targets_and_mean_rows_follow_the_issue():
  from fedgan_jax.baselines import compare  # pylint: disable=g-import-not-at-top
  rows = [{'method': 'federated GAN', 'fid': 11.0, 'auc': 0.7, 'auc_conditional_ae': 0.72,
           'auc_generator_distance': 0.65, 'auc_profile_calibrated': 0.7},
          {'method': 'centralized GAN', 'fid': 10.0, 'auc': 0.75}]
  targets = compare.targets(rows)
  assert targets['fid_federated_over_centralized'] == pytest.approx(1.1)
  assert targets['fid_within_1.2x_centralized'] is True
  assert targets['conditional_ae_auc_at_least_unconditioned'] is True
  assert targets['generator_distance_auc_at_least_unconditioned'] is False
  assert targets['profile_calibrated_auc_at_least_unconditioned'] is True  # Ties count.
  mean = compare.mean_row('mean', [{'method': 'a', 'fid': 1.0, 'train_time_s': 2.0, 'step': 4},
                                   {'method': 'b', 'fid': 3.0, 'train_time_s': 5.0, 'step': 4}])
  assert mean == {'method': 'mean', 'fid': 2.0, 'train_time_s': 7.0}


def test_gan_training_time_sums_the_logged_rounds(tmp_path):
  from fedgan_jax.baselines import compare  # pylint: disable=g-import-not-at-top
  rows = [{'round': 1, 'round_time_s': 1.5}, {'round': 2, 'round_time_s': 2.0}]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  assert compare.training_seconds(str(tmp_path)) == pytest.approx(3.5)
  assert compare.training_seconds(str(tmp_path / 'missing')) == 0.0
