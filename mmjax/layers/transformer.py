"""Pre-LayerNorm transformer layers: self-attention and cross-modal (queries from one modality,
keys/values from another), following Vaswani et al. (2017) with the pre-LN placement of
Xiong et al. (2020).

Compute runs in the modules' ``dtype`` (bfloat16 under ``config.precision = "bfloat16"``); parameters stay
float32, attention softmax and LayerNorm statistics are computed in float32. :class:`Encoder` can
rematerialise each layer in the backward pass (``remat``, :mod:`mmjax.layers.remat`)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import axes
from mmjax.layers.attention import dot_product_attention
from mmjax.layers.remat import remat


def key_padding_mask(mask: jax.Array | None) -> jax.Array | None:
  """``[B, Lk]`` key-validity mask to the attention layout ``[B, 1, 1, Lk]``."""
  return None if mask is None else mask[:, None, None, :]


class MultiHeadAttention(nn.Module):
  """Multi-head attention; queries from ``x_q [B, Lq, E]``, keys/values from ``x_kv [B, Lk, E']``."""

  num_heads: int
  dropout: float = 0.0
  attention: str = "xla"  # kernel; see mmjax.layers.attention.IMPLEMENTATIONS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_q, x_kv, *, mask=None, causal=False, train: bool):
    width = x_q.shape[-1]
    if width % self.num_heads:
      raise ConfigError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head = width // self.num_heads
    dense = lambda name: axes.dense_general(  # noqa: E731
        (self.num_heads, head), ("embed", "heads", "kv"), dtype=self.dtype, name=name)
    q, k, v = dense("query")(x_q), dense("key")(x_kv), dense("value")(x_kv)
    rate = self.dropout if train else 0.0
    out = dot_product_attention(
        q, k, v, mask=mask, causal=causal, dropout_rate=rate,
        dropout_rng=self.make_rng("dropout") if rate > 0 else None,
        implementation=self.attention,
    )
    proj = axes.dense_general(width, ("heads", "kv", "embed"), axis=(-2, -1), dtype=self.dtype, name="out")
    return proj(out)


class EncoderLayer(nn.Module):
  """``x + Attn(LN(x), LN(ctx))`` then ``x + MLP(LN(x))``; ``ctx = x`` for self-attention."""

  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.1
  attention_dropout: float = 0.0
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, *, mask=None, causal=False, train: bool):
    x = axes.constrain(x, axes.BATCH_LENGTH_EMBED)
    h = axes.layer_norm(dtype=self.dtype, name="ln_attn")(x)
    ctx = h if context is None else axes.layer_norm(dtype=self.dtype, name="ln_context")(context)
    h = MultiHeadAttention(
        self.num_heads, self.attention_dropout, self.attention, self.dtype, name="attn"
    )(h, ctx, mask=mask, causal=causal, train=train)
    x = x + nn.Dropout(self.dropout)(h, deterministic=not train)
    h = axes.layer_norm(dtype=self.dtype, name="ln_mlp")(x)
    h = axes.dense(self.mlp_ratio * x.shape[-1], ("embed", "mlp"), dtype=self.dtype, name="fc1")(h)
    h = axes.constrain(h, axes.BATCH_LENGTH_MLP)
    h = nn.Dropout(self.dropout)(nn.relu(h), deterministic=not train)
    h = axes.dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)
    return axes.constrain(x + nn.Dropout(self.dropout)(h, deterministic=not train), axes.BATCH_LENGTH_EMBED)


class _PositionalEncoderLayer(EncoderLayer):
  """:class:`EncoderLayer` called with positional arguments only, as ``nn.remat`` needs (``causal`` and
  ``train``, arguments 4 and 5 counting ``self``, are static)."""

  def __call__(self, x, context, mask, causal, train):
    return super().__call__(x, context, mask=mask, causal=causal, train=train)


class Encoder(nn.Module):
  """A stack of :class:`EncoderLayer` plus a final LayerNorm.

  ``mask [B, Lk]`` marks valid key steps (of ``context`` when given, else of ``x``).
  """

  num_layers: int
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.1
  attention_dropout: float = 0.0
  attention: str = "xla"
  dtype: Any = jnp.float32
  remat: str = "none"  # or "full", or a jax.checkpoint_policies name (mmjax.layers.remat.MODES)

  @nn.compact
  def __call__(self, x, context=None, *, mask=None, causal=False, train: bool):
    attn_mask = key_padding_mask(mask)
    layer = remat(_PositionalEncoderLayer, self.remat, static_argnums=(4, 5))
    for i in range(self.num_layers):
      x = layer(
          self.num_heads, self.mlp_ratio, self.dropout, self.attention_dropout, self.attention,
          self.dtype, name=f"layer_{i}",
      )(x, context, attn_mask, causal, train)
    return axes.layer_norm(dtype=self.dtype, name="ln_final")(x)
