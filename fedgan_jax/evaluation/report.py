"""Renders evaluation results: JSON-safe values and markdown tables to paste into a paper.

`results_markdown(results)` turns `evaluation.evaluate_checkpoint`'s dict into
`results.md`; `comparison_markdown(rows, columns)` renders the one-row-per-method table
of `benchmarks/compare_baselines.py`. Missing or undefined numbers print as an em dash.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from fedgan_jax.evaluation import personalized as personalized_lib

DOMAIN_NOTE = ('Domain features: penultimate layer of a small CNN trained on the real training '
               'images to predict their attributes and findings. FID in this space is NOT '
               'comparable to ImageNet-Inception FID, nor across datasets or encoder configs.')


def jsonable(value: Any) -> Any:
  """Nested dicts/lists of plain Python values; non-finite floats become None (valid JSON)."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return jsonable(value.tolist())
  if isinstance(value, (np.integer, bool, np.bool_)):
    return value.item() if hasattr(value, 'item') else value
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  return value


def number(value: Any, digits: int = 3) -> str:
  """A table cell: fixed digits, an em dash for missing/NaN, scientific for tiny values."""
  if value is None or isinstance(value, str):
    return value or '—'
  value = float(value)
  if not math.isfinite(value):
    return '—' if math.isnan(value) else ('∞' if value > 0 else '-∞')
  if value != 0 and abs(value) < 10 ** -digits:
    return f'{value:.2e}'
  return f'{value:.{digits}f}'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
  return '\n'.join(lines)


def headline(name: str, result: Mapping[str, Any]) -> str:
  """One log line per evaluator."""
  if 'skipped' in result:
    return 'skipped: ' + result['skipped']
  keys = {'inception_fid': ('fid', 'kid_mean'), 'domain_quality': ('fid', 'kid_mean', 'precision',
                                                                   'recall'),
          'anomaly': ('auc', 'sensitivity', 'specificity'),
          'memorization': ('fraction_synthetic_below_floor', 'held_out_floor')}.get(name)
  if keys:
    return ', '.join(f'{k} {number(result.get(k))}' for k in keys)
  if name == 'conditioning':
    return f'cond cosine {number(result["generated"].get("cond_cosine"))}'
  if name == 'personalized':
    return ', '.join(f'{k} AUC {number(v.get("auc"))}' for k, v in result.items()
                     if isinstance(v, Mapping) and 'auc' in v)
  return ''


def _conditioning_rows(result: Mapping[str, Any]) -> list[list[str]]:
  rows = []
  generated, real = result['generated'], result['real_reference']
  for feature, entry in generated.items():
    if not isinstance(entry, Mapping):
      continue
    if entry['kind'] == 'continuous':
      rows.append([feature, 'Pearson r', number(entry['pearson_r']),
                   number(real[feature]['pearson_r'])])
    elif 'auc' in entry and not isinstance(entry['auc'], Mapping):
      rows.append([feature, 'AUC', number(entry['auc']), number(real[feature]['auc'])])
    elif entry['kind'] == 'categorical':
      rows.append([feature, 'accuracy', number(entry['accuracy']),
                   number(real[feature]['accuracy'])])
    else:
      for category, auc in entry['auc'].items():
        rows.append([f'{feature}: {category}', 'AUC', number(auc),
                     number(real[feature]['auc'][category])])
  rows.append(['all (1 − L_cond)', 'mean cosine', number(generated['cond_cosine']),
               number(real['cond_cosine'])])
  return rows


def _detection_row(label: str, entry: Mapping[str, Any]) -> list[str]:
  return [label, number(entry['auc']), number(entry['sensitivity']),
          number(entry['specificity']), number(entry['threshold'], 4)]


def _operating_point_section(anomaly: Mapping[str, Any]) -> list[str]:
  """F-AD beside the same detector on real normals, and where a site would set its threshold."""
  parts = []
  target = anomaly.get('sensitivity_at_specificity', {})
  rows = [['F-AD (synthetic normals only)', number(anomaly['auc']),
           number(target.get('sensitivity'))]]
  if 'ceiling' in anomaly:
    rows.append(['ceiling: same AE on all real normal training films',
                 number(anomaly['ceiling']['auc']),
                 number(anomaly['ceiling']['sensitivity_at_specificity'])])
  for site, entry in anomaly.get('site_alone', {}).items():
    if isinstance(entry, Mapping) and 'auc' in entry:
      rows.append([f'{site} alone: same AE on its own real normals', number(entry['auc']),
                   number(entry['sensitivity_at_specificity'])])
  if len(rows) > 1 or target:
    parts += [f'F-AD against detectors trained on real films (baselines, not the product); '
              f'sensitivity read off the ROC at specificity {number(target.get("specificity"))}:',
              '', table(['detector', 'AUC', 'sensitivity at the specificity'], rows), '']
  if 'utility_ratio' in anomaly:
    parts += [f'Utility ratio AUC(synthetic) / AUC(ceiling): {number(anomaly["utility_ratio"])}.',
              '']
  calibrated = anomaly.get('site_calibrated')
  if calibrated:
    parts += site_calibration_markdown(calibrated)
  return parts


def site_calibration_markdown(calibrated: Mapping[str, Any]) -> list[str]:
  """The thresholds hospitals set on their own real normal films, and what they give."""
  specificity = calibrated['percentile'] / 100
  confidence = calibrated.get('confidence', 0.0)
  rows = [[site, number(entry['threshold'], 4), number(entry['sensitivity']),
           number(entry['specificity']), str(entry['normals'])
           + ('' if entry.get('guaranteed', True) else ' (too few for the guarantee)')]
          for site, entry in calibrated.items()
          if site != 'private_pooled' and isinstance(entry, Mapping) and 'threshold' in entry]
  rule = (f'the order statistic of its scores on its own real normal training films that gives '
          f'specificity >= {number(specificity)} with confidence {number(confidence)} '
          '(distribution-free)' if confidence else
          f'the {number(calibrated["percentile"], 1)}th percentile of its scores on its own real '
          'normal training films')
  parts = [f'F-AD thresholded where each hospital sets it: {rule}; the films never leave it '
           '("federated" = the thresholds\' normal-count-weighted mean):', '']
  private = calibrated.get('private_pooled')
  if private:
    rows.append([f'pooled, private search (epsilon {number(private["epsilon"])}, delta '
                 f'{private["delta"]:g})', number(private['threshold'], 4),
                 number(private['sensitivity']), number(private['specificity']),
                 str(private['noisy_count']) + ' (noisy)'])
    rows.append(['pooled, exact (no privacy; for comparison)', number(private['exact_threshold'], 4),
                 number(private['exact']['sensitivity']),
                 number(private['exact']['specificity']), ''])
  parts += [table(['site', 'threshold', 'sensitivity', 'specificity', 'site normals'], rows), '']
  if private:
    parts += [f'The private search: {private["queries"]} noisy count queries to every site '
              f'(noise multiplier {number(private["noise_multiplier"])} per site, so the pooled '
              f'count is off by ~{number(private["rank_noise_std"], 1)} films); rank '
              f'{private["rank"]} of the noisy pooled count {private["noisy_count"]}.'
              + (' The answer lies at an end of the search\'s bracket (the scored films\' score '
                 'range, widened): the hospitals\' threshold may lie beyond it.'
                 if private.get('at_bracket_edge') else ''), '']
  return parts


def results_markdown(results: Mapping[str, Any]) -> str:
  """`results.md`: one section per evaluator that ran."""
  parts = [f'# Evaluation of `{results["workdir"]}` at round {results["step"]}', '',
           f'Data: {results["data"]}; generated images are compared with the real '
           f'{results["reference"]} split, one per real image, for its condition vector.'
           + (f' Every generated image draws z ~ N(0, s^2 I) with s = '
              f'{results["sampling_noise_scale"]:g} (sampling.noise_scale; 1 = as in training).'
              if 'sampling_noise_scale' in results else ''), '']
  selection = results.get('checkpoint_selection')
  if selection:
    candidates = ', '.join(f'{step}: {number(auc)}' for step, auc in
                           selection['auc_by_step'].items())
    parts += [f'Checkpoint: round {selection["selected_step"]}, chosen on the '
              f'{selection["on"]} split by {selection["metric"]} among the saved rounds '
              f'({candidates}); numbers on that split itself are optimistic.'
              + (f' Unusable rounds, skipped: {selection["unusable"]}.'
                 if selection.get('unusable') else ''), '']
  privacy = results['privacy']
  if privacy.get('mode', 'none') == 'none':
    parts += ['Privacy: ' + privacy.get('note', 'DP was off.'), '']
  else:
    parts += ['Privacy: ' + ', '.join(f'{k} = {number(v) if isinstance(v, float) else v}'
                                      for k, v in privacy.items()), '']
  quality_rows = []
  for name, label in (('inception_fid', 'Inception-v3 (pytorch-fid)'),
                      ('domain_quality', 'domain features')):
    entry = results.get(name)
    if entry is None:
      continue
    if 'skipped' in entry:
      parts += [f'Inception FID not computed: {entry["skipped"]}', '']
      continue
    quality_rows.append([label, number(entry['fid']),
                         f'{number(entry["kid_mean"], 4)} ± {number(entry["kid_std"], 4)}',
                         number(entry.get('precision')), number(entry.get('recall')),
                         number(entry.get('density')), number(entry.get('coverage'))])
  if quality_rows:
    parts += ['## Sample quality', '', table(
        ['feature space', 'FID', 'KID', 'precision', 'recall', 'density', 'coverage'],
        quality_rows), '']
    domain = results.get('domain_quality')
    if domain and 'fid_real_train_vs_test' in domain:
      parts += [f'Real training vs real test images in the same space: FID '
                f'{number(domain["fid_real_train_vs_test"])} (the floor).', '']
    if domain and 'fid_synthetic_normals' in domain:
      parts += [f'Synthetic normals (what F-AD trains on) vs the real normal films: FID '
                f'{number(domain["fid_synthetic_normals"])}; real normal training films vs the '
                f'same: {number(domain["fid_real_normals_floor"])} (the floor).', '']
    if domain:
      parts += [DOMAIN_NOTE, '']
  memorized = results.get('memorization')
  if memorized:
    parts += ['## Memorization', '',
              f'{number(100 * memorized["fraction_synthetic_below_floor"], 1)}% of '
              f'{memorized["synthetic"]} synthetic normals lie nearer to a real training film '
              f'than the {number(memorized["percentile"], 1)}th percentile of real held-out '
              f'normals\' nearest-training distances ({number(memorized["held_out_floor"])}); '
              f'{memorized["synthetic_below_held_out_minimum"]} are nearer than every held-out '
              'film. Pixel distances (images in [-1, 1]), quantiles:', '',
              table(['', 'min', '1%', '5%', 'median'],
                    [[label, *(number(q[k]) for k in ('p0', 'p1', 'p5', 'p50'))]
                     for label, q in (('synthetic normals', memorized['synthetic_quantiles']),
                                      ('held-out real normals', memorized['held_out_quantiles']))
                     ]), '']
    released = memorized.get('release_filter')
    if released and released['percentile']:
      parts += [f'These are the films left after the hospitals\' release veto: of '
                f'{released["drawn"]} drawn, {released["vetoed"]} lay nearer to one of a '
                f'hospital\'s own films than the {number(released["percentile"], 1)}th percentile '
                'of its films\' distances to another of its patients\' films, and were dropped '
                '(`anomaly.variant.release_filter_percentile`).', '']
  if 'conditioning' in results:
    parts += ['## Conditioning fidelity', '',
              'Attributes read back by a model fitted on real training images, from images '
              'generated for the reference conditions and (ceiling) from the real images.', '',
              table(['attribute', 'metric', 'generated', 'real'],
                    _conditioning_rows(results['conditioning'])), '']
    if results['conditioning']['not_fitted']:
      parts += ['Not read (too few training labels): ' + ', '.join(
          sorted(results['conditioning']['not_fitted'])), '']
  detections = []
  if 'anomaly' in results:
    detections.append(('F-AD: AE on synthetic normals', results['anomaly']))
  personalized = results.get('personalized', {})
  skipped = []
  for method, label in personalized_lib.METHOD_LABELS.items():
    if 'skipped' in personalized.get(method, {}):
      skipped.append(f'{label}: not run, {personalized[method]["skipped"]}')
    elif method in personalized:
      detections.append((label, personalized[method]))
  if 'anomaly' not in results and 'unconditioned' in personalized:
    detections.insert(0, ('F-AD: AE on synthetic normals', personalized['unconditioned']))
  if detections:
    parts += [f'## Anomaly detection (real {results.get("scored_split", "test")} split)', '', table(
        ['detector', 'AUC', 'sensitivity', 'specificity', 'threshold'],
        [_detection_row(label, entry) for label, entry in detections]), '']
    findings = [(label, entry['per_finding_auc']) for label, entry in detections
                if 'per_finding_auc' in entry]
    if findings:
      names = list(findings[0][1])
      parts += ['Per-finding AUC (each finding vs normal images):', '', table(
          ['detector'] + names, [[label] + [number(auc[n]) for n in names]
                                 for label, auc in findings]), '']
  if 'anomaly' in results:
    parts += _operating_point_section(results['anomaly'])
  if skipped:
    parts += ['; '.join(skipped), '']
  record_only = personalized.get('record_only_auc', {})
  telling = {name: auc for name, auc in record_only.items() if abs(auc - 0.5) >= 0.1}
  if telling:
    parts += ['Record columns that alone rank abnormal test patients (AUC; a personalized '
              "detector's gain may come from them rather than from the image): " + ', '.join(
                  f'{name} {number(auc)}' for name, auc in sorted(
                      telling.items(), key=lambda item: -abs(item[1] - 0.5))), '']
  timing = results.get('timing_s', {})
  if timing:
    parts += ['Evaluation time: ' + ', '.join(f'{k} {v:.1f} s' for k, v in timing.items()), '']
  return '\n'.join(parts)


def comparison_markdown(rows: Sequence[Mapping[str, Any]],
                        columns: Sequence[tuple[str, str]]) -> str:
  """A method-per-row table; `columns` are `(key, header)` pairs, the first one a label."""
  return table([header for _, header in columns],
               [[row.get(key, '—') if i == 0 else number(row.get(key))
                 for i, (key, _) in enumerate(columns)] for row in rows])


# Columns of the real-data protocol table (`benchmarks/real_protocol.py`): key, header.
PROTOCOL_COLUMNS = (
    ('auc', 'F-AD AUC (synthetic normals)'),
    ('ceiling_auc', 'ceiling AUC (real normals, pooled)'),
    ('site_alone_auc', 'site alone AUC (mean of hospitals)'),
    ('utility_ratio', 'utility ratio'),
    ('sensitivity_at_specificity', 'sensitivity at the specificity'),
    ('calibrated_sensitivity', 'sensitivity, site-calibrated'),
    ('calibrated_specificity', 'specificity, site-calibrated'),
    ('worst_site_sensitivity', 'lowest sensitivity of a hospital\'s threshold'),
    ('worst_site_specificity', 'lowest specificity of a hospital\'s threshold'),
    ('private_sensitivity', 'sensitivity, private pooled threshold'),
    ('private_specificity', 'specificity, private pooled threshold'),
)


def protocol_row(results: Mapping[str, Any]) -> dict:
  """One run's numbers for the protocol table, from its results.json."""
  anomaly = results['anomaly']
  calibrated = anomaly.get('site_calibrated', {})
  federated, private = calibrated.get('federated', {}), calibrated.get('private_pooled', {})
  sites = [entry for site, entry in calibrated.items()
           if site not in ('federated', 'private_pooled') and isinstance(entry, Mapping)
           and 'sensitivity' in entry]
  return {
      'scored_split': results.get('scored_split', 'test'),
      'step': results.get('step'),
      'step_chosen_on': results.get('checkpoint_selection', {}).get('on'),
      'auc': anomaly['auc'],
      'ceiling_auc': anomaly.get('ceiling', {}).get('auc'),
      'site_alone_auc': anomaly.get('site_alone', {}).get('mean_auc'),
      'utility_ratio': anomaly.get('utility_ratio'),
      'sensitivity_at_specificity': anomaly.get('sensitivity_at_specificity', {}).get(
          'sensitivity'),
      'specificity_target': anomaly.get('sensitivity_at_specificity', {}).get('specificity'),
      'calibrated_sensitivity': federated.get('sensitivity'),
      'calibrated_specificity': federated.get('specificity'),
      'worst_site_sensitivity': min((e['sensitivity'] for e in sites), default=None),
      'worst_site_specificity': min((e['specificity'] for e in sites), default=None),
      'private_sensitivity': private.get('sensitivity'),
      'private_specificity': private.get('specificity'),
      'wall_time_s': results.get('wall_time_s'),
  }


def mean_std(values) -> str:
  """'mean ± std' (sample std, ddof 1) of the finite values, or a dash."""
  finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  if not finite:
    return '—'
  if len(finite) == 1:
    return f'{finite[0]:.3f}'
  mean = sum(finite) / len(finite)
  std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
  return f'{mean:.3f} ± {std:.3f}'


def _round(row: Mapping[str, Any]) -> str:
  """The evaluated round, and where it was chosen when it was."""
  step = '—' if row.get('step') is None else str(row['step'])
  return f'{step} (chosen on {row["step_chosen_on"]})' if row.get('step_chosen_on') else step


def protocol_markdown(config: str, overrides, rows: Mapping[int, Mapping[str, Any]]) -> str:
  """Per-seed rows and their mean ± std, with the command that made them."""
  splits = sorted({row['scored_split'] for row in rows.values()})
  headers = (['seed', 'round'] + [header for _, header in PROTOCOL_COLUMNS]
             + ['main wall time (s)'])
  body = [[str(seed), _round(row)] + [number(row[key]) for key, _ in PROTOCOL_COLUMNS]
          + [number(row['wall_time_s'], 0)] for seed, row in sorted(rows.items())]
  body.append([f'mean ± std ({len(rows)} seeds)', '']
              + [mean_std(row[key] for row in rows.values()) for key, _ in PROTOCOL_COLUMNS]
              + [mean_std(row['wall_time_s'] for row in rows.values())])
  return '\n'.join([
      f'# Real-data protocol: `{config}` {" ".join(overrides)}', '',
      f'Scored split: {", ".join(splits)}. Every detector is the config\'s `anomaly` AE; F-AD '
      'never sees a real film (the hospitals\' real normals only set the calibrated '
      'threshold); the ceiling and site-alone rows are baselines trained on real normals.', '',
      table(headers, body), ''])
