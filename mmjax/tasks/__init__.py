"""Tasks: the loss and metrics that turn a model's output into a training signal.

A task is an object with
``loss(outputs, aux, batch) -> (scalar loss, {name: scalar})`` for training and
``eval_sums(outputs, aux, batch) -> {name: sum, ..., "count": n}`` for evaluation, where examples with
``batch["_valid"] == 0`` (padding added to fill the last evaluation batch) count for nothing.
A task whose metrics are not sums (correlation, F1) also defines
``eval_outputs(outputs, aux, batch) -> {name: [B, ...] array}`` (per-example predictions and labels) and
``summarize(arrays) -> {name: float}``, called on the host with the valid examples of a whole split.

Every task also defines ``check_batch(batch, outputs_shape) -> None``: a host-side (numpy) check of one
batch's labels against the model's output shape ``outputs_shape`` (e.g. ``(B, C)``), run by the engine on
the first batch of training and of evaluation. It looks at the real examples only (``batch["_valid"] > 0``
when present) and raises :class:`~mmjax.tasks.checks.LabelError` (a ``UserError``) naming the label key,
the offending values and how many examples hold them, the valid range and the fix, where the jitted loss
would silently learn nothing from them (a class id past the model's classes, a NaN, a token id past the
vocabulary).
"""

from __future__ import annotations

import dataclasses
import difflib

from mmjax.errors import ConfigError
from mmjax.tasks.checks import LabelError
from mmjax.tasks.classification import Classification
from mmjax.tasks.contrastive import Contrastive
from mmjax.tasks.multilabel import MultiLabelBinary
from mmjax.tasks.next_token import NextToken
from mmjax.tasks.pretraining import Pretraining
from mmjax.tasks.regression import Regression
from mmjax.tasks.vae import VAE

_TASKS = {"classification": Classification, "regression": Regression,
          "multilabel_binary": MultiLabelBinary, "next_token": NextToken, "vae": VAE,
          "contrastive": Contrastive, "pretraining": Pretraining}


def names() -> list[str]:
  """Sorted names of every task."""
  return sorted(_TASKS)


def get(name: str, **kwargs):
  """The task registered as ``name``, built with ``kwargs`` (its dataclass fields)."""
  if name not in _TASKS:
    near = difflib.get_close_matches(name, _TASKS, n=2)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    raise ConfigError(f"unknown task {name!r}.{hint} Valid names: {', '.join(names())}.")
  try:
    return _TASKS[name](**kwargs)
  except TypeError as e:
    fields = [f.name for f in dataclasses.fields(_TASKS[name])]
    raise ConfigError(f"task {name!r} cannot take task.kwargs {sorted(kwargs)} ({e}); its fields: "
                      f"{fields}") from None


__all__ = ["Classification", "Contrastive", "LabelError", "MultiLabelBinary", "NextToken", "Pretraining",
           "Regression", "VAE", "get", "names"]
