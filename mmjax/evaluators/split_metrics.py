"""``split_metrics``: the task's metrics over every example of a split.

Metric sums from ``task.eval_sums`` are divided by the number of real examples; metrics that are not sums
(correlation, F1) come from ``task.summarize`` over the per-example outputs of the whole split. For a
classification task (per-example ``prediction`` and ``label``) the confusion matrix is written to
``<workdir>/confusion/<name>.json`` (``{"split", "step", "labels", "matrix"}``: rows are true classes,
columns predictions), which ``mmjax plot`` draws.

kwargs: ``split`` (default: ``data.eval_split``), ``batch_size`` (default: ``eval_batch_size``),
``confusion`` (default True).
"""

from __future__ import annotations

import jax
import numpy as np

from mmjax.evaluators.registry import Result, register
from mmjax.files import write_json


def split_metrics(run, params, split: str, batch_size: int | None = None, transform=None
                  ) -> tuple[dict, dict]:
  """``(metrics, per_example)``: the task's metric means over every example of ``split`` (plus
  ``count``), and the per-example arrays of the task's ``eval_outputs`` for the real examples.
  ``transform(batch, index) -> batch`` changes each global batch first (e.g. corrupts a modality)."""
  total, collected = None, []
  for index, batch in enumerate(run.eval_batches(split, batch_size)):
    if transform is not None:
      batch = transform(batch, index)
    sums, per_example = run.eval_step(params, batch)
    total = sums if total is None else jax.tree_util.tree_map(lambda a, b: a + b, total, sums)
    if per_example:
      collected.append(per_example)
  total = jax.device_get(total)
  count = float(total.pop("count"))
  result = {k: float(v) / max(count, 1.0) for k, v in total.items()}
  arrays = {}
  if collected:  # metrics over all predictions (correlation, F1, ...)
    host = jax.device_get(collected)
    arrays = {k: np.concatenate([np.asarray(c[k]) for c in host]) for k in host[0]}
    valid = arrays.pop("_valid") > 0
    arrays = {k: v[valid] for k, v in arrays.items()}
    result.update(run.task.summarize(arrays))
  return {**result, "count": int(count)}, arrays


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """``[C, C]`` counts: row = true class, column = predicted class."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
  return m


@register("split_metrics")
class SplitMetrics:
  """The task's metrics on ``split`` (see the module docstring)."""

  def __init__(self, run, split: str = "", batch_size: int | None = None, confusion: bool = True):
    self.run = run
    self.split = split or run.config.data.eval_split
    self.batch_size = batch_size
    self.confusion = confusion

  def evaluate(self, params, *, step: int, name: str) -> Result:
    metrics, arrays = split_metrics(self.run, params, self.split, self.batch_size)
    files = []
    if self.confusion and {"prediction", "label"} <= set(arrays) and self.run.is_main:
      num_classes = int(max(arrays["label"].max(initial=0), arrays["prediction"].max(initial=0))) + 1
      num_classes = max(num_classes, int(getattr(self.run.model, "num_classes", 0) or 0))
      matrix = confusion_matrix(arrays["label"], arrays["prediction"], num_classes)
      path = self.run.workdir / "confusion" / f"{name}.json"
      write_json(path, {"split": self.split, "step": step, "labels": list(range(num_classes)),
                        "matrix": matrix.tolist()})
      files.append(path)
    return Result(metrics, files=files)


__all__ = ["SplitMetrics", "confusion_matrix", "split_metrics"]
