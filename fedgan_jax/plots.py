"""PNG figures: labelled sample grids, ROC curves and training curves (matplotlib, Agg).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly, never
through pyplot: no display is needed, no global state is touched, and the helpers are safe
to call from any thread or process of a run.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

# Curves of `metrics.jsonl` drawn by `save_training_curves`, by panel; absent keys are skipped.
TRAINING_PANELS = (
    ('losses', ('d_loss', 'g_loss', 'cond_loss')),
    ("D's mean output", ('d_real', 'd_fake')),
    ('privacy spent (epsilon)', ('epsilon',)),
)
_STYLE = {'font.size': 9, 'axes.spines.top': False, 'axes.spines.right': False}


def _rc():
  return matplotlib.rc_context(_STYLE)


def _figure(width_in: float, height_in: float, layout: str | None = 'constrained') -> Figure:
  figure = Figure(figsize=(width_in, height_in), dpi=100, layout=layout)
  FigureCanvasAgg(figure)
  return figure


def _save(figure: Figure, path: str) -> None:
  figure.savefig(path, dpi=figure.dpi, facecolor='white')


def mosaic(grid: np.ndarray, gap: int = 2) -> np.ndarray:
  """uint8 `(rows, columns, H, W, 1)` -> one grayscale canvas, images `gap` white pixels apart."""
  rows, columns, height, width = grid.shape[:4]
  canvas = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap), 255, np.uint8)
  for r in range(rows):
    for c in range(columns):
      top, left = gap + r * (height + gap), gap + c * (width + gap)
      canvas[top:top + height, left:left + width] = grid[r, c, ..., 0]
  return canvas


def save_image_grid(path: str, grid: np.ndarray, row_labels: Sequence[str] | None = None,
                    column_labels: Sequence[str] | None = None, title: str | None = None,
                    scale: int = 2, gap: int = 2) -> None:
  """Saves uint8 `(rows, columns, H, W, 1)` as a grayscale PNG with labelled rows and columns.

  Each image pixel becomes `scale` x `scale` output pixels (nearest neighbour), so the
  images are shown as generated, not smoothed.
  """
  rows, columns, height, width = grid.shape[:4]
  canvas = mosaic(grid, gap)
  with _rc():
    # The axes fill a figure of exactly the mosaic's scaled size; labels and title lie
    # outside it, and the tight bounding box at save time grows the PNG to hold them.
    figure = _figure(canvas.shape[1] * scale / 100, canvas.shape[0] * scale / 100, layout=None)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.imshow(canvas, cmap='gray', vmin=0, vmax=255, interpolation='nearest')
    centers = lambda n, size: [gap + i * (size + gap) + (size - 1) / 2 for i in range(n)]
    axes.set_yticks(centers(rows, height), list(row_labels) if row_labels else [''] * rows)
    axes.set_xticks(centers(columns, width),
                    list(column_labels) if column_labels else [''] * columns)
    axes.xaxis.tick_top()
    axes.tick_params(length=0)
    for spine in axes.spines.values():
      spine.set_visible(False)
    if title:
      axes.set_title(title, pad=6 if column_labels is None else 18)
    figure.savefig(path, dpi=figure.dpi, facecolor='white', bbox_inches='tight', pad_inches=0.08)


def save_roc_png(path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
                 title: str = 'ROC') -> None:
  """Saves ROC curves `{label: (fpr, tpr, auc)}` with the chance line and a legend."""
  with _rc():
    figure = _figure(4.2, 4.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color='0.6', linestyle='--', linewidth=0.8, label='chance')
    for label, (fpr, tpr, auc) in curves.items():
      axes.plot(fpr, tpr, linewidth=1.6, drawstyle='steps-post',
                label=f'{label} (AUC {auc:.3f})')
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel='false positive rate',
             ylabel='true positive rate', title=title, aspect='equal')
    axes.grid(alpha=0.3, linewidth=0.5)
    axes.legend(loc='lower right', frameon=False, fontsize=8)
    _save(figure, path)


def save_training_curves(path: str, rows: Sequence[Mapping[str, float]],
                         title: str | None = None) -> bool:
  """Saves `metrics.jsonl` rows as one panel per group of `TRAINING_PANELS` against the round.

  Returns:
    False (and writes nothing) when no row holds any of the panels' metrics.
  """
  panels = [(name, [k for k in keys if any(k in row for row in rows)])
            for name, keys in TRAINING_PANELS]
  panels = [(name, keys) for name, keys in panels if keys]
  if not panels:
    return False
  with _rc():
    figure = _figure(3.4 * len(panels), 2.9)
    for index, (name, keys) in enumerate(panels):
      axes = figure.add_subplot(1, len(panels), index + 1)
      for key in keys:
        points = [(row['round'], row[key]) for row in rows if key in row and 'round' in row]
        rounds, values = zip(*points)
        axes.plot(rounds, values, linewidth=1.0, label=key)
      axes.set(xlabel='round', title=name)
      axes.xaxis.set_major_locator(MaxNLocator(integer=True))
      axes.grid(alpha=0.3, linewidth=0.5)
      if len(keys) > 1:
        axes.legend(frameon=False, fontsize=8)
    if title:
      figure.suptitle(title)
    _save(figure, path)
  return True
