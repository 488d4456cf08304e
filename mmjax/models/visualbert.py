"""VisualBERT (Li, Yatskar, Yin, Hsieh and Chang, "VisualBERT: A Simple and Performant Baseline for Vision and
Language", arXiv:1908.03557, 2019; original PyTorch code: uclanlp/visualbert, read for facts only).

One BERT reads the caption and the image regions together (paper sec. 3.1, Fig. 2; a single stream):

1. Text ``[CLS] w_1 .. w_n [SEP]``: ``e_i = word[w_i] + position[i] + segment[0]`` (BERT's embeddings).
2. Image regions ``f_j`` (here: the ``patch_size x patch_size`` patches of the image,
   :func:`mmjax.models.clip.patchify`, 16 "regions" of an 8x8 digit at ``patch_size = 2``, 4 at 4):
   ``F_j = W f_j + b + e_s + e_p`` (sec. 3.1: a projection of the region feature ``f``, a segment embedding
   ``e_s`` marking the image, ``segment[1]``, and a position embedding ``e_p``: here a learned embedding of
   the patch's index on the grid, ``visual_position[j]``).
3. ``LN([e; F])`` (one LayerNorm and dropout over the concatenation, text first), then ``num_layers`` post-LN
   BERT blocks (:class:`mmjax.models.bert.BertLayer`) with self-attention over every valid text token and
   every region, so a word attends to regions and a region to words in every layer.
4. The pooler ``tanh(W h_[CLS])`` (BERT's).

Everything above sits under ONE submodule, ``backbone``, so a downstream model grafts the pretrained
backbone whole (``config.init.source = config.init.target = "backbone"``); the heads lie outside it:

* ``head = "pretrain"`` (sec. 3.2, task-agnostic pre-training on captions):
  - masked language modelling (objective 1): every real caption token (not ``[CLS]``, ``[SEP]``, padding) is
    chosen with probability ``mask_prob`` (0.15) independently; a chosen token becomes ``[MASK]`` (80 %), a
    uniformly drawn vocabulary id (10 %) or stays (10 %) (BERT's recipe, as the original's ``random_word``).
    Image regions are never masked (as in the paper). Loss: cross-entropy of BERT's prediction head
    (``dense -> GELU -> LN``, then the decoder tied to the word embeddings plus a bias) at the chosen
    tokens only, averaged over the chosen tokens of the batch. ``aux["accuracies"]["mlm_accuracy"]``: top-1
    accuracy at the chosen tokens.
  - sentence-image prediction (objective 2), in its image-text-matching form: each example's image is
    replaced, with probability ``negative_prob`` (0.5), by the image of another example of the batch whose
    ``batch[negative_key]`` differs (by default: whose image differs); ``Linear(2)`` on the pooled output
    predicts matched (1) / mismatched (0); ``aux["accuracies"]["itm_accuracy"]``.
  - Output: the matching logits ``[B, 2]``; ``aux["losses"] = {"mlm": ..., "itm": ...}`` and
    ``aux["accuracies"]`` for the ``pretraining`` task; ``aux["masked"]`` (``[B, T + 2]`` bool, the chosen
    tokens of the ``[CLS] .. [SEP]`` sequence), ``aux["itm_label"]`` and ``aux["negative_of"]`` (the example
    whose image each example was given) for inspection.
  - Random draws use the ``"latent"`` rng stream: the engine gives a fresh key every training step and
    ``PRNGKey(0)`` in evaluation (so evaluation masks and negatives are the same at every evaluation).
* ``head = "qa"`` (sec. 4.1, VQA as classification over answers): the pooled ``[CLS]`` output through an MLP
  (``dense(2 D) -> GELU -> LN -> dense(num_answers)``) gives the answer logits ``[B, num_answers]`` for the
  ``classification`` task; no masking, no negatives.

Inputs: ``batch[image_key]`` float ``[B, H, W]``; ``batch[text_key]`` int ``[B, T]`` (without ``[CLS]`` and
``[SEP]``: the model adds them) with ``batch[text_key + "_mask"]`` (True = real token; padding must be at the
end); the ids ``cls_id``, ``sep_id``, ``mask_id`` and ``vocab_size`` come from the config (the model names no
dataset). Parameters carry logical axis names; initialisation is BERT's: normal(``init_std``) weights and
embeddings (BERT's ``initializer_range``, 0.02), zero biases, unit LayerNorms.

Deviations from the paper and the original code, and why:

* Regions are image patches, not Faster R-CNN detections (there is no detector for 8x8 digits; patches are
  ViT's regions). The paper's ``e_p`` is the position of the words a region is aligned with (the original
  code: a table of visual positions indexed by that alignment, or index 0 for every region when there is
  none, as in its COCO and VQA runs); patches have a known place on the grid, so ``e_p`` is a learned
  embedding of the patch index (``visual_position_embeddings``), which lets attention tell the patches apart.
* One segment table with ids 0 (text) and 1 (image), as the paper describes ``e_s``; the original keeps a
  separate visual segment table (and visual position table) initialised as copies of the text ones.
* Sentence-image prediction: the paper (and the original's ``two_sentence`` mode) gives the model one image
  and two captions, the second a caption of the same image or (50 %) a random one; here the single-caption
  image-text-matching form (LXMERT, UNITER), mismatching the image rather than the caption, since every
  caption of this data names only a digit. Negatives are drawn among examples whose ``negative_key`` differs
  (the digits configs use ``"label"``: another image of the same digit would still match its caption; the
  original draws a caption of another COCO image). An example with no such example in its batch stays
  matched. Label 1 means matched.
* The MLM loss counts matched examples only (UNITER's choice): with a mismatched image a masked digit name
  cannot be read from the image, and such targets would teach the text to ignore the image. The original
  computes it on every example.
* The MLM loss is a token mean over the batch, handed to the task as per-example terms rescaled so that
  their mean over the valid examples is that token mean (the task averages per-example terms); in
  evaluation, where the task sums over batches, it is the mean of the batches' token means, weighted by
  their numbers of examples.
* The VQA head: the original's reads the hidden state of a ``[MASK]`` token appended to the question and
  applies one linear layer, trained with a soft-score KL loss over 3,129 answers; here the pooled ``[CLS]``
  through a two-layer MLP (the brief's head; LXMERT's answer head) and plain cross-entropy, since each
  question here has exactly one answer.
* Small widths for the digits (the config sets them); the defaults are BERT-base's, but no BERT checkpoint
  is loaded (the original starts from bert-base-uncased). At width 64 the configs initialise with
  ``init_std = 0.125`` (``1 / sqrt(64)``) instead of BERT's 0.02, which is about ``0.55 / sqrt(768)`` for
  width 768: at 0.02 every sub-layer of a 64-wide post-LN block adds only ~0.16 of the residual's scale and
  the pooled output is ~0.16 in size, and training stalled (measured on the digits QA from scratch, 1,000
  steps, patch 2, dropout 0.1: 56 % validation accuracy at 0.02, near the question-only 48.5 %; 78 % at
  0.125).
* Masking draws each token independently (as the original's ``random_word``; BERT's TensorFlow code masks
  a fixed 15 % of each sequence), so a short caption may have no masked token; its random replacements
  are uniform over the whole vocabulary, special tokens included (as the original).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.errors import ConfigError
from mmjax.layers import axes
from mmjax.layers.inputs import check_modalities
from mmjax.layers.remat import remat
from mmjax.models.bert import ACTIVATIONS, BertConfig, BertLayer
from mmjax.models.clip import patchify
from mmjax.models.registry import register

HEADS = ("pretrain", "qa")


def _normal(std: float, names):
  return axes.logical(nn.initializers.normal(std), names)


def text_sequence(tokens, mask, cls_id: int, sep_id: int):
  """``[CLS] tokens [SEP]`` and padding: ``tokens [B, T]`` int and ``mask [B, T]`` (None = all real; real
  tokens first) -> ``(ids [B, T + 2], valid [B, T + 2], maskable [B, T + 2])``; ``maskable`` marks the
  caption's own tokens (not ``[CLS]``, ``[SEP]`` or padding)."""
  b, t = tokens.shape
  lengths = jnp.full((b,), t, jnp.int32) if mask is None else jnp.asarray(mask).astype(jnp.int32).sum(1)
  pos = jnp.arange(t + 2)[None, :]
  ids = jnp.concatenate([jnp.full((b, 1), cls_id, tokens.dtype), tokens, jnp.zeros((b, 1), tokens.dtype)], 1)
  ids = jnp.where(pos == lengths[:, None] + 1, jnp.asarray(sep_id, tokens.dtype), ids)
  valid = pos < lengths[:, None] + 2
  maskable = (pos >= 1) & (pos <= lengths[:, None])
  return ids, valid, maskable


def mask_tokens(rng, ids, maskable, *, mask_prob: float, mask_id: int, vocab_size: int):
  """BERT's masking: each ``maskable`` token is chosen with probability ``mask_prob``; a chosen token becomes
  ``mask_id`` (80 %), a uniform id in ``[0, vocab_size)`` (10 %) or stays (10 %). ``ids [B, L]`` ->
  ``(corrupted ids [B, L], chosen [B, L] bool)``."""
  k_choose, k_how, k_random = jax.random.split(rng, 3)
  chosen = maskable & (jax.random.uniform(k_choose, ids.shape) < mask_prob)
  how = jax.random.uniform(k_how, ids.shape)
  random_ids = jax.random.randint(k_random, ids.shape, 0, vocab_size, ids.dtype)
  replaced = jnp.where(how < 0.8, jnp.asarray(mask_id, ids.dtype), jnp.where(how < 0.9, random_ids, ids))
  return jnp.where(chosen, replaced, ids), chosen


def pick_negatives(rng, keys, *, prob: float):
  """Image-text matching negatives: each example is made a negative with probability ``prob`` by taking the
  image of another example, drawn uniformly among those whose ``keys`` (``[B, ...]``) differ from its own.
  Returns ``(source [B] int32, matched [B] bool)``: example ``i`` gets the image of example ``source[i]``
  (``i`` itself when matched; an example with no differing example in the batch stays matched)."""
  b = keys.shape[0]
  flat = keys.reshape(b, -1)
  differs = jnp.any(flat[:, None, :] != flat[None, :, :], axis=-1)  # [B, B]
  k_pick, k_flip = jax.random.split(rng)
  scores = jnp.where(differs, jax.random.uniform(k_pick, (b, b)), -1.0)
  other = jnp.argmax(scores, axis=1).astype(jnp.int32)
  negative = jax.random.bernoulli(k_flip, prob, (b,)) & jnp.any(differs, axis=1)
  return jnp.where(negative, other, jnp.arange(b, dtype=jnp.int32)), ~negative


def mlm_per_example(logits, targets, chosen, weights):
  """Cross-entropy at the ``chosen`` tokens only, as ``[B]`` terms whose ``weights``-weighted mean over the
  batch is the mean over every chosen token of the weighted examples (0 when none is chosen).
  ``logits [B, L, V]``, ``targets [B, L]`` int, ``chosen [B, L]`` bool, ``weights [B]`` (1 = a real
  example). Also the per-example ``(correct, count)`` of the top-1 accuracy at the chosen tokens."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  c = chosen.astype(jnp.float32)
  per_sum = (ce * c).sum(1)  # [B]
  w = weights.astype(jnp.float32)
  scale = jnp.maximum(w.sum(), 1.0) / jnp.maximum((c.sum(1) * w).sum(), 1.0)
  correct = ((jnp.argmax(logits, -1) == targets) & chosen).astype(jnp.float32).sum(1)
  return per_sum * scale, (correct, c.sum(1))


class VisualBertEmbeddings(nn.Module):
  """``LN([word + position + segment(0); W f + b + visual_position + segment(1)])`` then dropout."""

  config: BertConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    d, std = cfg.hidden_size, cfg.initializer_range
    self.word_embeddings = nn.Embed(cfg.vocab_size, d, dtype=self.dtype,
                                    embedding_init=_normal(std, ("vocab", "embed")))
    self.position_embeddings = nn.Embed(cfg.max_position_embeddings, d, dtype=self.dtype,
                                        embedding_init=_normal(std, ("features", "embed")))
    self.token_type_embeddings = nn.Embed(cfg.type_vocab_size, d, dtype=self.dtype,
                                          embedding_init=_normal(std, ("features", "embed")))
    self.visual_projection = axes.dense(d, ("features", "embed"), dtype=self.dtype,
                                        kernel_init=nn.initializers.normal(std))
    self.visual_position_embeddings = nn.Embed(cfg.max_position_embeddings, d, dtype=self.dtype,
                                               embedding_init=_normal(std, ("features", "embed")))
    self.LayerNorm = axes.layer_norm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=self.dtype,
                                     name=None)  # named by the attribute (setup)
    self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

  def __call__(self, ids, regions, *, train: bool):
    """``ids [B, T]`` int, ``regions [B, N, F]`` float -> ``[B, T + N, D]``."""
    t, n = ids.shape[1], regions.shape[1]
    segment = self.token_type_embeddings
    text = (self.word_embeddings(ids) + self.position_embeddings(jnp.arange(t))[None]
            + segment(jnp.zeros((1, t), jnp.int32)))
    image = (self.visual_projection(regions.astype(self.dtype))
             + self.visual_position_embeddings(jnp.arange(n))[None] + segment(jnp.ones((1, n), jnp.int32)))
    h = self.LayerNorm(jnp.concatenate([text, image.astype(text.dtype)], axis=1))
    return self.dropout(h, deterministic=not train)

  def attend(self, h):
    """``h [..., D]`` -> float32 logits ``[..., V]`` through the word embedding table (the tied decoder)."""
    table = self.word_embeddings.embedding.astype(self.dtype)
    return jnp.einsum("...d,vd->...v", h.astype(self.dtype), table).astype(jnp.float32)


class VisualBertBackbone(nn.Module):
  """Embeddings, ``num_hidden_layers`` BERT blocks over text and regions, and the ``[CLS]`` pooler: the part a
  downstream model grafts from a pretrained one."""

  config: BertConfig
  attention: str = "xla"
  dtype: Any = jnp.float32
  remat: str = "none"

  def setup(self):
    cfg = self.config
    self.embeddings = VisualBertEmbeddings(cfg, self.dtype)
    block = remat(BertLayer, self.remat, static_argnums=(3,))
    self.layers = [block(cfg, self.attention, self.dtype, name=f"layer_{i}")
                   for i in range(cfg.num_hidden_layers)]
    self.pooler = axes.dense(cfg.hidden_size, ("embed", "mlp"), dtype=self.dtype,
                             kernel_init=nn.initializers.normal(cfg.initializer_range))

  def __call__(self, ids, valid, regions, *, train: bool):
    """``ids [B, T]``, ``valid [B, T]`` bool, ``regions [B, N, F]`` -> ``(h [B, T + N, D], pooled [B, D])``;
    every region is valid."""
    h = self.embeddings(ids, regions, train=train)
    keys = jnp.concatenate([valid, jnp.ones(regions.shape[:2], bool)], axis=1)
    mask = keys[:, None, None, :]  # [B, 1, 1, T + N]
    for layer in self.layers:
      h = layer(h, mask, train)
    return h, jnp.tanh(self.pooler(h[:, 0]))

  def attend(self, h):
    return self.embeddings.attend(h)


@register("visualbert")
class VisualBERT(nn.Module):
  """A single-stream BERT over ``[CLS] caption [SEP]`` and image patches, with a pretraining (MLM + image-text
  matching) or a question-answering head (``head``)."""

  head: str = "pretrain"  # or "qa"
  vocab_size: int = 0  # rows of the word embedding (the text vocabulary, special tokens included)
  cls_id: int = -1  # id of [CLS] in that vocabulary
  sep_id: int = -1  # id of [SEP]
  mask_id: int = -1  # id of [MASK] (head="pretrain")
  image_key: str = "image"
  text_key: str = "caption_tokens"  # "question_tokens" for QA
  num_answers: int = 12  # head="qa": size of the answer vocabulary
  patch_size: int = 2  # regions = non-overlapping patch_size x patch_size patches
  width: int = 768  # BERT-base
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  hidden_act: str = "gelu"  # see mmjax.models.bert.ACTIVATIONS
  max_positions: int = 512  # rows of the text and the visual position tables
  dropout: float = 0.1
  attention_dropout: float = 0.1
  init_std: float = 0.02  # std of the normal initialisation (BERT's initializer_range)
  mask_prob: float = 0.15  # MLM: chance of each caption token to be chosen
  negative_prob: float = 0.5  # ITM: chance of each example to get another example's image
  negative_key: str = ""  # ITM: a negative's batch[negative_key] differs, e.g. "label" ("" = its image)
  mlm_weight: float = 1.0
  itm_weight: float = 1.0
  attention: str = "xla"  # attention kernel, see mmjax.layers.attention
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each block (config.remat)

  def _check(self):
    if self.head not in HEADS:
      raise ConfigError(f"visualbert: model.kwargs.head is {self.head!r}; use one of {list(HEADS)}")
    if self.vocab_size <= 0:
      raise ConfigError("visualbert: model.kwargs.vocab_size must be the size of the text vocabulary (> 0), "
                       "special tokens included")
    ids = {"cls_id": self.cls_id, "sep_id": self.sep_id}
    if self.head == "pretrain":
      ids["mask_id"] = self.mask_id
    for field, value in ids.items():
      if not 0 <= value < self.vocab_size:
        raise ConfigError(f"visualbert: model.kwargs.{field} is {value}; set it to the id of that special "
                         f"token in the vocabulary (0 <= id < vocab_size = {self.vocab_size}), e.g. "
                         "Vocabulary.tokens.index('<cls>')")
    if self.hidden_act not in ACTIVATIONS:
      raise ConfigError(f"visualbert: model.kwargs.hidden_act is {self.hidden_act!r}; use one of "
                       f"{sorted(ACTIVATIONS)}")
    if self.width % self.num_heads:
      raise ConfigError(f"visualbert: model.kwargs.width={self.width} is not divisible by num_heads="
                       f"{self.num_heads}")
    if not 0.0 < self.mask_prob <= 1.0 or not 0.0 <= self.negative_prob <= 1.0:
      raise ConfigError(f"visualbert: model.kwargs.mask_prob (now {self.mask_prob}) must be in (0, 1] and "
                       f"negative_prob (now {self.negative_prob}) in [0, 1]")
    if self.head == "qa" and self.num_answers <= 0:
      raise ConfigError(f"visualbert: model.kwargs.num_answers must be > 0; got {self.num_answers}")

  def bert_config(self) -> BertConfig:
    """The shape of the backbone's BERT."""
    return BertConfig(vocab_size=self.vocab_size, hidden_size=self.width, num_hidden_layers=self.num_layers,
                      num_attention_heads=self.num_heads, intermediate_size=self.mlp_dim,
                      hidden_act=self.hidden_act, max_position_embeddings=self.max_positions,
                      type_vocab_size=2, hidden_dropout_prob=self.dropout,
                      attention_probs_dropout_prob=self.attention_dropout, initializer_range=self.init_std)

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    self._check()
    check_modalities(batch, (self.image_key, self.text_key), model_name="visualbert",
                     kinds={self.image_key: "image", self.text_key: "tokens"},
                     field={self.image_key: "image_key", self.text_key: "text_key"},
                     vocab_size=self.vocab_size)
    images, tokens = jnp.asarray(batch[self.image_key]), jnp.asarray(batch[self.text_key])
    ids, valid, maskable = text_sequence(tokens, batch.get(f"{self.text_key}_mask"), self.cls_id, self.sep_id)
    if ids.shape[1] > self.max_positions:
      raise ConfigError(f"visualbert: {ids.shape[1]} text positions ([CLS] + {tokens.shape[1]} + [SEP]) "
                       f"exceed model.kwargs.max_positions={self.max_positions}")
    backbone = VisualBertBackbone(self.bert_config(), self.attention, self.dtype, self.remat, name="backbone")

    if self.head == "qa":
      _, pooled = backbone(ids, valid, patchify(images, self.patch_size), train=train)
      h = axes.dense(2 * self.width, ("embed", "mlp"), dtype=self.dtype, name="qa_hidden",
                     kernel_init=nn.initializers.normal(self.init_std))(pooled)
      h = axes.layer_norm(epsilon=1e-12, dtype=self.dtype, name="qa_norm")(ACTIVATIONS["gelu"](h))
      logits = axes.dense(self.num_answers, ("mlp", "features"), dtype=self.dtype, name="qa_out",
                          kernel_init=nn.initializers.normal(self.init_std))(h)
      return logits.astype(jnp.float32), {}

    # Pretraining. No "latent" rng at model.init (the engine passes one in training and evaluation only).
    rng = self.make_rng("latent") if self.has_rng("latent") else jax.random.PRNGKey(0)
    k_mask, k_neg = jax.random.split(rng)
    if self.negative_key:
      if self.negative_key not in batch:
        raise ConfigError(f"visualbert: model.kwargs.negative_key is {self.negative_key!r} but the batch has "
                         f"keys {sorted(batch)}; name a batch key (e.g. 'label') or '' to compare the images")
      neg_keys = jnp.asarray(batch[self.negative_key])
    else:
      neg_keys = images
    source, matched = pick_negatives(k_neg, neg_keys, prob=self.negative_prob)
    images = jnp.take(images, source, axis=0)
    corrupted, chosen = mask_tokens(k_mask, ids, maskable, mask_prob=self.mask_prob, mask_id=self.mask_id,
                                    vocab_size=self.vocab_size)
    chosen = chosen & matched[:, None]  # MLM on matched pairs only (see the module docstring)
    h, pooled = backbone(corrupted, valid, patchify(images, self.patch_size), train=train)

    text_h = h[:, :ids.shape[1]]
    t = axes.dense(self.width, ("embed", "mlp"), dtype=self.dtype, name="mlm_transform",
                   kernel_init=nn.initializers.normal(self.init_std))(text_h)
    t = axes.layer_norm(epsilon=1e-12, use_fast_variance=False, dtype=self.dtype,
                        name="mlm_norm")(ACTIVATIONS[self.hidden_act](t))
    bias = self.param("mlm_bias", axes.logical(nn.initializers.zeros_init(), ("vocab",)), (self.vocab_size,))
    mlm_logits = backbone.attend(t) + bias  # [B, T + 2, V]
    itm_logits = axes.dense(2, ("embed", "features"), dtype=self.dtype, name="itm",
                            kernel_init=nn.initializers.normal(self.init_std))(pooled).astype(jnp.float32)

    weights = jnp.asarray(batch.get("_valid", jnp.ones(ids.shape[:1])), jnp.float32).reshape(-1)
    mlm, (mlm_correct, mlm_count) = mlm_per_example(mlm_logits, ids, chosen, weights)
    itm_label = matched.astype(jnp.int32)
    itm = optax.softmax_cross_entropy_with_integer_labels(itm_logits, itm_label)
    itm_correct = (jnp.argmax(itm_logits, -1) == itm_label).astype(jnp.float32)
    aux = {"losses": {"mlm": (mlm, self.mlm_weight), "itm": (itm, self.itm_weight)},
           "accuracies": {"mlm_accuracy": (mlm_correct, mlm_count),
                          "itm_accuracy": (itm_correct, jnp.ones_like(itm_correct))},
           "masked": chosen, "itm_label": itm_label, "negative_of": source}
    return itm_logits, aux
