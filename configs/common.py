"""Defaults shared by every experiment config: models, losses, FedAvg, checkpoints, F-AD.

Experiment configs (`configs/phantom.py`, `configs/cxr14.py`, ...) start from
`get_common_config()`, add a data section from `configs/data/`, and override what
differs. Every number the code uses lives here or there.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from configs import eval_common
from fedgan_jax.evaluation import detectors
from fedgan_jax.federated import autotune
from configs import variant
from configs.data import model_sizes


def get_common_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.generator = ml_collections.ConfigDict(dict(
      seed_size=8, encoder_channels=(64, 128), decoder_channels=(32, 16), output_shuffle=2,
      output_blur=True, smooth_upsampling='none',
      embedding_dim=128, z_dim=64))
  config.model.discriminator = ml_collections.ConfigDict(dict(
      channels=(32, 64, 128), input_unshuffle=2, minibatch_std_group=4))

  config.loss = ml_collections.ConfigDict(dict(
      gan='non_saturating',    # or 'hinge'.
      cond_weight=1.0,         # lambda in L = L_GAN + lambda * L_cond.
      attribute_weight=1.0,    # weight of the attribute head's loss on real images in D's loss.
      # L_cond also matches 1 - p against 1 - v for every 0/1 attribute; required when the
      # condition is a single label (PneumoniaMNIST), where the plain cosine is always 1.
      cond_complement_binary=False,
      # R1 penalty (gamma / 2) E|grad_x D(x)|^2 on real images, 0 = off (Mescheder et al. 2018).
      r1_gamma=0.0,
      # MSGAN's mode-seeking term on G's images drawn for the same condition (Mao et al.
      # 2019), 0 = off.
      mode_seeking_weight=0.0))

  config.fl = ml_collections.ConfigDict()
  config.fl.num_rounds = 300
  config.fl.clients_per_round = 0   # 0 = every client, every round.
  config.fl.local_steps = 2         # D+G steps per client per round.
  config.fl.batch_size = 16
  config.fl.centralized = False     # True: one client holding all data (the baseline).
  # Conditions G's images are drawn for during training: 'batch' (the real batch's records) or
  # 'public_prior' (drawn from the data source's public condition prior, built from config
  # numbers only; phantom has one). With 'public_prior' no record reaches G or D's fake term,
  # so example-level DP-SGD clips and noises only the real-image term (README "Privacy").
  config.fl.fake_conditions = 'batch'
  # Decay of the server's moving average of G over rounds, which sampling and evaluation use
  # (0 = off: the last round's G). Averaging damps the round-to-round jitter of a short GAN run.
  config.fl.generator_ema = 0.99
  # Optimizers by name plus that optimizer's own kwargs (fedgan_jax/federated/optimizers.py
  # lists what each takes; a kwarg it does not take is an error). Clients: D and G each get
  # their own learning rate, same kind. 6e-4 rather than DCGAN's 2e-4: a few hundred rounds of
  # 2 local steps is a short GAN run (150 rounds, phantom: age r 0.44 -> 0.61, sex AUC
  # 0.96 -> 1.00; BENCHMARKS.md).
  config.fl.client_optimizer = ml_collections.ConfigDict(dict(
      name='adam', d_learning_rate=6e-4, g_learning_rate=6e-4, kwargs=dict(b1=0.5, b2=0.999)))
  # The server steps along the average client delta: sgd at 1.0 with no kwargs is FedAvg;
  # kwargs={'momentum': 0.7} is FedAvgM, name='adam' FedAdam.
  config.fl.server_optimizer = ml_collections.ConfigDict(dict(
      name='sgd', learning_rate=1.0, kwargs=dict()))

  # How the round executes: never changes the math, only its speed (and float rounding).
  config.runtime = ml_collections.ConfigDict()
  # 'vmap' | 'sequential' | 'threads' | 'auto': the fastest of a few candidate executions (and
  # the client_threads, fuse_local_steps and ynn_fusions they set), measured on this machine on
  # the first run and cached (runtime.autotune; federated/autotune.py). An explicit strategy
  # runs as configured, with the three knobs below.
  config.runtime.strategy = 'auto'
  config.runtime.client_threads = 0      # clients in flight under 'threads'; 0 = one per CPU core.
  # 'sequential'/'threads': a client's local steps as one compiled program (~10% faster on CPU;
  # compile time grows with local_steps). False: one program per step, compiled once for any K.
  config.runtime.fuse_local_steps = True
  # XLA CPU only: False compiles the client-update programs (and only those) without jaxlib's
  # YNNPACK convolution fusions; XLA's own convolutions run those small batches faster on some
  # CPUs (BENCHMARKS.md, issue 3). True keeps jaxlib's default. No effect on GPU/TPU.
  config.runtime.ynn_fusions = False
  # How 'auto' measures (a typed preset; fields in federated/autotune.py): each candidate runs
  # one untimed round (compilation), then `rounds` timed ones (the median counts) on the first
  # round's first `clients` clients (0 = all); candidates not started within `budget_s` are
  # skipped; runs of fewer than `min_rounds` rounds take the backend's default unmeasured;
  # decisions go to `cache` ('' = fedgan_autotune.json inside the XLA compilation cache
  # directory; none when that cache is off).
  config.runtime.autotune = autotune.Settings(rounds=2, budget_s=60.0, min_rounds=50, clients=8,
                                              cache='')
  # What G and D compute in: 'float32' or 'bfloat16' (mixed precision for accelerators: params,
  # optimizer state and losses stay float32; benchmarks/round.md).
  config.runtime.precision = 'float32'

  # How a trained G is sampled: F-AD's synthetic normals, conditioning fidelity, the eval
  # binary and sample grids all draw z with this standard deviation (training: always 1).
  # 0.5 had the best F-AD AUC on a phantom validation split (seed 1) among 1/0.75/0.5/0.25,
  # and lifts age r with it (0.57 -> 0.72 there; BENCHMARKS.md, issue 2).
  config.sampling = ml_collections.ConfigDict(dict(noise_scale=0.5))

  config.checkpoint = ml_collections.ConfigDict(dict(every_rounds=50, keep=3))
  config.train = ml_collections.ConfigDict(dict(
      log_every_rounds=25,  # Console progress lines; metrics.jsonl has every round.
      sample_every_rounds=100,
      max_abs_loss=1e4,    # a loss beyond this (or NaN/inf) stops the run as diverged.
      # A parameter (of G, D or G's moving average) beyond this, or NaN/inf, stops the run
      # before the round's state can be checkpointed, and makes a stored step unusable on
      # restore. Healthy weights stay below ~1 (init max 1.0; Adam moves a weight at most
      # ~learning_rate per step: 600 steps x 6e-4 = 0.4), so only a blown-up model reaches it.
      max_abs_param=1e3))

  config.anomaly = ml_collections.ConfigDict(dict(
      num_synthetic=2000,
      architecture='dense',     # or 'conv' (slower on CPU), 'inpaint'.
      # The AE reads images block-averaged to this size (0 = the image size; must divide it).
      input_size=0,
      hidden=(512,), channels=(32, 64), latent_dim=32, pixel_shuffle=2,
      steps=1500, batch_size=64, learning_rate=1e-3,
      threshold_percentile=95.0,
      # 'signed': the score_percentile-th percentile of the square of the residual blurred
      # with a Gaussian of score_blur_sigma pixels (localized findings; residuals that flip
      # sign within a few pixels cancel); 'local': of the blurred squared residual;
      # 'mse': the image mean.
      # 'ssim': a percentile of 1 - local SSIM; 'judge' (inpaint/pixels): -D's logit on the
      # reconstruction, SQUID's discriminator score.
      score='signed', score_blur_sigma=2.0, score_percentile=99.0,
      # Which detector (issue 21; benchmarks/detector_variants.md, fields in
      # evaluation/detectors.py): pixels or D's features, the in-painter's shape, ensembles.
      variant=detectors.Variant(
          features='pixels', discriminator_block=1,
          inpaint_patch=4, inpaint_embedding_dim=64, memory_slots=64,
          ensemble_members=(), ensemble_seeds=1, ensemble_normalization='rank',
          normal_filter_keep=1.0, release_filter_percentile=0.0,
          score_border=0.0)))
  # Differential privacy (fedgan_jax/privacy/; README "Privacy"). 'example': DP-SGD on D at each
  # hospital; 'client': DP-FedAvg on whole hospital updates. Unset numbers are None.
  config.dp = ml_collections.ConfigDict(dict(
      mode='none',
      clip_norm=1.0,
      noise_multiplier=1.0,      # used when target_epsilon is None.
      target_epsilon=config_dict.placeholder(float),  # calibrates noise to fl.num_rounds.
      max_epsilon=config_dict.placeholder(float),     # stop before exceeding (default: target).
      delta=config_dict.placeholder(float),           # None: 10^-ceil(log10(10 N)) < 1/N.
      accountant='rdp',          # or 'pld'.
      microbatch_size=config_dict.placeholder(int),   # per-example gradients this many at once.
      # With fl.fake_conditions='public_prior': clip each fake example's D gradient at clip_norm
      # too (no noise; it keeps the two terms on one scale) instead of the plain mean.
      clip_fake_term=False,
      adaptive_clip=ml_collections.ConfigDict(dict(   # client mode: clip norm -> a norm quantile.
          enabled=False, target_quantile=0.5, learning_rate=0.2,
          count_noise_multiplier=config_dict.placeholder(float)))))
  config.eval = eval_common.get_eval_config()
  return config


def shrink_training_for_runlocal(config: ml_collections.ConfigDict) -> None:
  """Seconds-sized rounds, checkpoints, F-AD and evaluation (each config shrinks its models)."""
  config.fl.num_rounds = 4
  config.fl.batch_size = 8
  config.checkpoint.every_rounds = 2
  config.train.log_every_rounds = 1
  config.train.sample_every_rounds = 2
  config.anomaly.update(num_synthetic=64, steps=20, batch_size=16, hidden=(32,),
                        channels=(8, 16), latent_dim=8)
  config.eval = eval_common.get_eval_config(runlocal=True)


# The variants every real-data config takes (`:runlocal,size=128`).
REAL_DATA_FLAGS = ('runlocal', 'centralized')
REAL_DATA_VALUES = {'size': (int, tuple(sorted(model_sizes.SHAPES)))}


def real_data_config(arg: str | None, config_file: str, data_section, conditions,
                     default_size: int) -> tuple[ml_collections.ConfigDict, bool]:
  """The skeleton every real-data config shares; returns `(config, runlocal)`.

  Parses the variant (`runlocal`, `centralized`, `size=N`), attaches the data section
  `data_section(runlocal)` and `conditions`, shapes the models for the image size (32 for
  `runlocal`, else `default_size`) and, for `runlocal`, shrinks models and training. The
  caller then sets what is particular to its data.
  """
  options = variant.parse(arg, config_file, REAL_DATA_FLAGS, REAL_DATA_VALUES)
  runlocal = options['runlocal']
  image_size = options['size'] or (32 if runlocal and default_size > 32 else default_size)
  config = get_common_config()
  config.data = data_section(runlocal)
  config.data.image_size = image_size
  config.conditions = conditions
  config.fl.centralized = options['centralized']
  model_sizes.model_for_image_size(config, image_size)
  # Real patients' films: each hospital vetoes drawn synthetic normals nearer to one of its
  # films than the 1st percentile of its own patients' distances to each other
  # (memorization.release_veto). Off for runlocal: a G trained for 4 rounds draws near-mean
  # films, nearer to the fixtures' few films than those are to each other, and all would go.
  config.anomaly.variant = dataclasses.replace(config.anomaly.variant,
                                               release_filter_percentile=0.0 if runlocal else 1.0)
  if runlocal:
    model_sizes.shrink_for_runlocal(config)
    shrink_training_for_runlocal(config)
  return config, runlocal
