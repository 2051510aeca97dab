"""The `baselines` section read by `benchmarks/compare_baselines.py`.

The GAN baselines (centralized, local-only) reuse the experiment config's GAN settings
unchanged; this section holds only what the supervised baselines need, sized so that each
hospital's autoencoder takes as many local steps as the centralized F-AD autoencoder
(`anomaly.steps`) on the phantom default. Attached by the script when the experiment
config lacks it (`config.baselines = baselines.get_baselines_config(runlocal)`).
"""

import ml_collections


def get_baselines_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.methods = ('federated_gan', 'centralized_gan', 'local_gans', 'ae_real_centralized',
                    'ae_real_federated', 'fedavg_classifier')
  # Evaluators run on each baseline GAN (the federated GAN runs all of `eval.evaluators`).
  config.gan_evaluators = ('domain_quality', 'anomaly', 'personalized')
  # FedAvg of the F-AD autoencoder on real normal images (architecture from `anomaly`).
  config.autoencoder = ml_collections.ConfigDict(dict(
      rounds=150, local_steps=10,
      optimizer=dict(name='adam', learning_rate=1e-3, kwargs=dict(b1=0.9, b2=0.999))))
  # FedAvg normal-vs-abnormal CNN; as many rounds as the phantom GAN (AUC 0.63 after 60
  # rounds, 0.85 after 150, 0.93 after 300 on the phantom default).
  config.classifier = ml_collections.ConfigDict(dict(
      channels=(16, 32, 64), rounds=300, local_steps=5, batch_size=32, balance_classes=True,
      decision_threshold=0.5, predict_batch_size=256,
      optimizer=dict(name='adam', learning_rate=2e-3, kwargs=dict(b1=0.9, b2=0.999))))
  if runlocal:
    config.autoencoder.update(rounds=4, local_steps=2)
    config.classifier.update(channels=(8, 16), rounds=4, local_steps=2, batch_size=8,
                             predict_batch_size=64)
  return config
