"""PNG figures drawn with Pillow (no plotting library needed): sample grids, ROC curves."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

_COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))


def save_image_grid(path: str, grid: np.ndarray, scale: int = 2, gap: int = 2) -> None:
  """Saves uint8 `(rows, columns, H, W, 1)` as one grayscale PNG."""
  rows, columns, height, width = grid.shape[:4]
  canvas = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap), 255, np.uint8)
  for r in range(rows):
    for c in range(columns):
      top, left = gap + r * (height + gap), gap + c * (width + gap)
      canvas[top:top + height, left:left + width] = grid[r, c, ..., 0]
  image = Image.fromarray(canvas, mode='L')
  image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def save_roc_png(path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
                 size: int = 480, title: str = 'ROC') -> None:
  """Saves ROC curves `{label: (fpr, tpr, auc)}` with axes, the chance line and a legend."""
  margin = 50
  image = Image.new('RGB', (size, size), 'white')
  draw = ImageDraw.Draw(image)
  side = size - 2 * margin
  to_xy = lambda fpr, tpr: (margin + fpr * side, size - margin - tpr * side)
  draw.rectangle([margin, margin, size - margin, size - margin], outline='black')
  for tick in np.linspace(0, 1, 6):
    x, y = to_xy(tick, tick)
    draw.line([x, size - margin, x, size - margin + 4], fill='black')
    draw.line([margin - 4, y, margin, y], fill='black')
    draw.text((x - 8, size - margin + 6), f'{tick:.1f}', fill='black')
    draw.text((margin - 30, y - 6), f'{tick:.1f}', fill='black')
  draw.line([to_xy(0, 0), to_xy(1, 1)], fill=(160, 160, 160))
  draw.text((size // 2 - 60, size - 20), 'false positive rate', fill='black')
  draw.text((5, 15), 'true positive rate', fill='black')
  draw.text((size // 2 - 20, 15), title, fill='black')
  for i, (label, (fpr, tpr, auc)) in enumerate(curves.items()):
    color = _COLORS[i % len(_COLORS)]
    draw.line([to_xy(f, t) for f, t in zip(fpr, tpr)], fill=color, width=2)
    draw.text((margin + side // 2, size - margin - 20 - 14 * i), f'{label}: AUC {auc:.3f}',
              fill=color)
  image.save(path)
