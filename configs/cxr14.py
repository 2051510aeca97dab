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

import dataclasses

from configs import common
from configs.data import cxr14


def get_config(arg: str | None = None):
  config, runlocal = common.real_data_config(arg, 'configs/cxr14.py', cxr14.get_data_config,
                                             cxr14.get_conditions(), default_size=64)
  # Sample rows: normal women and men of three ages, then one row per common finding.
  config.train.profiles = ([dict(age=age, sex=sex) for age in (25, 50, 75) for sex in (0, 1)]
                           + [dict(age=60, sex=1, findings=[index]) for index in (1, 2, 6)])
  # Chosen on the validation split of ../shared/data/cxr14_pneumonia (adult NIH films, pneumonia
  # vs no finding; seed 0, benchmarks/real_data.md), as for ZhangLab: R1 on D's real inputs;
  # the AE reads 32x32 block averages and scores the 90th percentile of 1 - SSIM (window sigma
  # 1.5 px; the median: 0.63); F-AD's normals drawn at noise 0.5 and filtered by the federated
  # D (keep 0.25). F-AD 0.42 -> 0.71, its ceiling on real normals 0.57 -> 0.72.
  config.loss.r1_gamma = 0.2
  config.anomaly.update(input_size=16 if runlocal else 32, score='ssim', score_blur_sigma=1.5,
                        score_percentile=90.0)
  config.anomaly.variant = dataclasses.replace(config.anomaly.variant, normal_filter_keep=0.25)
  return config
