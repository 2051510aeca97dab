"""Detector variants (issue 21): ensembles, memory in-painting, D's features and judgment."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedgan_jax.evaluation import driver as evaluation
from fedgan_jax.evaluation import anomaly
from fedgan_jax.evaluation import context as context_lib
from fedgan_jax.evaluation import detectors
from fedgan_jax.evaluation import discriminator_view
from fedgan_jax.federated import task as task_lib
from fedgan_jax.models import discriminator as discriminator_lib
from fedgan_jax.models import inpainting

from conftest import initial_params
from conftest import with_tiny_model

# The tests' own flax calls run as one compiled program each rather than eagerly (eager flax
# compiles op by op), inits with an RBG key: these tests read outputs and shapes.


def test_rank_normalize_counts_ties_half():
  reference = np.array([1.0, 2.0, 2.0, 4.0])
  # 0: none below; 2: one below, two tied -> (1 + 0.5 * 2) / 4; 3: three below; 5: all.
  np.testing.assert_allclose(detectors.rank_normalize(reference, np.array([0., 2., 3., 5.])),
                             [0.0, 0.5, 0.75, 1.0])


def test_zscore_and_ensemble_average_by_hand():
  np.testing.assert_allclose(detectors.zscore_normalize(np.array([1., 3.]), np.array([2., 4.])),
                             [0.0, 2.0])
  # No spread (every synthetic normal the same film): only the mean is removed.
  np.testing.assert_allclose(detectors.zscore_normalize(np.ones(3), np.array([3.])), [2.0])
  # Member a on a tiny scale, member b on a large one, opposite orders: ranks weigh them alike.
  a, b = np.array([0.1, 0.2, 0.3]), np.array([300., 200., 100.])
  combined = detectors.combine([a, b], [a, b], detectors.rank_normalize)
  # a's ranks 1/6, 1/2, 5/6; b's 5/6, 1/2, 1/6: every mean is 1/2.
  np.testing.assert_allclose(combined, [0.5, 0.5, 0.5])


def test_member_config_overrides_typed_fields_and_names_bad_ones(runlocal_config):
  member = detectors.member_config(runlocal_config.anomaly, 'features=discriminator, latent_dim=4')
  assert member.variant.features == 'discriminator' and member.latent_dim == 4
  # The section itself is untouched.
  assert runlocal_config.anomaly.variant.features == 'pixels'
  with pytest.raises(ValueError, match='ensemble_members'):
    detectors.member_config(runlocal_config.anomaly, 'no_such_field=1')
  assert not detectors.is_ensemble(runlocal_config.anomaly)


def test_memory_read_of_a_toy_memory():
  memory = jnp.eye(2)
  # Logits q M^T / sqrt(2) = (ln 3, 0): weights (3/4, 1/4), so the read is (3/4, 1/4).
  query = jnp.array([[np.sqrt(2.0) * np.log(3.0), 0.0]])
  np.testing.assert_allclose(inpainting.memory_read(query, memory), [[0.75, 0.25]], rtol=1e-6)


def test_neighbour_mean_masks_the_centre_and_patches_round_trip():
  grid = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)  # [[1, 2], [3, 4]]
  # Each cell of a 2x2 grid has the other three as neighbours.
  np.testing.assert_allclose(inpainting.neighbour_mean(grid)[0, :, :, 0],
                             [[3.0, 8 / 3], [7 / 3, 2.0]], rtol=1e-6)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  patches = inpainting.to_patches(x, 4)
  assert patches.shape == (2, 2, 2, 48)
  np.testing.assert_array_equal(inpainting.from_patches(patches, 4, 3), x)
  np.testing.assert_array_equal(patches[0, 1, 0, :3], x[0, 4, 0])  # Patch (1, 0) starts at (4, 0).


def test_inpainter_shapes_and_patch_check():
  model = inpainting.MemoryInpainter(patch=4, embedding_dim=8, memory_slots=5, hidden=16)
  x = jnp.zeros((3, 8, 8, 2))
  params = jax.jit(model.init)(jax.random.key(0, impl='rbg'), x)['params']
  assert params['memory'].shape == (5, 8) and params['positions'].shape == (2, 2, 8)
  out = jax.jit(model.apply)({'params': params}, x)
  assert out.shape == x.shape and bool(jnp.all(jnp.abs(out) <= 1))
  with pytest.raises(ValueError, match='inpaint_patch'):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 6, 6, 1)))


def _view(channels=(8, 16), group=4, condition_dim=3):
  module = discriminator_lib.Discriminator(channels=channels, value_dim=2, input_unshuffle=2,
                                           minibatch_std_group=group)
  init = jax.jit(module.init)
  params = init(jax.random.key(1, impl='rbg'), jnp.zeros((4, 16, 16, 1)),
                jnp.zeros((4, condition_dim)))['params']
  return discriminator_view.DiscriminatorView(module, params, np.full(condition_dim, 0.5,
                                                                      np.float32))


def test_discriminator_features_and_judge():
  view = _view()
  images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 1), dtype=np.uint8)
  # unshuffle 2 -> 8x8; block 0 -> 4x4x8, block 1 -> 2x2x16. No minibatch-std: a film's
  # features do not depend on the batch.
  features = discriminator_view.feature_maps(view, images, 1)
  assert features.shape == (5, 2, 2, 16)
  np.testing.assert_allclose(discriminator_view.feature_maps(view, images[:2], 1), features[:2],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='discriminator_block'):
    discriminator_view.feature_maps(view, images, 2)

  @jax.jit
  def logits(floats):
    four = floats[:4]
    expected = view.module.apply({'params': view.params}, four,
                                 jnp.broadcast_to(view.condition, (4, 3)))['logit']
    judge = lambda x: discriminator_view.judge_logits(view.params, view.module, view.condition, x)
    return expected, judge(four), judge(floats)

  expected, four, five = logits(jnp.asarray(images, jnp.float32) / 127.5 - 1)
  np.testing.assert_allclose(four, expected, rtol=1e-5)
  # Five films are padded to a group of four: the first four keep their logits.
  assert five.shape == (5,)
  np.testing.assert_allclose(five[:4], expected, rtol=1e-5)


def test_feature_normalization_by_hand():
  features = np.zeros((2, 1, 2, 1))
  features[0, 0, :, 0] = [1.0, 3.0]
  features[1, 0, :, 0] = [1.0, 3.0]  # Two identical films: no spread over films.
  norm = discriminator_view.FeatureNormalization.fit(features)
  # Mean 2, centred values +-1: RMS 1, scale 3.
  assert norm.scale == pytest.approx(3.0)
  np.testing.assert_allclose(norm(features)[0, 0, :, 0], [-1 / 3, 1 / 3])


@pytest.fixture(scope='module')
def context(runlocal_config, runlocal_federation, tmp_path_factory):
  """An untrained G and D on the runlocal phantom (the detectors' plumbing, not their AUC), with
  `TINY_MODEL`'s networks: the plumbing is width-blind, and G's and D's compiles shrink."""
  config = with_tiny_model(copy.deepcopy(runlocal_config))
  config.anomaly.update(steps=5, num_synthetic=32)
  # site_alone trains through the same `context.train_detector` as the ceiling: left out for time.
  config.eval.anomaly_baselines = ('ceiling',)
  federation = runlocal_federation  # The data does not depend on the networks.
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  params = initial_params(task, federation)
  return context_lib.EvalContext(
      config=config, federation=federation, task=task,
      g_params=params['generator'], d_params=params['discriminator'],
      out_dir=str(tmp_path_factory.mktemp('eval')), shared=context_lib.SharedModels())


def test_an_ensemble_of_variants_runs_through_the_anomaly_evaluator(context):
  context.config.anomaly = detectors.with_overrides(
      context.config.anomaly,
      ensemble_members=('features=discriminator,score=mse,discriminator_block=0',
                        'architecture=inpaint,score=judge,inpaint_patch=4'), ensemble_seeds=1)
  report = evaluation.anomaly(context)
  detector = context.unconditioned_detection()['detector']
  assert isinstance(detector, detectors.Ensemble) and len(detector.members) == 2
  assert detector.members[0].features is not None and detector.members[0].pool == 0
  assert detector.members[1].judge is not None and detector.members[1].features is None
  # F-AD and its baselines are the same variant, side by side.
  for entry in (report, report['ceiling']):
    assert 0.0 <= entry['auc'] <= 1.0
  assert set(report['site_calibrated']) >= {'federated', 'percentile'}
  # Rank-averaged scores lie in [0, 1].
  scores = context.unconditioned_detection()['test_scores']
  assert scores.min() >= 0.0 and scores.max() <= 1.0


def test_discriminator_features_need_d(runlocal_config):
  images = np.zeros((4, 16, 16, 1), np.uint8)
  config = detectors.with_overrides(runlocal_config.anomaly, features='discriminator')
  with pytest.raises(ValueError, match="federated D"):
    anomaly.train_autoencoder(images, config, 0)


def _with_anomaly(context, without_d=False, **fields):
  """A fresh context (nothing cached) on the same data, G and D, with anomaly `fields` set."""
  config = copy.deepcopy(context.config)
  config.anomaly = detectors.with_overrides(config.anomaly, **fields)
  return context_lib.EvalContext(
      config=config, federation=context.federation, task=context.task,
      g_params=context.g_params, d_params=None if without_d else context.d_params,
      out_dir=context.out_dir, shared=context_lib.SharedModels())


def test_normal_filter_keeps_the_drawn_normals_d_reads_as_least_abnormal(context):
  filtered = _with_anomaly(context, normal_filter_keep=0.25)
  images, conditions = filtered.synthetic_normals()
  assert len(images) == len(conditions) == 32
  # The 128 drawn: the same draw as an unfiltered context asking for 128.
  everything = _with_anomaly(context, num_synthetic=128)
  all_images, all_conditions = everything.synthetic_normals()
  findings = context.federation.schema.slice('findings')
  probability = discriminator_view.finding_probability(
      context.task.discriminator, context.d_params, all_images, all_conditions, findings)
  kept = np.sort(np.argsort(probability, kind='stable')[:32])
  np.testing.assert_array_equal(images, all_images[kept])
  assert probability[kept].max() <= np.delete(probability, kept).min()
  without_d = _with_anomaly(context, without_d=True, normal_filter_keep=0.25)
  with pytest.raises(ValueError, match='normal_filter_keep'):
    without_d.synthetic_normals()


def test_release_filter_drops_drawn_films_that_copy_a_hospital_s_film(context, monkeypatch):
  filtered = _with_anomaly(context, release_filter_percentile=1.0)
  drawn = context.synthetic_normals()[0]
  copies = (1, 5, 9)  # Drawn films replaced by exact copies of hospital films.
  site = context.federation.clients[-1].images
  forged = drawn.copy()
  forged[list(copies)] = site[:len(copies)]
  monkeypatch.setattr(context_lib.synthesis, 'synthesize', lambda *args, **kwargs: forged)
  images, _ = filtered.synthetic_normals()
  assert len(images) == len(drawn) - len(copies)
  np.testing.assert_array_equal(images, np.delete(forged, copies, axis=0))
  assert filtered.release_filter() == {'percentile': 1.0, 'drawn': len(drawn), 'vetoed': 3}


def test_release_filter_that_drops_every_film_says_what_to_do(context, monkeypatch):
  filtered = _with_anomaly(context, release_filter_percentile=1.0)
  site = context.federation.clients[0].images
  copies = np.resize(site, (filtered.config.anomaly.num_synthetic,) + site.shape[1:])
  monkeypatch.setattr(context_lib.synthesis, 'synthesize', lambda *args, **kwargs: copies)
  with pytest.raises(ValueError, match='release_filter_percentile=1.*dropped all'):
    filtered.synthetic_normals()
