"""ChestX-ray14 with example-level DP-SGD on D (epsilon 10, delta below 1/N by default).

    python -m fedgan_jax.main --config=configs/cxr14_dp.py \
        --config.data.root=/data/ChestX-ray14 --workdir=/tmp/cxr14_dp
    python -m fedgan_jax.audit --config=configs/cxr14_dp.py \
        --config.data.root=/data/ChestX-ray14 --workdir=/tmp/cxr14_dp

Built on configs/cxr14.py, whose variants pass through (`:runlocal`, `:size=128`, ...); `client`
switches to client-level DP-FedAvg with adaptive clipping (with 4 hospitals client-level
epsilon cannot be small: the variant exercises the mechanism). `dp.delta` is left unset, so it
is 10^-ceil(log10(10 N)) for the N training images (1e-7 for the full release's ~86k), below
1/N. The noise multiplier is calibrated to `dp.target_epsilon` over `fl.num_rounds`.
"""

import ml_collections

from configs import common
from configs import cxr14
from configs import variant


def get_config(arg: str | None = None):
  options = variant.parse(arg, 'configs/cxr14_dp.py', common.REAL_DATA_FLAGS + ('client',),
                          common.REAL_DATA_VALUES)
  client = options.pop('client')
  config = cxr14.get_config(variant.format(options))
  # Minibatch std couples examples, which per-example clipping cannot bound.
  config.model.discriminator.minibatch_std_group = 0
  config.dp.update(mode='example', clip_norm=1.0, target_epsilon=10.0, accountant='rdp')
  if client:
    config.dp.update(mode='client', clip_norm=0.3)
    config.dp.adaptive_clip.update(enabled=True, target_quantile=0.5, learning_rate=0.2,
                                   count_noise_multiplier=20.0)
  # The membership audit's non-members: 10% of hospital 0's patients never train.
  config.audit = ml_collections.ConfigDict(dict(
      hospital=0, holdout_fraction=0.1, max_examples=512, update_rounds=4, chunk=32))
  if options['runlocal']:
    config.audit.update(max_examples=32, update_rounds=2)
  return config
