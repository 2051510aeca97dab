"""The protocol table of benchmarks/real_protocol.py: rows from results.json, mean ± std."""

from fedgan_jax.evaluation import report as eval_report


def _results(auc, ceiling):
  return {'scored_split': 'validation', 'wall_time_s': 100.0, 'step': 300, 'anomaly': {
      'auc': auc, 'ceiling': {'auc': ceiling}, 'utility_ratio': auc / ceiling,
      'site_alone': {'mean_auc': 0.7},
      'sensitivity_at_specificity': {'specificity': 0.9, 'sensitivity': 0.5},
      'site_calibrated': {
          'federated': {'sensitivity': 0.95, 'specificity': 0.55},
          'hospital_0': {'sensitivity': 0.97, 'specificity': 0.48},
          'hospital_1': {'sensitivity': 0.91, 'specificity': 0.60},
          'private_pooled': {'sensitivity': 0.93, 'specificity': 0.52},
          'percentile': 50.0, 'confidence': 0.9}}}


def test_protocol_row_reads_every_column():
  row = eval_report.protocol_row(_results(0.8, 0.9))
  assert row['utility_ratio'] == 0.8 / 0.9 and row['ceiling_auc'] == 0.9
  assert (row['calibrated_sensitivity'], row['calibrated_specificity']) == (0.95, 0.55)
  assert row['scored_split'] == 'validation' and row['site_alone_auc'] == 0.7
  # The worst hospital's threshold, each number at its own worst site; the private one.
  assert (row['worst_site_sensitivity'], row['worst_site_specificity']) == (0.91, 0.48)
  assert (row['private_sensitivity'], row['private_specificity']) == (0.93, 0.52)


def test_mean_std_is_the_sample_std_and_skips_missing():
  # mean 0.8, sample std sqrt(((0.1)^2 + 0 + (0.1)^2) / 2) = 0.1.
  assert eval_report.mean_std([0.7, 0.8, 0.9, None]) == '0.800 ± 0.100'
  assert eval_report.mean_std([0.5]) == '0.500'
  assert eval_report.mean_std([None]) == '—'


def test_protocol_markdown_has_a_row_per_seed_and_the_mean():
  rows = {seed: eval_report.protocol_row(_results(auc, 0.9))
          for seed, auc in ((0, 0.7), (1, 0.8), (2, 0.9))}
  text = eval_report.protocol_markdown('configs/zhanglab.py', ['--config.x=1'], rows)
  assert 'configs/zhanglab.py' in text and '--config.x=1' in text
  assert '| mean ± std (3 seeds) |  | 0.800 ± 0.100 | 0.900 ± 0.000 |' in text
  assert '| 0 | 300 | 0.700 |' in text
  assert text.count('\n| ') == 5  # The header, 3 seeds and the mean (the rule starts '|-').


def test_protocol_markdown_names_a_round_chosen_on_validation():
  results = dict(_results(0.8, 0.9), step=200,
                 checkpoint_selection={'on': 'validation', 'selected_step': 200})
  rows = {0: eval_report.protocol_row(results)}
  assert '| 0 | 200 (chosen on validation) | 0.800 |' in eval_report.protocol_markdown(
      'configs/pneumoniamnist.py', [], rows)


def test_site_calibration_markdown_names_the_rule_and_the_private_search():
  private = {'threshold': 0.3, 'sensitivity': 0.9, 'specificity': 0.55, 'epsilon': 2.0,
             'delta': 1e-5, 'noisy_count': 850, 'exact_threshold': 0.29,
             'exact': {'sensitivity': 0.91, 'specificity': 0.54}, 'queries': 13,
             'noise_multiplier': 7.7, 'rank_noise_std': 13.4, 'rank': 448}
  calibrated = {'hospital_0': {'threshold': 0.28, 'sensitivity': 0.95, 'specificity': 0.45,
                               'normals': 3, 'guaranteed': False},
                'federated': {'threshold': 0.28, 'sensitivity': 0.95, 'specificity': 0.45,
                              'normals': 3},
                'private_pooled': private, 'percentile': 50.0, 'confidence': 0.9}
  text = '\n'.join(eval_report.site_calibration_markdown(calibrated))
  assert 'specificity >= 0.500 with confidence 0.900' in text
  assert '| hospital_0 | 0.2800 | 0.950 | 0.450 | 3 (too few for the guarantee) |' in text
  assert '| pooled, private search (epsilon 2.000, delta 1e-05) | 0.3000 |' in text
  assert '13 noisy count queries' in text and 'rank 448 of the noisy pooled count 850' in text
  plain = dict(calibrated, confidence=0.0)
  plain.pop('private_pooled')
  text = '\n'.join(eval_report.site_calibration_markdown(plain))
  assert 'the 50.0th percentile' in text and 'private' not in text
