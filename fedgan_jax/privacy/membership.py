"""Empirical privacy audit: membership inference against D and against a hospital's update.

The audit needs examples that are known NOT to have been trained on, from the same
distribution as those that were: `hold_out` removes a patient-level fraction
(`audit.holdout_fraction`) of one hospital (`audit.hospital`) from the federation before
training, deterministically from the seed, and the audit rebuilds the same split. Then:

  * `discriminator`: a score-threshold attack on the trained D. Each example is scored by
    D's real logit and by minus its loss on the real side (GAN + attribute loss); members
    (the hospital's training examples) should score higher than held-out non-members.
  * `update_alignment`: an attack on what the hospital sends. From the checkpoint's params
    (which the server knows) the attacker re-creates the hospital's next `audit.update_rounds`
    messages (the hospital's own local update, DP noise included when DP is on) and scores
    every candidate example by the cosine between its D gradient at the server params and
    the negative D delta; members are the examples of that round's batches.
  * `message`: every client-to-server message is a pytree of the model's parameter shapes
    (`algorithm.check_client_message` on `jax.eval_shape` of the local update).

Each attack reports the AUC of its scores (members vs non-members, 0.5 = chance) and the
true-positive rate at a 1% false-positive rate.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from fedgan_jax import checkpointing
from fedgan_jax import losses
from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import registry
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import execution
from fedgan_jax.federated import rngs
from fedgan_jax.federated import sampling
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import dp_sgd
from fedgan_jax.privacy import engine as privacy_engine


def _audit_config(config):
  return config.get('audit') if hasattr(config, 'get') else None


def holdout_split(client: dataset_lib.ClientData, fraction: float,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`(kept, held_out)` example indices: whole patients, about `fraction` of the examples."""
  if not 0 < fraction < 1:
    raise ValueError(f'config.audit.holdout_fraction must be in (0, 1), got {fraction}.')
  patients = np.unique(client.patient_ids)
  order = np.random.default_rng([seed, rngs.HOLDOUT_STREAM]).permutation(len(patients))
  counts = np.array([np.sum(client.patient_ids == p) for p in patients[order]])
  chosen = patients[order][:max(1, int(np.searchsorted(np.cumsum(counts),
                                                        fraction * len(client))))]
  held_out = np.isin(client.patient_ids, chosen)
  if held_out.all():
    raise ValueError(f'config.audit.holdout_fraction={fraction} leaves client {client.name} '
                     'no training examples.')
  return np.flatnonzero(~held_out), np.flatnonzero(held_out)


def hold_out(federation: dataset_lib.FederatedDataset, config) -> dataset_lib.FederatedDataset:
  """The federation without the audit's held-out examples (unchanged without `audit`)."""
  audit = _audit_config(config)
  if audit is None or not audit.get('holdout_fraction', 0):
    return federation
  hospital = _hospital(audit, federation)
  client = federation.clients[hospital]
  kept, _ = holdout_split(client, float(audit.holdout_fraction), config.seed)
  clients = list(federation.clients)
  clients[hospital] = client.subset(kept)
  return dataclasses.replace(federation, clients=clients)


def _hospital(audit, federation) -> int:
  hospital = int(audit.hospital)
  if not 0 <= hospital < len(federation.clients):
    raise ValueError(f'config.audit.hospital={hospital} is not a client index (the federation '
                     f'has {len(federation.clients)} clients).')
  return hospital


def attack_metrics(member_scores, non_member_scores, false_positive_rate: float = 0.01) -> dict:
  """AUC of "higher score = member" and the best TPR with at most `false_positive_rate` FPR.

  AUC is the Mann-Whitney statistic P(member > non-member) + P(tie) / 2. A threshold t flags
  scores > t; with k = floor(rate * n) false positives allowed, t is the (k+1)-th largest
  non-member score (k >= n allows every threshold, so TPR = 1).
  """
  members = np.asarray(member_scores, np.float64)
  non_members = np.asarray(non_member_scores, np.float64)
  if members.size == 0 or non_members.size == 0:
    raise ValueError('an attack needs at least one member and one non-member score.')
  ranks = scipy.stats.rankdata(np.concatenate([members, non_members]))
  auc = (np.sum(ranks[:members.size]) - members.size * (members.size + 1) / 2) / (
      members.size * non_members.size)
  allowed = int(np.floor(false_positive_rate * non_members.size + 1e-9))
  if allowed >= non_members.size:
    tpr = 1.0
  else:
    threshold = np.sort(non_members)[::-1][allowed]
    tpr = float(np.mean(members > threshold))
  return {'auc': float(auc), 'tpr_at_fpr': tpr, 'fpr': false_positive_rate,
          'members': int(members.size), 'non_members': int(non_members.size)}


def _take(client: dataset_lib.ClientData, count: int, seed: int) -> dataset_lib.ClientData:
  if len(client) <= count:
    return client
  index = np.sort(np.random.default_rng([seed, rngs.HOLDOUT_STREAM, 1]).choice(
      len(client), count, replace=False))
  return client.subset(index)


def _padded_chunks(examples: dataset_lib.ClientData, chunk: int):
  """`(images, conditions, valid)` chunks of exactly `chunk` rows (the last one padded by
  repeating its first row), so a jitted scorer compiles once."""
  for start in range(0, len(examples), chunk):
    images = np.asarray(examples.images[start:start + chunk])
    conditions = np.asarray(examples.conditions[start:start + chunk], np.float32)
    valid = len(images)
    if valid < chunk:
      images = np.concatenate([images, np.repeat(images[:1], chunk - valid, axis=0)])
      conditions = np.concatenate([conditions, np.repeat(conditions[:1], chunk - valid, axis=0)])
    yield images, conditions, valid


class Scorers:
  """The attacks' jitted per-example scores of one task (compiled once per audit)."""

  def __init__(self, task: client_lib.GanTask, chunk: int = 32):
    self.task = task
    self.chunk = chunk
    self._discriminator = jax.jit(self._discriminator_fn)
    self._alignment = jax.jit(self._alignment_fn)

  def _discriminator_fn(self, d_params, images, conditions):
    task = self.task
    outputs = task.discriminator.apply({'params': d_params}, client_lib.images_to_float(images),
                                       conditions)
    values, mask = conditions_lib.split_condition(conditions)
    # The real half of D's GAN loss: with fake logits at -1e9 the fake half is exactly 0.
    real = losses.discriminator_gan_loss(
        outputs['logit'], jnp.full_like(outputs['logit'], -1e9), task.gan_loss)
    attribute = losses.attribute_loss(outputs['attributes'], values, mask,
                                      task.continuous_columns)
    return outputs['logit'], -(real + task.attribute_weight * attribute)

  def _alignment_fn(self, params, d_delta, rng, images, conditions):
    direction = jax.tree.map(jnp.negative, d_delta)
    direction_norm = dp_sgd.global_norm(direction)

    z_rng, loss_rng = jax.random.split(rng)

    def one(image, condition):
      fake = client_lib.generate(self.task, params['generator'], condition[None], z_rng)
      batch = {'image': image[None], 'condition': condition[None], 'fake': fake}
      grad = jax.grad(lambda d: client_lib.discriminator_loss(
          self.task, d, batch, loss_rng)[0][0])(params['discriminator'])
      dot = sum(jnp.vdot(g, v) for g, v in zip(jax.tree.leaves(grad),
                                               jax.tree.leaves(direction)))
      return dot / jnp.maximum(dp_sgd.global_norm(grad) * direction_norm, 1e-12)

    return jax.vmap(one)(images, conditions)

  def discriminator(self, d_params, examples) -> dict[str, np.ndarray]:
    """Per-example `logit` (D's real logit) and `negative_loss` (-(GAN + attribute) loss)."""
    logits, negative_losses = [], []
    for images, conditions, valid in _padded_chunks(examples, self.chunk):
      logit, negative_loss = self._discriminator(d_params, images, conditions)
      logits.append(np.asarray(logit)[:valid])
      negative_losses.append(np.asarray(negative_loss)[:valid])
    return {'logit': np.concatenate(logits), 'negative_loss': np.concatenate(negative_losses)}

  def alignment(self, params, d_delta, examples, rng) -> np.ndarray:
    """Cosine between each example's D-loss gradient at `params` and `-d_delta`."""
    return np.concatenate([
        np.asarray(self._alignment(params, d_delta, rng, images, conditions))[:valid]
        for images, conditions, valid in _padded_chunks(examples, self.chunk)])


def run_audit(config, workdir: str, step: int | None = None) -> dict[str, Any]:
  """Runs every attack on the checkpoint in `workdir`; writes and returns `audit.json`."""
  audit = _audit_config(config)
  if audit is None or not audit.get('holdout_fraction', 0):
    raise ValueError('the audit needs held-out non-members: set config.audit.holdout_fraction '
                     '(e.g. 0.2, as configs/phantom_dp.py does) and train with it.')
  full = registry.load_federation(config)
  federation = hold_out(full, config)
  hospital = _hospital(audit, federation)
  _, held_out_index = holdout_split(full.clients[hospital], float(audit.holdout_fraction),
                                    config.seed)
  trained = federation.clients[hospital]
  non_members = full.clients[hospital].subset(held_out_index)
  plan = privacy_engine.PrivacyPlan.from_config(config, federation.client_sizes)
  task = task_lib.build_task(config, federation.schema, federation.image_shape,
                             **plan.task_gradients())
  template = jax.eval_shape(lambda: client_lib.init_params(
      task, jax.random.key(0, impl='rbg'), tuple(federation.image_shape),
      federation.schema.model_dim))
  params, meta, step = checkpointing.restore_params(workdir, config, template, step)
  fl = config.fl
  max_examples = int(audit.max_examples)

  # The prior G trained on, so the re-created rounds draw the same batches as training did.
  prior = task_lib.training_condition_prior(task, federation, config)
  first = sampling.client_batches(trained, config.seed, step, hospital, fl.local_steps,
                                  fl.batch_size, prior)
  leaves = privacy_engine.check_messages_of_task(task, params, first)

  members = _take(trained, max_examples, config.seed)
  non_member_sample = _take(non_members, max_examples, config.seed)
  scorers = Scorers(task, int(audit.chunk))
  member_scores = scorers.discriminator(params['discriminator'], members)
  non_member_scores = scorers.discriminator(params['discriminator'], non_member_sample)
  discriminator = {name: attack_metrics(member_scores[name], non_member_scores[name])
                   for name in member_scores}

  # Step by step: one compiled step serves every local step, and the audit's few updates do
  # not repay compiling all K steps as one program.
  local = execution.ClientUpdate(task, fuse_local_steps=False)
  score_rng = jax.random.key(config.seed + 1)
  update_members, update_non_members = [], []
  for round_index in range(step, step + int(audit.update_rounds)):
    index = sampling.batch_indices(config.seed, round_index, hospital, len(trained),
                                   fl.local_steps, fl.batch_size)
    batches = sampling.client_batches(trained, config.seed, round_index, hospital,
                                      fl.local_steps, fl.batch_size, prior)
    delta, _ = local(params, batches, rngs.client_key(rngs.round_key(config.seed, round_index),
                                                      hospital))
    algorithm.check_client_message(delta, params)
    update_members.append(scorers.alignment(params, delta['discriminator'],
                                            trained.subset(np.unique(index)), score_rng))
    update_non_members.append(scorers.alignment(params, delta['discriminator'],
                                                non_member_sample, score_rng))
  update = attack_metrics(np.concatenate(update_members), np.concatenate(update_non_members))

  results = {
      'workdir': os.path.abspath(workdir), 'step': int(step), 'hospital': hospital,
      'hospital_name': trained.name, 'privacy': meta.get('privacy', {'mode': 'none'}),
      'discriminator': discriminator, 'update_alignment': update,
      'max_auc': max([m['auc'] for m in discriminator.values()] + [update['auc']]),
      'message': {'ok': True, 'leaves': leaves,
                  'checked': 'every delta leaf has its parameter\'s shape and dtype'},
  }
  path = os.path.join(workdir, 'audit.json')
  with open(path + '.tmp', 'w') as f:
    json.dump(results, f, indent=1)
  os.replace(path + '.tmp', path)
  return results
