"""ViLBERT and LXMERT: two-stream vision-and-language transformers (text and image streams joined by
cross-modal attention), pretrained with masked language modelling, image-text matching and masked region
feature regression, and fine-tuned for visual question answering.

Papers (and original code, read for facts only; no code is copied)
  * Lu, Batra, Parikh and Lee, "ViLBERT: Pretraining Task-Agnostic Visiolinguistic Representations for
    Vision-and-Language Tasks", NeurIPS 2019 (code: facebookresearch/vilbert-multi-task,
    ``vilbert/vilbert.py``). ``fusion="coattention"``.
  * Tan and Bansal, "LXMERT: Learning Cross-Modality Encoder Representations from Transformers", EMNLP 2019
    (code: airsplay/lxmert, ``src/lxrt/modeling.py``). ``fusion="lxmert"``.

Inputs: ``batch[image_key]`` images ``[B, H, W]`` (float), ``batch[text_key]`` token ids ``[B, T]`` with the
optional validity mask ``batch[text_key + "_mask"]`` (no ``[CLS]``/``[SEP]``: the model adds them).

Architecture, width ``D`` for both streams (ViLBERT is cited by section titles: its section numbers were not
checked against a stored copy):

1. Text stream input (BERT): ``[CLS] w_1 .. w_n [SEP]`` embedded by
   :class:`mmjax.models.bert.BertEmbeddings` (word + learned position + token type, LayerNorm, dropout).
2. Image stream input (ViLBERT, "image representations"): the image is cut into ``patch_size x patch_size``
   patches (:func:`mmjax.models.clip.patchify`), ``R = HW / p^2`` "regions" with ``F = p^2`` features each.
   Each region has a 5-d location ``(x1/W, y1/H, x2/W, y2/H, area/(WH))`` as in ViLBERT's spatial encoding.
   A first ``<IMG>`` token holds the mean of the region features with the whole image's location (ViLBERT's
   special image token: the mean-pooled region features with a box covering the whole image).
   With ``region_location="index"`` (not in the papers) ``loc`` is instead the one-hot index of the token
   (``<IMG>`` = 0, then the regions), so ``W_l loc`` is a learned embedding per region, as VisualBERT's
   visual position embeddings.
   ViLBERT: ``v = LN(W_f f + W_l loc)``; LXMERT (sec. 2.1, "object-level image embeddings"):
   ``v = (LN(W_f f) + LN(W_l loc)) / 2``; then dropout. ``[B, 1 + R, D]``.
3. ``num_text_layers`` BERT layers on the text (:class:`mmjax.models.bert.BertLayer`, post-LN, GELU) and
   ``num_image_layers`` on the image (LXMERT's "language encoder" / "object-relationship encoder";
   ViLBERT's text layers before the first co-attention).
4. ``num_fusion_layers`` fusion layers (per-layer weights, none shared across layers):

   * ``fusion="coattention"`` (ViLBERT Fig. 2b, a co-TRM followed by a TRM per stream, the interleaving of
     the original's ``BertEncoder``): ``t' = LN(t + MHA(Q=t, K=V=v))``, ``v' = LN(v + MHA(Q=v, K=V=t))``
     (separate weights per direction), then an FFN per stream (``LN(x + W2 gelu(W1 x))``): the co-TRM; then
     a BERT layer per stream (self-attention + FFN): the TRM.
   * ``fusion="lxmert"`` (LXMERT sec. 2.2, "cross-modality encoder"): cross-attention in both directions,
     ``t' = LN(t + CrossAtt(t, v))``, ``v' = LN(v + CrossAtt(v, t))``, with ONE set of cross-attention
     weights serving both directions (as the original's ``LXRTXLayer.visual_attention``; the paper does
     not say), then self-attention per stream, then an FFN per stream (separate weights per stream).

   ``co_attention=False`` removes the cross-modal sub-layer of every fusion layer (ViLBERT: the whole
   co-TRM, as the original's ``with_coattention=False``; LXMERT: the cross-attention, the self-attention
   and FFN stay), so the two streams run independently up to the pooled output.
5. Pooling (``pool``; "" = the paper's): ``"mul"`` (ViLBERT): ``h = ReLU(W_t t_[CLS]) * ReLU(W_v v_<IMG>)``;
   ``"text"`` (LXMERT): ``h = tanh(W t_[CLS])``.

Everything in 1-5 lives under the submodule ``backbone``, so a QA model starts from a pretraining run with
``init.source = init.target = "backbone"``; the heads are outside it.

Heads (``head``):
  * ``"pretrain"``: outputs the image-text matching logits ``[B, 2]``; ``aux["losses"]`` =
    ``mlm`` (masked language modelling: BERT's transform ``LN(gelu(W h))`` and a decoder tied to the word
    embeddings plus a bias; cross-entropy on the masked tokens only), ``itm`` (``W dropout(h) -> 2``,
    cross-entropy; label 1 = the caption describes the image), ``mrr`` (masked region feature regression,
    LXMERT sec. 3.1.2 "RoI-feature regression": ``LN(gelu(W v))`` then a linear map to the ``F`` region
    features, smooth-L1 (or L2, ``region_loss``) to the original features of the masked regions only),
    each ``(per_example [B], weight)``; ``aux["accuracies"]`` = ``mlm_accuracy`` (over the masked tokens)
    and ``itm_accuracy``. The per-example terms of ``mlm`` and ``mrr`` are scaled so that their mean over
    the valid examples is the mean over all masked tokens (regions) of the batch, BERT's normalisation.
    Masking (rng stream ``latent``): BERT's, 15 % (``mask_prob``) of the real text tokens chosen, of those
    80 % -> ``mask_id``, 10 % a random id, 10 % kept; 15 % (``region_mask_prob``) of the regions (not
    ``<IMG>``) chosen and their features zeroed. ITM negatives: with probability ``itm_negative_prob`` an
    example's image is replaced by the next example's in the batch (a roll); with ``itm_match_key`` set
    (e.g. ``"label"``), a replacement with the same ``batch[itm_match_key]`` counts as a match.
  * ``"qa"``: ViLBERT's VQA head (LXMERT's answer head is the same): ``W2 LN(gelu(W1 dropout(h)))`` with
    ``W1: D -> 2D`` and ``W2: 2D -> num_answers``; outputs the answer logits ``[B, num_answers]``.

Deviations from the papers and the original code, and why:
  * Regions are ``patch_size x patch_size`` pixel patches of the image (raw pixels as region features; the
    digits config: four 4x4 patches of the 8x8 image), not Faster R-CNN
    detections with 2048-d features: there is no detector here. Masked region modelling therefore regresses
    the pixels of the region (LXMERT's feature regression, also ViLBERT-multi-task's ``visual_target=1``);
    ViLBERT's paper objective (KL to the detector's class distribution) and LXMERT's detected-label
    classification need detector labels and are not implemented.
  * Masked regions are always zeroed (ViLBERT: 90 % zeroed, 10 % kept; LXMERT: 80 % zeroed, 10 % a random
    region's feature, 10 % kept), and the ``<IMG>`` mean is taken over the masked features (ViLBERT's
    loader computes it before masking, which lets the mean leak the masked regions).
  * ITM negatives replace the image (ViLBERT replaces either; LXMERT replaces the sentence), and the
    masked losses are computed on mismatched pairs too (as vilbert-multi-task does; LXMERT skips only its
    QA loss on them).
  * ``itm_match_key`` is not in the papers (their random negatives almost never show the caption's
    content); here one random replacement in ten shows the same digit, which a caption naming only the
    digit cannot tell apart, so the digits config labels those pairs as matches.
  * One width for both streams and the co-attention (ViLBERT: text 768, image 1024, co-attention 1024).
  * Cross-attention uses :class:`mmjax.layers.MultiHeadAttention` (flax's default LeCun-normal kernels),
    not BERT's normal(0.02) initialisation; the BERT layers and heads use normal(0.02).
  * LXMERT's variant keeps the ``<IMG>`` token (LXMERT has none) and ViLBERT's 5-d region location (LXMERT
    uses 4-d boxes), so both variants read the same inputs.
  * Pretraining covers MLM, ITM and region regression only (LXMERT's image QA pretraining task is not
    used); no BERT initialisation (the papers start the text stream from BERT-base).
  * Defaults: ViLBERT's base model (6 text layers before fusion, 6 fusion layers, width 768, 12 heads,
    FFN 3072, dropout 0.1); LXMERT's is ``num_text_layers=9, num_image_layers=5, num_fusion_layers=5``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.errors import ConfigError
from mmjax.layers import MultiHeadAttention, axes
from mmjax.layers.inputs import check_modalities
from mmjax.layers.remat import remat
from mmjax.models.bert import ACTIVATIONS, BertAttention, BertConfig, BertEmbeddings, BertLayer
from mmjax.models.clip import patchify
from mmjax.models.registry import register

FUSIONS = ("coattention", "lxmert")
HEADS = ("pretrain", "qa")
POOLS = ("mul", "text")
REGION_LOCATIONS = ("box", "index")
REGION_LOSSES = ("smooth_l1", "l2")
PAPER_POOL = {"coattention": "mul", "lxmert": "text"}


def _normal(cfg: BertConfig):
  """BERT's initialisation of weights, normal(``initializer_range``; ``init_std`` in the model)."""
  return nn.initializers.normal(cfg.initializer_range)


def _layer_norm(cfg: BertConfig, dtype, name):
  return axes.layer_norm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=dtype, name=name)


def region_locations(height: int, width: int, patch_size: int) -> np.ndarray:
  """``[1 + R, 5]`` locations ``(x1/W, y1/H, x2/W, y2/H, area/(WH))``: the whole image (the ``<IMG>``
  token) then the ``R`` patches in :func:`patchify`'s row-major order."""
  p = patch_size
  boxes = [(0.0, 0.0, 1.0, 1.0, 1.0)]
  for r in range(height // p):
    for c in range(width // p):
      boxes.append((c * p / width, r * p / height, (c + 1) * p / width, (r + 1) * p / height,
                    p * p / (height * width)))
  return np.asarray(boxes, np.float32)


def add_cls_sep(tokens, mask, cls_id: int, sep_id: int):
  """``[B, T]`` ids (valid where ``mask``; None = all) -> ``(ids [B, T + 2], valid [B, T + 2],
  is_word [B, T + 2])``: ``[CLS] w_1 .. w_n [SEP]`` then padding (id 0); ``is_word`` marks ``w_1 .. w_n``."""
  b, t = tokens.shape
  mask = jnp.ones((b, t), bool) if mask is None else jnp.asarray(mask).astype(bool)
  n = mask.sum(axis=1, keepdims=True)  # [B, 1]
  pos = jnp.arange(t + 2)[None]
  words = jnp.concatenate([jnp.zeros((b, 1), tokens.dtype), jnp.where(mask, tokens, 0),
                           jnp.zeros((b, 1), tokens.dtype)], axis=1)
  ids = jnp.where(pos == 0, cls_id, jnp.where(pos == n + 1, sep_id, words)).astype(jnp.int32)
  is_word = (pos >= 1) & (pos <= n)
  return ids, pos <= n + 1, is_word


def mask_tokens(rng, ids, is_word, *, prob: float, mask_id: int, vocab_size: int):
  """BERT's masking: ``prob`` of the ``is_word`` positions chosen; of those 80 % -> ``mask_id``, 10 % a
  uniformly random id, 10 % kept. ``(input ids [B, T], chosen [B, T] bool)``."""
  k_choose, k_how, k_random = jax.random.split(rng, 3)
  chosen = is_word & (jax.random.uniform(k_choose, ids.shape) < prob)
  how = jax.random.uniform(k_how, ids.shape)
  random_ids = jax.random.randint(k_random, ids.shape, 0, vocab_size, ids.dtype)
  new = jnp.where(how < 0.8, mask_id, jnp.where(how < 0.9, random_ids, ids))
  return jnp.where(chosen, new, ids), chosen


def masked_mean_per_example(values, chosen, weights):
  """Per-example terms ``[B]`` whose mean over examples weighted by ``weights [B]`` (the task's mean over
  valid examples) equals the mean of ``values [B, N]`` over the ``chosen [B, N]`` positions of the valid
  examples (BERT's normalisation by the number of masked tokens); zeros when nothing is chosen."""
  chosen = chosen.astype(jnp.float32) * weights[:, None]
  total = jnp.maximum(chosen.sum(), 1.0)
  return (values.astype(jnp.float32) * chosen).sum(axis=1) * (weights.sum() / total)


class _ImageEmbeddings(nn.Module):
  """Region features ``[B, 1 + R, F]`` and locations ``[1 + R, 5]`` -> ``[B, 1 + R, D]``."""

  config: BertConfig
  fusion: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, locations, *, train: bool):
    cfg = self.config
    f = axes.dense(cfg.hidden_size, ("features", "embed"), dtype=self.dtype, name="feature_proj",
                   kernel_init=_normal(cfg))(features.astype(self.dtype))
    loc = axes.dense(cfg.hidden_size, ("features", "embed"), dtype=self.dtype, name="location_proj",
                     kernel_init=_normal(cfg))(locations.astype(self.dtype))[None]
    if self.fusion == "lxmert":  # (LN(W_f f) + LN(W_l loc)) / 2
      x = (_layer_norm(cfg, self.dtype, "feature_norm")(f) + _layer_norm(cfg, self.dtype, "location_norm")(
          jnp.broadcast_to(loc, f.shape))) / 2
    else:  # LN(W_f f + W_l loc)
      x = _layer_norm(cfg, self.dtype, "LayerNorm")(f + loc)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=not train)


class _CrossAttention(nn.Module):
  """``LN(x + drop(MHA(Q = x, K = V = context)))``: ``x [B, Lq, D]``, ``context [B, Lk, D]``, ``mask``
  broadcastable to ``[B, H, Lq, Lk]`` or None -> ``[B, Lq, D]``."""

  config: BertConfig
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context, *, mask, train: bool):
    cfg = self.config
    impl = self.attention if mask is None or self.attention in ("xla", "jax", "chunked", "auto") else "xla"
    h = MultiHeadAttention(cfg.num_attention_heads, cfg.attention_probs_dropout_prob, impl, self.dtype,
                           name="attention")(x, context, mask=mask, train=train)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=not train)
    return _layer_norm(cfg, self.dtype, "LayerNorm")(x + h)


class _FeedForward(nn.Module):
  """``LN(x + drop(W2 act(W1 x)))`` (BERT's intermediate and output sub-layers)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    cfg = self.config
    h = axes.dense(cfg.intermediate_size, ("embed", "mlp"), dtype=self.dtype, name="intermediate",
                   kernel_init=_normal(cfg))(x)
    h = axes.constrain(ACTIVATIONS[cfg.hidden_act](h), axes.BATCH_LENGTH_MLP)
    h = axes.dense(cfg.hidden_size, ("mlp", "embed"), dtype=self.dtype, name="output",
                   kernel_init=_normal(cfg))(h)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=not train)
    return _layer_norm(cfg, self.dtype, "LayerNorm")(x + h)


class _FusionLayer(nn.Module):
  """One fusion layer (module docstring, step 4): ``(t [B, T, D], v [B, 1 + R, D])`` -> the same shapes.
  Positional arguments, as ``nn.remat`` needs (``train`` is static)."""

  config: BertConfig
  fusion: str = "coattention"
  co_attention: bool = True
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t, v, text_mask, train):
    """``text_mask [B, 1, 1, T]`` (True = a real text token)."""
    cfg, kw = self.config, {"attention": self.attention, "dtype": self.dtype}
    if self.fusion == "coattention":
      if self.co_attention:  # co-TRM: each stream's queries, the other stream's keys and values
        t, v = (_CrossAttention(cfg, name="text_from_image", **kw)(t, v, mask=None, train=train),
                _CrossAttention(cfg, name="image_from_text", **kw)(v, t, mask=text_mask, train=train))
        t = _FeedForward(cfg, self.dtype, name="text_co_ffn")(t, train=train)
        v = _FeedForward(cfg, self.dtype, name="image_co_ffn")(v, train=train)
      # TRM: self-attention + FFN per stream
      t = BertLayer(cfg, self.attention, self.dtype, name="text_layer")(t, text_mask, train)
      v = BertLayer(cfg, self.attention, self.dtype, name="image_layer")(v, None, train)
      return t, v
    if self.co_attention:  # LXMERT: one cross-attention module, both directions (LXRTXLayer.visual_attention)
      cross = _CrossAttention(cfg, name="cross_attention", **kw)
      t, v = cross(t, v, mask=None, train=train), cross(v, t, mask=text_mask, train=train)
    t = BertAttention(cfg, name="text_self_attention", **kw)(t, mask=text_mask, train=train)
    v = BertAttention(cfg, name="image_self_attention", **kw)(v, mask=None, train=train)
    t = _FeedForward(cfg, self.dtype, name="text_ffn")(t, train=train)
    v = _FeedForward(cfg, self.dtype, name="image_ffn")(v, train=train)
    return t, v


class Backbone(nn.Module):
  """Embeddings, single-stream layers, fusion layers and pooler (module docstring, steps 1-5): everything
  the pretraining and QA models share. Returns ``(t [B, T, D], v [B, 1 + R, D], pooled [B, D], word
  embedding table [V, D])``; sows ``text_output`` and ``image_output`` (``intermediates``)."""

  config: BertConfig
  fusion: str = "coattention"
  co_attention: bool = True
  num_text_layers: int = 6
  num_image_layers: int = 0
  num_fusion_layers: int = 6
  pool: str = "mul"
  attention: str = "xla"
  dtype: Any = jnp.float32
  remat: str = "none"

  @nn.compact
  def __call__(self, ids, valid, regions, locations, *, train: bool):
    cfg = self.config
    embeddings = BertEmbeddings(cfg, self.dtype, name="text_embeddings")
    t = embeddings(ids, train=train)
    table = nn.unbox(embeddings.variables["params"]["word_embeddings"]["embedding"])
    features = jnp.concatenate([regions.mean(axis=1, keepdims=True), regions], axis=1)  # <IMG> first
    v = _ImageEmbeddings(cfg, self.fusion, self.dtype, name="image_embeddings")(features, locations,
                                                                                 train=train)
    text_mask = valid[:, None, None, :]
    layer = remat(BertLayer, self.remat, static_argnums=(3,))
    for i in range(self.num_text_layers):
      t = layer(cfg, self.attention, self.dtype, name=f"text_layer_{i}")(t, text_mask, train)
    for i in range(self.num_image_layers):
      v = layer(cfg, self.attention, self.dtype, name=f"image_layer_{i}")(v, None, train)
    fusion = remat(_FusionLayer, self.remat, static_argnums=(4,))
    for i in range(self.num_fusion_layers):
      t, v = fusion(cfg, self.fusion, self.co_attention, self.attention, self.dtype, name=f"fusion_{i}")(
          t, v, text_mask, train)
    self.sow("intermediates", "text_output", t)
    self.sow("intermediates", "image_output", v)
    dense = lambda name: axes.dense(cfg.hidden_size, ("embed", "mlp"), dtype=self.dtype, name=name,  # noqa: E731
                                    kernel_init=_normal(cfg))
    if self.pool == "mul":  # ViLBERT: ReLU(W_t t_[CLS]) * ReLU(W_v v_<IMG>)
      pooled = nn.relu(dense("text_pooler")(t[:, 0])) * nn.relu(dense("image_pooler")(v[:, 0]))
    else:  # LXMERT: tanh(W t_[CLS])
      pooled = jnp.tanh(dense("pooler")(t[:, 0]))
    return t, v, pooled, table


class _Transform(nn.Module):
  """``LN(gelu(W h))`` (BERT's prediction-head transform)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    cfg = self.config
    h = axes.dense(cfg.hidden_size, ("embed", "mlp"), dtype=self.dtype, name="dense",
                   kernel_init=_normal(cfg))(h)
    return _layer_norm(cfg, self.dtype, "LayerNorm")(ACTIVATIONS[cfg.hidden_act](h))


@register("vilbert")
class ViLBERT(nn.Module):
  """ViLBERT (co-attention) or LXMERT (cross-modality encoder) with a pretraining or a VQA head."""

  fusion: str = "coattention"  # or "lxmert"
  head: str = "pretrain"  # or "qa"
  co_attention: bool = True  # False: no cross-modal sub-layers, the streams run independently
  vocab_size: int = 30522  # bert-base-uncased's
  cls_id: int = 101  # [CLS] in bert-base-uncased
  sep_id: int = 102  # [SEP]
  mask_id: int = 103  # [MASK]
  image_key: str = "image"
  text_key: str = "caption_tokens"
  patch_size: int = 2  # regions are patch_size x patch_size patches
  width: int = 768
  num_heads: int = 12
  intermediate_size: int = 3072
  num_text_layers: int = 6  # text-only layers before the fusion layers (LXMERT: 9)
  num_image_layers: int = 0  # image-only layers before the fusion layers (LXMERT: 5)
  num_fusion_layers: int = 6  # co-attention / cross-modality layers (LXMERT: 5)
  max_text_length: int = 64  # learned text positions, [CLS] and [SEP] included
  pool: str = ""  # "" = the paper's ("mul" for coattention, "text" for lxmert), or "mul" / "text"
  region_location: str = "box"  # the papers' 5-d box, or "index": a learned embedding per region
  dropout: float = 0.1
  attention_dropout: float = 0.1
  num_answers: int = 3129  # qa: answer vocabulary (VQA v2's in ViLBERT and LXMERT)
  mask_prob: float = 0.15  # pretrain: text tokens chosen for MLM
  region_mask_prob: float = 0.15  # pretrain: regions masked for feature regression
  itm_negative_prob: float = 0.5  # pretrain: examples whose image is replaced
  itm_match_key: str = ""  # pretrain: batch key (e.g. "label"); an equal replacement still matches
  region_loss: str = "smooth_l1"  # or "l2"
  mlm_weight: float = 1.0
  itm_weight: float = 1.0
  region_weight: float = 1.0
  init_std: float = 0.02  # std of the normal initialisation (BERT's initializer_range)
  attention: str = "xla"  # attention kernel, see mmjax.layers.attention
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each layer (config.remat)

  def _check(self):
    for field, value, allowed in (("fusion", self.fusion, FUSIONS), ("head", self.head, HEADS),
                                  ("region_loss", self.region_loss, REGION_LOSSES),
                                  ("pool", self.pool, ("", *POOLS)),
                                  ("region_location", self.region_location, REGION_LOCATIONS)):
      if value not in allowed:
        raise ConfigError(f"vilbert: model.kwargs.{field} is {value!r}; use one of {list(allowed)}")
    if not self.co_attention and (self.pool or PAPER_POOL[self.fusion]) == "text":
      raise ConfigError(
          "vilbert: model.kwargs.co_attention is False and the pooled output is the text stream's [CLS] "
          f"(pool {self.pool or PAPER_POOL[self.fusion]!r}, the default for fusion {self.fusion!r}): without "
          "co-attention nothing of the image reaches it, so the answer and matching heads would ignore the "
          "image. Set model.kwargs.pool='mul' (pools both streams) or co_attention=True")
    if self.vocab_size <= 0:
      raise ConfigError("vilbert: model.kwargs.vocab_size must be the size of the token vocabulary (> 0)")
    for field in ("cls_id", "sep_id", "mask_id"):
      if not 0 <= getattr(self, field) < self.vocab_size:
        raise ConfigError(f"vilbert: model.kwargs.{field} = {getattr(self, field)} is not an id of the "
                         f"vocabulary (vocab_size {self.vocab_size}); set it to the id of that special token")
    for field in ("num_text_layers", "num_image_layers", "num_fusion_layers"):
      if getattr(self, field) < 0:
        raise ConfigError(f"vilbert: model.kwargs.{field} must be >= 0; got {getattr(self, field)}")
    if self.width % self.num_heads:
      raise ConfigError(f"vilbert: model.kwargs.width {self.width} is not divisible by num_heads "
                       f"{self.num_heads}")
    for field in ("mask_prob", "region_mask_prob", "itm_negative_prob"):
      if not 0.0 <= getattr(self, field) <= 1.0:
        raise ConfigError(f"vilbert: model.kwargs.{field} must be a probability in [0, 1]; got "
                         f"{getattr(self, field)}")

  @property
  def config(self) -> BertConfig:
    """The BERT shape of both streams."""
    return BertConfig(vocab_size=self.vocab_size, hidden_size=self.width, num_hidden_layers=0,
                      num_attention_heads=self.num_heads, intermediate_size=self.intermediate_size,
                      max_position_embeddings=self.max_text_length, hidden_dropout_prob=self.dropout,
                      attention_probs_dropout_prob=self.attention_dropout, initializer_range=self.init_std)

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    self._check()
    n = check_modalities(batch, (self.image_key, self.text_key), model_name="vilbert",
                         kinds={self.image_key: "image", self.text_key: "tokens"},
                         field={self.image_key: "image_key", self.text_key: "text_key"},
                         vocab_size=self.vocab_size)
    images = jnp.asarray(batch[self.image_key], jnp.float32)
    tokens = jnp.asarray(batch[self.text_key])
    if tokens.shape[1] + 2 > self.max_text_length:
      raise ConfigError(f"vilbert: {tokens.shape[1]} text tokens plus [CLS] and [SEP] exceed "
                       f"model.kwargs.max_text_length = {self.max_text_length}; raise it")
    ids, valid, is_word = add_cls_sep(tokens, batch.get(f"{self.text_key}_mask"), self.cls_id, self.sep_id)
    locations = region_locations(images.shape[1], images.shape[2], self.patch_size)
    if self.region_location == "index":  # one-hot token index: W_l is a learned embedding per region
      locations = np.eye(len(locations), dtype=np.float32)
    cfg = self.config
    backbone = Backbone(cfg, self.fusion, self.co_attention, self.num_text_layers, self.num_image_layers,
                        self.num_fusion_layers, self.pool or PAPER_POOL[self.fusion], self.attention,
                        self.dtype, self.remat, name="backbone")

    if self.head == "qa":
      _, _, pooled, _ = backbone(ids, valid, patchify(images, self.patch_size), locations, train=train)
      h = nn.Dropout(self.dropout)(pooled, deterministic=not train)
      h = axes.dense(2 * self.width, ("embed", "mlp"), dtype=self.dtype, name="answer_hidden",
                     kernel_init=_normal(cfg))(h)
      h = axes.layer_norm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, name="answer_norm")(
          ACTIVATIONS[cfg.hidden_act](h))
      logits = axes.dense(self.num_answers, ("mlp", "features"), dtype=self.dtype, name="answer_logits",
                          kernel_init=_normal(cfg))(h)
      return logits.astype(jnp.float32), {"pooled": pooled.astype(jnp.float32)}

    # Pretraining. Masks and negatives come from the "latent" stream; model.init gets none (and evaluation
    # a fixed key), so fall back to a fixed key there.
    rng = self.make_rng("latent") if self.has_rng("latent") else jax.random.PRNGKey(0)
    k_itm, k_text, k_region = jax.random.split(rng, 3)
    weights = batch.get("_valid")
    weights = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)

    negative = jax.random.uniform(k_itm, (n,)) < self.itm_negative_prob  # image replaced by the next one's
    shown = jnp.where(negative[:, None, None], jnp.roll(images, -1, axis=0), images)
    matched = ~negative
    if self.itm_match_key:
      if self.itm_match_key not in batch:
        raise ConfigError(f"vilbert: model.kwargs.itm_match_key is {self.itm_match_key!r} but the batch has "
                         f"keys {sorted(batch)}; name a key of the batch (e.g. the label) or set it to ''")
      key = jnp.asarray(batch[self.itm_match_key])
      matched = matched | (jnp.roll(key, -1, axis=0) == key)

    text_in, text_chosen = mask_tokens(k_text, ids, is_word, prob=self.mask_prob, mask_id=self.mask_id,
                                       vocab_size=self.vocab_size)
    regions = patchify(shown, self.patch_size)  # [B, R, F], the regression targets
    region_chosen = jax.random.uniform(k_region, regions.shape[:2]) < self.region_mask_prob
    masked_regions = jnp.where(region_chosen[..., None], 0.0, regions)

    t, v, pooled, table = backbone(text_in, valid, masked_regions, locations, train=train)

    # Masked language modelling: decoder tied to the word embeddings, loss on the chosen tokens only.
    h = _Transform(cfg, self.dtype, name="mlm_transform")(t)
    bias = self.param("mlm_bias", axes.logical(nn.initializers.zeros_init(), ("vocab",)), (self.vocab_size,))
    word_logits = (jnp.einsum("btd,vd->btv", h, table.astype(h.dtype)) + bias).astype(jnp.float32)
    token_loss = -jnp.take_along_axis(jax.nn.log_softmax(word_logits), ids[..., None], axis=-1)[..., 0]
    token_correct = (jnp.argmax(word_logits, -1) == ids) & text_chosen

    # Image-text matching on the pooled output.
    h = nn.Dropout(self.dropout)(pooled, deterministic=not train)
    itm_logits = axes.dense(2, ("embed", "features"), dtype=self.dtype, name="itm", kernel_init=_normal(cfg))(
        h).astype(jnp.float32)
    itm_labels = matched.astype(jnp.int32)
    itm_loss = -jnp.take_along_axis(jax.nn.log_softmax(itm_logits), itm_labels[:, None], axis=-1)[:, 0]

    # Masked region feature regression, on the masked regions only (the <IMG> token is never masked).
    h = _Transform(cfg, self.dtype, name="region_transform")(v[:, 1:])
    predicted = axes.dense(regions.shape[-1], ("embed", "features"), dtype=self.dtype, name="region_output",
                           kernel_init=_normal(cfg))(h).astype(jnp.float32)
    diff = predicted - regions
    if self.region_loss == "l2":
      per_region = jnp.mean(diff * diff, axis=-1)
    else:
      per_region = jnp.mean(jnp.where(jnp.abs(diff) < 1.0, 0.5 * diff * diff, jnp.abs(diff) - 0.5), axis=-1)

    as_float = lambda x: x.astype(jnp.float32)  # noqa: E731
    aux = {
        "losses": {
            "mlm": (masked_mean_per_example(token_loss, text_chosen, weights), self.mlm_weight),
            "itm": (itm_loss, self.itm_weight),
            "mrr": (masked_mean_per_example(per_region, region_chosen, weights), self.region_weight),
        },
        "accuracies": {
            "mlm_accuracy": (as_float(token_correct.sum(axis=1)), as_float(text_chosen.sum(axis=1))),
            "itm_accuracy": (as_float(jnp.argmax(itm_logits, -1) == itm_labels), jnp.ones((n,))),
        },
    }
    return itm_logits, aux
