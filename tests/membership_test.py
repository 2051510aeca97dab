"""The privacy audit: attack metrics by hand, the message check, the hold-out, a tiny audit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import phantom_dp
from fedgan_jax import checkpointing
from fedgan_jax.data import dataset as dataset_lib
from fedgan_jax.data import registry
from fedgan_jax.federated import algorithm
from fedgan_jax.federated import client as client_lib
from fedgan_jax.federated import sampling
from fedgan_jax.federated import task as task_lib
from fedgan_jax.privacy import membership as audit
from fedgan_jax.privacy import engine


def test_attack_auc_is_the_mann_whitney_statistic():
  assert audit.attack_metrics([3, 4, 5], [0, 1, 2])['auc'] == 1.0
  assert audit.attack_metrics([0, 1, 2], [3, 4, 5])['auc'] == 0.0
  assert audit.attack_metrics([1, 1], [1, 1, 1])['auc'] == 0.5
  # Pairs (2,1) 1, (2,2) 1/2, (3,1) 1, (3,2) 1: 3.5 / 4.
  assert audit.attack_metrics([2, 3], [1, 2])['auc'] == pytest.approx(0.875)


def test_tpr_at_one_percent_fpr_allows_one_false_positive_in_a_hundred():
  result = audit.attack_metrics([98.5, 99.5, 50.0], np.arange(100.0))
  # One non-member (99) may score above the threshold, so it is 98: two of three members pass.
  assert result['tpr_at_fpr'] == pytest.approx(2 / 3)
  assert result['members'] == 3 and result['non_members'] == 100
  # With 10 non-members no false positive is allowed: the threshold is the top one (9).
  assert audit.attack_metrics([9.0, 9.5], np.arange(10.0))['tpr_at_fpr'] == 0.5


def test_message_check_rejects_data_shaped_or_extra_leaves():
  params = {'conv': {'kernel': jnp.zeros((3, 3, 1, 4)), 'bias': jnp.zeros(4)}}
  algorithm.check_client_message(jax.tree.map(jnp.ones_like, params), params)
  leaked = {'conv': {'kernel': jnp.zeros((3, 3, 1, 4)), 'bias': jnp.zeros((8, 32, 32, 1))}}
  with pytest.raises(ValueError, match=r"\['conv'\]\['bias'\] has shape \(8, 32, 32, 1\)"):
    algorithm.check_client_message(leaked, params)
  extra = dict(params, images=jnp.zeros((8, 32, 32, 1)))
  with pytest.raises(ValueError, match='structure'):
    algorithm.check_client_message(extra, params)
  stacked = jax.tree.map(lambda p: jnp.stack([p, p]), params)
  algorithm.check_client_message(stacked, params, client_axis=True)
  with pytest.raises(ValueError, match='dtype'):
    algorithm.check_client_message(jax.tree.map(lambda p: p.astype(jnp.float16), params), params)


def test_the_local_update_sends_exactly_the_parameter_shapes(runlocal_task, runlocal_federation):
  params = jax.eval_shape(lambda: client_lib.init_params(
      runlocal_task, jax.random.key(0, impl='rbg'), tuple(runlocal_federation.image_shape),
      runlocal_federation.schema.model_dim))
  batches = sampling.client_batches(runlocal_federation.clients[0], 0, 0, 0, 2, 8)
  leaves = engine.check_messages_of_task(runlocal_task, params, batches)
  assert leaves == len(jax.tree.leaves(params)) > 0


def _client(patient_ids):
  n = len(patient_ids)
  return dataset_lib.ClientData(
      name='h', images=np.zeros((n, 4, 4, 1), np.uint8), conditions=np.zeros((n, 2), np.float32),
      abnormal=np.zeros(n, bool), patient_ids=np.asarray(patient_ids))


def test_holdout_takes_whole_patients_deterministically():
  client = _client([1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9])
  kept, held_out = audit.holdout_split(client, 0.25, seed=0)
  assert sorted(np.concatenate([kept, held_out])) == list(range(12))
  assert not set(client.patient_ids[kept]) & set(client.patient_ids[held_out])
  assert 1 <= len(held_out) <= 5
  again = audit.holdout_split(client, 0.25, seed=0)
  np.testing.assert_array_equal(held_out, again[1])
  with pytest.raises(ValueError, match='holdout_fraction'):
    audit.holdout_split(client, 1.0, seed=0)


def test_audit_of_a_tiny_checkpoint_reports_rates_in_the_unit_interval(tmp_path):
  config = phantom_dp.get_config('runlocal')
  # Non-DP and few layers: the DP path of the task is tested in privacy_integration_test.
  config.dp.mode = 'none'
  config.model.generator.update(encoder_channels=(8,), decoder_channels=(4,), embedding_dim=8,
                                z_dim=4)
  config.model.discriminator.channels = (4,)
  config.audit.update(max_examples=12, update_rounds=1, chunk=16)
  federation = audit.hold_out(registry.load_federation(config), config)
  assert len(federation.clients[0]) < len(registry.load_federation(config).clients[0])
  task = task_lib.build_task(config, federation.schema, federation.image_shape)
  params = client_lib.init_params(task, jax.random.key(0, impl='rbg'),
                                  tuple(federation.image_shape), federation.schema.model_dim)
  state = algorithm.server_init(params, optax.sgd(1.0))
  manager = checkpointing.manager(str(tmp_path), 1)
  checkpointing.save(manager, 3, state, config, {'privacy': {'mode': 'none'}})
  manager.wait_until_finished()
  manager.close()

  results = audit.run_audit(config, str(tmp_path))
  assert json.loads((tmp_path / 'audit.json').read_text()) == results
  assert results['step'] == 3 and results['message']['ok']
  for attack in list(results['discriminator'].values()) + [results['update_alignment']]:
    assert 0.0 <= attack['auc'] <= 1.0 and 0.0 <= attack['tpr_at_fpr'] <= 1.0
    assert attack['members'] > 0 and attack['non_members'] > 0
  assert results['discriminator']['logit']['members'] == 12
