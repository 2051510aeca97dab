"""How the F-AD score is computed matters: image-mean MSE vs local (blurred-residual) scores.

Local scores blur either the squared residual (`local`) or the signed residual before
squaring (`signed`, the default).

Trains the configured autoencoder on *real* phantom normal images (an upper bound for the
synthetic-trained detector: no GAN in the loop) and reports the real-test AUC of each scoring
rule, so the default `anomaly.score` rests on a measurement.

    python -m benchmarks.anomaly_score --json=/tmp/anomaly_score.json

Writes `{"results": [{"score": ..., "blur_sigma": ..., "percentile": ..., "auc": ...}], ...}`.
"""

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
import jax
from sklearn import metrics as sk_metrics

from configs import phantom
from fedgan_jax.data import registry
from fedgan_jax.evaluation import anomaly

_JSON = flags.DEFINE_string('json', None, 'Where to write the results.')
_NUM_NORMALS = flags.DEFINE_integer('num_normals', 2000, 'Real normal training images.')
_SIGMAS = flags.DEFINE_list('blur_sigmas', ['0', '1', '2', '3'], 'Blur widths (pixels).')
_PERCENTILES = flags.DEFINE_list('percentiles', ['99', '100'], 'Residual-map percentiles.')


def main(_):
  config = phantom.get_config()
  federation = registry.load_federation(config)
  pooled = federation.pooled()
  normals = pooled.images[~pooled.abnormal][:_NUM_NORMALS.value]
  start = time.time()
  detector = anomaly.train_autoencoder(normals, config.anomaly, config.seed)
  train_s = time.time() - start
  rules = [anomaly.ScoreConfig()] + [
      anomaly.ScoreConfig(kind, float(s), float(p))
      for kind in ('local', 'signed') for s in _SIGMAS.value for p in _PERCENTILES.value]
  results = []
  for rule in rules:
    # replace, not a fresh Detector: the trained one's input pooling and features stay.
    scored = dataclasses.replace(detector, score=rule)
    scores = anomaly.anomaly_scores(scored, federation.test.images)
    auc = float(sk_metrics.roc_auc_score(federation.test.abnormal, scores))
    results.append({'score': rule.kind, 'blur_sigma': rule.blur_sigma,
                    'percentile': rule.percentile, 'auc': auc})
    print(f'{rule.kind:6s} sigma={rule.blur_sigma:.0f} percentile={rule.percentile:.0f} '
          f'AUC {auc:.3f}')
  report = {'results': results, 'train_normals': int(len(normals)),
            'test': {'normal': int((~federation.test.abnormal).sum()),
                     'abnormal': int(federation.test.abnormal.sum())},
            # Best-effort JSON: the section holds a typed preset (anomaly.variant).
            'autoencoder': json.loads(config.anomaly.to_json_best_effort()), 'train_s': train_s,
            'jax': jax.__version__, 'load_average': os.getloadavg()}
  if _JSON.value:
    with open(_JSON.value, 'w') as f:
      json.dump(report, f, indent=1)


if __name__ == '__main__':
  app.run(main)
