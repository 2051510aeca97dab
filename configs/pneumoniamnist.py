"""PneumoniaMNIST: 4 hospitals (IID patients) of paediatric chest X-rays, pneumonia = anomaly.

    python -m fedgan_jax.main --config=configs/pneumoniamnist.py \
        --config.data.path=../shared/data/medmnist/pneumoniamnist.npz --workdir=/tmp/pmnist

Variants (`--config=configs/pneumoniamnist.py:runlocal,size=28`): `runlocal` shrinks
models, rounds and evaluation to a smoke run of about a minute; `size=N` picks the
image size the npz is resized to and the models that fit it (28, the released size,
by default and for `runlocal`; 32, 64 on CPU; 128 or 256 on accelerators, from the
npz of that size); `centralized` trains one client on the pooled data (the baseline).
The size must come from the variant, not from `--config.data.image_size`, because
the models are shaped for it. Any other field can be overridden, e.g.
`--config.fl.num_rounds=100`.

MedMNIST has no demographics: the condition vector is the pneumonia label alone, so
the generator draws normal images for the detector from `findings = 0` and the
conditioning report (age, sex) is off.
"""

import dataclasses

from configs import common
from configs.data import medmnist

TASK = 'pneumoniamnist'
# The released size: larger ones only interpolate 28x28 pixels (see benchmarks/real_data.md).
DEFAULT_IMAGE_SIZE = 28


def get_config(arg: str | None = None):
  config, _ = common.real_data_config(
      arg, 'configs/pneumoniamnist.py', lambda runlocal: medmnist.get_data_config(runlocal, TASK),
      medmnist.get_conditions(TASK), default_size=DEFAULT_IMAGE_SIZE)
  # One row of samples per label: normal, then pneumonia (index 0 of the findings).
  config.train.profiles = [dict(), dict(findings=[0])]
  # One 0/1 label: the plain cosine L_cond would be identically 0 (see losses).
  config.loss.cond_complement_binary = True
  # A narrower bottleneck: trained on the real normal training images, the dense AE scores the
  # real test split at AUC 0.75 with 8 latents, 0.59 with the common 32 (benchmarks/real_data.md).
  config.anomaly.latent_dim = 8
  # Chosen on the val split (one G, benchmarks/real_data.md): R1 on D's real inputs (F-AD
  # 0.55 -> 0.63), then the median of 1 - SSIM (window sigma 1.5 px) instead of the signed
  # residual (0.63 -> 0.95 at z = 0; ceiling 0.90 -> 0.96), and, as for ZhangLab, diverse
  # synthetic normals (noise 0.5) filtered by the federated D (0.92; unfiltered 0.68) rather
  # than G's one expected normal film.
  config.loss.r1_gamma = 0.2
  config.anomaly.update(score='ssim', score_blur_sigma=1.5, score_percentile=50.0)
  config.anomaly.variant = dataclasses.replace(config.anomaly.variant, normal_filter_keep=0.25)
  return config
