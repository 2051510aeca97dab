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


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = '  ') -> str:
  """A plain-text table: the first column left-aligned, the others right-aligned."""
  cells = [list(headers)] + [[format_value(v) for v in row] for row in rows]
  widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
  lines = []
  for row in cells:
    parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
    lines.append(indent + '  '.join(parts).rstrip())
  return '\n'.join(lines)


def clients_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """`clients.json`'s rows (`dataset.client_summary`) as one table, a row per hospital."""
  columns = [key for key in rows[0] if key != 'name'] if rows else []
  return table(['hospital', *columns],
               ([row['name'], *(row.get(c) for c in columns)] for row in rows))


# The prefix that marks the real-image ceiling of a generated-image metric in a results section.
REAL_PREFIX = 'real_test_'


def results_table(results: Mapping[str, Any],
                  skip: Sequence[str] = ('config', 'roc')) -> str:
  """The scalar results of every section of `results`, one row per metric.

  A section is a top-level dict (e.g. `anomaly`, `conditioning`, `privacy`); a metric
  `x` with a `real_test_x` twin (the same reader on real test images, the ceiling) shows
  both side by side. Lists, nested dicts, missing values (None) and `skip`ped keys stay in
  results.json only.
  """
  rows = []
  for section, values in results.items():
    if section in skip or not isinstance(values, Mapping):
      continue
    for key, value in values.items():
      if key.startswith(REAL_PREFIX) or key in skip or value is None or not _is_scalar(value):
        continue
      rows.append((f'{section}.{key}', value, values.get(REAL_PREFIX + key)))
  return table(['metric', 'value', 'real test images'], rows)


def _is_scalar(value: Any) -> bool:
  # Long strings (a privacy guarantee in words) would stretch the table; results.json has them.
  return isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 24)
