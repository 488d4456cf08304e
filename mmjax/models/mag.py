"""MAG: the Multimodal Adaptation Gate inside a pretrained text transformer (Rahman, Hasan, Lee, Zadeh, Mao,
Morency and Hoque, ACL 2020, "Integrating Multimodal Information in Large Pretrained Transformers"), with BERT
(:mod:`mmjax.models.bert`, "MAG-BERT") or GPT-2 (:mod:`mmjax.models.gpt2`) as the text model.

The text model runs as usual up to the injection point (``injection_layer = k``: 0 = on the embedding
output, ``k >= 1`` = after block ``k``); there each word's hidden state ``Z_i [D]`` is shifted by a
displacement computed from the word-aligned acoustic ``A_i`` and visual ``V_i`` features (paper sec. 3,
eqs. 1-6), and the remaining blocks run on the shifted states:

* gates ``g_v = ReLU(W_hv [V; Z] + b_hv)``, ``g_a = ReLU(W_ha [A; Z] + b_ha)`` (``[D]`` each; the
  nonverbal vector comes first in the concatenation, as in the original);
* displacement ``H = g_v * (W_v V + b_v) + g_a * (W_a A + b_a)``;
* scale ``alpha = min(||Z||_2 / (||H||_2 + eps) * beta_shift, 1)`` (so ``||alpha H|| <= beta ||Z||``);
  where ``||H|| = 0`` the original divides by ``1 + eps`` instead (``alpha H`` is 0 either way);
* output ``Z' = dropout(LayerNorm(Z + alpha H))``.

The pooled text representation feeds a dropout + linear head, as the original
``MAG_BertForSequenceClassification`` (BERT's ``[CLS]`` pooler ``tanh(W h_0)``, dropout
``hidden_dropout_prob``, ``Linear(D, num_labels)``; ``num_labels = 1`` with an MSE loss on MOSI).
``__call__(batch, train=...)`` -> ``(outputs [B, output_dim] float32, aux)`` with ``aux["fused"]`` the pooled
vector, ``aux["hidden"]`` the text model's final hidden states ``[B, T, D]`` and ``aux["alpha"]`` the gate's
scale per word ``[B, T]``.

Inputs. ``modalities = (text, acoustic, visual)`` names the three batch keys. The text is token ids
``[B, T]`` for a text model with a vocabulary, or word features ``[B, T, F]`` (the GloVe vectors of the
MulT pickles): these go through a linear ``text_proj`` to ``D`` and replace the word embeddings (positions
and token types are still added). The nonverbal modalities are ``[B, T_m, F_m]`` with an optional
``<m>_mask``; names in ``static_modalities`` are one observation each (an image ``[B, H, W]``), flattened to
one step. MAG needs one nonverbal vector per word:

* equal length (``T_m == T``, e.g. MOSI/MOSEI ``aligned``): taken as word-aligned, step ``i`` to word ``i``
  (as the original, whose features are averaged over each word's span and repeated over its word pieces);
* otherwise (``alignment = "uniform"``): each example's ``N_t`` real words and ``N_m`` valid steps are laid
  on the same unit interval (word ``i`` covers ``[i/N_t, (i+1)/N_t)``, step ``j`` covers ``[j/N_m,
  (j+1)/N_m)``) and each word takes the overlap-weighted mean of the steps it overlaps. This assumes a
  uniform speech rate, NOT a true forced alignment, and is our choice (the paper always has word-aligned
  features); a single-step (static) modality is thus given to every word. ``alignment = "error"`` refuses
  unequal lengths instead.

Freezing: the text model is the subtree ``text``; ``optimizer.frozen = "text/.*"`` keeps it fixed (the
paper fine-tunes it, the default here). Pretrained weights: ``config.init`` with the loader ``hf_bert``
(:mod:`mmjax.models.convert.hf_bert`) or ``hf_gpt2``, ``init.target = "text"``.

Deviations from the paper and the original code (WasifurRahman/BERT_multimodal_transformer):

* The paper writes a separate bias ``b_H`` in ``H``; the original code has none but puts the biases inside
  ``W_v``/``W_a`` (gated with them). We follow the code, so zeroed gates give ``H = 0`` exactly.
* The original's ``||H|| == 0`` case substitutes 1 through ``torch.where``; here the same value comes from a
  safe norm (``sqrt`` of a sum of squares that is replaced by 1 where it is 0), so the gradient stays finite
  at ``H = 0`` (a plain ``sqrt`` in JAX would give NaN there, e.g. with zeroed gates).
* ``gate_layer_norm = False`` (not in the paper) drops the LayerNorm after the shift, so that MAG with
  zeroed gates is the text model unchanged; the default ``True`` is the original. The LayerNorm's epsilon
  is PyTorch's default 1e-5 (the original's ``nn.LayerNorm(hidden_size)``), not BERT's 1e-12.
* The original MAG-BERT injects at the embedding output (index 0); its MAG-XLNet after layer 1
  (``XLNET_INJECTION_INDEX = 1``). Both are ``injection_layer`` values here; GPT-2 is our addition (the
  paper's second model is XLNet, not included), pooled at the last real token (or the mean).
* Word pieces: the original repeats each word's features over its word pieces and gives ``[CLS]``/``[SEP]``
  zero features; here the batch must already carry one nonverbal step per text step (the MulT pickles have
  words, not word pieces, and no raw text; see ``configs/mag_mosi.py``).
* The uniform alignment of unequal lengths above (for digits_av) is ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import axes, masked_mean
from mmjax.layers.inputs import check_modalities
from mmjax.models.bert import BertConfig, BertModel
from mmjax.models.gpt2 import GPT2, GPT2Config
from mmjax.models.registry import register

TEXT_MODELS = ("bert", "gpt2")
POOLS = ("auto", "cls", "mean", "last")
ALIGNMENTS = ("uniform", "error")


def _safe_norm(x, replace_zero_with: float):
  """``||x||_2`` over the last axis with ``replace_zero_with`` where it is 0, with finite gradients."""
  sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1)
  zero = sq == 0
  return jnp.where(zero, replace_zero_with, jnp.sqrt(jnp.where(zero, 1.0, sq)))


class MAGGate(nn.Module):
  """The adaptation gate: ``(Z [B, T, D], V [B, T, Fv], A [B, T, Fa])`` -> ``(Z' [B, T, D], alpha [B, T])``.

  Parameter names follow the original ``MAG`` module: ``W_hv``, ``W_ha`` (gates), ``W_v``, ``W_a``
  (projections), ``LayerNorm``.
  """

  beta_shift: float = 1.0
  eps: float = 1e-6
  dropout: float = 0.5
  layer_norm: bool = True
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, visual, acoustic, *, train: bool):
    d = z.shape[-1]
    dense = lambda name: axes.dense(d, ("features", "embed"), dtype=self.dtype, name=name)  # noqa: E731
    visual, acoustic = visual.astype(self.dtype), acoustic.astype(self.dtype)
    g_v = nn.relu(dense("W_hv")(jnp.concatenate([visual, z.astype(self.dtype)], axis=-1)))
    g_a = nn.relu(dense("W_ha")(jnp.concatenate([acoustic, z.astype(self.dtype)], axis=-1)))
    h = g_v * dense("W_v")(visual) + g_a * dense("W_a")(acoustic)  # [B, T, D]
    z_norm = _safe_norm(z, 0.0)
    h_norm = _safe_norm(h, 1.0)  # the original: ||H|| = 0 -> 1
    alpha = jnp.minimum(z_norm / (h_norm + self.eps) * self.beta_shift, 1.0)  # [B, T] float32
    out = z + (alpha[..., None] * h).astype(z.dtype)
    if self.layer_norm:
      out = axes.layer_norm(epsilon=self.layer_norm_eps, use_fast_variance=False, dtype=self.dtype,
                            name="LayerNorm")(out)
    return nn.Dropout(self.dropout)(out, deterministic=not train), alpha


def _lengths(mask, b, t):
  if mask is None:
    return jnp.full((b,), t, jnp.int32)
  return jnp.sum(jnp.asarray(mask, bool), axis=1).astype(jnp.int32)


def align_uniform(x, x_mask, text_mask):
  """``x [B, S, F]`` (valid steps ``x_mask [B, S]`` or all) onto the words ``text_mask [B, T]``: each real
  word takes the overlap-weighted mean of the steps whose share of the unit interval overlaps its own
  (padded words get 0). Valid steps and words are assumed to be leading (the pipeline pads at the end)."""
  b, s = x.shape[:2]
  t = text_mask.shape[1]
  n_m = jnp.maximum(_lengths(x_mask, b, s), 1).astype(jnp.float32)[:, None, None]
  n_t = jnp.maximum(_lengths(text_mask, b, t), 1).astype(jnp.float32)[:, None, None]
  i = jnp.arange(t, dtype=jnp.float32)[None, :, None]
  j = jnp.arange(s, dtype=jnp.float32)[None, None, :]
  # [B, T, S]: the length shared by word i's and step j's intervals
  overlap = jnp.clip(jnp.minimum((i + 1) / n_t, (j + 1) / n_m) - jnp.maximum(i / n_t, j / n_m), 0.0)
  valid = jnp.asarray(text_mask, bool)[:, :, None]
  if x_mask is not None:
    valid = valid & jnp.asarray(x_mask, bool)[:, None, :]
  w = jnp.where(valid, overlap, 0.0)
  w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-12)
  return jnp.einsum("bts,bsf->btf", w, x.astype(jnp.float32)).astype(x.dtype)


@register("mag")
class MAG(nn.Module):
  """MAG-BERT / MAG-GPT-2: a text transformer whose hidden states at ``injection_layer`` are shifted by the
  multimodal adaptation gate; a linear head on the pooled text representation."""

  output_dim: int = 1  # 1 = sentiment regression (MOSI), else the number of classes
  text_model: str = "bert"  # or "gpt2"
  bert: BertConfig = BertConfig()  # the text model's shape when text_model="bert" (default bert-base-uncased)
  lm: GPT2Config = GPT2Config()  # the text model's shape when text_model="gpt2" (default the 124M "gpt2")
  injection_layer: int = 0  # 0 = on the embedding output (the original MAG-BERT); k = after block k
  beta_shift: float = 1.0  # the original driver's default (its README example uses 1e-3)
  eps: float = 1e-6
  dropout: float = 0.5  # MAG's dropout_prob (the original default)
  gate_layer_norm: bool = True  # the original's LayerNorm after the shift; False: zero gates = text model
  modalities: Sequence[str] = ("text", "audio", "vision")  # batch keys of (text, acoustic, visual)
  static_modalities: Sequence[str] = ()  # nonverbal keys holding one observation [B, H, W] (flattened)
  alignment: str = "uniform"  # nonverbal steps -> words when lengths differ; or "error"
  pool: str = "auto"  # "cls" (BERT's pooler), "mean" (masked), "last" (last real token); auto: cls / last
  head_dropout: float | None = None  # before the head; None = the text model's hidden dropout
  attention: str = "xla"  # attention kernel, see mmjax.layers.attention
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each text block (config.remat; mmjax.layers.remat)

  def _check_fields(self):
    if self.text_model not in TEXT_MODELS:
      raise ConfigError(f"MAG text_model {self.text_model!r} is unknown; use one of {TEXT_MODELS}")
    n_layers = self.bert.num_hidden_layers if self.text_model == "bert" else self.lm.n_layer
    if not 0 <= self.injection_layer <= n_layers:
      raise ConfigError(f"MAG injection_layer={self.injection_layer} is outside 0..{n_layers} (0 = the "
                       f"embedding output, k = after block k of the {n_layers}-layer {self.text_model})")
    if len(self.modalities) != 3:
      raise ConfigError(f"MAG modalities must name (text, acoustic, visual) batch keys; got "
                       f"{self.modalities!r}")
    if self.pool not in POOLS:
      raise ConfigError(f"MAG pool {self.pool!r} is unknown; use one of {POOLS}")
    if self.pool == "cls" and not (self.text_model == "bert" and self.bert.add_pooling_layer):
      raise ConfigError("MAG pool='cls' needs text_model='bert' with bert.add_pooling_layer=True; use "
                       "'mean' or 'last'")
    if self.alignment not in ALIGNMENTS:
      raise ConfigError(f"MAG alignment {self.alignment!r} is unknown; use one of {ALIGNMENTS}")
    unknown = sorted(set(self.static_modalities) - set(self.modalities[1:]))
    if unknown:
      raise ConfigError(f"MAG static_modalities {unknown} are not among the nonverbal modalities "
                       f"{tuple(self.modalities[1:])}")

  def _word_aligned(self, batch, m, text_mask):
    """Modality ``m`` as one vector per text step ``[B, T, F]``."""
    x, mask = batch[m], batch.get(f"{m}_mask")
    b, t = text_mask.shape
    if m in self.static_modalities:
      x, mask = x.reshape(b, 1, -1), None
    if x.shape[1] == t:
      return x
    if self.alignment == "error":
      raise ValueError(f"MAG: batch[{m!r}] has {x.shape[1]} steps but the text {t}; MAG needs one {m} "
                       "vector per word: give word-aligned features, or set alignment='uniform'")
    return align_uniform(x, mask, text_mask)

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    self._check_fields()
    text_key, acoustic_key, visual_key = self.modalities
    kinds = {text_key: "sequence", acoustic_key: "features", visual_key: "features"}
    for m in self.static_modalities:
      kinds[m] = "image"
    vocab = self.bert.vocab_size if self.text_model == "bert" else self.lm.vocab_size
    check_modalities(batch, self.modalities, model_name="mag", kinds=kinds, vocab_size=vocab,
                     vocab_field=f"{'bert' if self.text_model == 'bert' else 'lm'}.vocab_size")
    text = batch[text_key]
    b, t = text.shape[:2]
    given_mask = batch.get(f"{text_key}_mask")
    text_mask = jnp.ones((b, t), bool) if given_mask is None else jnp.asarray(given_mask, bool)
    acoustic = self._word_aligned(batch, acoustic_key, text_mask)
    visual = self._word_aligned(batch, visual_key, text_mask)

    is_bert = self.text_model == "bert"
    width = self.bert.hidden_size if is_bert else self.lm.n_embd
    tokens, embeddings = (text, None) if jnp.issubdtype(text.dtype, jnp.integer) else (None, None)
    if tokens is None:  # word features (e.g. GloVe) in place of the word embeddings
      embeddings = axes.dense(width, ("features", "embed"), dtype=self.dtype, name="text_proj")(text)
    if is_bert:
      model = BertModel(self.bert, self.attention, self.dtype, self.remat, name="text")
      h = model.embed(tokens, embeddings=embeddings, train=train)
      run = model.run_layers
      n_layers = self.bert.num_hidden_layers
    else:
      model = GPT2(self.lm, self.attention, self.dtype, self.remat, name="text")
      if tokens is None:  # create wte anyway (unused), so the parameters match a GPT-2 checkpoint's
        model.embed(jnp.zeros((1, 1), jnp.int32))
      h = model.input_states(tokens, embeddings=embeddings, attention_mask=given_mask, train=train)
      run = model.run_blocks
      n_layers = self.lm.n_layer
    k = self.injection_layer
    h = run(h, attention_mask=given_mask, start=0, stop=k, train=train)
    h, alpha = MAGGate(self.beta_shift, self.eps, self.dropout, self.gate_layer_norm, dtype=self.dtype,
                       name="MAG")(h, visual, acoustic, train=train)
    h = run(h, attention_mask=given_mask, start=k, stop=n_layers, train=train)
    if not is_bert:
      h = model.final_norm(h)

    pool = self.pool if self.pool != "auto" else ("cls" if is_bert and self.bert.add_pooling_layer else
                                                  "last" if not is_bert else "mean")
    if pool == "cls":
      pooled = model.pool(h)
    elif pool == "mean":
      pooled = masked_mean(h, given_mask)
    else:  # the last real token (right padding)
      last = jnp.maximum(jnp.sum(text_mask, axis=1) - 1, 0)
      pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    rate = self.head_dropout
    if rate is None:
      rate = self.bert.hidden_dropout_prob if is_bert else self.lm.resid_pdrop
    z = nn.Dropout(rate)(pooled, deterministic=not train)
    out = axes.dense(self.output_dim, ("embed", "features"), dtype=self.dtype, name="classifier")(z)
    return out.astype(jnp.float32), {"fused": pooled, "hidden": h, "alpha": alpha}
