"""Scalar regression (CMU-MOSI / MOSEI sentiment in [-3, 3]): L1 or L2 loss, paper metrics."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from mmjax.errors import ConfigError
from mmjax.metrics import mosi_metrics
from mmjax.tasks import checks
from mmjax.tasks.classification import aux_loss_sums, aux_losses, example_weights

LOSSES = ("l1", "l2")
METRICS = ("mosi", "")


@dataclasses.dataclass(frozen=True)
class Regression:
  """Predicts ``batch[label_key] [B]`` (or ``[B, 1]``) from ``outputs [B, 1]``.

  ``loss="l1"`` is the L1 loss MulT trains MOSI/MOSEI with (Tsai et al., 2019); ``metrics="mosi"`` adds
  MAE, Pearson correlation, Acc7/Acc5, binary accuracy and F1 in both conventions
  (:func:`mmjax.metrics.mosi_metrics`) to every evaluation.
  """

  label_key: str = "label"
  loss_type: str = "l1"  # or "l2"
  metrics: str = "mosi"  # or "" for the loss only
  label_range: tuple | None = None  # (low, high): check_batch rejects labels outside it; None = unchecked

  def __post_init__(self):
    if self.loss_type not in LOSSES:
      raise ValueError(f"unknown regression loss {self.loss_type!r}; available: {LOSSES}")
    if self.metrics not in METRICS:
      raise ValueError(f"unknown regression metrics {self.metrics!r}; available: {METRICS}")
    if self.label_range is not None:
      try:
        low, high = (float(v) for v in self.label_range)
      except (TypeError, ValueError):
        low, high = 1.0, 0.0
      if not low <= high:
        raise ConfigError(f"task.kwargs.label_range must be (low, high) with low <= high, or None; got "
                          f"{self.label_range!r}")
      object.__setattr__(self, "label_range", (low, high))  # hashable, whatever sequence the config gave

  def _errors(self, outputs, batch):
    if outputs.ndim != 2 or outputs.shape[-1] != 1:
      raise ValueError(f"regression expects outputs [B, 1]; got {outputs.shape} (set output_dim=1)")
    pred = outputs[:, 0].astype(jnp.float32)
    label = batch[self.label_key].reshape(pred.shape[0]).astype(jnp.float32)
    diff = pred - label
    return pred, label, jnp.abs(diff) if self.loss_type == "l1" else diff**2

  def loss(self, outputs, aux, batch):
    """Mean L1 (or L2) error over the batch, plus the model's auxiliary losses (``aux["losses"]``, see
    :mod:`mmjax.tasks.classification`)."""
    _, _, errors = self._errors(outputs, batch)
    w = example_weights(batch, errors.shape[0])
    extra, extra_metrics = aux_losses(aux, w)
    loss = (errors * w).sum() / jnp.maximum(w.sum(), 1.0) + extra
    return loss, {"loss": loss, **extra_metrics}

  def eval_sums(self, outputs, aux, batch):
    """Sum of errors (auxiliary losses included) over valid examples, and their count."""
    _, _, errors = self._errors(outputs, batch)
    w = example_weights(batch, errors.shape[0])
    extra, extra_sums = aux_loss_sums(aux, w)
    return {"loss": (errors * w).sum() + extra, "count": w.sum(), **extra_sums}

  def eval_outputs(self, outputs, aux, batch):
    """Per-example predictions and labels, for the split-level metrics."""
    del aux
    pred, label, _ = self._errors(outputs, batch)
    return {"pred": pred, "label": label}

  def summarize(self, arrays):
    """Paper metrics over a whole split."""
    return mosi_metrics(arrays["pred"], arrays["label"]) if self.metrics == "mosi" else {}

  def check_batch(self, batch: dict, outputs_shape: tuple) -> None:
    """Labels of the real examples must be finite, and inside ``label_range`` when it is set."""
    del outputs_shape
    labels = np.asarray(checks.labels_of(batch, self.label_key, "regression"), np.float64)
    checks.check_finite(labels, key=self.label_key, task="regression")
    if self.label_range is None:
      return
    low, high = self.label_range
    bad = (labels < low) | (labels > high)
    if bad.any():
      raise checks.LabelError(
          f"task 'regression': batch[{self.label_key!r}] holds {checks.offending(labels, bad)} outside "
          f"task.kwargs.label_range [{low:g}, {high:g}]; fix those labels in the dataset, or widen "
          "task.kwargs.label_range (None checks no range)"
      )
