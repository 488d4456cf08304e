"""Several binary labels per example, each a 2-way softmax (IEMOCAP emotions, as MulT trains them)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from mmjax.metrics import IEMOCAP_EMOTIONS, iemocap_metrics
from mmjax.tasks import checks
from mmjax.tasks.classification import example_weights


@dataclasses.dataclass(frozen=True)
class MultiLabelBinary:
  """``outputs [B, 2K]`` read as ``[B, K, 2]``; ``batch[label_key] [B, K]`` holds 0/1 per label.

  The loss is the mean 2-way cross-entropy over the K labels (MulT's IEMOCAP objective: output dim 8
  reshaped to 4 emotions x 2). Evaluation adds per-label accuracy and weighted F1
  (:func:`mmjax.metrics.iemocap_metrics`).
  """

  label_key: str = "label"
  labels: tuple = IEMOCAP_EMOTIONS

  def _logits_labels(self, outputs, batch):
    k = len(self.labels)
    if outputs.ndim != 2 or outputs.shape[-1] != 2 * k:
      raise ValueError(f"expected outputs [B, {2 * k}] for {k} binary labels; got {outputs.shape}")
    logits = outputs.reshape(outputs.shape[0], k, 2).astype(jnp.float32)
    return logits, batch[self.label_key].astype(jnp.int32)

  def _per_example(self, outputs, batch):
    logits, labels = self._logits_labels(outputs, batch)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(-1)

  def loss(self, outputs, aux, batch):
    """Mean cross-entropy over examples and labels."""
    del aux
    losses = self._per_example(outputs, batch)
    w = example_weights(batch, losses.shape[0])
    loss = (losses * w).sum() / jnp.maximum(w.sum(), 1.0)
    return loss, {"loss": loss}

  def eval_sums(self, outputs, aux, batch):
    """Sum of per-example losses over valid examples, and their count."""
    del aux
    losses = self._per_example(outputs, batch)
    w = example_weights(batch, losses.shape[0])
    return {"loss": (losses * w).sum(), "count": w.sum()}

  def eval_outputs(self, outputs, aux, batch):
    """Per-example ``[B, K, 2]`` logits and ``[B, K]`` labels."""
    del aux
    logits, labels = self._logits_labels(outputs, batch)
    return {"logits": logits, "label": labels}

  def summarize(self, arrays):
    """Per-label accuracy and weighted F1 over a whole split."""
    return iemocap_metrics(arrays["logits"], arrays["label"], emotions=tuple(self.labels))

  def check_batch(self, batch: dict, outputs_shape: tuple) -> None:
    """Labels of the real examples must be ``[B, K]`` 0/1 flags, ``K = outputs_shape[-1] // 2`` (which
    must also be the number of names in ``labels``)."""
    task, key, width = "multilabel_binary", self.label_key, int(outputs_shape[-1])
    k = width // 2
    if width != 2 * len(self.labels):
      raise checks.LabelError(
          f"task {task!r}: the model has {width} outputs (2 per binary label) but task.kwargs.labels names "
          f"{len(self.labels)} labels {tuple(self.labels)}; set model.kwargs.output_dim to "
          f"{2 * len(self.labels)}, or list {k} label names in task.kwargs.labels"
      )
    labels = checks.labels_of(batch, key, task)
    if labels.ndim != 2 or labels.shape[1] != k:
      shape = "[" + ", ".join(str(d) for d in np.shape(batch[key])) + "]"
      raise checks.LabelError(
          f"task {task!r}: batch[{key!r}] has shape {shape} but the model predicts {k} binary labels "
          f"(outputs [B, {width}]), so the labels must be [B, {k}]; set model.kwargs.output_dim to twice the "
          "number of labels and task.kwargs.labels to their names"
      )
    bad = (labels != 0) & (labels != 1)
    if bad.any():
      raise checks.LabelError(
          f"task {task!r}: batch[{key!r}] holds {checks.offending(labels, bad)} that are not 0/1 flags; "
          f"{task} takes one 0/1 flag per label: binarize the labels (e.g. label > 0)"
      )
