"""Per-round metrics in `metrics.jsonl` and the progress line (rounds, rate, ETA).

On resume the log is cut back to the restored round, so a run killed after its last
checkpoint and restarted leaves exactly one row per round.
"""

from __future__ import annotations

import json
import os


class MetricsLog:
  """Appends one JSON object per line; `truncate_after(r)` drops rows with round > r."""

  def __init__(self, path: str):
    self.path = path

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
