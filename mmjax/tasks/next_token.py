"""Next-token prediction (language modelling, captioning): token cross-entropy, accuracy, perplexity.

The model returns ``logits [B, T, V]`` and ``aux = {"targets": [B, T] int, "weights": [B, T]}``, where
``logits[:, t]`` predicts ``targets[:, t]`` and ``weights`` marks the tokens that count (the caption, not
the padding; Frozen's loss is on the text tokens only). The loss is the mean cross-entropy over counted
tokens; perplexity is ``exp`` of that mean over a whole split (token-weighted, not a mean of per-example
perplexities).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import optax

from mmjax.tasks.classification import example_weights


@dataclasses.dataclass(frozen=True)
class NextToken:
  """Token cross-entropy of ``logits [B, T, V]`` against ``aux["targets"]`` where ``aux["weights"]``."""

  def _per_token(self, logits, aux, batch):
    targets = aux["targets"].astype(jnp.int32)
    if logits.shape[:2] != targets.shape:
      raise ValueError(f"next_token needs logits [B, T, V] matching targets [B, T]; got {logits.shape} "
                       f"and {targets.shape}")
    weights = aux["weights"].astype(jnp.float32) * example_weights(batch, targets.shape[0])[:, None]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    hit = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return nll, hit, weights

  def loss(self, outputs, aux, batch):
    """Mean cross-entropy over counted tokens; token accuracy and perplexity of the batch."""
    nll, hit, w = self._per_token(outputs, aux, batch)
    n = jnp.maximum(w.sum(), 1.0)
    loss = (nll * w).sum() / n
    return loss, {"loss": loss, "token_accuracy": (hit * w).sum() / n, "perplexity": jnp.exp(loss)}

  def eval_sums(self, outputs, aux, batch):
    """Per-example mean token loss and accuracy (summed over valid examples)."""
    nll, hit, w = self._per_token(outputs, aux, batch)
    per = jnp.maximum(w.sum(1), 1.0)
    ex = example_weights(batch, nll.shape[0])
    return {"loss": ((nll * w).sum(1) / per * ex).sum(),
            "token_accuracy": ((hit * w).sum(1) / per * ex).sum(), "count": ex.sum()}

  def eval_outputs(self, outputs, aux, batch):
    """Per-example summed token loss and token count, for the split's perplexity."""
    nll, _, w = self._per_token(outputs, aux, batch)
    return {"nll_sum": (nll * w).sum(1), "tokens": w.sum(1)}

  def summarize(self, arrays):
    """``perplexity = exp(sum nll / sum tokens)`` and the token-weighted ``token_loss`` over the split."""
    tokens = float(np.sum(arrays["tokens"]))
    token_loss = float(np.sum(arrays["nll_sum"])) / max(tokens, 1.0)
    return {"token_loss": token_loss, "perplexity": math.exp(min(token_loss, 700.0))}
