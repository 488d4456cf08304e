"""Single-label classification: softmax cross-entropy loss, accuracy; per-example predictions for the
confusion matrix (``mmjax.evaluators.split_metrics`` writes it).

Auxiliary losses (shared with :mod:`mmjax.tasks.regression`): a model may return
``aux["losses"] = {name: (per_example [B], weight)}`` (e.g. MCTN's translation and cycle losses); the task
adds ``weight * mean_B(per_example)`` over the valid examples to its loss, in training and in evaluation,
and reports each unweighted mean under ``name`` (:func:`aux_losses`, :func:`aux_loss_sums`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from mmjax.tasks import checks


def example_weights(batch: dict, n: int):
  """``[B]`` float weights: ``batch["_valid"]`` when present (evaluation padding), else ones."""
  w = batch.get("_valid")
  return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


def _aux_terms(aux) -> dict:
  return dict(aux.get("losses") or {}) if isinstance(aux, dict) else {}


def aux_losses(aux, w):
  """``(weighted total, {name: mean})`` of the model's ``aux["losses"]`` over examples weighted by ``w [B]``
  (0.0 and ``{}`` when there are none)."""
  n = jnp.maximum(w.sum(), 1.0)
  total, metrics = 0.0, {}
  for name, (per_example, weight) in _aux_terms(aux).items():
    mean = (per_example.astype(jnp.float32) * w).sum() / n
    metrics[name] = mean
    total = total + weight * mean
  return total, metrics


def aux_loss_sums(aux, w):
  """``(weighted total sum, {name: sum})`` of ``aux["losses"]`` over examples weighted by ``w [B]``."""
  total, sums = 0.0, {}
  for name, (per_example, weight) in _aux_terms(aux).items():
    s = (per_example.astype(jnp.float32) * w).sum()
    sums[name] = s
    total = total + weight * s
  return total, sums


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
    """Mean cross-entropy over the batch (plus the model's auxiliary losses), and the batch accuracy."""
    losses, correct = self._per_example(outputs, batch)
    w = example_weights(batch, losses.shape[0])
    n = jnp.maximum(w.sum(), 1.0)
    extra, extra_metrics = aux_losses(aux, w)
    loss = (losses * w).sum() / n + extra
    return loss, {"loss": loss, "accuracy": (correct * w).sum() / n, **extra_metrics}

  def eval_sums(self, outputs, aux, batch):
    """Sums of loss (auxiliary losses included) and correct predictions over valid examples, and their
    count."""
    losses, correct = self._per_example(outputs, batch)
    w = example_weights(batch, losses.shape[0])
    extra, extra_sums = aux_loss_sums(aux, w)
    return {"loss": (losses * w).sum() + extra, "accuracy": (correct * w).sum(), "count": w.sum(),
            **extra_sums}

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
