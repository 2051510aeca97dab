"""Baselines the federated GAN is compared with, each run on the same data and test split.

`fedavg`: the generic FedAvg loop for small supervised models; `autoencoder`: the anomaly
autoencoder trained on real normal images (centralized, and FedAvg over hospitals);
`classifier`: a FedAvg normal-vs-abnormal CNN; `local_gan`: one GAN per hospital on its
own data only. `benchmarks/compare_baselines.py` runs them all.
"""
