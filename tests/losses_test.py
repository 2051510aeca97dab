"""Losses against hand-computed values."""

import numpy as np
import pytest

from fedgan_jax import losses


def test_non_saturating_losses_match_softplus_formulas():
  real, fake = np.array([0.0, 2.0]), np.array([0.0, -1.0])
  d = losses.discriminator_gan_loss(real, fake, 'non_saturating')
  # softplus(-0) + softplus(0) = 2 log 2; softplus(-2) + softplus(-1).
  expected = [2 * np.log(2), np.log1p(np.exp(-2)) + np.log1p(np.exp(-1))]
  np.testing.assert_allclose(d, expected, rtol=1e-6)
  g = losses.generator_gan_loss(np.array([0.0, 1.0]), 'non_saturating')
  np.testing.assert_allclose(g, [np.log(2), np.log1p(np.exp(-1))], rtol=1e-6)


def test_hinge_losses():
  d = losses.discriminator_gan_loss(np.array([0.5, 2.0]), np.array([-2.0, 0.5]), 'hinge')
  np.testing.assert_allclose(d, [0.5 + 0.0, 0.0 + 1.5])
  np.testing.assert_allclose(losses.generator_gan_loss(np.array([0.5]), 'hinge'), [-0.5])


def test_unknown_gan_loss_names_the_field():
  with pytest.raises(ValueError, match='loss.gan'):
    losses.discriminator_gan_loss(np.zeros(1), np.zeros(1), 'wasserstein')


def test_cosine_condition_loss_ignores_masked_entries():
  predicted = np.array([[1.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
  values = np.array([[1.0, 0.0, -3.0], [1.0, 0.0, 0.0]])
  mask = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
  loss = losses.cosine_condition_loss(predicted, values, mask)
  # Row 0: the third entry is missing, so predicted == values on what remains: loss 0.
  # Row 1: cos([1,1,0], [1,0,0]) = 1/sqrt(2).
  np.testing.assert_allclose(loss, [0.0, 1 - 1 / np.sqrt(2)], atol=1e-6)


def test_cosine_condition_loss_is_zero_not_nan_without_present_entries():
  loss = losses.cosine_condition_loss(np.ones((1, 2)), np.ones((1, 2)), np.zeros((1, 2)))
  np.testing.assert_allclose(loss, [0.0])


def test_attribute_loss_mixes_mse_and_bce_over_present_entries():
  raw = np.array([[2.0, 0.0, 3.0]])
  values = np.array([[1.0, 1.0, 0.0]])
  mask = np.array([[1.0, 1.0, 0.0]])
  continuous = np.array([True, False, False])
  loss = losses.attribute_loss(raw, values, mask, continuous)
  # (2-1)^2 = 1 and BCE(logit 0, target 1) = log 2, averaged over the 2 present entries.
  np.testing.assert_allclose(loss, [(1 + np.log(2)) / 2], rtol=1e-6)


def test_attribute_prediction_applies_sigmoid_to_indicator_columns():
  out = losses.attribute_prediction(np.array([[2.0, 0.0]]), np.array([True, False]))
  np.testing.assert_allclose(out, [[2.0, 0.5]])


def test_reconstruction_error_is_per_image_mse():
  a = np.zeros((2, 2, 2, 1))
  b = np.stack([np.zeros((2, 2, 1)), np.ones((2, 2, 1)) * 2])
  np.testing.assert_allclose(losses.reconstruction_error(a, b), [0.0, 4.0])


def test_local_anomaly_score_is_a_percentile_of_the_blurred_residual():
  from fedgan_jax.evaluation import anomaly  # pylint: disable=g-import-not-at-top
  images = np.zeros((2, 8, 8, 1), np.float32)
  reconstructions = images.copy()
  reconstructions[0, 3, 4, 0] = 2.0   # One pixel off by 2: squared residual 4 there.
  reconstructions[1] = 0.25           # Every pixel off by 0.25: squared residual 1/16.
  # No blur, 100th percentile: the largest squared residual.
  unblurred = anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig('local', 0.0, 100.0))
  np.testing.assert_allclose(unblurred, [4.0, 1.0 / 16], rtol=1e-6)
  # Equal MSE (4/64 = 1/16): the image mean cannot tell the spot from diffuse error.
  mse = anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig())
  np.testing.assert_allclose(mse, [1.0 / 16, 1.0 / 16], rtol=1e-6)
  # Blurred with sigma 1 the spot's peak is 4 * g(0)^2, g the normalized 7-tap Gaussian.
  taps = np.exp(-0.5 * np.arange(-3, 4) ** 2)
  blurred = anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig('local', 1.0, 100.0))
  np.testing.assert_allclose(blurred[0], 4.0 * (taps[3] / taps.sum()) ** 2, rtol=1e-5)
  assert blurred[0] > blurred[1]


def test_signed_anomaly_score_cancels_residuals_that_flip_sign():
  from fedgan_jax.evaluation import anomaly  # pylint: disable=g-import-not-at-top
  images = np.zeros((2, 8, 8, 1), np.float32)
  rows, columns = np.indices((8, 8))
  reconstructions = np.stack([np.ones((8, 8)),                       # A residual of one sign.
                              (-1.0) ** (rows + columns)])[..., None]  # A +-1 checkerboard.
  reconstructions = reconstructions.astype(np.float32)
  signed = anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig('signed', 1.0, 100.0))
  squared = anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig('local', 1.0, 100.0))
  # Squared first, both maps are 1 everywhere: a pixel whose 7x7 kernel lies inside the image
  # blurs to exactly 1.
  np.testing.assert_allclose(squared, [1.0, 1.0], rtol=1e-5)
  # Blurred first, the uniform residual still peaks at 1. Inside the checkerboard the blur
  # leaves the kernel's alternating sum, (sum_k (-1)^k t_k / sum_k t_k)^2 = 0.0016 after
  # squaring; the peak sits where zero padding breaks the cancellation, computed here by an
  # explicit sum over the 7x7 kernel.
  taps = np.exp(-0.5 * np.arange(-3, 4) ** 2) / np.exp(-0.5 * np.arange(-3, 4) ** 2).sum()
  checkerboard = np.pad((-1.0) ** (rows + columns), 3)
  blurred = np.array([[np.sum(np.outer(taps, taps) * checkerboard[i:i + 7, j:j + 7])
                       for j in range(8)] for i in range(8)])
  np.testing.assert_allclose(np.abs(blurred[3:5, 3:5]),
                             np.sum(taps * (-1.0) ** np.arange(7)) ** 2, rtol=1e-6)
  np.testing.assert_allclose(signed, [1.0, np.max(np.square(blurred))], rtol=1e-4)
  assert signed[1] < 0.1 * signed[0]
  # Without blur, signed and squared agree on one channel.
  np.testing.assert_allclose(
      anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig('signed', 0.0, 99.0)),
      anomaly.anomaly_score(images, reconstructions, anomaly.ScoreConfig('local', 0.0, 99.0)))


def test_unknown_anomaly_score_is_rejected():
  import ml_collections  # pylint: disable=g-import-not-at-top
  from fedgan_jax.evaluation import anomaly  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='anomaly.score'):
    anomaly.score_config(ml_collections.ConfigDict(dict(score='maximum')))


def test_cosine_condition_loss_with_complements_sees_a_lone_binary_label():
  predicted, values, mask = np.array([[0.3]]), np.array([[0.0]]), np.ones((1, 1))
  # Without complements: v = 0 has no direction (loss 0), whatever p is.
  assert float(losses.cosine_condition_loss(predicted, values, mask)[0]) == 0.0
  # With them: cos((0.3, 0.7), (0, 1)) = 0.7 / sqrt(0.3^2 + 0.7^2).
  loss = losses.cosine_condition_loss(predicted, values, mask, np.array([True]))
  np.testing.assert_allclose(loss, [1.0 - 0.7 / np.sqrt(0.58)], rtol=1e-6)
  # Continuous columns get no complement: only the binary one's is appended.
  loss = losses.cosine_condition_loss(np.array([[2.0, 0.3]]), np.array([[1.0, 0.0]]),
                                      np.ones((1, 2)), np.array([False, True]))
  np.testing.assert_allclose(loss, [1.0 - 2.7 / (np.sqrt(4.0 + 0.09 + 0.49) * np.sqrt(2.0))],
                             rtol=1e-5)


def test_a_one_label_condition_needs_the_complement_or_is_refused():
  from configs import pneumoniamnist  # pylint: disable=g-import-not-at-top
  from fedgan_jax.data import conditions  # pylint: disable=g-import-not-at-top
  from fedgan_jax.federated import task  # pylint: disable=g-import-not-at-top
  config = pneumoniamnist.get_config('runlocal')
  schema = conditions.ConditionSchema.from_config(config.conditions)
  assert task.cond_complement_binary(config, schema)
  config.loss.cond_complement_binary = False
  with pytest.raises(ValueError, match='cond_complement_binary'):
    task.cond_complement_binary(config, schema)


def test_mode_seeking_loss_pairs_only_images_of_one_condition():
  # Images 0 and 1 share a condition; image 2's differs, so its distances never count.
  fake = np.array([[0.0, 0.0], [1.0, 3.0], [9.0, 9.0]], np.float32)
  z = np.array([[0.0], [4.0], [100.0]], np.float32)
  condition = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
  # Pair (0, 1) in both orders: mean |image difference| 2, |z difference| 4 -> ratio 0.5.
  np.testing.assert_allclose(losses.mode_seeking_loss(fake, z, condition, eps=0.0), 2.0,
                             rtol=1e-6)
  # A collapsed mode (identical images) is penalised far more than a diverse one.
  collapsed = np.array([[1.0, 1.0], [1.0, 1.0], [9.0, 9.0]], np.float32)
  assert losses.mode_seeking_loss(collapsed, z, condition) > 1e4


def test_mode_seeking_loss_is_zero_without_a_shared_condition():
  fake = np.ones((2, 3), np.float32)
  condition = np.array([[0.1], [0.2]], np.float32)
  assert float(losses.mode_seeking_loss(fake, np.ones((2, 2)), condition)) == 0.0
