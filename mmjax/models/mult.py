"""MulT: Multimodal Transformer (Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language
Sequences", ACL 2019), ported faithfully from the original PyTorch code (yaohungt/Multimodal-Transformer).

Architecture (paper sec. 3, eqs. 1-6; modalities L = text, A = audio, V = vision, width ``d``):

1. Dropout (``embed_dropout``) on the text input only; a bias-free temporal Conv1D per modality to width
   ``d`` (eq. 5), padding 0 as in the original, so a kernel of size ``k`` shortens a sequence by ``k - 1``.
2. Six crossmodal transformers ``Y <- X`` (eq. 6), each ``D = num_layers`` pre-LN layers:
   ``Z = sqrt(d) * Z_in + PE`` for the query stream and for the key/value stream; per layer
   ``Z += CM(LN0(Z), LN0(X))`` -- the key/value stream is normalised by the SAME ``LN0`` as the queries and is
   not updated across layers -- then ``Z += FFN(LN1(Z))``; a final LayerNorm.
3. Per target the two crossmodal outputs are concatenated (``2d``) and passed through a self-attention
   "memory" transformer of ``max(num_layers, 3)`` layers; the last time step is read out (eq. 7).
4. ``h = concat(last states)``, ``y = out_layer(proj2(dropout(relu(proj1(h)))) + h)``.

Details of the original kept here: fairseq sinusoidal positions ``[sin | cos]``, inverse frequencies
``exp(-i ln(10000) / (half - 1))``, positions starting at 1, and (``positional_padding_quirk``) a zero
positional embedding for any step whose first projected feature is exactly 0; ``q`` scaled by
``head_dim ** -0.5``; softmax in float32; independent embedding dropout on the key and the value streams;
attention dropout ``attn_dropout_a`` when the source is audio, ``attn_dropout_v`` when it is vision,
``attn_dropout`` otherwise (sources L and the memory transformers); the ``attn_mask`` "query i may attend
key j when ``j <= i + |Lk - Lq|``"; PyTorch LayerNorm epsilon 1e-5 with the exact (two-pass) variance.

Padding (the original has none; it relies on front zero-padding so the last step is real). Optional
``batch[key + "_mask"]`` (``[B, T]`` bool, True = valid) per modality; front or back padding give the same
output:

* padded input steps are zeroed; after a size-``k`` convolution an output step is valid only when its whole
  window is valid;
* padded keys are excluded from every attention; positions count VALID steps (``1..n``, padded steps get
  the zero embedding), whereas the original numbers steps by their absolute index;
* the ``attn_mask`` offset is applied over valid lengths: with ``i'``, ``j'`` the ranks of query ``i`` and
  key ``j`` among the valid steps and ``n_q``, ``n_k`` the valid lengths, query i may attend key j when
  ``j' <= i' + |n_k - n_q|``. Without masks this is exactly the original mask; with masks the output is
  invariant to padding also when ``attn_mask`` is on;
* the readout takes the last VALID step of each target sequence (the last index when no mask is given).

Without masks (and with zero front padding, as in the original pickles) the model computes exactly what the
original computes. Token-id text (``text_vocab_size > 0``, used on the embedded ``digits_av`` data) is
embedded by a learned table of width ``text_embed_dim`` before the projection; the original reads
pre-computed GloVe vectors. Other deviations: any subset of ``target_modalities`` is allowed (the original
supports all three or exactly one); the projection is always applied (the original skips it when an input
already has width ``d``, which never happens on the released data); the compute ``dtype`` is configurable.

The original's weights and hyperparameters are imported by :mod:`mmjax.models.convert.mult_torch`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmjax.errors import ConfigError, InputError
from mmjax.layers import axes
from mmjax.layers.attention import causal_mask, dot_product_attention
from mmjax.layers.dropout import Dropout
from mmjax.layers.embeddings import sinusoidal_positions
from mmjax.layers.inputs import check_modalities, shape_str
from mmjax.layers.remat import remat
from mmjax.models.registry import register

_LETTERS = ("l", "a", "v")
_CANONICAL = ("text", "audio", "vision")

# Paper Table 5 (d = 40, 4 crossmodal blocks). Kernel sizes are (text, audio, vision); the table lists them
# as L/V/A = (1 or 3)/3/3 and 3/3/5 (IEMOCAP). IEMOCAP predicts 4 emotions x 2 classes.
VARIANTS: dict[str, dict[str, Any]] = {
    "mosei": dict(width=40, num_layers=4, num_heads=8, kernel_sizes=(1, 3, 3), embed_dropout=0.3,
                  attn_dropout=0.1, out_dropout=0.1, output_dim=1),
    "mosi": dict(width=40, num_layers=4, num_heads=10, kernel_sizes=(1, 3, 3), embed_dropout=0.2,
                 attn_dropout=0.2, out_dropout=0.1, output_dim=1),
    "iemocap": dict(width=40, num_layers=4, num_heads=10, kernel_sizes=(3, 5, 3), embed_dropout=0.3,
                    attn_dropout=0.25, out_dropout=0.1, output_dim=8),
}


def _layer_norm(dtype, name):
  return axes.layer_norm(epsilon=1e-5, use_fast_variance=False, dtype=dtype, name=name)


def mult_attention_mask(q_valid, k_valid, q_len: int, k_len: int, offset_mask: bool):
  """``[B or 1, 1, Lq, Lk]`` bool attention mask (True = attend), or None when nothing is masked.

  ``q_valid [B, Lq]`` / ``k_valid [B, Lk]`` (None = all valid). Keys that are padding are excluded; with
  ``offset_mask`` query i sees key j when ``rank(j) <= rank(i) + |n_k - n_q|`` over valid steps.
  """
  if q_valid is None and k_valid is None:
    return causal_mask(q_len, k_len, abs(k_len - q_len))[None, None] if offset_mask else None
  qv = jnp.ones((1, q_len), bool) if q_valid is None else q_valid
  kv = jnp.ones((1, k_len), bool) if k_valid is None else k_valid
  mask = kv[:, None, :]  # [B, 1, Lk]
  if offset_mask:
    q_rank = jnp.cumsum(qv, axis=1) - 1  # [B, Lq]
    k_rank = jnp.cumsum(kv, axis=1) - 1  # [B, Lk]
    offset = jnp.abs(kv.sum(axis=1) - qv.sum(axis=1))  # [B]
    mask = mask & (k_rank[:, None, :] <= q_rank[:, :, None] + offset[:, None, None])
  return mask[:, None]


def positions(valid, first_feature, quirk: bool):
  """Integer positions ``[B, T]``: 1, 2, ... over valid steps, 0 (zero embedding) for padding.

  With ``quirk`` a step whose first feature is exactly 0 also gets position 0 (fairseq's padding_idx 0).
  """
  if valid is None:
    pos = jnp.broadcast_to(jnp.arange(1, first_feature.shape[1] + 1), first_feature.shape)
  else:
    pos = jnp.cumsum(valid, axis=1) * valid
  if quirk:
    pos = jnp.where(first_feature == 0, 0, pos)
  return pos


class MulTAttention(nn.Module):
  """fairseq-style multi-head attention: ``out_proj(softmax(q k^T / sqrt(dh)) v)`` (paper eq. 1)."""

  num_heads: int
  dropout: float = 0.0
  attention: str = "xla"
  dtype: Any = jnp.float32
  chunk_size: int = 0  # key block of the "chunked" kernel; 0: its default (attention.default_chunk_size)

  @nn.compact
  def __call__(self, x_q, x_k, x_v, *, mask, train: bool):
    """``x_q [B, Lq, w]``, ``x_k``/``x_v [B, Lk, w]`` -> ``[B, Lq, w]``."""
    w = x_q.shape[-1]
    if w % self.num_heads:
      raise ConfigError(f"MulT width {w} is not divisible by num_heads {self.num_heads}")
    hd = w // self.num_heads
    split = lambda t: t.reshape(*t.shape[:2], self.num_heads, hd)  # [B, L, H, hd]
    # [w, w] kernels whose output columns are heads x head width (split below): "heads" on the columns
    proj = lambda name: axes.dense(w, ("embed", "heads"), dtype=self.dtype, name=name)  # noqa: E731
    q, k, v = split(proj("q_proj")(x_q)), split(proj("k_proj")(x_k)), split(proj("v_proj")(x_v))
    rate = self.dropout if train else 0.0
    out = dot_product_attention(
        q, k, v, mask=mask, scale=hd ** -0.5, dropout_rate=rate,
        dropout_rng=self.make_rng("dropout") if rate > 0 else None, implementation=self.attention,
        chunk_size=self.chunk_size or None,
    )
    out = out.reshape(*out.shape[:2], w)
    return axes.dense(w, ("heads", "embed"), dtype=self.dtype, name="out_proj")(out)


class MulTLayer(nn.Module):
  """One pre-LN MulT layer ``x [B, Lq, w] -> (x, None)``, written for ``nn.scan`` over layers.

  ``kv = (keys, values)`` ``[B, Lk, w]`` for crossmodal attention (``values`` None when it is the same
  stream as ``keys``); ``kv = None`` for self-attention.
  """

  num_heads: int
  attn_dropout: float = 0.0
  relu_dropout: float = 0.0
  res_dropout: float = 0.0
  deterministic: bool = True  # not train
  attention: str = "xla"
  dtype: Any = jnp.float32
  chunk_size: int = 0

  @nn.compact
  def __call__(self, x, kv, mask):
    drop = lambda rate, t: Dropout(rate)(t, deterministic=self.deterministic)
    x = axes.constrain(x, axes.BATCH_LENGTH_EMBED)
    ln0 = _layer_norm(self.dtype, "ln0")
    h = ln0(x)
    if kv is None:
      k = v = h
    else:  # the original normalises the key and the value streams with the queries' LN0
      k = ln0(kv[0])
      v = k if kv[1] is None else ln0(kv[1])
    h = MulTAttention(self.num_heads, self.attn_dropout, self.attention, self.dtype, self.chunk_size,
                      name="self_attn")(
        h, k, v, mask=mask, train=not self.deterministic)
    x = x + drop(self.res_dropout, h)
    h = _layer_norm(self.dtype, "ln1")(x)
    h = axes.dense(4 * x.shape[-1], ("embed", "mlp"), dtype=self.dtype, name="fc1")(h)
    h = drop(self.relu_dropout, nn.relu(axes.constrain(h, axes.BATCH_LENGTH_MLP)))
    h = axes.dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)
    return axes.constrain(x + drop(self.res_dropout, h), axes.BATCH_LENGTH_EMBED), None


class MulTEncoder(nn.Module):
  """MulT's TransformerEncoder: scaled input + positions, embed dropout, layers, final LayerNorm.

  ``x [B, Lq, w]`` (mask ``x_mask [B, Lq]``); ``x_kv [B, Lk, w]`` (mask ``kv_mask``) makes it crossmodal.
  The layers run under ``nn.scan`` (parameters stacked on a leading layer axis; one compiled body), each
  rematerialised in the backward pass as ``remat`` says (:mod:`mmjax.layers.remat`).
  """

  num_layers: int
  num_heads: int
  attn_dropout: float = 0.0
  relu_dropout: float = 0.0
  res_dropout: float = 0.0
  embed_dropout: float = 0.0
  attn_mask: bool = False
  positional_padding_quirk: bool = True
  attention: str = "xla"
  dtype: Any = jnp.float32
  remat: str = "none"  # or "full", or a jax.checkpoint_policies name (mmjax.layers.remat.MODES)
  chunk_size: int = 0

  def _embed(self, x, valid):
    w = x.shape[-1]
    table = sinusoidal_positions(x.shape[1] + 1, w)
    table[0] = 0.0  # padding position
    pos = positions(valid, x[..., 0], self.positional_padding_quirk)
    return math.sqrt(w) * x + jnp.asarray(table, x.dtype)[pos]

  @nn.compact
  def __call__(self, x, x_kv=None, *, x_mask=None, kv_mask=None, train: bool):
    drop = lambda t: Dropout(self.embed_dropout)(t, deterministic=not train)
    h = drop(self._embed(x, x_mask))
    kv = None
    if x_kv is not None:
      e = self._embed(x_kv, kv_mask)
      kv = (drop(e), drop(e)) if train and self.embed_dropout > 0 else (e, None)  # independent dropouts
      mask = mult_attention_mask(x_mask, kv_mask, x.shape[1], x_kv.shape[1], self.attn_mask)
    else:
      mask = mult_attention_mask(x_mask, x_mask, x.shape[1], x.shape[1], self.attn_mask)
    layers = nn.scan(
        remat(MulTLayer, self.remat), variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast, nn.broadcast), length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )(self.num_heads, self.attn_dropout, self.relu_dropout, self.res_dropout, not train, self.attention,
      self.dtype, self.chunk_size, name="layers")
    h, _ = layers(h, kv, mask)
    return _layer_norm(self.dtype, "layer_norm")(h)


def _window_valid(valid, k: int):
  """Validity ``[B, T - k + 1]`` of VALID-conv outputs: every step of the window must be valid."""
  out_len = valid.shape[1] - k + 1
  return jnp.stack([valid[:, i:i + out_len] for i in range(k)]).all(axis=0)


def _last_valid(h, valid):
  """``h [B, T, D]`` at the last valid step of each row (last index when ``valid`` is None)."""
  if valid is None:
    return h[:, -1]
  t = h.shape[1]
  idx = t - 1 - jnp.argmax(valid[:, ::-1], axis=1)
  return h[jnp.arange(h.shape[0]), idx]


@register("mult")
class MulT(nn.Module):
  """MulT (Tsai et al., 2019) with the original ``main.py`` defaults (unaligned MOSEI)."""

  width: int = 30  # d
  num_layers: int = 5  # crossmodal layers; memory transformers use max(num_layers, 3)
  num_heads: int = 5
  attn_dropout: float = 0.1  # sources text and the memory transformers
  attn_dropout_a: float = 0.0  # source audio
  attn_dropout_v: float = 0.0  # source vision
  relu_dropout: float = 0.1
  res_dropout: float = 0.1
  embed_dropout: float = 0.25  # text input dropout and every transformer's embedding dropout
  out_dropout: float = 0.0
  attn_mask: bool = True
  output_dim: int = 1
  kernel_sizes: tuple = (1, 1, 1)  # temporal conv (text, audio, vision); padding 0 shortens by k - 1
  target_modalities: tuple = ("text", "audio", "vision")  # any subset; one entry = single-target ablation
  modality_keys: tuple = ("text", "audio", "vision")  # batch keys of L, A, V
  positional_padding_quirk: bool = True  # zero position embedding where the first feature is exactly 0
  text_vocab_size: int = 0  # > 0: text arrives as token ids, embedded first (not in the original)
  text_embed_dim: int = 300  # width of that token embedding (the original's GloVe vectors are 300-d)
  attention: str = "xla"  # attention kernel, see mmjax.layers.attention.IMPLEMENTATIONS
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each crossmodal / memory layer (config.remat; mmjax.layers.remat)
  chunk_size: int = 0  # key block of attention="chunked" (0: attention.default_chunk_size); 64: fastest here

  def target_letters(self) -> tuple[str, ...]:
    """The targets as letters ``l``/``a``/``v`` in the original's order."""
    if not self.target_modalities:
      raise ConfigError("MulT needs at least one target modality")
    out = set()
    for t in self.target_modalities:
      for names in (_CANONICAL, tuple(self.modality_keys), _LETTERS):
        if t in names:
          out.add(_LETTERS[names.index(t)])
          break
      else:
        raise ConfigError(f"unknown MulT target modality {t!r}; use entries of {_CANONICAL}")
    return tuple(x for x in _LETTERS if x in out)

  @nn.compact
  def __call__(self, batch: Mapping, *, train: bool):
    if len(self.modality_keys) != 3 or len(self.kernel_sizes) != 3:
      raise ConfigError("MulT needs three modality_keys and three kernel_sizes (text, audio, vision); got "
                       f"{self.modality_keys} and {self.kernel_sizes}")
    kinds = dict(zip(self.modality_keys, ("sequence", "features", "features"), strict=True))
    check_modalities(batch, tuple(self.modality_keys), model_name="mult", kinds=kinds, field="modality_keys",
                     vocab_size=self.text_vocab_size, vocab_field="text_vocab_size")
    xs, masks = {}, {}
    for letter, key, k in zip(_LETTERS, self.modality_keys, self.kernel_sizes, strict=True):
      x, valid = batch[key], batch.get(f"{key}_mask")
      if x.shape[1] < k:
        raise InputError(
            f"model 'mult': batch[{key!r}] {shape_str(x.shape)} has {x.shape[1]} steps, fewer than its "
            f"convolution's kernel size {k}; give it at least {k} steps (pad it) or lower "
            "model.kwargs.kernel_sizes"
        )
      if letter == "l" and jnp.issubdtype(jnp.asarray(x).dtype, jnp.integer):
        x = axes.embed(self.text_vocab_size, self.text_embed_dim, axes=("vocab", "features"),
                       dtype=self.dtype, name="text_embed")(x)
      x = jnp.asarray(x, self.dtype)
      if valid is not None:
        valid = jnp.asarray(valid, bool)
        x = jnp.where(valid[..., None], x, 0)
      if letter == "l":
        x = Dropout(self.embed_dropout)(x, deterministic=not train)
      h = axes.conv(self.width, (k,), axes=("features", "embed"), padding="VALID", use_bias=False,
                    dtype=self.dtype, name=f"proj_{letter}")(x)  # [B, T - k + 1, d]
      if valid is not None:
        valid = _window_valid(valid, k)
        h = jnp.where(valid[..., None], h, 0)
      xs[letter], masks[letter] = h, valid

    enc = lambda layers, attn_dropout, name: MulTEncoder(
        layers, self.num_heads, attn_dropout, self.relu_dropout, self.res_dropout, self.embed_dropout,
        self.attn_mask, self.positional_padding_quirk, self.attention, self.dtype, self.remat,
        self.chunk_size, name=name)
    source_dropout = {"l": self.attn_dropout, "a": self.attn_dropout_a, "v": self.attn_dropout_v}
    lasts = []
    for t in self.target_letters():
      hs = [
          enc(self.num_layers, source_dropout[s], f"trans_{t}_with_{s}")(
              xs[t], xs[s], x_mask=masks[t], kv_mask=masks[s], train=train)
          for s in _LETTERS if s != t
      ]
      h = jnp.concatenate(hs, axis=-1)  # [B, T_t, 2d]
      if masks[t] is not None:
        h = jnp.where(masks[t][..., None], h, 0)
      h = enc(max(self.num_layers, 3), self.attn_dropout, f"trans_{t}_mem")(h, x_mask=masks[t], train=train)
      lasts.append(_last_valid(h, masks[t]))
    last_hs = jnp.concatenate(lasts, axis=-1)  # [B, n_targets * 2d]
    dim = last_hs.shape[-1]
    h = nn.relu(axes.dense(dim, ("embed", "mlp"), dtype=self.dtype, name="proj1")(last_hs))
    h = Dropout(self.out_dropout)(h, deterministic=not train)
    h = axes.dense(dim, ("mlp", "embed"), dtype=self.dtype, name="proj2")(h)
    out = axes.dense(self.output_dim, ("embed", "features"), dtype=self.dtype, name="out_layer")(h + last_hs)
    return out.astype(jnp.float32), {"last_hs": last_hs.astype(jnp.float32)}
