"""The embedded default: 4 phantom hospitals, 64x64, whole pipeline on a laptop CPU.

    python -m fedgan_jax.main --config=configs/phantom.py --workdir=/tmp/fedgan_phantom

Variants (`--config=configs/phantom.py:runlocal`): `runlocal` shrinks everything to a
seconds-long smoke run (32x32, 3 tiny hospitals, a few rounds); `centralized` trains the
same GAN on the pooled data (the baseline). Any field can be overridden, e.g.
`--config.fl.num_rounds=50 --config.runtime.strategy=vmap`.
"""

from configs import common
from configs import variant
from configs.data import phantom

FLAGS = ('runlocal', 'centralized')


def get_config(arg: str | None = None):
  options = variant.parse(arg, 'configs/phantom.py', FLAGS)
  runlocal = options['runlocal']
  config = common.get_common_config()
  config.data = phantom.get_data_config(runlocal)
  config.conditions = phantom.get_conditions()
  config.fl.centralized = options['centralized']
  config.train.profiles = [dict(age=age, sex=sex) for age in (25, 50, 75) for sex in (0, 1)]

  if runlocal:
    config.model.generator.update(seed_size=8, encoder_channels=(16, 32), decoder_channels=(8,),
                                  embedding_dim=32, z_dim=16)
    config.model.discriminator.channels = (8, 16)
    common.shrink_training_for_runlocal(config)
  return config
