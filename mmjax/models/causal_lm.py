"""A causal language model trained on a dataset's text: GPT-2 (Radford et al., 2019) behind the batch-dict
interface of the zoo, the trainable counterpart of :class:`mmjax.models.gpt2.GPT2` (which takes tokens).

``causal_lm`` is the first stage of Frozen (Tsimpoukelli et al., 2021) on data without a pretrained LM:
its parameters sit under ``lm`` exactly like :class:`~mmjax.models.frozen.Frozen`'s, so the trained LM
grafts into Frozen (``configs/frozen_digits.py``). Each sequence is read after a ``<bos>`` token
(``bos_id``), and the loss (task ``next_token``) covers every real token. For few-shot scoring on text
alone it also offers Frozen's ``embed_interleaved`` / ``interleaved`` for sequences without images.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmjax.layers.inputs import check_modalities
from mmjax.models.gpt2 import GPT2, GPT2Config
from mmjax.models.registry import register


@register("causal_lm")
class CausalLM(nn.Module):
  """A GPT-2 language model trained on the text of a dataset (``batch[text_key]``), with its parameters
  under ``lm`` like :class:`~mmjax.models.frozen.Frozen`'s: train it, then graft it into Frozen with
  ``init.format = "mmjax"``, ``init.path`` = its workdir and ``init.source = init.target = "lm"``.
  ``__call__`` returns ``(logits [B, T, V], aux)`` where ``logits[:, t]`` predicts token ``t`` from
  ``bos_id`` and the tokens before it; ``aux`` holds ``targets`` and ``weights`` for ``next_token``."""

  lm: GPT2Config = GPT2Config()  # in a config a (partial) dict of GPT2Config fields; default GPT-2 small
  bos_id: int = 2  # "<bos>" of the digits captions vocabulary; GPT-2's is 50256 (<|endoftext|>)
  text_key: str = "caption_tokens"
  attention: str = "xla"
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each GPT-2 block (config.remat; mmjax.layers.remat)

  def setup(self):
    # parameters under "lm"
    self.language_model = GPT2(self.lm, self.attention, self.dtype, self.remat, name="lm")

  def embed_interleaved(self, images, tokens, slots, kinds):
    """Text-only counterpart of :meth:`~mmjax.models.frozen.Frozen.embed_interleaved`: ``(embeddings
    [B, 1 + L, D], mask)`` of ``<bos>`` and ``tokens`` (``kinds``: 1 token, 0 padding). This model has no
    vision encoder: ``images`` and ``slots`` are ignored, and sequences must hold no images
    (:mod:`mmjax.fewshot` checks)."""
    del images, slots
    b = tokens.shape[0]
    bos_and_tokens = jnp.concatenate([jnp.full((b, 1), self.bos_id, tokens.dtype), tokens], axis=1)
    emb = self.language_model.embed(bos_and_tokens)
    return emb.astype(self.dtype), jnp.concatenate([jnp.ones((b, 1), bool), kinds > 0], axis=1)

  def interleaved(self, images, tokens, slots, kinds, *, train: bool = False):
    """Logits ``[B, L, V]`` of a packed text-only sequence after ``<bos>`` (``logits[:, l]`` predicts
    position ``l + 1``, as :meth:`~mmjax.models.frozen.Frozen.interleaved`), so the few-shot code scores
    a language model on its own with the text stand-ins of images (:meth:`mmjax.fewshot.FewShot.episodes`,
    ``text_repeats``)."""
    emb, real = self.embed_interleaved(images, tokens, slots, kinds)
    logits, _ = self.language_model(embeddings=emb, attention_mask=real, train=train)
    return logits[:, 1:]

  def __call__(self, batch: dict, *, train: bool):
    check_modalities(batch, (self.text_key,), model_name="causal_lm", kinds="tokens", field="text_key")
    tokens = batch[self.text_key]
    mask = batch.get(f"{self.text_key}_mask", jnp.ones(tokens.shape, bool))
    inputs = jnp.concatenate([jnp.full((tokens.shape[0], 1), self.bos_id, tokens.dtype), tokens[:, :-1]], 1)
    real = jnp.concatenate([jnp.ones((tokens.shape[0], 1), bool), mask[:, :-1].astype(bool)], axis=1)
    logits, _ = self.language_model(inputs, attention_mask=real, train=train)
    return logits, {"targets": tokens, "weights": mask.astype(jnp.float32)}
