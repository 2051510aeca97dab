"""Per-round metrics in `metrics.jsonl` (and TensorBoard), and the progress line (rate, ETA).

`metrics.jsonl` is the record a run resumes from: on resume it is cut back to the restored
round, so a run killed after its last checkpoint and restarted leaves exactly one row per
round. Each row also goes to a `clu.metric_writers` writer when one is given, the flax
examples' convention; `tensorboard_writer` makes clu's default writer (TensorBoard event
files in the workdir) where clu and TensorFlow are installed (`pip install -e
".[tensorboard]"`: clu's writers package imports TensorFlow, hundreds of MB, so it is
optional). Events of rounds undone by a resume stay in the event files; TensorBoard shows
the later values of a round.
"""

from __future__ import annotations

import json
import numbers
import os
from typing import Any

from absl import logging
import jax


def tensorboard_writer(logdir: str) -> Any | None:
  """clu's `create_default_writer(logdir)`, or None where clu or TensorFlow is missing."""
  if logging.get_verbosity() < 1:
    # TensorFlow's C++ start-up INFO lines (oneDNN notes) would bypass the console's quiet
    # default (fedgan_jax/console.py); a user's own TF_CPP_MIN_LOG_LEVEL wins.
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    logging.debug('No TensorBoard events (%s); pip install -e ".[tensorboard]" adds them.', error)
    return None
  return metric_writers.create_default_writer(logdir, asynchronous=True)


def parameter_count(params) -> int:
  return sum(int(leaf.size) for leaf in jax.tree.leaves(params))


class MetricsLog:
  """Appends one JSON object per line; `truncate_after(r)` drops rows with round > r.

  Args:
    path: the JSON-lines file.
    writer: optional `clu.metric_writers.MetricWriter`; each appended row's numbers are
      written to it as scalars at step `row['round']`.
  """

  def __init__(self, path: str, writer: Any | None = None):
    self.path = path
    self.writer = writer

  def truncate_after(self, round_index: int) -> None:
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except json.JSONDecodeError:
          continue  # A line cut short by a kill.
        if row.get('round', 0) <= round_index:
          kept.append(line if line.endswith('\n') else line + '\n')
    with open(self.path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(self.path + '.tmp', self.path)

  def append(self, row: dict) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    if self.writer is not None:
      self.writer.write_scalars(int(row['round']), {
          k: v for k, v in row.items()
          if k != 'round' and isinstance(v, numbers.Real) and not isinstance(v, bool)})

  def close(self) -> None:
    """Flushes and closes the writer (the JSON lines are written as they come)."""
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()
      self.writer = None

  def read(self) -> list[dict]:
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{seconds:02d}s' if hours else f'{minutes}m{seconds:02d}s'


class Progress:
  """Rounds done, rate and ETA; the first round of a process (compilation) is not counted."""

  def __init__(self, total_rounds: int, start_round: int):
    self.total, self.done = total_rounds, start_round
    self._timed_rounds, self._timed_seconds, self._first = 0, 0.0, True

  def update(self, done: int, round_seconds: float) -> None:
    self.done = done
    if self._first:
      self._first = False
      return
    self._timed_rounds += 1
    self._timed_seconds += round_seconds

  @property
  def rounds_per_second(self) -> float:
    return self._timed_rounds / self._timed_seconds if self._timed_seconds else 0.0

  def line(self) -> str:
    rate = self.rounds_per_second
    eta = format_duration((self.total - self.done) / rate) if rate else '?'
    return (f'round {self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f}%) | '
            f'{rate:.2f} rounds/s | ETA {eta}')
