"""Scaled dot-product attention behind one signature, with a pluggable kernel.

Every model in mmjax calls :func:`dot_product_attention`, so the kernel is a config choice and the
attention benchmark measures exactly what the models run. Kernels (:data:`IMPLEMENTATIONS`):

* ``"xla"``: the plain einsum-softmax reference (softmax in float32); everything, dropout included.
* ``"jax"``: ``jax.nn.dot_product_attention`` with its XLA implementation (lengths passed through).
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")``; GPU, float16/bfloat16, head size
  a multiple of 8 up to 128, key lengths / causal only (no dense masks, no dropout).
* ``"pallas"``: the Pallas (Triton) flash-attention kernel ``jax.experimental.pallas.ops.gpu.attention.mha``;
  GPU, or any backend with ``interpret=True`` (tests). Key lengths / causal only, no dropout.
* ``"chunked"``: memory-efficient blockwise attention in pure JAX (online softmax over key blocks, a
  ``custom_vjp`` that recomputes the scores in the backward pass and stores only the output and the
  log-sum-exp per query); any backend, everything, dropout included (the same masks as ``"xla"``).
* ``"auto"``: :func:`select_implementation` picks one by backend, dtype and shape, and logs the choice once.

Shapes: queries ``[B, Lq, H, D]``, keys/values ``[B, Lk, K, D]`` with ``H % K == 0`` (grouped KV heads),
``mask`` broadcastable to ``[B, H, Lq, Lk]`` (True = may attend), ``key_lengths [B]`` (key ``j`` is valid
when ``j < key_lengths[b]``; lengths must be >= 1). Causal means query ``i`` sees keys ``j <= i``.
A query row with no visible key gives a uniform average over all keys in ``"xla"``/``"jax"`` and zeros
in ``"chunked"``; no model relies on either.
"""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.errors import InputError, UserError
from mmjax.layers import axes
from mmjax.layers.dropout import dropout_keep

IMPLEMENTATIONS = ("xla", "jax", "cudnn", "pallas", "chunked", "auto")
KERNELS = IMPLEMENTATIONS[:-1]

# Run the Pallas kernel in interpret mode (so it runs on CPU); only tests set this.
PALLAS_INTERPRET = False
# "auto" on CPU switches from "xla" to "chunked" when one batch's float32 score matrix B*H*Lq*Lk*4 bytes
# exceeds this (see benchmarks/README.md, "Attention": where chunked becomes faster/necessary on CPU).
AUTO_CHUNKED_SCORE_BYTES = 64 * 2**20
# Same switch for "auto" on accelerators (memory, not speed: XLA's dense path is fast while it fits).
AUTO_CHUNKED_SCORE_BYTES_ACCEL = 1 * 2**30
CHUNK_SIZE = 512  # key block of "chunked" on accelerators (fewer, larger blocks: fewer kernel launches)
# ... and on CPU, where a block's scores should stay in cache: the fastest of 32-512 at head sizes 64 and
# 128, within 17 % of the fastest (64) at MulT's head size 6, where 512 was 2.9x slower
# (benchmarks/chunked_blocks.py).
CHUNK_SIZE_CPU = 128

_NEG = -1e30  # finite "minus infinity" for masked logits
_log = logging.getLogger(__name__)
_logged_choices: set[tuple[str, str]] = set()


class KernelUnavailableError(UserError, ValueError):
  """An attention kernel that does not exist, or cannot serve a call (backend, dtype, mask, dropout); the
  message lists the kernels that can."""


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


def _check_mask_and_lengths(query, key, mask, key_lengths):
  """The ``mask`` (bool, broadcastable to ``[B, H, Lq, Lk]``) and ``key_lengths`` (``[B]``) arguments."""
  b, lq, h, _ = query.shape
  full = (b, h, lq, key.shape[1])
  where = "dot_product_attention:"
  if mask is not None:
    shape, dtype = np.shape(mask), mask.dtype if hasattr(mask, "dtype") else np.asarray(mask).dtype
    if not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer)):
      raise InputError(
          f"{where} mask is {dtype} {list(shape)}; it must be bool (True = the query may attend the key), "
          "not an additive bias: convert a bias to a mask (e.g. bias == 0)"
      )
    try:
      fits = len(shape) <= 4 and np.broadcast_shapes(shape, full) == full
    except ValueError:
      fits = False
    if not fits:
      raise InputError(
          f"{where} mask has shape {list(shape)}, which does not broadcast to [B, H, Lq, Lk] = {list(full)} "
          f"(query {list(query.shape)}, key {list(key.shape)}); give it that shape, or size-1 axes in its "
          "place (e.g. [B, 1, 1, Lk] for key padding, [Lq, Lk] for one mask shared by all)"
      )
  if key_lengths is not None and np.shape(key_lengths) != (b,):
    raise InputError(
        f"{where} key_lengths has shape {list(np.shape(key_lengths))}; it must be [B] = [{b}] (the number "
        "of valid leading keys of each example)"
    )


def causal_mask(q_len: int, k_len: int, offset: int = 0) -> jax.Array:
  """``[Lq, Lk]`` bool mask: query i may attend key j when ``j <= i + offset``."""
  return jnp.arange(k_len)[None, :] <= jnp.arange(q_len)[:, None] + offset


def lengths_mask(key_lengths: jax.Array, k_len: int) -> jax.Array:
  """``[B]`` key lengths to a ``[B, 1, 1, Lk]`` bool mask."""
  return (jnp.arange(k_len)[None, :] < jnp.asarray(key_lengths)[:, None])[:, None, None, :]


def default_chunk_size(backend: str | None = None) -> int:
  """The key block of ``"chunked"`` when the call gives none: :data:`CHUNK_SIZE_CPU` on CPU, else
  :data:`CHUNK_SIZE`."""
  return CHUNK_SIZE_CPU if (backend or _backend()) == "cpu" else CHUNK_SIZE


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


# ------------------------------------------------------------------------------------------------ xla


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
    keep = dropout_keep(dropout_rng, dropout_rate, weights.shape)
    weights = jnp.where(keep, weights * (1.0 / (1.0 - dropout_rate)), 0.0)
  out = jnp.einsum("bkgqs,bskd->bqkgd", weights.astype(value.dtype), value)
  return out.reshape(b, lq, h, d)


# -------------------------------------------------------------------------------------------- chunked


def _chunk_layout(query, key, block):
  """Key block size and padded key length for "chunked"."""
  lk = key.shape[1]
  bk = min(block, _round_up(lk, 8))
  return bk, _round_up(lk, bk)


def _to_blocks(x, bk, nb):
  """``[B, Lk, K, D]`` (zero-padded to ``nb*bk``) -> head-major blocks ``[nb, B, K, bk, D]``."""
  pad = nb * bk - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)])
  return x.reshape(x.shape[0], nb, bk, *x.shape[2:]).transpose(1, 0, 3, 2, 4)


def _from_blocks(x, lk):
  """Inverse of :func:`_to_blocks`: ``[nb, B, K, bk, D]`` -> ``[B, Lk, K, D]``."""
  nb, b, k_heads, bk, d = x.shape
  return x.transpose(1, 0, 3, 2, 4).reshape(b, nb * bk, k_heads, d)[:, :lk]


def _heads_major(x, k_heads):
  """``[B, L, H, D]`` -> ``[B, K, G, L, D]`` (query head ``h = k * G + g`` uses KV head ``k``)."""
  b, length, h, d = x.shape
  return x.reshape(b, length, k_heads, h // k_heads, d).transpose(0, 2, 3, 1, 4)


def _heads_minor(x):
  """Inverse of :func:`_heads_major`: ``[B, K, G, L, D]`` -> ``[B, L, H, D]``."""
  b, k_heads, g, length, d = x.shape
  return x.transpose(0, 3, 1, 2, 4).reshape(b, length, k_heads * g, d)


def _mask_blocks(mask, b, h, k_heads, lq, lk, bk, nb):
  """User mask -> ``[nb, Bm, Km, Gm, Lqm, bk]`` (size-1 dims kept) for the scan, or None."""
  if mask is None:
    return None
  mask = jnp.asarray(mask, bool)
  mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  bm, hm, qm, _ = mask.shape
  mask = jnp.broadcast_to(mask, (bm, hm, qm, lk))
  if hm == h:
    mask = mask.reshape(bm, k_heads, h // k_heads, qm, lk)
  else:
    mask = mask.reshape(bm, 1, 1, qm, lk)
  mask = jnp.pad(mask, [(0, 0)] * 4 + [(0, nb * bk - lk)])
  mask = mask.reshape(*mask.shape[:4], nb, bk)
  return jnp.moveaxis(mask, 4, 0)


def chunked_dropout_keep(rng, rate, shape, key_length, j, layout=None):
  """Keep mask ``[B, K, G, Lq, bk]`` of key block ``j``: block ``j`` of the dense kernel's mask
  ``dropout_keep(rng, rate, [B, K, G, Lq, key_length])`` (:mod:`mmjax.layers.dropout`), so "chunked" and
  "xla" drop the same weights, and the forward and backward pass see the same draw. ``layout``: the axes
  order to return it in (the backward pass takes it keys-major, ``(0, 1, 4, 2, 3)``)."""
  full = tuple(shape[:-1]) + (key_length,)
  return dropout_keep(rng, rate, shape, full_shape=full, offsets=(0, 0, 0, 0, j * shape[-1]), layout=layout)


def _block_allowed(j, bk, lq, klen, mask_j, causal):
  """Bool ``[B|1, K|1, G|1, Lq, bk]``: which (query, key) pairs of key block ``j`` may attend."""
  kpos = j * bk + jnp.arange(bk)
  allowed = (kpos[None, :] < klen[:, None])[:, None, None, None, :]  # [B, 1, 1, 1, bk]
  if causal:
    allowed = allowed & (kpos[None, :] <= jnp.arange(lq)[:, None])[None, None, None]
  if mask_j is not None:
    allowed = allowed & mask_j
  return allowed


def _block_allowed_keys_major(j, bk, lq, klen, mask_j, causal):
  """:func:`_block_allowed` laid out keys-major, ``[B|1, K|1, bk, G|1, Lq]`` (``mask_j`` already is)."""
  kpos = j * bk + jnp.arange(bk)
  allowed = (kpos[None, :] < klen[:, None])[:, None, :, None, None]  # [B, 1, bk, 1, 1]
  if causal:
    allowed = allowed & (kpos[:, None] <= jnp.arange(lq)[None, :])[None, None, :, None, :]
  if mask_j is not None:
    allowed = allowed & mask_j
  return allowed


def _chunked_fwd_core(q, k, v, klen, mask, rng, scale, causal, block, rate):
  """Online softmax over key blocks (Milakov & Gimelshein, 2018; Rabe & Staats, 2021), head-major so every
  product is a plain batched matmul. The scale is folded into the queries, and the dropout factor
  ``1 / (1 - rate)`` into the output, so neither costs a pass over the scores."""
  b, lq, h, d = q.shape
  k_heads, lk = k.shape[2], k.shape[1]
  bk, lk_pad = _chunk_layout(q, k, block)
  nb = lk_pad // bk
  qs = _heads_major(q, k_heads) * jnp.asarray(scale, q.dtype)  # [B, K, G, Lq, D]
  xs = (jnp.arange(nb), _to_blocks(k, bk, nb), _to_blocks(v, bk, nb),
        _mask_blocks(mask, b, h, k_heads, lq, lk, bk, nb))

  def step(carry, x):
    acc, m, den = carry
    j, kj, vj, mj = x
    s = jnp.einsum("bkgqd,bksd->bkgqs", qs, kj, preferred_element_type=jnp.float32)
    s = jnp.where(_block_allowed(j, bk, lq, klen, mj, causal), s, _NEG)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m_new[..., None])  # a masked key gives exp(_NEG - m) = 0 once a row has seen a key
    corr = jnp.exp(m - m_new)
    den = den * corr + p.sum(-1)
    if rate > 0.0:
      p = jnp.where(chunked_dropout_keep(rng, rate, p.shape, lk, j), p, 0.0)
    pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
    return (acc * corr[..., None] + pv, m_new, den), None

  g = h // k_heads
  init = (jnp.zeros((b, k_heads, g, lq, d), jnp.float32), jnp.full((b, k_heads, g, lq), _NEG, jnp.float32),
          jnp.zeros((b, k_heads, g, lq), jnp.float32))
  (acc, m, den), _ = jax.lax.scan(step, init, xs)
  seen = m > _NEG / 2  # the row has at least one visible key (else its exp(0) terms are not weights)
  safe = jnp.where(seen, den, 1.0)
  out = jnp.where(seen[..., None], acc * (1.0 / (1.0 - rate) / safe)[..., None], 0.0)
  lse = jnp.where(seen, m + jnp.log(safe), jnp.inf)
  return _heads_minor(out).astype(v.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _chunked(q, k, v, klen, mask, rng, scale, causal, block, rate):
  return _chunked_fwd_core(q, k, v, klen, mask, rng, scale, causal, block, rate)[0]


def _chunked_fwd(q, k, v, klen, mask, rng, scale, causal, block, rate):
  out, lse = _chunked_fwd_core(q, k, v, klen, mask, rng, scale, causal, block, rate)
  return out, (q, k, v, klen, mask, rng, out, lse)


def _chunked_bwd(scale, causal, block, rate, res, dout):
  """Recomputes each key block's weights from the saved log-sum-exp. With dropout ``z = keep / (1 - rate)``:
  ``dv = (p z)^T do``, ``ds = p (z dp - delta)`` with ``delta = rowsum(do * out)``; the factor ``1 / (1 -
  rate)`` rides on ``do`` and the scale on the queries and on ``dq`` (no pass over the scores for either).

  The block's scores are computed keys-major, ``[B, K, bk, G, Lq]``: ``dk`` and ``dv`` contract them over
  the queries, their minor axes, so the two products read them in place; only ``dq`` takes the small key
  block transposed, and accumulates as ``[B, K, D, G, Lq]``.
  """
  q, k, v, klen, mask, rng, out, lse = res
  b, lq, h, d = q.shape
  lk, k_heads = k.shape[1], k.shape[2]
  bk, lk_pad = _chunk_layout(q, k, block)
  nb = lk_pad // bk
  f32 = jnp.float32
  # scaled in the input dtype, as in the forward pass, so both passes see the same logits in bfloat16 too
  qs = (_heads_major(q, k_heads) * jnp.asarray(scale, q.dtype)).astype(f32)  # [B, K, G, Lq, D]
  do = _heads_major(dout, k_heads).astype(f32)
  delta = jnp.einsum("bkgqd,bkgqd->bkgq", do, _heads_major(out, k_heads).astype(f32))[:, :, None]
  do = do * (1.0 / (1.0 - rate))
  qs_t, do_t = qs.transpose(0, 1, 4, 2, 3), do.transpose(0, 1, 4, 2, 3)  # [B, K, D, G, Lq]
  lse = lse[:, :, None]  # [B, K, 1, G, Lq]
  masks = _mask_blocks(mask, b, h, k_heads, lq, lk, bk, nb)
  masks = None if masks is None else jnp.moveaxis(masks, -1, 3)  # [nb, Bm, Km, bk, Gm, Lqm]
  xs = (jnp.arange(nb), _to_blocks(k, bk, nb), _to_blocks(v, bk, nb), masks)

  def step(dq_t, x):
    j, kj, vj, mj = x
    kj, vj = kj.astype(f32), vj.astype(f32)
    s = jnp.einsum("bksd,bkdgq->bksgq", kj, qs_t)
    p = jnp.where(_block_allowed_keys_major(j, bk, lq, klen, mj, causal), jnp.exp(s - lse), 0.0)
    dp = jnp.einsum("bksd,bkdgq->bksgq", vj, do_t)
    if rate > 0.0:
      keep = chunked_dropout_keep(rng, rate, (b, k_heads, h // k_heads, lq, bk), lk, j, (0, 1, 4, 2, 3))
      dv_j = jnp.einsum("bksgq,bkgqd->bksd", jnp.where(keep, p, 0.0), do)
      dp = jnp.where(keep, dp, 0.0)
    else:
      dv_j = jnp.einsum("bksgq,bkgqd->bksd", p, do)
    ds = p * (dp - delta)
    dk_j = jnp.einsum("bksgq,bkgqd->bksd", ds, qs)
    return dq_t + jnp.einsum("bksd,bksgq->bkdgq", kj, ds), (dk_j, dv_j)

  dq_t, (dk, dv) = jax.lax.scan(step, jnp.zeros(qs_t.shape, f32), xs)
  dq = dq_t.transpose(0, 1, 3, 4, 2) * scale  # [B, K, G, Lq, D]
  return (_heads_minor(dq).astype(q.dtype), _from_blocks(dk, lk).astype(k.dtype),
          _from_blocks(dv, lk).astype(v.dtype), None, None, None)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def _chunked_attention(query, key, value, key_lengths, mask, causal, scale, dropout_rate, dropout_rng,
                       chunk_size):
  b, lk = query.shape[0], key.shape[1]
  klen = jnp.full((b,), lk, jnp.int32) if key_lengths is None else jnp.asarray(key_lengths, jnp.int32)
  rng = dropout_rng if dropout_rate > 0.0 else None
  return _chunked(query, key, value, klen, mask, rng, float(scale), bool(causal), int(chunk_size),
                  float(dropout_rate))


# --------------------------------------------------------------------------------------------- pallas


def _pallas_blocks(n: int):
  """Padded length and (forward, backward) block sizes: powers of two up to 128, multiples of 128 above."""
  if n <= 128:
    p = max(16, 1 << (n - 1).bit_length())
    return p, p, min(32, p)
  return _round_up(n, 128), 128, 32


def _pallas_attention(query, key, value, key_lengths, causal, scale, interpret):
  from jax.experimental.pallas.ops.gpu import attention as pallas_attention

  b, lq, h, d = query.shape
  lk, k_heads = key.shape[1], key.shape[2]
  if k_heads != h:  # the kernel has no grouped heads: share each KV head with its group of query heads
    key, value = jnp.repeat(key, h // k_heads, axis=2), jnp.repeat(value, h // k_heads, axis=2)
  padded_keys = key_lengths is not None or lk != _pallas_blocks(max(lq, lk))[0]
  if not padded_keys:
    length = max(lq, lk)
    seg = None
  elif causal:
    # Only reached with Lq <= Lk and no key_lengths: padded keys j >= Lk > i are never visible.
    length, padded_keys, seg = max(lq, lk), False, None
  else:
    # One segment-id array serves queries and keys alike, so a query can only see keys in its own
    # segment. Lay queries out in segments of klen[b] positions, each holding a copy of the klen[b]
    # valid keys (position p holds key p mod klen); positions past the last segment get id 0.
    length = lq + lk - 1 if key_lengths is not None else -(-lq // lk) * lk
  length, blk, blk_bwd = _pallas_blocks(length)
  pad = lambda t: jnp.pad(t, [(0, 0), (0, length - t.shape[1]), (0, 0), (0, 0)])  # noqa: E731
  q = pad(query)
  if padded_keys:
    klen = (jnp.full((b,), lk, jnp.int32) if key_lengths is None
            else jnp.clip(jnp.asarray(key_lengths, jnp.int32), 1, lk))
    pos = jnp.arange(length)[None, :]
    idx = pos % klen[:, None]  # [B, P]
    n_seg = -(-lq // klen)  # segments needed to hold the Lq queries
    seg = jnp.where(pos < (n_seg * klen)[:, None], pos // klen[:, None] + 1, 0).astype(jnp.int32)
    k = jnp.take_along_axis(key, idx[:, :, None, None], axis=1)
    v = jnp.take_along_axis(value, idx[:, :, None, None], axis=1)
  else:
    k, v = pad(key), pad(value)
  sizes = pallas_attention.BlockSizes(block_q=blk, block_k=blk, block_q_dkv=blk_bwd, block_kv_dkv=blk_bwd,
                                      block_q_dq=blk_bwd, block_kv_dq=blk_bwd)
  out = pallas_attention.mha(q, k, v, seg, sm_scale=float(scale), causal=causal, block_sizes=sizes,
                             interpret=interpret)
  return out[:, :lq]


# ------------------------------------------------------------------------------------ capability/auto


def _backend() -> str:
  return jax.default_backend()


def unsupported_reason(
    implementation: str, *, query_shape, key_shape, dtype, has_mask: bool = False, has_lengths: bool = False,
    causal: bool = False, dropout: bool = False, backend: str | None = None, interpret: bool | None = None,
) -> str | None:
  """Why ``implementation`` cannot serve this request, or None when it can."""
  backend = backend or _backend()
  dtype = jnp.dtype(dtype)
  lq, lk, d = query_shape[1], key_shape[1], query_shape[-1]
  if implementation in ("xla", "chunked", "auto"):
    return None
  if dropout:
    return f"{implementation!r} has no attention dropout"
  if implementation == "jax":
    return None
  if has_mask:
    return f"{implementation!r} takes key_lengths and causal, not dense masks"
  if implementation == "cudnn":
    if backend != "gpu":
      return f"'cudnn' needs a GPU (backend is {backend!r})"
    if dtype not in (jnp.float16, jnp.bfloat16):
      return f"'cudnn' needs float16/bfloat16 inputs (got {dtype})"
    if d % 8 or d > 128:
      return f"'cudnn' needs a head size that is a multiple of 8 and at most 128 (got {d})"
    return None
  if implementation == "pallas":
    interpret = PALLAS_INTERPRET if interpret is None else interpret
    if backend != "gpu" and not interpret:
      return f"'pallas' needs a GPU (backend is {backend!r}; tests use interpret=True)"
    if dtype not in (jnp.float32, jnp.float16, jnp.bfloat16):
      return f"'pallas' needs float32/float16/bfloat16 inputs (got {dtype})"
    if d > 256:
      return f"'pallas' supports head sizes up to 256 (got {d})"
    if causal and (has_lengths or lq > lk):
      return "'pallas' with causal=True needs Lq <= Lk and no key_lengths"
    return None
  raise KernelUnavailableError(_unknown_kernel(implementation))


def _unknown_kernel(implementation) -> str:
  return (f"unknown attention implementation {implementation!r}; available: {IMPLEMENTATIONS}. Set the "
          "attention kernel (a model's `attention` field, e.g. --config.model.kwargs.attention=xla) to one "
          "of them")


def select_implementation(
    query_shape, key_shape, dtype, *, has_mask: bool = False, has_lengths: bool = False, causal: bool = False,
    dropout: bool = False, backend: str | None = None,
) -> tuple[str, str]:
  """The kernel ``"auto"`` runs for this request, and why: ``(name, reason)``."""
  backend = backend or _backend()
  b, lq, h, _ = query_shape
  score_bytes = b * h * lq * key_shape[1] * 4
  kw = dict(query_shape=query_shape, key_shape=key_shape, dtype=dtype, has_mask=has_mask,
            has_lengths=has_lengths, causal=causal, dropout=dropout, backend=backend)
  size = f"score matrix {score_bytes / 2**20:.1f} MiB"
  if backend == "cpu":
    limit = AUTO_CHUNKED_SCORE_BYTES
    if score_bytes > limit:
      return "chunked", f"cpu: {size} > {limit / 2**20:.0f} MiB, blockwise is faster and fits memory"
    return "xla", f"cpu: {size} <= {limit / 2**20:.0f} MiB, dense einsum is fastest"
  if unsupported_reason("cudnn", **kw) is None:
    return "cudnn", f"{backend}: {jnp.dtype(dtype)} without dense mask or dropout, cuDNN flash attention"
  limit = AUTO_CHUNKED_SCORE_BYTES_ACCEL
  if score_bytes > limit:
    return "chunked", f"{backend}: {size} > {limit / 2**20:.0f} MiB, blockwise to fit memory"
  return "xla", f"{backend}: {size}, dense XLA attention (cudnn cannot serve: " \
      f"{unsupported_reason('cudnn', **kw)}; pallas not auto-selected until GPU benchmarks exist)"


# ----------------------------------------------------------------------------------------------- entry


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
    key_lengths: jax.Array | None = None,
    chunk_size: int | None = None,
    interpret: bool | None = None,
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
    key_lengths: ``[B]`` int, number of valid (leading) keys per example; combined with ``mask``.
    chunk_size: key block of ``"chunked"`` (default :func:`default_chunk_size`: 128 on CPU, 512 elsewhere).
    interpret: run ``"pallas"`` in interpret mode (default :data:`PALLAS_INTERPRET`; for tests on CPU).

  Returns:
    ``[B, Lq, H, D]`` in the dtype of ``value``.

  Raises:
    InputError: ``mask`` not bool/integer or not broadcastable to ``[B, H, Lq, Lk]``, or ``key_lengths``
      not ``[B]`` (checked at trace time; the message names the argument and both shapes).
    KernelUnavailableError: an unknown ``implementation``, or one that cannot serve this call (the
      message lists those that can).
  """
  _check_shapes(query, key, value)
  _check_mask_and_lengths(query, key, mask, key_lengths)
  # heads over `tensor`, batch over the data axes (inside the engine's step; no-op elsewhere)
  query, key, value = (axes.constrain(t, axes.BATCH_LENGTH_HEADS_KV) for t in (query, key, value))
  return axes.constrain(_attention(query, key, value, mask, causal, scale, dropout_rate, dropout_rng,
                                   implementation, key_lengths, chunk_size, interpret),
                        axes.BATCH_LENGTH_HEADS_KV)


def _attention(query, key, value, mask, causal, scale, dropout_rate, dropout_rng, implementation, key_lengths,
               chunk_size, interpret):
  """:func:`dot_product_attention` after its shape checks and activation constraints."""
  if implementation not in IMPLEMENTATIONS:
    raise KernelUnavailableError(_unknown_kernel(implementation))
  if dropout_rate > 0.0 and dropout_rng is None:
    raise ValueError("attention dropout_rate > 0 needs a dropout_rng")
  if scale is None:
    scale = query.shape[-1] ** -0.5
  req = dict(query_shape=query.shape, key_shape=key.shape, dtype=query.dtype, has_mask=mask is not None,
             has_lengths=key_lengths is not None, causal=causal, dropout=dropout_rate > 0.0)
  if implementation == "auto":
    implementation, reason = select_implementation(**req)
    if (implementation, reason) not in _logged_choices:
      _logged_choices.add((implementation, reason))
      _log.info("attention 'auto' -> %r (%s)", implementation, reason)
  interpret = PALLAS_INTERPRET if interpret is None else interpret
  why = unsupported_reason(implementation, **req, interpret=interpret)
  if why is not None:
    able = [k for k in KERNELS if unsupported_reason(k, **req, interpret=interpret) is None]
    raise KernelUnavailableError(
        f"attention kernel {why}; kernels that can serve this call: {able} (or 'auto'). Choose one of them "
        "(a model's `attention` field, e.g. --config.model.kwargs.attention=auto)"
    )
  lq, lk = query.shape[1], key.shape[1]

  if implementation == "chunked":
    return _chunked_attention(query, key, value, key_lengths, mask, causal, scale, dropout_rate, dropout_rng,
                              chunk_size or default_chunk_size())
  if implementation == "pallas":
    return _pallas_attention(query, key, value, key_lengths, causal, scale, interpret)
  if implementation in ("jax", "cudnn"):
    if mask is not None:
      mask = jnp.broadcast_to(mask, (query.shape[0], query.shape[2], lq, lk))
    lengths = None if key_lengths is None else jnp.asarray(key_lengths, jnp.int32)
    return jax.nn.dot_product_attention(
        query, key, value, mask=mask, scale=scale, is_causal=causal, key_value_seq_lengths=lengths,
        implementation=None if implementation == "jax" else "cudnn",
    )
  if key_lengths is not None:
    lm = lengths_mask(key_lengths, lk)
    mask = lm if mask is None else jnp.logical_and(mask, lm)
  if causal:
    cm = causal_mask(lq, lk)
    mask = cm if mask is None else jnp.logical_and(mask, cm)
  return _xla_attention(query, key, value, mask, scale, dropout_rate, dropout_rng)


def attention_flops(b: int, h: int, lq: int, lk: int, d: int, *, causal: bool = False,
                    backward: bool = False) -> float:
  """Analytic FLOPs: ``4*B*H*Lq*Lk*D`` forward, x3.5 with the backward pass, halved for causal."""
  f = 4.0 * b * h * lq * lk * d * (3.5 if backward else 1.0)
  return f / 2 if causal else f

