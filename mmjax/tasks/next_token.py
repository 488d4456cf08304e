"""Next-token prediction (language modelling, captioning): token cross-entropy, accuracy, perplexity.

The model returns ``logits [B, T, V]`` and ``aux = {"targets": [B, T] int, "weights": [B, T]}``, where
``logits[:, t]`` predicts ``targets[:, t]`` and ``weights`` marks the tokens that count (the caption, not
the padding; Frozen's loss is on the text tokens only). The loss is the mean cross-entropy over counted
tokens; perplexity is ``exp`` of that mean over a whole split (token-weighted, not a mean of per-example
perplexities).

The targets come from the model's ``aux``, which ``check_batch`` does not see; it checks the batch's token
ids instead (those the model reads as its text: ``token_key``, by default the one integer array named
``tokens`` or ``*_tokens``) against the vocabulary ``V = outputs_shape[-1]``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np
import optax

from mmjax.tasks import checks
from mmjax.tasks.classification import example_weights


@dataclasses.dataclass(frozen=True)
class NextToken:
  """Token cross-entropy of ``logits [B, T, V]`` against ``aux["targets"]`` where ``aux["weights"]``."""

  # The batch key of the token ids the model predicts (its text_key), for check_batch. None: the one integer
  # array named "tokens" or "*_tokens" (none or several: nothing is checked); "": no check.
  token_key: str | None = None

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

  def _token_key(self, batch: dict) -> str | None:
    if self.token_key is not None:
      return self.token_key or None
    found = [k for k, v in batch.items() if (k == "tokens" or k.endswith("_tokens"))
             and np.issubdtype(np.asarray(v).dtype, np.integer)]
    return found[0] if len(found) == 1 else None

  def check_batch(self, batch: dict, outputs_shape: tuple) -> None:
    """Token ids (of ``token_key``, at real steps of real examples) must lie in the vocabulary
    ``[0, V)``, ``V = outputs_shape[-1]`` (see the module docstring)."""
    key = self._token_key(batch)
    if key is None:
      return
    if key not in batch:
      raise checks.LabelError(
          f"task 'next_token': task.kwargs.token_key is {key!r}, which the batch does not have (keys: "
          f"{sorted(batch)}); set it to the key of the token ids the model reads (its text_key), or '' to "
          "check nothing"
      )
    tokens = checks.labels_of(batch, key, "next_token")
    mask = batch.get(f"{key}_mask")
    real = np.ones(tokens.shape, bool)
    if mask is not None:
      rows = checks.real_rows(batch)
      mask = np.asarray(mask, bool)
      real = mask if rows is None else mask[rows]
    vocab = int(outputs_shape[-1])
    bad = real & ((tokens < 0) | (tokens >= vocab))
    if not bad.any():
      return
    if (bad & (tokens < 0)).any():
      fix = "token ids are >= 0: check the tokenizer"
    else:
      need = int(np.max(np.where(bad, tokens, 0))) + 1
      fix = (f"tokenize with the model's vocabulary, or give the language model at least {need} tokens "
             "(model.kwargs.lm.vocab_size)")
    raise checks.LabelError(
        f"task 'next_token': batch[{key!r}] holds token ids outside the model's vocabulary [0, {vocab}) "
        f"(logits [B, T, {vocab}]): {checks.offending(tokens, bad)}; {fix}"
    )
