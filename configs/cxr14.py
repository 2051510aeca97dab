"""ChestX-ray14 (NIH): 4 hospitals of whole patients, 'No Finding' = normal, any finding = anomaly.

    python -m fedgan_jax.main --config=configs/cxr14.py \
        --config.data.root=/data/ChestX-ray14 --workdir=/tmp/cxr14

The root holds the NIH release: Data_Entry_2017.csv, images/ (or images_001/images ...
images_012/images) and, when present, train_val_list.txt / test_list.txt (the official
patient-wise split; patients in both lists are dropped from training). The first run
decodes every PNG into a cache under <root>/fedgan_cache (or --config.data.cache_dir),
later runs start from it in seconds.

Variants (`--config=configs/cxr14.py:size=128`): `size=N` picks the image size and the
models that fit it (64 by default, for CPU; 128 or 256 on accelerators, e.g.
`:size=256`); `runlocal` shrinks data (the first 2000 CSV rows), models, rounds and
evaluation to a smoke run at 32x32; `centralized` trains one client on the pooled data
(the baseline). The size must come from the variant, not from `--config.data.image_size`,
because the models are shaped for it. Any other field can be overridden, e.g.
`--config.data.partition.method=demographic --config.fl.num_rounds=1000`.
"""

from configs import common
from configs.data import cxr14


def get_config(arg: str | None = None):
  config, _ = common.real_data_config(arg, 'configs/cxr14.py', cxr14.get_data_config,
                                      cxr14.get_conditions(), default_size=64)
  # Sample rows: normal women and men of three ages, then one row per common finding.
  config.train.profiles = ([dict(age=age, sex=sex) for age in (25, 50, 75) for sex in (0, 1)]
                           + [dict(age=60, sex=1, findings=[index]) for index in (1, 2, 6)])
  return config
