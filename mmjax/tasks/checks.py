"""Host-side checks of a batch's labels against what the model predicts (``Task.check_batch``).

A label the loss cannot use (a class id past the model's classes, a NaN, a token id past the vocabulary)
does not fail in the jitted step: it silently contributes a wrong or zero loss. ``check_batch`` looks at
the real examples of one batch (``batch["_valid"] > 0`` when present) with numpy and raises
:class:`LabelError` naming the batch key, the offending values, how many examples hold them, the valid
range and the fix.
"""

from __future__ import annotations

import numpy as np

from mmjax.errors import InputError

MAX_LISTED = 8  # offending values listed in a message


class LabelError(InputError):
  """Labels (or target tokens) a task cannot learn from: missing, out of range, not integers, not finite."""


def real_rows(batch: dict) -> np.ndarray | None:
  """``[B]`` bool of the real examples (``batch["_valid"] > 0``), or None when every row is real."""
  valid = batch.get("_valid")
  return None if valid is None else np.asarray(valid).reshape(-1) > 0


def labels_of(batch: dict, key: str, task: str) -> np.ndarray:
  """``batch[key]`` on the host, real examples only; a :class:`LabelError` when the batch lacks ``key``."""
  if key not in batch:
    raise LabelError(
        f"task {task!r} reads its labels from batch[{key!r}], which the batch does not have (keys: "
        f"{sorted(batch)}); set task.kwargs.label_key to the batch's label key"
    )
  labels = np.asarray(batch[key])
  rows = real_rows(batch)
  return labels if rows is None or labels.ndim == 0 else labels[rows]


def offending(labels: np.ndarray, bad: np.ndarray) -> str:
  """``"values [7, 9] in 3 of 32 examples"``: the distinct values where ``bad`` holds, and in how many
  examples (rows of ``labels``) they occur."""
  values = np.unique(labels[bad])
  listed = ", ".join(_fmt(v) for v in values[:MAX_LISTED])
  more = f", ... ({len(values)} distinct)" if len(values) > MAX_LISTED else ""
  per_row = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim else np.atleast_1d(bad)
  return f"values [{listed}{more}] in {int(per_row.sum())} of {per_row.shape[0]} examples"


def _fmt(v) -> str:
  v = v.item() if hasattr(v, "item") else v
  return f"{v:g}" if isinstance(v, float) else str(v)


def check_class_ids(labels: np.ndarray, num_classes: int, *, key: str, task: str, fix: str,
                    real_valued: str = "use task.name=regression") -> None:
  """Class ids ``labels`` must be whole numbers in ``[0, num_classes)``; ``fix`` says how to raise the
  model's number of classes (``{n}`` is replaced by the number needed), ``real_valued`` what to do for
  real-valued targets."""
  if labels.size == 0:
    return
  if not np.issubdtype(labels.dtype, np.integer) and not np.issubdtype(labels.dtype, np.bool_):
    whole = np.isfinite(labels) & (labels == np.round(labels))
    if not whole.all():
      raise LabelError(
          f"task {task!r}: batch[{key!r}] holds non-integer {offending(labels, ~whole)}; {task} needs class "
          f"ids 0, 1, ..., C-1: map the labels to class ids (for real-valued targets, {real_valued})"
      )
  bad = (labels < 0) | (labels >= num_classes)
  if not bad.any():
    return
  if (labels < 0).any():
    how = "map the labels to class ids 0, 1, ..., C-1"
  else:
    how = fix.format(n=int(np.max(labels)) + 1)
  raise LabelError(
      f"task {task!r}: batch[{key!r}] holds {offending(labels, bad)} outside the valid range "
      f"[0, {num_classes}) of the model's {num_classes} classes; {how}"
  )


def check_finite(labels: np.ndarray, *, key: str, task: str) -> None:
  """Real-valued targets must be finite."""
  labels = np.asarray(labels, np.float64)
  bad = ~np.isfinite(labels)
  if bad.any():
    raise LabelError(
        f"task {task!r}: batch[{key!r}] holds non-finite {offending(labels, bad)}; the loss cannot learn "
        "from them: drop or fill those examples in the dataset"
    )


# How to give a model more classes (``{n}``: the number needed); the task does not know the model's fields.
CLASSES_FIX = "set model.kwargs.num_classes (output_dim for mult) to at least {n}"
