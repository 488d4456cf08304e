"""Frozen — Multimodal Few-Shot Learning with Frozen Language Models
(Tsimpoukelli, Menick, Cabi, Eslami, Vinyals, Hill, NeurIPS 2021).

A vision encoder maps an image to ``n`` embeddings in the input-embedding space of a pretrained causal
language model (sec. 3.1: a visual prefix, ``n = 2``); the language model stays frozen and only the
encoder learns, from image captioning: ``[prefix(image) ; embed(caption)]`` through the LM, loss on the
caption tokens only (sec. 3.2). Because the interface is just embeddings, a prompt can interleave several
images and text segments (sec. 3.3), which gives few-shot learning "for free" (see :mod:`mmjax.fewshot`).

* :class:`VisionEncoder` — a residual conv net (the paper: NF-ResNet-50) pooled and linearly mapped to
  ``n x D``.
* :class:`Frozen` — encoder + :class:`~mmjax.models.gpt2.GPT2` of shape ``lm`` (a
  :class:`~mmjax.models.gpt2.GPT2Config`; parameters under ``lm``, so a pretrained LM from ``config.init``
  grafts there and ``optimizer.frozen = "lm/.*"`` freezes it through the optax mask); ``__call__`` is the
  captioning forward pass, :meth:`Frozen.interleaved` the forward pass of any interleaved sequence. The
  language model alone is :class:`mmjax.models.causal_lm.CausalLM`.

Deviations: the default encoder is a small pre-activation ResNet with GroupNorm (the paper's NF-ResNet-50 is
normaliser-free; both avoid batch statistics) sized for small images; the LM is GPT-2 (the paper: a 7B
transformer trained on C4) and runs without dropout while frozen. Options the paper does not have, all
off by default: ``bos_id`` puts the LM's ``<bos>`` before every sequence (our small digits LM is
pretrained after one; the paper's prompts start with the image), ``prefix_head="vocab_mixture"``
constrains the prefix to mixtures of token embeddings (see :class:`VisionEncoder`), and ``snap_prefix``
(evaluation only) replaces each prefix vector by its nearest token embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import axes
from mmjax.layers.inputs import check_modalities
from mmjax.models.gpt2 import GPT2, GPT2Config
from mmjax.models.registry import register


class ResidualBlock(nn.Module):
  """Pre-activation residual block: ``x + conv(relu(gn(conv(relu(gn(x))))))``, strided projection when
  the stride or width changes (He et al., 2016)."""

  width: int
  stride: int = 1
  groups: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    groups = min(self.groups, x.shape[-1])
    h = nn.relu(axes.group_norm(groups, dtype=self.dtype, name="norm1")(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.width:
      shortcut = axes.conv(self.width, (1, 1), strides=(self.stride, self.stride), use_bias=False,
                           dtype=self.dtype, name="project")(h)
    h = axes.conv(self.width, (3, 3), strides=(self.stride, self.stride), use_bias=False, dtype=self.dtype,
                  name="conv1")(h)
    h = nn.relu(axes.group_norm(min(self.groups, self.width), dtype=self.dtype, name="norm2")(h))
    h = axes.conv(self.width, (3, 3), use_bias=False, dtype=self.dtype, name="conv2")(h)
    return shortcut + h


PREFIX_HEADS = ("linear", "vocab_mixture")


class VisionEncoder(nn.Module):
  """Image ``[B, H, W]`` (grey) or ``[B, H, W, C]`` -> visual prefix ``[B, num_prefix, embed_dim]``.

  A 3x3 stem, ``len(widths)`` stages of ``blocks`` residual blocks (stride 2 from the second stage on),
  global average pooling and the prefix head:

  * ``"linear"``: one linear map to ``num_prefix * embed_dim`` (the paper's);
  * ``"vocab_mixture"``: a linear map to ``num_prefix`` distributions over the LM's vocabulary whose
    expected token embeddings are the prefix (``softmax(W h) @ wte``; needs ``table``, the
    ``[V, embed_dim]`` token embeddings), which keeps every prefix vector inside the convex hull of the
    embeddings the LM was trained on. Not in the paper; ``README.md`` (Frozen) reports what both heads
    measured.
  """

  embed_dim: int
  num_prefix: int = 2
  widths: Sequence[int] = (32, 64)
  blocks: int = 1
  head: str = "linear"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, table=None):
    x = jnp.asarray(images, self.dtype)
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4:
      raise ValueError(f"images must be [B, H, W] or [B, H, W, C]; got shape {images.shape}")
    x = axes.conv(self.widths[0], (3, 3), axes=("features", "conv_out"), use_bias=False, dtype=self.dtype,
                  name="stem")(x)
    for s, width in enumerate(self.widths):
      for b in range(self.blocks):
        stride = 2 if (s > 0 and b == 0) else 1
        x = ResidualBlock(width, stride, dtype=self.dtype, name=f"stage{s}_block{b}")(x)
    x = nn.relu(axes.group_norm(min(8, x.shape[-1]), dtype=self.dtype, name="norm")(x))
    x = x.mean(axis=(1, 2))
    if self.head == "linear":
      x = axes.dense(self.num_prefix * self.embed_dim, ("conv_in", "embed"), dtype=self.dtype,
                     name="to_prefix")(x)
      return x.reshape(x.shape[0], self.num_prefix, self.embed_dim)
    if self.head not in PREFIX_HEADS:
      raise ConfigError(f"unknown prefix head {self.head!r}; available: {PREFIX_HEADS}")
    if table is None or table.shape[-1] != self.embed_dim:
      raise ValueError(f"the {self.head} prefix head needs the [V, {self.embed_dim}] token embeddings")
    logits = axes.dense(self.num_prefix * table.shape[0], ("conv_in", "vocab"), dtype=self.dtype,
                        name="to_vocab")(x)
    probs = jax.nn.softmax(logits.reshape(x.shape[0], self.num_prefix, table.shape[0]).astype(jnp.float32))
    return jnp.einsum("bnv,vd->bnd", probs, table.astype(jnp.float32)).astype(self.dtype)


def nearest_token_embeddings(vectors, table):
  """Each of ``vectors [..., D]`` replaced by the row of ``table [V, D]`` closest to it in cosine
  similarity (ties: the lowest id)."""
  v = vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
  t = table / jnp.maximum(jnp.linalg.norm(table, axis=-1, keepdims=True), 1e-12)
  return jnp.take(table, jnp.argmax(v @ t.T, axis=-1), axis=0)


@register("frozen")
class Frozen(nn.Module):
  """Vision encoder prompting a (frozen) GPT-2; ``__call__`` returns ``(logits [B, T, V], aux)`` for the
  caption ``batch[text_key]``, where ``logits[:, t]`` predicts caption token ``t`` from the image prefix
  and the tokens before it; ``aux`` holds ``targets`` and ``weights`` for the ``next_token`` task."""

  # The language model; in a config a (partial) dict of GPT2Config fields. Default: GPT-2 small without
  # dropout (the frozen LM runs deterministically).
  lm: GPT2Config = GPT2Config().no_dropout()
  # The vision encoder.
  num_prefix: int = 2
  vision_widths: Sequence[int] = (32, 64)
  vision_blocks: int = 1
  prefix_head: str = "linear"  # the paper's; or "vocab_mixture" (see VisionEncoder)
  # A token put before every sequence (captions and interleaved prompts), None for none. Set it to the
  # <bos> the LM was pretrained after, so the prompt's positions are those the LM learned.
  bos_id: int | None = None
  # Evaluation only (not in the paper): every prefix vector replaced by its nearest token embedding, so the
  # LM reads an image as num_prefix words; training with it raises (argmax has no gradient).
  snap_prefix: bool = False
  image_key: str = "image"
  text_key: str = "caption_tokens"
  attention: str = "xla"
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each GPT-2 block (config.remat; mmjax.layers.remat)

  def setup(self):
    # parameters under "lm"
    self.language_model = GPT2(self.lm, self.attention, self.dtype, self.remat, name="lm")
    self.vision = VisionEncoder(self.lm.n_embd, self.num_prefix, tuple(self.vision_widths),
                                self.vision_blocks, self.prefix_head, self.dtype)

  def prefix(self, images):
    """Visual prefix ``[B, num_prefix, lm.n_embd]`` of images ``[B, H, W(, C)]``."""
    p = self.vision(images, None if self.prefix_head == "linear" else self.language_model.token_embeddings())
    return nearest_token_embeddings(p, self.language_model.token_embeddings()) if self.snap_prefix else p

  def _check_trainable(self, train: bool):
    if train and self.snap_prefix:
      raise ConfigError("snap_prefix is for evaluation only: the nearest-token snap has no gradient, so the "
                       "vision encoder would not learn; train without it")

  def interleaved(self, images, tokens, slots, kinds, *, train: bool = False):
    """Logits ``[B, L, V]`` of an interleaved image/text sequence.

    ``images [B, S, H, W(, C)]`` are the sequence's ``S`` images; position ``l`` of the sequence holds a
    token (``kinds == 1``: ``tokens[b, l]``), one of the image prefixes (``kinds == 2``: prefix vector
    ``slots[b, l]`` of the ``S * num_prefix`` flattened prefixes), or padding (``kinds == 0``, right-padded).
    Build these arrays with :func:`mmjax.fewshot.pack`. ``logits[:, l]`` predicts position ``l + 1`` (with
    ``bos_id`` set, the ``<bos>`` the model puts first is not part of ``L``).
    """
    self._check_trainable(train)
    emb, real = self.embed_interleaved(images, tokens, slots, kinds)
    logits, _ = self.language_model(embeddings=emb, attention_mask=real, train=train)
    return logits[:, self._num_bos:]

  @property
  def _num_bos(self) -> int:
    return 0 if self.bos_id is None else 1

  def _with_bos(self, emb, real):
    """``(emb, real)`` with the ``<bos>`` embedding (when ``bos_id`` is set) put first."""
    if self.bos_id is None:
      return emb, real
    bos = self.language_model.embed(jnp.full((emb.shape[0], 1), self.bos_id, jnp.int32)).astype(self.dtype)
    return (jnp.concatenate([bos, emb], axis=1),
            jnp.concatenate([jnp.ones((emb.shape[0], 1), bool), real.astype(bool)], axis=1))

  def embed_interleaved(self, images, tokens, slots, kinds):
    """The LM input embeddings ``[B, L', lm.n_embd]`` of an interleaved sequence and its mask ``[B, L']``
    (True = real), ``L' = L + 1`` with ``bos_id`` set, else ``L`` (arguments as in :meth:`interleaved`),
    e.g. as a prompt for :func:`mmjax.sampling.generate`."""
    b, s = images.shape[:2]
    pre = self.prefix(images.reshape(b * s, *images.shape[2:]))
    pre = pre.reshape(b, s * self.num_prefix, self.lm.n_embd)
    img = jnp.take_along_axis(pre, jnp.clip(slots, 0, s * self.num_prefix - 1)[..., None], axis=1)
    text = self.language_model.embed(tokens).astype(self.dtype)
    return self._with_bos(jnp.where((kinds == 2)[..., None], img.astype(self.dtype), text), kinds > 0)

  def __call__(self, batch: dict, *, train: bool):
    self._check_trainable(train)
    check_modalities(batch, (self.image_key, self.text_key), model_name="frozen",
                     kinds={self.image_key: "image_or_rgb", self.text_key: "tokens"},
                     field={self.image_key: "image_key", self.text_key: "text_key"})
    tokens = batch[self.text_key]
    mask = batch.get(f"{self.text_key}_mask", jnp.ones(tokens.shape, bool))
    prefix = self.prefix(batch[self.image_key])
    text = self.language_model.embed(tokens).astype(self.dtype)
    emb = jnp.concatenate([prefix.astype(self.dtype), text], axis=1)
    real = jnp.concatenate([jnp.ones(prefix.shape[:2], bool), mask.astype(bool)], axis=1)
    emb, real = self._with_bos(emb, real)
    logits, _ = self.language_model(embeddings=emb, attention_mask=real, train=train)
    n, t = self._num_bos + self.num_prefix, tokens.shape[1]
    return logits[:, n - 1:n - 1 + t], {"targets": tokens, "weights": mask.astype(jnp.float32)}
