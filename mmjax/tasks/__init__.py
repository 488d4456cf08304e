"""Tasks: the loss and metrics that turn a model's output into a training signal.

A task is an object with
``loss(outputs, aux, batch) -> (scalar loss, {name: scalar})`` for training and
``eval_sums(outputs, aux, batch) -> {name: sum, ..., "count": n}`` for evaluation, where examples with
``batch["_valid"] == 0`` (padding added to fill the last evaluation batch) count for nothing.
A task whose metrics are not sums (correlation, F1) also defines
``eval_outputs(outputs, aux, batch) -> {name: [B, ...] array}`` (per-example predictions and labels) and
``summarize(arrays) -> {name: float}``, called on the host with the valid examples of a whole split.
"""

from __future__ import annotations

import difflib

from mmjax.tasks.classification import Classification
from mmjax.tasks.multilabel import MultiLabelBinary
from mmjax.tasks.next_token import NextToken
from mmjax.tasks.regression import Regression
from mmjax.tasks.vae import VAE

_TASKS = {"classification": Classification, "regression": Regression,
          "multilabel_binary": MultiLabelBinary, "next_token": NextToken, "vae": VAE}


def get(name: str, **kwargs):
  """The task registered as ``name``, built with ``kwargs``."""
  if name not in _TASKS:
    near = difflib.get_close_matches(name, _TASKS, n=2)
    hint = f"; did you mean {near}?" if near else ""
    raise KeyError(f"unknown task {name!r}; available: {sorted(_TASKS)}{hint}")
  return _TASKS[name](**kwargs)


__all__ = ["Classification", "MultiLabelBinary", "NextToken", "Regression", "VAE", "get"]
