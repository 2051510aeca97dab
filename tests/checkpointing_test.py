"""Config fingerprints of checkpoints: what must match, and what older checkpoints may lack."""

import pytest

from configs import phantom
from fedgan_jax import checkpointing


def _meta(config):
  return {'fingerprint': checkpointing.fingerprint(config)}


def test_a_changed_shape_field_is_refused_by_name():
  config = phantom.get_config('runlocal')
  meta = _meta(config)
  config.model.generator.z_dim += 1
  with pytest.raises(checkpointing.IncompatibleCheckpointError,
                     match='model.generator.z_dim=16 but the config has 17'):
    checkpointing.check_compatible(meta, config)


def test_a_field_added_after_the_checkpoint_was_written_is_not_compared():
  config = phantom.get_config('runlocal')
  meta = _meta(config)
  del meta['fingerprint']['model']['generator']['smooth_upsampling']
  del meta['fingerprint']['fl.generator_ema']
  checkpointing.check_compatible(meta, config, checkpointing.RESUME_FIELDS)
  # ... while a field the checkpoint does record still has to match.
  config.model.discriminator.channels = (8, 32)
  with pytest.raises(checkpointing.IncompatibleCheckpointError, match='discriminator.channels'):
    checkpointing.check_compatible(meta, config, checkpointing.RESUME_FIELDS)
