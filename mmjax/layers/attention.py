"""Scaled dot-product attention behind one signature, with a pluggable kernel.

Every model in mmjax calls :func:`dot_product_attention`, so the kernel is a config choice and the
attention benchmark measures exactly what the models run. Kernels:

* ``"xla"``: the plain einsum-softmax reference (softmax in float32).
* ``"jax"``: ``jax.nn.dot_product_attention`` with its XLA implementation.

Shapes: queries ``[B, Lq, H, D]``, keys/values ``[B, Lk, K, D]`` with ``H % K == 0`` (grouped KV heads),
``mask`` broadcastable to ``[B, H, Lq, Lk]`` (True = may attend).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "jax")


def _check_shapes(query, key, value):
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise ValueError(
        "attention expects query [B, Lq, H, D] and key/value [B, Lk, K, D]; got shapes "
        f"{query.shape}, {key.shape}, {value.shape}"
    )
  if key.shape != value.shape:
    raise ValueError(f"key and value shapes differ: {key.shape} vs {value.shape}")
  if query.shape[0] != key.shape[0] or query.shape[-1] != key.shape[-1]:
    raise ValueError(
        f"query {query.shape} and key {key.shape} disagree in batch size or head size"
    )
  if query.shape[2] % key.shape[2]:
    raise ValueError(
        f"query heads ({query.shape[2]}) must be a multiple of key/value heads ({key.shape[2]})"
    )


def causal_mask(q_len: int, k_len: int, offset: int = 0) -> jax.Array:
  """``[Lq, Lk]`` bool mask: query i may attend key j when ``j <= i + offset``."""
  return jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None] + offset


def _xla_attention(query, key, value, mask, scale, dropout_rate, dropout_rng):
  b, lq, h, d = query.shape
  k_heads = key.shape[2]
  q = query.reshape(b, lq, k_heads, h // k_heads, d)
  logits = jnp.einsum("bqkgd,bskd->bkgqs", q, key, preferred_element_type=jnp.float32)
  logits = logits * scale
  if mask is not None:
    mask = jnp.broadcast_to(mask, (b, h, lq, key.shape[1])).reshape(
        b, k_heads, h // k_heads, lq, key.shape[1]
    )
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum("bkgqs,bskd->bqkgd", weights.astype(value.dtype), value)
  return out.reshape(b, lq, h, d)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    implementation: str = "xla",
) -> jax.Array:
  """Attention ``softmax(scale * q k^T + mask) v`` (Vaswani et al., 2017, eq. 1).

  Args:
    query: ``[B, Lq, H, D]``.
    key: ``[B, Lk, K, D]``; ``K`` divides ``H`` (grouped-query attention when ``K < H``).
    value: ``[B, Lk, K, D]``.
    mask: bool, broadcastable to ``[B, H, Lq, Lk]``; True where a query may attend a key.
    causal: also apply a causal mask (query i sees keys ``j <= i``).
    scale: logit scale; defaults to ``D ** -0.5``.
    dropout_rate: dropout on the attention weights (needs ``dropout_rng`` when > 0).
    dropout_rng: PRNG key for attention dropout.
    implementation: one of :data:`IMPLEMENTATIONS`.

  Returns:
    ``[B, Lq, H, D]`` in the dtype of ``value``.
  """
  _check_shapes(query, key, value)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f"unknown attention implementation {implementation!r}; available: {IMPLEMENTATIONS}"
    )
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError("attention dropout_rate > 0 needs a dropout_rng")
  if scale is None:
    scale = query.shape[-1] ** -0.5
  if causal:
    cm = causal_mask(query.shape[1], key.shape[1])
    mask = cm if mask is None else jnp.logical_and(mask, cm)
  if implementation == "jax":
    if dropout_rate > 0.0:
      raise ValueError(
          "attention implementation 'jax' has no attention dropout; use 'xla' or set the rate to 0"
      )
    if mask is not None:
      mask = jnp.broadcast_to(mask, (query.shape[0], query.shape[2], query.shape[1], key.shape[1]))
    return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=scale)
  return _xla_attention(query, key, value, mask, scale, dropout_rate, dropout_rng)
