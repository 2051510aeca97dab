"""What a run prints: library logs kept quiet, a setup summary and a final results table.

At absl's default `--verbosity=0` the console shows this project's INFO lines and every
library's warnings and errors; the INFO chatter of Orbax (each checkpoint logs dozens of
lines), jax, flwr, clu's logging writer and the rest is dropped. `--verbosity=1` (or
`-v 1`) shows all of it again, with DEBUG. The switch is a filter on the handlers, read at
each record, so a verbosity changed at run time takes effect at once.
"""

from __future__ import annotations

import logging as std_logging
import math
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

from absl import logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# This project's code outside the package (an editable checkout): configs, benchmarks, launch.
_FIRST_PARTY_DIRS = tuple(
    os.path.join(directory, '') for directory in
    [_PACKAGE_DIR] + [os.path.join(os.path.dirname(_PACKAGE_DIR), name)
                      for name in ('configs', 'benchmarks', 'launch')])
# Loggers with handlers of their own (besides the root's absl handler) that print INFO.
_LIBRARY_LOGGERS_WITH_HANDLERS = ('flwr',)


def is_first_party(path: str) -> bool:
  return os.path.abspath(path).startswith(_FIRST_PARTY_DIRS)


class LibraryInfoFilter(std_logging.Filter):
  """Drops records below WARNING that libraries log, unless `--verbosity` is 1 or more."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING or logging.get_verbosity() >= 1:
      return True
    return is_first_party(record.pathname)


_FILTER = LibraryInfoFilter()


def quiet_library_logs() -> None:
  """Installs `LibraryInfoFilter` on absl's handler and on the libraries' own handlers."""
  handlers = [logging.get_absl_handler()]
  for name in _LIBRARY_LOGGERS_WITH_HANDLERS:
    if name in sys.modules:
      handlers += std_logging.getLogger(name).handlers
  for handler in handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)


def format_value(value: Any) -> str:
  """Numbers to 3 significant decimals (integers whole); None and NaN as '-'."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  if isinstance(value, bool) or isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
      return f'{value:.3g}'
    return f'{value:.3f}'
  return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = '  ',
          text_columns: int = 1) -> str:
  """A plain-text table: the first `text_columns` columns left-aligned, the rest right-aligned."""
  cells = [list(headers)] + [[format_value(v) for v in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
  lines = []
  for row in cells:
    parts = [c.ljust(w) if i < text_columns else c.rjust(w)
             for i, (c, w) in enumerate(zip(row, widths))]
    lines.append(indent + '  '.join(parts).rstrip())
  return '\n'.join(lines)


def clients_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """`clients.json`'s rows (`dataset.client_summary`) as one table, a row per hospital."""
  columns = [key for key in rows[0] if key != 'name'] if rows else []
  return table(['hospital', *columns],
               ([row['name'], *(row.get(c) for c in columns)] for row in rows))


# Per evaluator, the numbers the console's results table shows (all of them are in
# results.json and eval/results.md).
HEADLINE_METRICS = {
    'anomaly': ('auc', 'sensitivity', 'specificity'),
    'inception_fid': ('fid', 'kid_mean'),
    'domain_quality': ('fid', 'kid_mean', 'precision', 'recall', 'fid_synthetic_normals'),
    'memorization': ('fraction_synthetic_below_floor',),
    'privacy': ('epsilon', 'delta'),
}
# Where a headline number has a real-image counterpart in its section (the real-vs-real
# floor of a FID, the detector trained on real normals), its path, shown beside it.
REAL_IMAGES = {
    'domain_quality': {'fid': ('fid_real_train_vs_test',),
                       'fid_synthetic_normals': ('fid_real_normals_floor',)},
    'anomaly': {'auc': ('ceiling', 'auc')},
}


def results_table(results: Mapping[str, Any]) -> str:
  """The headline numbers of each evaluator in `results` (evaluation's results.json), a row each.

  Beside a number, where the section has one, the same measure on real images: for
  conditioning, the attribute reader on the real reference images (its ceiling); for FIDs, the
  real-vs-real floor; for the detector, the same detector trained on real normals. Other
  detectors (personalized) show their AUC.
  """
  rows = []
  for name in [*results.get('evaluators', ()), 'privacy']:
    section = results.get(name)
    if not isinstance(section, Mapping):
      continue
    if 'skipped' in section:
      rows.append((name, 'skipped (see eval/results.md)', None, None))
    elif name == 'conditioning':
      rows += _conditioning_rows(section)
    else:
      twins = REAL_IMAGES.get(name, {})
      rows += [(name, key, section[key], _lookup(section, twins.get(key, ())))
               for key in HEADLINE_METRICS.get(name, ())
               if isinstance(section.get(key), (int, float))]
      shown = {path[0] for path in twins.values()}
      rows += [(name, f'{key} auc', value['auc'], None) for key, value in section.items()
               if key not in shown and isinstance(value, Mapping)
               and isinstance(value.get('auc'), (int, float))]
  # An evaluator's name on its first row only, so its rows read as one block.
  rows = [('' if i and rows[i - 1][0] == row[0] else row[0], *row[1:])
          for i, row in enumerate(rows)]
  return table(['evaluator', 'metric', 'value', 'real images'], rows, text_columns=2)


def _lookup(section: Mapping[str, Any], path: Sequence[str]) -> Any:
  value = section if path else None
  for key in path:
    value = value.get(key) if isinstance(value, Mapping) else None
  return value


def _conditioning_rows(section: Mapping[str, Any]) -> list[tuple]:
  generated, real = section.get('generated', {}), section.get('real_reference', {})
  rows = []
  for feature, entry in generated.items():
    if not isinstance(entry, Mapping):
      rows.append(('conditioning', feature, entry, real.get(feature)))
      continue
    metric = next((k for k in ('pearson_r', 'auc', 'mean_auc')
                   if isinstance(entry.get(k), (int, float))), None)
    if metric is not None:
      rows.append(('conditioning', f'{feature} {metric}', entry[metric],
                   real.get(feature, {}).get(metric)))
  return rows
