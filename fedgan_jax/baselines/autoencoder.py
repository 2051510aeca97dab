"""Baseline: the anomaly autoencoder trained on REAL normal images instead of synthetic ones.

The same network, loss and threshold rule as F-AD (`config.anomaly`), so the only
difference from the GAN pipeline is where the normal images come from:
  * centralized: one AE on every hospital's real normal images pooled (the upper bound a
    data-sharing consortium would get), trained exactly like `anomaly.train_autoencoder`;
  * federated: FedAvg of the AE across hospitals, each training on its own normal images.
The threshold is the configured percentile of the reconstruction errors on the training
normals (all hospitals'), then AUC/sensitivity/specificity on the real test split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedgan_jax import losses
from fedgan_jax.baselines import fedavg
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.evaluation import anomaly as anomaly_lib


def _reconstruction_loss(model, pool, params, batch):
  images = anomaly_lib.detector_input(batch['image'], pool)
  return jnp.mean(losses.reconstruction_error(images, model.apply({'params': params}, images)))


def train_federated(federation: dataset_lib.FederatedDataset, anomaly_config, fedavg_config,
                    seed: int) -> anomaly_lib.Detector:
  """FedAvg of the F-AD autoencoder over the hospitals' real normal images.

  Args:
    federation: hospitals (each must hold some normal images).
    anomaly_config: `config.anomaly` (architecture, batch size).
    fedavg_config: `baselines.autoencoder` (rounds, local_steps, optimizer).
    seed: fixes the initialization and the batches.
  """
  clients = []
  for client in federation.clients:
    images = client.normal_images()
    if len(images) == 0:
      raise ValueError(f'AE baseline: hospital {client.name} has no normal images to train on.')
    clients.append({'image': images})
  model = anomaly_lib.build_autoencoder(anomaly_config)
  pool = anomaly_lib.input_pool(anomaly_config, federation.image_shape[0])
  params = model.init(jax.random.key(seed),
                      anomaly_lib.detector_input(clients[0]['image'][:1], pool))['params']
  trainer = fedavg.FedAvgTrainer(lambda p, b: _reconstruction_loss(model, pool, p, b),
                                 fedavg_config.optimizer, 'baselines.autoencoder.optimizer')
  params, history = trainer.train(params, clients, fedavg_config.rounds,
                                  fedavg_config.local_steps, anomaly_config.batch_size, seed)
  # Scored by the configured rule, as every other detector in the comparison.
  return anomaly_lib.Detector(model=model, params=params, final_loss=history[-1],
                              score=anomaly_lib.score_config(anomaly_config), pool=pool)


def train_centralized(federation: dataset_lib.FederatedDataset, anomaly_config,
                      seed: int) -> anomaly_lib.Detector:
  """The F-AD recipe on every hospital's real normal images pooled."""
  return anomaly_lib.train_autoencoder(federation.pooled().normal_images(), anomaly_config, seed)


def evaluate(detector: anomaly_lib.Detector, federation: dataset_lib.FederatedDataset,
             percentile: float) -> dict:
  """Threshold on the training normals' errors; scores on the real test split."""
  training_scores = anomaly_lib.anomaly_scores(detector, federation.pooled().normal_images())
  test_scores = anomaly_lib.anomaly_scores(detector, federation.test.images)
  report = anomaly_lib.detection_report(training_scores, test_scores, federation.test.abnormal,
                                        percentile)
  report['test_scores'] = test_scores
  return report
