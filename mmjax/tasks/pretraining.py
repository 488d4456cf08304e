"""Self-supervised pretraining objectives computed by the model itself: BERT-style masked language
modelling, image-text matching, masked region regression (VisualBERT, ViLBERT, LXMERT).

Such objectives corrupt their own inputs (mask tokens, swap images) and score the model's predictions of
what was hidden, so the model, which draws the corruption from its ``"latent"`` random stream, also
computes the per-example losses; this task only weighs and averages them. The model returns
``(outputs, aux)`` with

* ``aux["losses"] = {name: (per_example [B], weight)}``: the loss is ``sum_name weight * mean_B`` over the
  real examples (``batch["_valid"]``, padding of the last evaluation batch, counts for nothing), and each
  unweighted mean is reported under ``name``;
* optionally ``aux["accuracies"] = {name: (correct [B], count [B])}``: reported as
  ``sum(correct) / sum(count)`` over the real examples (e.g. masked tokens predicted right over masked
  tokens, or ITM pairs classified right over pairs).

``outputs`` (any float array with a leading batch axis, e.g. the ITM logits) is not scored.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mmjax.errors import ConfigError


def _terms(aux, key: str) -> dict:
  terms = aux.get(key) if isinstance(aux, dict) else None
  return dict(terms or {})


def _weights(batch: dict, n: int):
  w = batch.get("_valid")
  return jnp.ones((n,), jnp.float32) if w is None else w.astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class Pretraining:
  """The weighted sum of the model's ``aux["losses"]``, with its ``aux["accuracies"]`` as metrics."""

  def _check(self, aux):
    if not _terms(aux, "losses"):
      raise ConfigError(
          "task 'pretraining' scores the losses a model returns in aux['losses'], and this model returns "
          "none; use a model with pretraining heads (e.g. model.kwargs.head='pretrain') or another task")

  def loss(self, outputs, aux, batch):
    """``sum_name weight * mean(per_example)`` over the real examples; each loss and accuracy as a metric."""
    self._check(aux)
    losses = _terms(aux, "losses")
    w = _weights(batch, next(iter(losses.values()))[0].shape[0])
    n = jnp.maximum(w.sum(), 1.0)
    total, metrics = 0.0, {}
    for name, (per_example, weight) in losses.items():
      mean = (per_example.astype(jnp.float32) * w).sum() / n
      metrics[name] = mean
      total = total + weight * mean
    for name, (correct, count) in _terms(aux, "accuracies").items():
      metrics[name] = (correct.astype(jnp.float32) * w).sum() / jnp.maximum((count * w).sum(), 1.0)
    return total, {"loss": total, **metrics}

  def eval_sums(self, outputs, aux, batch):
    """Sums over the real examples of the weighted total (``loss``) and of each loss, and their count."""
    self._check(aux)
    losses = _terms(aux, "losses")
    w = _weights(batch, next(iter(losses.values()))[0].shape[0])
    sums, total = {}, 0.0
    for name, (per_example, weight) in losses.items():
      s = (per_example.astype(jnp.float32) * w).sum()
      sums[name] = s
      total = total + weight * s
    return {"loss": total, **sums, "count": w.sum()}

  def eval_outputs(self, outputs, aux, batch):
    """Per-example ``<name>/correct`` and ``<name>/count`` ``[B]`` of each accuracy (none without
    ``aux["accuracies"]``), for :meth:`summarize`: an accuracy over tokens is not a mean over examples."""
    del outputs, batch
    arrays = {}
    for name, (correct, count) in _terms(aux, "accuracies").items():
      arrays[f"{name}/correct"] = correct.astype(jnp.float32)
      arrays[f"{name}/count"] = count.astype(jnp.float32)
    return arrays

  def summarize(self, arrays):
    """``{name: sum(correct) / sum(count)}`` over the real examples of a whole split."""
    names = [k[:-len("/correct")] for k in arrays if k.endswith("/correct")]
    return {n: float(arrays[f"{n}/correct"].sum()) / max(float(arrays[f"{n}/count"].sum()), 1.0)
            for n in names}

  def check_batch(self, batch: dict, outputs_shape: tuple) -> None:
    """Nothing to check: the targets are the batch's own inputs, whose token ids the model checks against
    its vocabulary (:func:`mmjax.layers.inputs.check_modalities`)."""
    del batch, outputs_shape
