"""Trains a federated conditional GAN and evaluates it: the main binary.

    python -m fedgan_jax.main --config=configs/phantom.py --workdir=/tmp/fedgan_phantom \
        [--config.fl.num_rounds=100 ...] [--jax_distributed] [--verbosity=1]

`--verbosity=1` shows the libraries' INFO logs (Orbax, jax, ...) that the default hides.
"""

from absl import app
from absl import flags

from fedgan_jax import flags_common
from fedgan_jax import train

_CONFIG = flags_common.define_config()
_WORKDIR = flags_common.define_workdir('Where checkpoints, metrics and results go.')
_RUNTIME = flags_common.define_runtime_flags(distributed=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  flags_common.check_no_arguments(argv)
  flags_common.start(_RUNTIME)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
