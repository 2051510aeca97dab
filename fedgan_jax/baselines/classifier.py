"""Baseline: "federated averaging for classification", a supervised normal-vs-abnormal CNN.

Unlike every detector trained on normal images only, this one sees the hospitals'
labelled abnormal images; it is the supervised reference the unsupervised F-AD is
compared with. A small CNN with a logistic output is trained with FedAvg over the
hospitals (`fedavg.FedAvgTrainer`) on class-balanced binary cross-entropy, then scored on
the real test split: AUC, and sensitivity/specificity at P(abnormal) = `decision_threshold`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn import metrics as sk_metrics

from fedgan_jax.baselines import fedavg
from fedgan_jax.data import dataset as dataset_lib


class Classifier(nn.Module):
  """`images -> logit (B,)` of P(abnormal): strided convs, mean pooling, a linear head."""
  channels: Sequence[int] = (16, 32, 64)

  @nn.compact
  def __call__(self, images):
    h = images
    for features in self.channels:
      h = nn.leaky_relu(nn.Conv(features, (3, 3), strides=(2, 2))(h), 0.2)
    return nn.Dense(1)(jnp.mean(h, axis=(1, 2)))[:, 0]


def _to_float(images):
  return images.astype(jnp.float32) / 127.5 - 1.0


def _loss(model, params, batch):
  logits = model.apply({'params': params}, _to_float(batch['image']))
  return jnp.mean(batch['weight'] * optax.sigmoid_binary_cross_entropy(logits, batch['label']))


def class_balancing_weights(labels: np.ndarray) -> np.ndarray:
  """Per-example weights giving each class half the loss within one hospital.

  Abnormal images are a minority (20% on the phantom default), so an unweighted classifier
  learns to say "normal" and P = 0.5 is a poor decision threshold; with these weights it
  is the balanced one. Each hospital weights with its own counts (no shared statistics).
  A hospital with a single class keeps weight 1.
  """
  labels = np.asarray(labels, np.float32)
  positive = labels.mean() if len(labels) else 0.0
  if positive in (0.0, 1.0):
    return np.ones_like(labels)
  return np.where(labels == 1, 0.5 / positive, 0.5 / (1.0 - positive)).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(model, params, images):
  return jax.nn.sigmoid(model.apply({'params': params}, _to_float(images)))


def train(federation: dataset_lib.FederatedDataset, classifier_config, seed: int):
  """FedAvg-trains the classifier on every hospital's labelled images.

  Args:
    federation: hospitals with `abnormal` labels.
    classifier_config: `baselines.classifier` (channels, rounds, local_steps, batch_size,
      balance_classes, optimizer).
    seed: fixes the initialization and the batches.

  Returns:
    `(model, params, per-round losses)`.
  """
  model = Classifier(channels=tuple(classifier_config.channels))
  clients = []
  for client in federation.clients:
    labels = np.asarray(client.abnormal, np.float32)
    weights = (class_balancing_weights(labels) if classifier_config.balance_classes
               else np.ones_like(labels))
    clients.append({'image': client.images, 'label': labels, 'weight': weights})
  params = model.init(jax.random.key(seed),
                      dataset_lib.images_to_model(clients[0]['image'][:1]))['params']
  trainer = fedavg.FedAvgTrainer(functools.partial(_loss, model), classifier_config.optimizer,
                                 'baselines.classifier.optimizer')
  params, history = trainer.train(params, clients, classifier_config.rounds,
                                  classifier_config.local_steps, classifier_config.batch_size,
                                  seed)
  return model, params, history


def predict(model: Classifier, params, images: np.ndarray, batch_size: int) -> np.ndarray:
  """P(abnormal) `(N,)`, in fixed-size padded batches (one compile)."""
  out = []
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    count = len(chunk)
    if count < batch_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - count, 0)])
    out.append(np.asarray(_probabilities(model, params, chunk))[:count])
  return np.concatenate(out)


def evaluate(probabilities: np.ndarray, abnormal: np.ndarray, decision_threshold: float) -> dict:
  """AUC and sensitivity/specificity at `decision_threshold` on P(abnormal)."""
  labels = np.asarray(abnormal, bool)
  if labels.all() or not labels.any():
    raise ValueError('classifier baseline: the test split needs normal and abnormal images.')
  predicted = probabilities >= decision_threshold
  return {'auc': float(sk_metrics.roc_auc_score(labels, probabilities)),
          'threshold': float(decision_threshold),
          'sensitivity': float(np.mean(predicted[labels])),
          'specificity': float(np.mean(~predicted[~labels])),
          'test_scores': probabilities}
