"""CLIP / SigLIP dual encoder: an image tower and a text tower mapped to one L2-normalised space.

Papers
  * Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
    (CLIP): image and text encoders, each followed by a linear projection to a shared space and L2
    normalisation; logits ``s * <x_i, y_j>`` with a learned temperature, log-parameterised
    (``s = exp(t)``), initialised to ``1 / 0.07`` and clipped so that ``s <= 100`` (sec. 2.5).
  * Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023 (SigLIP): the same towers,
    logits ``exp(t') <x_i, y_j> + b`` with a learned temperature ``t'`` (init ``log 10``) and bias ``b``
    (init ``-10``) (sec. 3.2, Algorithm 1).
  * Zero-shot transfer through a shared image-text space goes back to Socher et al., "Zero-Shot Learning
    Through Cross-Modal Transfer", NeurIPS 2013; :mod:`mmjax.evaluators.zero_shot` scores it.

Equations (``I`` images, ``T`` token sequences, ``B`` pairs)::

    x_i = normalize(W_i pool(f_img(I_i)))      y_j = normalize(W_t pool(f_txt(T_j)))
    CLIP:   logits_ij = min(exp(t), 100) <x_i, y_j>
    SigLIP: logits_ij = exp(t') <x_i, y_j> + b

The losses are in :mod:`mmjax.tasks.contrastive`; the model returns ``x [B, D]`` as its output and
``aux = {"image": x [B, D], "text": y [B, D], "scale": s, "bias": b}`` (``b = 0`` for CLIP), all float32.

Towers (``image_tower``):
  * ``"patches"`` (default): a ViT-style encoder: the ``[B, H, W]`` (or RGB ``[B, H, W, C]``) image is cut
    into non-overlapping
    ``patch_size x patch_size`` patches, each flattened and projected (:class:`mmjax.layers.SequenceEmbed`),
    then a pre-LN transformer (:class:`mmjax.layers.Encoder`), mean-pooled over patches.
  * ``"rows"``: the image read as ``H`` steps of ``W`` features (the late_fusion baseline's reading).
  The text tower (its own ``text_width``, ``text_layers``, ``text_heads`` when set, as CLIP's text
  transformer is narrower than its ViT) embeds token ids (``vocab_size`` rows), runs a pre-LN transformer
  over the valid tokens (``batch[text_key + "_mask"]``) and pools by ``text_pool``: ``"last"`` (the last
  valid token, as CLIP reads the [EOS] token; every caption here ends with ``.``) or ``"mean"``.

Deviations from the papers (and from the original code, which was read for facts only)
  * Small towers (1-2 layers, width 64) for 8x8 digit images and 4-8 token captions; no pretrained weights.
  * Sinusoidal positions (the shared :class:`~mmjax.layers.SequenceEmbed`) instead of learned ones, and
    mean pooling of image patches instead of CLIP's class token (SigLIP's ViTs use a MAP head or GAP):
    both are the zoo's shared layers; with 16 patches the class token brings nothing measurable here.
  * CLIP's text tower is causally masked and reads the [EOS] token; here the text tower is bidirectional
    (no language-modelling objective is trained, so causality is not needed) and reads the last valid
    token (``text_pool="last"``).
  * The temperature is clipped in the forward pass (``min(exp(t), max_scale)``), not by clamping the
    parameter after each optimizer step (what open_clip does; the paper says only that it is clipped at
    100): the logits are the same, and above the bound the parameter gets no gradient, so it stays put.
  * Training here holds out classes (``data.keep_labels``) whose names then never occur in any training
    caption; see configs/clip_digits.py for what that means for zero-shot accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import Encoder, SequenceEmbed, axes, masked_mean
from mmjax.layers.inputs import check_modalities
from mmjax.models.registry import register

IMAGE_TOWERS = ("patches", "rows")
TEXT_POOLS = ("last", "mean")
LOSSES = ("clip", "sigmoid")


def patchify(images, patch_size: int):
  """``[B, H, W]`` (or RGB ``[B, H, W, C]``) images -> ``[B, (H / p) (W / p), p * p (* C)]``
  non-overlapping patches, row-major (a patch's pixels row by row, channels innermost)."""
  b, h, w = images.shape[:3]
  c = images.shape[3] if images.ndim == 4 else 1
  p = patch_size
  if h % p or w % p:
    raise ConfigError(f"image size {h}x{w} is not divisible by patch_size {p}; set model.kwargs.patch_size "
                     "to a divisor of both")
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def last_valid(h, mask):
  """``h [B, T, D]`` at the last step where ``mask [B, T]`` holds (the last step when ``mask`` is None)."""
  if mask is None:
    return h[:, -1]
  t = jnp.arange(mask.shape[1])[None, :]
  index = jnp.max(jnp.where(mask, t, 0), axis=1)  # [B]
  return jnp.take_along_axis(h, index[:, None, None], axis=1)[:, 0]


def l2_normalize(x, eps: float = 1e-6):
  """``x / ||x||`` over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class Tower(nn.Module):
  """Embedding + pre-LN transformer + pooling + linear projection (no bias, as CLIP) to ``embed_dim``."""

  embed_dim: int
  width: int
  num_layers: int
  num_heads: int
  mlp_ratio: int
  dropout: float
  vocab_size: int = 0
  pool: str = "mean"  # or "last"
  attention: str = "xla"
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, x, mask, *, train: bool):
    h = SequenceEmbed(self.width, self.vocab_size, self.dtype, name="embed")(x)
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = Encoder(self.num_layers, self.num_heads, self.mlp_ratio, self.dropout, 0.0, self.attention,
                self.dtype, self.remat, name="encoder")(h, mask=mask, train=train)
    pooled = last_valid(h, mask) if self.pool == "last" else masked_mean(h, mask)
    z = axes.dense(self.embed_dim, ("embed", "mlp"), dtype=self.dtype, use_bias=False, name="proj")(pooled)
    return l2_normalize(z)


def _scalar(init_value: float):
  return axes.logical(lambda key, shape=(), dtype=jnp.float32: jnp.full(shape, init_value, dtype), ())


@register("clip")
class CLIP(nn.Module):
  """Image and text towers, projected and L2-normalised, with a learned temperature (and SigLIP bias)."""

  loss: str = "clip"  # or "sigmoid" (SigLIP): which temperature/bias parameterisation
  embed_dim: int = 64  # the shared space
  image_tower: str = "patches"  # or "rows"
  patch_size: int = 2
  text_pool: str = "last"  # or "mean"
  vocab_size: int = 0  # rows of the token embedding (the caption vocabulary)
  image_key: str = "image"
  text_key: str = "caption_tokens"
  width: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: int = 2
  text_width: int = 0  # the text tower's width, layers and heads; 0: the image tower's (width, ...)
  text_layers: int = 0
  text_heads: int = 0
  dropout: float = 0.0
  init_scale: float = 0.0  # 0: the paper's (CLIP 1 / 0.07; SigLIP 10)
  init_bias: float = -10.0  # SigLIP only
  max_scale: float = 100.0  # CLIP's clip of exp(t); SigLIP: none
  attention: str = "xla"  # attention kernel, see mmjax.layers.attention
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each encoder layer (config.remat)

  def _check(self):
    for field, value, allowed in (("loss", self.loss, LOSSES), ("text_pool", self.text_pool, TEXT_POOLS),
                                  ("image_tower", self.image_tower, IMAGE_TOWERS)):
      if value not in allowed:
        raise ConfigError(f"clip: model.kwargs.{field} is {value!r}; use one of {list(allowed)}")
    if self.vocab_size <= 0:
      raise ConfigError("clip: model.kwargs.vocab_size must be the size of the caption vocabulary (> 0)")
    for field in ("text_width", "text_layers", "text_heads"):
      if getattr(self, field) < 0:
        raise ConfigError(f"clip: model.kwargs.{field} is {getattr(self, field)}; use a positive size, or 0 "
                         "for the image tower's")

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    self._check()
    image_kind = "image_or_rgb" if self.image_tower == "patches" else "image"
    check_modalities(batch, (self.image_key, self.text_key), model_name="clip",
                     kinds={self.image_key: image_kind, self.text_key: "tokens"},
                     field={self.image_key: "image_key", self.text_key: "text_key"},
                     vocab_size=self.vocab_size)
    images = batch[self.image_key]
    tokens, token_mask = batch[self.text_key], batch.get(f"{self.text_key}_mask")
    pixels = patchify(images, self.patch_size) if self.image_tower == "patches" else images
    common = dict(embed_dim=self.embed_dim, mlp_ratio=self.mlp_ratio, dropout=self.dropout,
                  attention=self.attention, dtype=self.dtype, remat=self.remat)
    x = Tower(width=self.width, num_layers=self.num_layers, num_heads=self.num_heads, pool="mean",
              name="image_tower", **common)(pixels.astype(self.dtype), None, train=train)
    y = Tower(width=self.text_width or self.width, num_layers=self.text_layers or self.num_layers,
              num_heads=self.text_heads or self.num_heads, vocab_size=self.vocab_size, pool=self.text_pool,
              name="text_tower", **common)(tokens, token_mask, train=train)
    if self.loss == "clip":
      init = self.init_scale or 1.0 / 0.07
      t = self.param("log_scale", _scalar(math.log(init)))
      scale = jnp.minimum(jnp.exp(t), self.max_scale)
      bias = jnp.zeros((), jnp.float32)
    else:
      init = self.init_scale or 10.0
      t = self.param("log_scale", _scalar(math.log(init)))
      scale = jnp.exp(t)
      bias = self.param("bias", _scalar(self.init_bias))
    return x, {"image": x, "text": y, "scale": scale.astype(jnp.float32), "bias": bias.astype(jnp.float32)}
