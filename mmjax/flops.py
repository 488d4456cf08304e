"""Analytic FLOP counts of a train step, per model family: the matmul and convolution FLOPs the model's
equations need, counted from its fields and the batch shapes, to set beside XLA's ``cost_analysis``.

Conventions (those of Kaplan et al., 2020, sec. 2.1, and of the PaLM paper's MFU, Chowdhery et al., 2022,
app. B): a matmul ``[m, k] @ [k, n]`` is ``2 m k n`` FLOPs; attention is ``2 B H Lq Lk D`` for the scores
and as much for the weighted sum (``4 B H Lq Lk D``, :func:`mmjax.layers.attention.attention_flops`); a
convolution is ``2`` x output positions x kernel size x in-channels x out-channels. The backward pass
costs twice the forward (the gradients of both operands), except for the layers that read the batch, which
need no gradient of their input (once the forward). A train step is forward + backward, about 3x the
forward; micro-batching (``grad_accum_steps``) does not change it.

What is deliberately not counted: element-wise work (LayerNorm, softmax, GELU/ReLU, residual adds, masks,
dropout and its random bits, the loss) and the optimizer update (about 10 FLOPs per parameter for Adam),
which XLA's cost analysis includes. At widths 40-128 they are 2-9% of XLA's count (``tests/test_flops.py``:
analytic / XLA = 0.89-0.98 of the lowered step, 0.85-0.97 of the compiled one, for late and early fusion,
MBT, MAG, VisualBERT, ViLBERT, MFM, the VAEs, CLIP, GPT-2 and Frozen; the post-LN BERTs, with exact GELUs
and MAG's gate norms, lowest); at width 16 (the ``runlocal`` configs) about 30% (ratio 0.69). Attention
with a causal mask is counted whole, because the dense kernels (``xla``, ``jax``) compute the whole score
matrix; a kernel that skips masked blocks does about half that work. Embedding lookups are gathers, not
matmuls (their backward, a scatter-add, is not counted either); GPT-2's tied output projection
``h @ wte^T`` is a matmul and counted. Frozen parameters (``optimizer.frozen``) are counted like the
others: the step still computes their gradients (it logs the gradient norm). The input gradient of a
strided convolution is counted as the forward's, not as the dilated convolution XLA runs (which multiplies
the inserted zeros too, 4x for stride 2).

Where XLA's number is smaller: its cost analysis counts the body of a loop once, not times the trip count.
MulT runs its layers under ``nn.scan`` (a ``while`` loop), so XLA reports one cross-modal layer of each
stack and one of the three memory layers: for MulT the analytic count is about 2x XLA's at 2 layers and
grows with ``num_layers`` (at the original unaligned-MOSEI shapes, 5 layers: 118.5 GFLOP analytic,
32.1 reported by XLA; benchmarks/README.md).
Counting the scanned stacks once, the analytic count is 0.82-0.87x XLA's, like the other models. The
LSTMs of TFN, LMF (their subnetworks) and MCTN (encoders, decoders, head) are ``lax.scan`` loops too, over
the time steps: at the digits_av shapes (80 audio frames) the analytic count is 1.7x (TFN), 2.9x (LMF) and
1.9x (MCTN) XLA's, 0.82, 0.96 and 0.99x with each scan body counted once. The
matmul terms themselves are checked exactly against the ``dot_general`` / convolution equations of the
train step's jaxpr, scan lengths multiplied (``tests/test_flops.py``).

Counters are registered by model name (:func:`register`); :func:`train_step_flops` returns None for a model
without one, and the engine then says so ("analytic FLOPs: not available") rather than guessing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np

_COUNTERS: dict[str, Callable] = {}


def register(*names: str):
  """Registers ``fn(model, shapes, tally)`` as the counter of the models called ``names``; ``shapes`` maps
  each batch key to an object with ``.shape`` and ``.dtype`` (the global batch or its ShapeDtypeStructs)."""
  def wrap(fn):
    for name in names:
      _COUNTERS[name] = fn
    return fn

  return wrap


def names() -> list[str]:
  """Models that have a counter."""
  return sorted(_COUNTERS)


@dataclasses.dataclass
class Tally:
  """Forward and backward FLOPs, summed term by term."""

  forward: float = 0.0
  backward: float = 0.0

  def add(self, flops: float, *, reads_batch: bool = False) -> None:
    """A matmul-like term of ``flops`` forward; its backward is 2x, or 1x when its input is the batch (no
    input gradient)."""
    self.forward += flops
    self.backward += flops * (1.0 if reads_batch else 2.0)

  def dense(self, tokens: int, n_in: int, n_out: int, **kw) -> None:
    """A Dense layer ``[tokens, n_in] -> [tokens, n_out]``."""
    self.add(2.0 * tokens * n_in * n_out, **kw)

  def attention(self, b: int, lq: int, lk: int, width: int) -> None:
    """Scores and weighted sum of multi-head attention, ``width = heads * head size``."""
    self.add(4.0 * b * lq * lk * width)

  @property
  def train_step(self) -> float:
    return self.forward + self.backward


def train_step_flops(name: str, model, shapes: Mapping) -> dict | None:
  """``{"forward": F, "train_step": F + backward}`` analytic FLOPs of one step of model ``name`` on the
  global batch ``shapes``, or None when the model has no counter."""
  counter = _COUNTERS.get(name)
  if counter is None:
    return None
  tally = Tally()
  counter(model, shapes, tally)
  return {"forward": tally.forward, "train_step": tally.train_step}


def describe(analytic: dict | None, xla_total: float | None) -> str:
  """One line for the log: the analytic count, and its ratio to XLA's (both per step, all devices)."""
  if analytic is None:
    return "analytic FLOPs: not available (no counter for this model in mmjax.flops)"
  line = f"analytic {analytic['train_step'] / 1e9:.3g} GFLOP per step (matmuls only)"
  if xla_total:
    line += f", {analytic['train_step'] / xla_total:.2f}x XLA's"
  return line


def _is_tokens(x) -> bool:
  return np.issubdtype(np.dtype(x.dtype), np.integer)


# -- encoders shared by the fusion baselines (mmjax.layers.transformer.Encoder) -------------------------

def _encoder(tally: Tally, b: int, t: int, width: int, num_layers: int, mlp_ratio: int) -> None:
  for _ in range(num_layers):
    tally.dense(b * t, width, 3 * width)  # q, k, v
    tally.attention(b, t, t, width)
    tally.dense(b * t, width, width)  # out
    tally.dense(b * t, width, mlp_ratio * width)
    tally.dense(b * t, mlp_ratio * width, width)


def _sequence_embed(tally: Tally, x, width: int) -> tuple[int, int]:
  """:class:`mmjax.layers.SequenceEmbed`: a lookup for tokens, a Dense on features; returns ``(B, T)``."""
  b, t = x.shape[:2]
  if not _is_tokens(x):
    tally.dense(b * t, x.shape[-1], width, reads_batch=True)
  return b, t


def _classifier_head(tally: Tally, b: int, fused: int, width: int, classes: int) -> None:
  tally.dense(b, fused, width)
  tally.dense(b, width, classes)


@register("late_fusion")
def _late_fusion(model, shapes, tally: Tally) -> None:
  for m in model.modalities:
    b, t = _sequence_embed(tally, shapes[m], model.width)
    _encoder(tally, b, t, model.width, model.num_layers, model.mlp_ratio)
  _classifier_head(tally, b, len(model.modalities) * model.width, model.width, model.num_classes)


@register("early_fusion")
def _early_fusion(model, shapes, tally: Tally) -> None:
  total = 0
  for m in model.modalities:
    b, t = _sequence_embed(tally, shapes[m], model.width)
    total += t
  _encoder(tally, b, total, model.width, model.num_layers, model.mlp_ratio)
  _classifier_head(tally, b, model.width, model.width, model.num_classes)


# -- MulT (mmjax.models.mult) ---------------------------------------------------------------------------

def _mult_encoder(tally: Tally, b: int, tq: int, tk: int, width: int, num_layers: int) -> None:
  for _ in range(num_layers):
    tally.dense(b * tq, width, width)  # q_proj
    tally.dense(b * tk, width, 2 * width)  # k_proj, v_proj
    tally.attention(b, tq, tk, width)
    tally.dense(b * tq, width, width)  # out_proj
    tally.dense(b * tq, width, 4 * width)  # fc1
    tally.dense(b * tq, 4 * width, width)  # fc2


@register("mult")
def _mult(model, shapes, tally: Tally) -> None:
  d = model.width
  lengths = {}
  for letter, key, k in zip("lav", model.modality_keys, model.kernel_sizes, strict=True):
    x = shapes[key]
    b, t = x.shape[:2]
    features = model.text_embed_dim if _is_tokens(x) else x.shape[-1]
    lengths[letter] = t - k + 1
    # the temporal convolution; its input gradient is needed only after a (learned) token embedding
    tally.add(2.0 * b * lengths[letter] * k * features * d, reads_batch=not _is_tokens(x))
  targets = model.target_letters()
  for t in targets:
    for s in "lav":
      if s != t:
        _mult_encoder(tally, b, lengths[t], lengths[s], d, model.num_layers)
    _mult_encoder(tally, b, lengths[t], lengths[t], 2 * d, max(model.num_layers, 3))
  dim = 2 * d * len(targets)
  tally.dense(b, dim, dim)  # proj1
  tally.dense(b, dim, dim)  # proj2
  tally.dense(b, dim, model.output_dim)


# -- fusion baselines: TFN, LMF, MBT, MAG, MCTN -----------------------------------------------------------

def _lstm(tally: Tally, b: int, t: int, n_in: int, hidden: int, **kw) -> None:
  """One LSTM direction over ``t`` steps (:mod:`mmjax.models.tfn`, :mod:`mmjax.models.mctn`)."""
  tally.dense(b * t, n_in, 4 * hidden, **kw)  # input projection of every step, before the scan
  tally.add(t * 2.0 * b * hidden * 4 * hidden)  # recurrent h @ W_hh, once per step of the scan


def _fusion_subnets(tally: Tally, model, shapes) -> tuple[int, list[int]]:
  """The modality subnetworks of TFN and LMF (:class:`mmjax.models.tfn.SubNet`): ``(B, [D_m])``."""
  fields = (model.modalities, model.subnets, model.hidden_dims, model.out_dims)
  for m, kind, hidden, out in zip(*fields, strict=True):
    x = shapes[m]
    b, tokens = x.shape[0], _is_tokens(x)
    features = model.embed_dim if tokens else x.shape[-1]  # after the lookup of token ids
    if kind == "lstm":
      _lstm(tally, b, x.shape[1], features, hidden, reads_batch=not tokens)
      tally.dense(b, hidden, out)  # out
      continue
    if kind == "flat":  # images, flattened
      features = math.prod(x.shape[1:])
    # linear_1 reads the batch itself (no input gradient) unless a LayerNorm or an embedding comes first
    tally.dense(b, features, hidden, reads_batch=model.input_norm == "none" and not tokens)
    tally.dense(b, hidden, hidden)  # linear_2
    tally.dense(b, hidden, out)  # linear_3
  return b, list(model.out_dims)


@register("tfn")
def _tfn(model, shapes, tally: Tally) -> None:
  """Tensor Fusion Network (Zadeh et al., 2017): subnetworks, the outer product, the post-fusion MLP."""
  b, dims = _fusion_subnets(tally, model, shapes)
  size = dims[0] + 1
  for d in dims[1:]:  # the outer product, an einsum "bi,bj->bij": a dot_general with nothing contracted
    size *= d + 1
    tally.add(2.0 * b * size)
  tally.dense(b, size, model.post_fusion_dim)  # layer_1
  tally.dense(b, model.post_fusion_dim, model.post_fusion_dim)  # layer_2
  tally.dense(b, model.post_fusion_dim, model.output_dim)  # layer_3


@register("lmf")
def _lmf(model, shapes, tally: Tally) -> None:
  """Low-rank Multimodal Fusion (Liu et al., 2018): subnetworks, then the modality-specific factors."""
  b, dims = _fusion_subnets(tally, model, shapes)
  r, o = model.rank, model.output_dim
  for d in dims:
    tally.add(2.0 * b * r * (d + 1) * o)  # [1; h_m] . f_m for every rank: "bd,rdo->rbo"
  tally.add(2.0 * r * b * o)  # the rank weights' sum, an einsum "r,rbo->bo"


@register("mbt")
def _mbt(model, shapes, tally: Tally) -> None:
  """Multimodal Bottleneck Transformer (Nagrani et al., 2021): per-modality streams, fused from
  ``fusion_layer`` on through bottleneck tokens or full attention."""
  mods, d, token = tuple(model.modalities), model.width, model.classifier == "token"
  lengths = []
  for m in mods:
    b, t = _sequence_embed(tally, shapes[m], d)
    lengths.append(t + token)  # the CLS token
  fused = len(mods) > 1 and not (model.fusion == "bottleneck" and model.num_bottlenecks == 0)
  for i in range(model.num_layers):
    if i < model.fusion_layer or not fused:  # separate streams
      seqs = lengths
    elif model.fusion == "bottleneck":  # each stream with the bottleneck tokens appended
      seqs = [t + model.num_bottlenecks for t in lengths]
    else:  # every modality's layer (or the one shared layer) over all tokens
      seqs = [sum(lengths)] * (1 if model.share_weights else len(mods))
    for t in seqs:
      _encoder(tally, b, t, d, 1, model.mlp_ratio)
  tally.dense(b * (len(mods) if token else 1), d, model.num_classes)  # the classifier, per CLS or pooled


@register("mag")
def _mag(model, shapes, tally: Tally) -> None:
  """MAG-BERT / MAG-GPT-2 (Rahman et al., 2020): the text transformer with the multimodal adaptation gate."""
  text_key, acoustic_key, visual_key = model.modalities
  b, t = shapes[text_key].shape[:2]
  bert = model.text_model == "bert"
  cfg = model.bert if bert else model.lm
  d, mlp, layers = ((cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) if bert
                    else (cfg.n_embd, cfg.mlp_width, cfg.n_layer))
  features = {}
  for m in (acoustic_key, visual_key):
    x = shapes[m]
    steps, f = (1, math.prod(x.shape[1:])) if m in model.static_modalities else x.shape[1:3]
    if steps != t:  # the uniform alignment, an einsum "bts,bsf->btf" of the batch (no gradient at all)
      tally.forward += 2.0 * b * t * steps * f
    features[m] = f
  if not _is_tokens(shapes[text_key]):
    tally.dense(b * t, shapes[text_key].shape[-1], d, reads_batch=True)  # text_proj of word features
  for m in (visual_key, acoustic_key):
    tally.dense(b * t, features[m] + d, d)  # the gate W_hv / W_ha on [V; Z] / [A; Z]
    tally.dense(b * t, features[m], d, reads_batch=True)  # W_v / W_a
  for _ in range(layers):
    tally.dense(b * t, d, 3 * d)  # query, key, value (c_attn)
    tally.attention(b, t, t, d)  # causal for GPT-2, counted whole
    tally.dense(b * t, d, d)  # attention output
    tally.dense(b * t, d, mlp)
    tally.dense(b * t, mlp, d)
  if model.pool == "cls" or (model.pool == "auto" and bert and cfg.add_pooling_layer):
    tally.dense(b, d, d)  # BERT's pooler
  tally.dense(b, d, model.output_dim)  # classifier


@register("mctn")
def _mctn(model, shapes, tally: Tally) -> None:
  """Multimodal Cyclic Translation Network (Pham et al., 2019): Seq2Seq translations source -> T1 -> source
  (one encoder-decoder both ways), joint -> T2, and the LSTM prediction head."""
  h, src, t1 = model.hidden_dim, model.source, model.targets[0]
  b, ts = shapes[src].shape[:2]
  width = {m: model.vocab_size if _is_tokens(shapes[m]) else shapes[m].shape[-1] for m in model.modalities}
  steps = {m: shapes[m].shape[1] for m in model.modalities}

  def encoder(t):  # BiEncoder: forward and backward LSTMs per layer
    for _ in range(2 * model.encoder_layers):
      _lstm(tally, b, t, h, h)

  def decoder(s, t, m):  # AttentionDecoder over a memory of s steps for t steps, then m's readout
    tally.dense(b * s, h, 5 * h)  # keys, input (the LSTM's input map of the memory)
    tally.add(t * 2.0 * b * h * 5 * h)  # query and recurrent maps of h, one matmul per step
    tally.add(t * 2.0 * b * s * 5 * h)  # per step: scores v . tanh(.) ("bsa,a->bs"), context "bs,bsg->bg"
    tally.dense(b * t, h, width[m])  # readout of m

  # the source's input map (one-hot ids or features) reads the batch
  tally.dense(b * ts, width[src], h, reads_batch=True)
  encoder(ts)
  decoder(ts, steps[t1], t1)  # source -> T1
  tally.dense(b * steps[t1], width[t1], h)  # T1's input map, on the translation (or its softmax)
  encoder(steps[t1])
  decoder(steps[t1], ts, src)  # T1^ -> source, the cycle
  if len(model.targets) > 1:
    encoder(ts)  # encoder2 on the joint representation
    decoder(ts, steps[model.targets[1]], model.targets[1])  # decoder2: joint -> T2
  _lstm(tally, b, ts, h, model.head_dim)  # head: LSTM over the joint representation
  tally.dense(b * ts, model.head_dim, 1)  # attention scores
  tally.add(2.0 * b * ts * model.head_dim)  # attention pooling, an einsum "bt,btd->bd"
  tally.dense(b, model.head_dim, model.num_classes)  # output


# -- GPT-2 and the models built on it ---------------------------------------------------------------------

def _gpt2(tally: Tally, cfg, b: int, t: int) -> None:
  """:class:`mmjax.models.gpt2.GPT2` on ``[B, T]`` inputs, logits through the tied embedding included."""
  d = cfg.n_embd
  for _ in range(cfg.n_layer):
    tally.dense(b * t, d, 3 * d)  # c_attn
    tally.attention(b, t, t, d)  # causal, counted whole (see the module docstring)
    tally.dense(b * t, d, d)  # attn c_proj
    tally.dense(b * t, d, cfg.mlp_width)  # c_fc
    tally.dense(b * t, cfg.mlp_width, d)  # mlp c_proj
  tally.dense(b * t, d, cfg.vocab_size)  # logits = h @ wte^T


@register("causal_lm")
def _causal_lm(model, shapes, tally: Tally) -> None:
  b, t = shapes[model.text_key].shape[:2]
  _gpt2(tally, model.lm, b, t)


def _conv_out(n: int, stride: int) -> int:
  return math.ceil(n / stride)  # "SAME" padding


@register("frozen")
def _frozen(model, shapes, tally: Tally) -> None:
  image = shapes[model.image_key]
  b, h, w = image.shape[:3]
  c = image.shape[3] if len(image.shape) == 4 else 1
  widths = tuple(model.vision_widths)
  tally.add(2.0 * b * h * w * 9 * c * widths[0], reads_batch=True)  # stem 3x3
  c = widths[0]
  for s, width in enumerate(widths):
    for i in range(model.vision_blocks):
      stride = 2 if (s > 0 and i == 0) else 1
      h, w = _conv_out(h, stride), _conv_out(w, stride)
      if stride != 1 or c != width:
        tally.add(2.0 * b * h * w * c * width)  # 1x1 projection
      tally.add(2.0 * b * h * w * 9 * c * width)  # conv1
      tally.add(2.0 * b * h * w * 9 * width * width)  # conv2
      c = width
  n, d = model.num_prefix, model.lm.n_embd
  if model.prefix_head == "linear":
    tally.dense(b, c, n * d)
  else:  # vocab_mixture: logits over the vocabulary, then the expected embeddings
    tally.dense(b, c, n * model.lm.vocab_size)
    tally.add(2.0 * b * n * model.lm.vocab_size * d)
  t = shapes[model.text_key].shape[1]
  _gpt2(tally, model.lm, b, (0 if model.bos_id is None else 1) + n + t)


# -- CLIP / SigLIP (mmjax.models.clip) --------------------------------------------------------------------

@register("clip")
def _clip(model, shapes, tally: Tally) -> None:
  image = shapes[model.image_key]
  b, h, w = image.shape[:3]
  if model.image_tower == "patches":
    c = image.shape[3] if len(image.shape) == 4 else 1
    p = model.patch_size
    t, features = (h // p) * (w // p), p * p * c
  else:
    t, features = h, w
  tally.dense(b * t, features, model.width, reads_batch=True)  # patch embedding
  _encoder(tally, b, t, model.width, model.num_layers, model.mlp_ratio)
  tally.dense(b, model.width, model.embed_dim)  # projection of the pooled image
  text_width = model.text_width or model.width
  b, t = shapes[model.text_key].shape[:2]
  _encoder(tally, b, t, text_width, model.text_layers or model.num_layers, model.mlp_ratio)
  tally.dense(b, text_width, model.embed_dim)
  tally.add(2.0 * b * b * model.embed_dim)  # the B x B similarities of the loss
  tally.forward += 2.0 * b * b * model.embed_dim  # again for the in-batch retrieval metric (no gradient)


# -- vision-language and generative models ----------------------------------------------------------------

def _ffn(tally: Tally, tokens: int, width: int, hidden: int) -> None:
  """BERT's intermediate and output sub-layers (``LN(x + W2 act(W1 x))``)."""
  tally.dense(tokens, width, hidden)  # W1
  tally.dense(tokens, hidden, width)  # W2


def _attention_block(tally: Tally, b: int, lq: int, lk: int, width: int) -> None:
  """Multi-head attention of ``lq`` queries over ``lk`` keys with its output projection (BERT's
  self-attention when ``lq`` and ``lk`` are the same stream; ViLBERT's and LXMERT's cross-attention)."""
  tally.dense(b * lq, width, width)  # query
  tally.dense(b * lk, width, 2 * width)  # key, value
  tally.attention(b, lq, lk, width)
  tally.dense(b * lq, width, width)  # output


def _bert_layer(tally: Tally, b: int, t: int, width: int, hidden: int) -> None:
  """:class:`mmjax.models.bert.BertLayer`: self-attention, then the FFN."""
  _attention_block(tally, b, t, t, width)
  _ffn(tally, b * t, width, hidden)


def _regions(image, patch_size: int) -> tuple[int, int, int]:
  """``(B, regions, features per region)`` of :func:`mmjax.models.clip.patchify`."""
  b, h, w = image.shape[:3]
  c = image.shape[3] if len(image.shape) == 4 else 1
  return b, (h // patch_size) * (w // patch_size), patch_size * patch_size * c


def _bert_heads(tally: Tally, model, b: int, t: int, d: int) -> bool:
  """The heads on a pooled ``[B, D]`` and text ``[B, T, D]``: the QA MLP (``head == "qa"``; returns True),
  or MLM (a transform at every text position, then the decoder tied to the word embeddings) and ITM."""
  if model.head == "qa":
    tally.dense(b, d, 2 * d)  # answer MLP hidden layer
    tally.dense(b, 2 * d, model.num_answers)  # answer logits
    return True
  tally.dense(b * t, d, d)  # mlm_transform
  tally.dense(b * t, d, model.vocab_size)  # MLM decoder tied to the word embeddings (gradients of both)
  tally.dense(b, d, 2)  # itm
  return False


@register("visualbert")
def _visualbert(model, shapes, tally: Tally) -> None:
  """VisualBERT (Li et al., 2019, sec. 3.1-3.2): one BERT over ``[CLS] text [SEP]`` and the patches."""
  b, n, features = _regions(shapes[model.image_key], model.patch_size)
  t, d = shapes[model.text_key].shape[1] + 2, model.width
  tally.dense(b * n, features, d, reads_batch=True)  # visual_projection of the regions
  for _ in range(model.num_layers):
    _bert_layer(tally, b, t + n, d, model.mlp_dim)
  tally.dense(b, d, d)  # pooler
  _bert_heads(tally, model, b, t, d)


@register("vilbert")
def _vilbert(model, shapes, tally: Tally) -> None:
  """ViLBERT's co-attention (Lu et al., 2019, Fig. 2b) or LXMERT's cross-modality encoder (Tan and Bansal,
  2019, sec. 2.2): a text and an image stream (``<IMG>`` + patches) joined by cross-attention."""
  b, r, features = _regions(shapes[model.image_key], model.patch_size)
  t, v, d, hidden = shapes[model.text_key].shape[1] + 2, 1 + r, model.width, model.intermediate_size
  pool = model.pool or ("mul" if model.fusion == "coattention" else "text")
  n = model.num_fusion_layers
  # The QA head on the text-only pooler never reads the image stream after the text's last cross-attention
  # to it: that tail is computed (forward) but gets no gradient (no backward), as in the traced step.
  text_only = model.head == "qa" and pool == "text"
  tail = Tally()
  image = tail if text_only and not (model.co_attention and n) else tally
  image.dense(b * v, features, d, reads_batch=True)  # feature_proj of <IMG> (the regions' mean) and regions
  # location_proj of the constant boxes (5-d) or one-hot region indices (``region_location="index"``)
  image.dense(v, 5 if model.region_location == "box" else v, d, reads_batch=True)
  for _ in range(model.num_text_layers):
    _bert_layer(tally, b, t, d, hidden)
  for _ in range(model.num_image_layers):
    _bert_layer(image, b, v, d, hidden)
  for i in range(n):
    image = tail if text_only and (not model.co_attention or i == n - 1) else tally
    if model.co_attention:
      _attention_block(tally, b, t, v, d)  # text queries, image keys and values
      _attention_block(image, b, v, t, d)  # image queries, text keys and values (LXMERT: the same weights)
      if model.fusion == "coattention":
        _ffn(tally, b * t, d, hidden)  # text_co_ffn
        _ffn(image, b * v, d, hidden)  # image_co_ffn
    _bert_layer(tally, b, t, d, hidden)  # ViLBERT's TRM; LXMERT's self-attention and FFN, text
    _bert_layer(image, b, v, d, hidden)  # the same, image
  tally.forward += tail.forward
  tally.add(2.0 * b * d * d * (2 if pool == "mul" else 1))  # text (and image) pooler
  if _bert_heads(tally, model, b, t, d):
    return
  tally.dense(b * r, d, d)  # region_transform (the regions, not <IMG>)
  tally.dense(b * r, d, features)  # region_output: the regressed region features


def _modality_encoder(tally: Tally, model, m: str, x) -> None:
  """:class:`mmjax.models.vae_common.ModalityEncoder` of modality ``m``: an MLP on the flattened image, or
  :class:`mmjax.layers.SequenceEmbed` and a pre-LN encoder (``mlp_ratio`` 2), mean-pooled."""
  d = model.width
  if m in tuple(model.image_modalities):
    b = x.shape[0]
    tally.dense(b, math.prod(x.shape[1:]), d, reads_batch=True)  # hidden
    tally.dense(b, d, d)  # out
  else:
    b, t = _sequence_embed(tally, x, d)
    _encoder(tally, b, t, d, model.num_layers, 2)


def _modality_decoder(tally: Tally, model, m: str, x, n: int, latent: int) -> None:
  """:class:`mmjax.models.vae_common.ModalityDecoder` of ``n`` latents ``[n, latent]`` to the shape of
  ``x``: an MLP to the pixels, or (per step, non-autoregressive) an MLP over the latent plus positions."""
  d = model.width
  tally.dense(n, latent, d)  # latent
  if m in tuple(model.image_modalities):
    tally.dense(n, d, d)  # hidden
    tally.dense(n, d, math.prod(x.shape[1:]))  # out: the pixels
    return
  t = x.shape[1]
  tally.dense(t, d, d, reads_batch=True)  # positions: the sinusoidal table is a constant (no input gradient)
  tally.dense(n * t, d, d)  # hidden
  tally.dense(n * t, d, model.vocab_size if _is_tokens(x) else x.shape[2])  # out: logits or features


@register("mfm")
def _mfm(model, shapes, tally: Tally) -> None:
  """MFM (Tsai et al., 2019, sec. 2): encoders, surrogate inference, factor MLPs, decoders, classifier."""
  mods, d = tuple(model.modalities), model.width
  b, others = shapes[mods[0]].shape[0], len(mods) - 1
  factor = model.factor_dim * (2 if model.prior_matching == "kl" else 1)  # KL: mean and log-variance
  for m in mods:
    _modality_encoder(tally, model, m, shapes[m])
    tally.dense(b, others * d + others, d)  # surrogate hidden: the other encodings and their flags
    tally.dense(b, d, d)  # surrogate out
    tally.dense(b, d, d)  # private head (f_m) hidden
    tally.dense(b, d, factor)  # private head out
  tally.dense(b, len(mods) * d, d)  # fusion of the encodings
  tally.dense(b, d, d)  # shared head (f_y) hidden
  tally.dense(b, d, factor)  # shared head out
  for m in mods:
    _modality_decoder(tally, model, m, shapes[m], b, 2 * model.factor_dim)  # from [f_y; f_m]
  tally.dense(b, model.factor_dim, d)  # classifier hidden, on f_y
  tally.dense(b, d, model.num_classes)  # classifier out


def _vae_encoders(tally: Tally, model, shapes) -> int:
  """:meth:`mmjax.models.vae_common.MultimodalVAE.encode`: an encoder and a Gaussian head per modality;
  returns ``B``."""
  d = model.width
  for m in model.modalities:
    _modality_encoder(tally, model, m, shapes[m])
    tally.dense(shapes[m].shape[0], d, d)  # GaussianHead hidden
    tally.dense(shapes[m].shape[0], d, 2 * model.latent_dim)  # GaussianHead out: mean and log-variance
  return shapes[model.modalities[0]].shape[0]


def _latent_probe(tally: Tally, model, b: int) -> None:
  if model.num_classes:
    tally.dense(b, model.latent_dim, model.num_classes, reads_batch=True)  # on stop_gradient(mu)


@register("mvae")
def _mvae(model, shapes, tally: Tally) -> None:
  """MVAE (Wu and Goodman, 2018, sec. 2-3): the product of experts is element-wise (not counted); each
  sub-sampled ELBO term (joint, one per modality, ``num_random_subsets`` random subsets in training)
  decodes its own sample to every modality."""
  b = _vae_encoders(tally, model, shapes)
  mods = tuple(model.modalities)
  terms = 1 + (len(mods) if model.unimodal_terms and len(mods) > 1 else 0) + model.num_random_subsets
  for _ in range(terms):
    for m in mods:
      _modality_decoder(tally, model, m, shapes[m], b, model.latent_dim)
  _latent_probe(tally, model, b)


@register("mmvae")
def _mmvae(model, shapes, tally: Tally) -> None:
  """MMVAE (Shi et al., 2019, sec. 3): the stratified estimator decodes the ``K = num_samples`` samples of
  every expert to every modality (self- and cross-reconstructions), ``M x M`` decoder calls on ``K B``."""
  b = _vae_encoders(tally, model, shapes)
  mods = tuple(model.modalities)
  for _ in mods:
    for m in mods:
      _modality_decoder(tally, model, m, shapes[m], model.num_samples * b, model.latent_dim)
  metric = Tally()  # the reconstruction at the mixture's mean feeds only recon_error: forward, no gradient
  for m in mods:
    _modality_decoder(metric, model, m, shapes[m], b, model.latent_dim)
  tally.forward += metric.forward
  _latent_probe(tally, model, b)
