"""Where a run's metrics go: ``metrics.jsonl`` (one JSON object per log window or evaluation) and
TensorBoard event files in ``<workdir>/tensorboard`` (``tensorboard --logdir <workdir>``).

TensorBoard files are written with ``tensorboardX``, a maintained writer of the event format that needs
neither TensorFlow nor PyTorch. Scalars are named ``SPLIT/METRIC`` (``train/loss``,
``validation/accuracy``, ``train/learning_rate``); images (sample grids, robustness curves) by the name
their evaluator gives. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np


class MetricWriter:
  """Writes records to ``metrics.jsonl`` and, with ``tensorboard``, to TensorBoard event files."""

  def __init__(self, workdir, *, tensorboard: bool = True):
    self.workdir = Path(workdir)
    self.enabled = jax.process_index() == 0
    self._tb = None
    if self.enabled and tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"), flush_secs=30)

  def write(self, step: int, split: str, metrics: dict) -> None:
    """One record: ``{"step", "split", **metrics}`` in the JSONL log, and every finite number as the
    TensorBoard scalar ``split/name``."""
    if not self.enabled:
      return
    with (self.workdir / "metrics.jsonl").open("a") as f:
      f.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    if self._tb is not None:
      for name, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
          self._tb.add_scalar(f"{split}/{name}", value, step)

  def write_images(self, step: int, images: dict) -> None:
    """Images ``{name: [H, W] or [H, W, 3] uint8}`` into TensorBoard (the PNG files are the evaluator's)."""
    if not (self.enabled and self._tb is not None):
      return
    for name, image in images.items():
      image = np.asarray(image)
      self._tb.add_image(name, image, step, dataformats="HW" if image.ndim == 2 else "HWC")

  def flush(self) -> None:
    """Pushes buffered TensorBoard events to disk."""
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None
