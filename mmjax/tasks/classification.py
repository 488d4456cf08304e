"""Single-label classification: softmax cross-entropy loss, accuracy; per-example predictions for the
confusion matrix (``mmjax.evaluators.split_metrics`` writes it)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from mmjax.tasks import checks


def example_weights(batch: dict, n: int):
  """``[B]`` float weights: ``batch["_valid"]`` when present (evaluation padding), else ones."""
  w = batch.get("_valid")
  return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Classification:
  """Cross-entropy on ``logits [B, C]`` against integer ``batch[label_key] [B]``."""

  label_key: str = "label"
  label_smoothing: float = 0.0

  def _per_example(self, logits, batch):
    labels = batch[self.label_key].astype(jnp.int32)
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax_one_hot(labels, num_classes), self.label_smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return losses, correct

  def loss(self, outputs, aux, batch):
    """Mean cross-entropy over the batch, and the batch accuracy."""
    del aux
    losses, correct = self._per_example(outputs, batch)
    w = example_weights(batch, losses.shape[0])
    n = jnp.maximum(w.sum(), 1.0)
    loss = (losses * w).sum() / n
    return loss, {"loss": loss, "accuracy": (correct * w).sum() / n}

  def eval_sums(self, outputs, aux, batch):
    """Sums of loss and correct predictions over valid examples, and their count."""
    del aux
    losses, correct = self._per_example(outputs, batch)
    w = example_weights(batch, losses.shape[0])
    return {"loss": (losses * w).sum(), "accuracy": (correct * w).sum(), "count": w.sum()}

  def eval_outputs(self, outputs, aux, batch):
    """Per-example ``prediction`` (argmax class) and ``label`` ``[B]`` int32, for a confusion matrix."""
    del aux
    return {"prediction": jnp.argmax(outputs, -1).astype(jnp.int32),
            "label": batch[self.label_key].astype(jnp.int32)}

  def summarize(self, arrays):
    """No split-level scalar beyond the sums; the predictions are kept for the confusion matrix."""
    del arrays
    return {}

  def check_batch(self, batch: dict, outputs_shape: tuple) -> None:
    """Labels of the real examples must be class ids in ``[0, C)``, ``C = outputs_shape[-1]``."""
    labels = checks.labels_of(batch, self.label_key, "classification")
    checks.check_class_ids(labels, int(outputs_shape[-1]), key=self.label_key, task="classification",
                           fix=checks.CLASSES_FIX)


def jax_one_hot(labels, num_classes):
  """One-hot ``[B, C]`` float32 of integer ``labels [B]``."""
  return (labels[:, None] == jnp.arange(num_classes)[None, :]).astype(jnp.float32)
