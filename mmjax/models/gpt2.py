"""GPT-2: the causal language model that Frozen keeps frozen (Radford et al., 2019, "Language Models are
Unsupervised Multitask Learners"), with a functional KV cache, decoding, scoring and a loader for local
Hugging Face GPT-2 checkpoints.

Architecture (paper sec. 2.3, GPT of Radford et al. 2018 with the changes listed there), width ``D``,
``H`` heads of size ``Dh = D / H``, token ids or input embeddings ``x [B, T, D]``:

1. ``h = wte[tokens] + wpe[positions]`` (learned absolute positions), embedding dropout.
2. ``n_layer`` pre-LN blocks (LayerNorm moved to the input of each sub-block, sec. 2.3):
   ``h += c_proj(attn(c_attn(ln_1(h))))`` with causal self-attention, softmax ``(q k^T / sqrt(Dh))`` and
   a fused ``q|k|v`` projection; ``h += c_proj(gelu(c_fc(ln_2(h))))`` with an MLP of width ``4 D`` and the
   tanh approximation of GELU ("gelu_new"); residual dropout after each ``c_proj``.
3. A final LayerNorm ``ln_f`` (the "additional layer normalization after the final block", sec. 2.3) and
   logits through the tied token embedding ``logits = h wte^T`` (float32).

Initialisation: normal(0.02) weights and embeddings, zero biases, and the residual projections (both
``c_proj``) scaled by ``1/sqrt(N)`` with ``N = 2 n_layer`` residual layers (sec. 2.3).

Parameter layout (names follow the Hugging Face checkpoint; ``h_{i}`` is ``h.{i}``): ``wte/embedding
[V, D]``, ``wpe/embedding [P, D]``, ``h_{i}/ln_1``, ``h_{i}/attn/c_attn/kernel [D, 3, H, Dh]`` (the
checkpoint's Conv1D weight ``[D, 3D]``, which is ``[in, out]`` like a Dense kernel, reshaped: columns are
``q|k|v``, each ``H`` heads of ``Dh``), ``h_{i}/attn/c_proj/kernel [H, Dh, D]``, ``h_{i}/ln_2``,
``h_{i}/mlp/c_fc/kernel [D, 4D]``, ``h_{i}/mlp/c_proj/kernel [4D, D]``, ``ln_f``. The big kernels carry
logical axis names for :mod:`mmjax.train.mesh` (``vocab``, ``embed``, ``heads``, ``mlp``).

Entry points beyond ``__call__``: :meth:`GPT2.embed` (token embeddings, to build sequences that interleave
a vision prefix and text, as Frozen does), :meth:`GPT2.hidden_states`, :meth:`GPT2.logits` and
:meth:`GPT2.init_cache`. Module-level: :func:`generate` (greedy / temperature / top-k / top-p, cached or
uncached, compiled ``lax`` loops), :func:`token_log_probs` / :func:`sequence_log_likelihood` (scoring
answers by likelihood, Frozen's few-shot evaluation) and :func:`load_hf_gpt2`.

Padding: ``attention_mask [B, T]`` (True = real token) excludes padded keys; default positions count real
tokens only (``cumsum(mask) - 1``), so a left-padded batch gives each example the outputs it gets alone.
Right padding needs no mask (causal attention never shows a real token the padding after it).

Deviations from the Hugging Face PyTorch model: none in the math for float32 (``tests/test_gpt2.py``
checks the logits to 1e-4 and greedy decoding token for token); the options ``scale_attn_weights=False``,
``scale_attn_by_inverse_layer_idx``, ``add_cross_attention`` and untied output embeddings are not
supported (the loader says so).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.layers.attention import dot_product_attention
from mmjax.models.registry import register

# Shapes of the released checkpoints (all: vocab 50257, 1024 positions).
VARIANTS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),  # 355M
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),  # 774M
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),  # 1.5B
}

# Activation names of the Hugging Face config; "gelu_new" is GPT-2's (the tanh approximation of GELU).
ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}

# Kernels that accept dense masks (the cached path always needs one); others fall back to "xla" there.
_MASK_KERNELS = ("xla", "jax", "chunked", "auto")


def _layer_norm(eps, dtype, name):
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def _init(std, names):
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


class KVCache(NamedTuple):
  """Keys and values of every layer for fast decoding; a pytree (pass it through ``jit`` and loops).

  ``keys[i]``/``values[i]``: ``[B, S, H, Dh]`` of layer ``i``; ``valid [B, S]`` bool marks the slots
  that hold a real token. Slots are written in order by calls with ``cache_index``.
  """

  keys: tuple
  values: tuple
  valid: jax.Array


class GPT2Attention(nn.Module):
  """Causal self-attention with a fused ``q|k|v`` projection (``c_attn``) and an output ``c_proj``."""

  n_head: int
  n_layer: int  # for the residual-projection initialisation only
  attn_pdrop: float = 0.0
  resid_pdrop: float = 0.0
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask, causal, kv_cache=None, cache_index=None, train: bool):
    """``x [B, T, D]`` -> (``[B, T, D]``, updated ``(k, v)`` cache of this layer or None)."""
    d = x.shape[-1]
    if d % self.n_head:
      raise ValueError(f"GPT-2 width n_embd={d} is not divisible by n_head={self.n_head}")
    hd = d // self.n_head
    qkv = nn.DenseGeneral(
        (3, self.n_head, hd), dtype=self.dtype, name="c_attn",
        kernel_init=_init(0.02, ("embed", None, "heads", None)),
    )(x)  # [B, T, 3, H, Dh]
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    new_cache = None
    if kv_cache is not None:
      ck, cv = kv_cache
      ck = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
      cv = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
      new_cache = (ck, cv)
      k, v = ck.astype(self.dtype), cv.astype(self.dtype)
    # "cudnn"/"pallas" take no dense mask: they serve unmasked calls, masked ones (and the cache) use "xla"
    impl = self.attention if mask is None or self.attention in _MASK_KERNELS else "xla"
    rate = self.attn_pdrop if train else 0.0
    out = dot_product_attention(
        q, k, v, mask=mask, causal=causal, dropout_rate=rate,
        dropout_rng=self.make_rng("dropout") if rate > 0 else None, implementation=impl,
    )
    out = nn.DenseGeneral(
        d, axis=(-2, -1), dtype=self.dtype, name="c_proj",
        kernel_init=_init(0.02 / math.sqrt(2 * self.n_layer), ("heads", None, "embed")),
    )(out)
    return nn.Dropout(self.resid_pdrop)(out, deterministic=not train), new_cache


class GPT2Block(nn.Module):
  """Pre-LN block: ``h += attn(ln_1(h))``, ``h += mlp(ln_2(h))`` (Radford et al., 2019, sec. 2.3)."""

  n_head: int
  n_layer: int
  n_inner: int
  activation_function: str = "gelu_new"
  layer_norm_epsilon: float = 1e-5
  attn_pdrop: float = 0.0
  resid_pdrop: float = 0.0
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask, causal, kv_cache=None, cache_index=None, train: bool):
    """``x [B, T, D]`` -> (``[B, T, D]``, this layer's updated cache or None)."""
    h = _layer_norm(self.layer_norm_epsilon, self.dtype, "ln_1")(x)
    h, new_cache = GPT2Attention(
        self.n_head, self.n_layer, self.attn_pdrop, self.resid_pdrop, self.attention, self.dtype, name="attn"
    )(h, mask=mask, causal=causal, kv_cache=kv_cache, cache_index=cache_index, train=train)
    x = x + h
    h = _layer_norm(self.layer_norm_epsilon, self.dtype, "ln_2")(x)
    h = GPT2MLP(self.n_inner, self.n_layer, self.activation_function, self.resid_pdrop, self.dtype,
                name="mlp")(h, train=train)
    return x + h, new_cache


class GPT2MLP(nn.Module):
  """``c_proj(act(c_fc(x)))`` with residual dropout; ``act`` is GELU (tanh approximation) for GPT-2."""

  n_inner: int
  n_layer: int
  activation_function: str = "gelu_new"
  resid_pdrop: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """``x [B, T, D]`` -> ``[B, T, D]``."""
    h = nn.Dense(self.n_inner, dtype=self.dtype, name="c_fc", kernel_init=_init(0.02, ("embed", "mlp")))(x)
    h = ACTIVATIONS[self.activation_function](h)
    h = nn.Dense(x.shape[-1], dtype=self.dtype, name="c_proj",
                 kernel_init=_init(0.02 / math.sqrt(2 * self.n_layer), ("mlp", "embed")))(h)
    return nn.Dropout(self.resid_pdrop)(h, deterministic=not train)


@register("gpt2")
class GPT2(nn.Module):
  """GPT-2 language model (Radford et al., 2019); defaults are the 124M "gpt2" checkpoint's config.

  ``model.apply(variables, tokens, train=False)`` -> ``(logits [B, T, V] float32, None)``; with
  ``cache=``/``cache_index=`` -> ``(logits, new_cache)``. Fields mirror the Hugging Face config names.
  """

  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None  # MLP width; None = 4 * n_embd
  activation_function: str = "gelu_new"  # or "gelu_pytorch_tanh", "gelu_fast" (the same), "gelu", "relu"
  layer_norm_epsilon: float = 1e-5
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  resid_pdrop: float = 0.1
  attention: str = "xla"  # see mmjax.layers.attention.IMPLEMENTATIONS; masked calls need xla/jax/chunked/auto
  # ("cudnn"/"pallas" serve calls without attention_mask and cache, e.g. right-padded training batches;
  # masked calls and decoding fall back to "xla")
  dtype: Any = jnp.float32  # compute dtype; parameters are float32

  def setup(self):
    if self.activation_function not in ACTIVATIONS:
      raise ValueError(f"unknown GPT-2 activation_function {self.activation_function!r}; "
                       f"supported: {sorted(ACTIVATIONS)}")
    if self.n_embd % self.n_head:
      raise ValueError(f"GPT-2 n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
    self.wte = nn.Embed(self.vocab_size, self.n_embd, dtype=self.dtype,
                        embedding_init=_init(0.02, ("vocab", "embed")))
    self.wpe = nn.Embed(self.n_positions, self.n_embd, dtype=self.dtype,
                        embedding_init=_init(0.02, (None, "embed")))
    self.h = [
        GPT2Block(self.n_head, self.n_layer, self.n_inner or 4 * self.n_embd, self.activation_function,
                  self.layer_norm_epsilon, self.attn_pdrop, self.resid_pdrop, self.attention, self.dtype)
        for _ in range(self.n_layer)
    ]
    self.ln_f = _layer_norm(self.layer_norm_epsilon, self.dtype, "ln_f")
    self.drop = nn.Dropout(self.embd_pdrop)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """Token embeddings ``wte[tokens]``: ``[B, T]`` int -> ``[B, T, D]`` (no positions added)."""
    return self.wte(tokens)

  def token_embeddings(self) -> jax.Array:
    """The token embedding table ``wte [V, D]`` (also the tied output projection)."""
    return self.wte.embedding

  def logits(self, h: jax.Array) -> jax.Array:
    """Final hidden states ``[..., D]`` -> float32 logits ``[..., V]`` through the tied ``wte``."""
    table = self.wte.embedding.astype(self.dtype)
    return jnp.einsum("...d,vd->...v", h.astype(self.dtype), table, preferred_element_type=jnp.float32)

  @nn.nowrap
  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty :class:`KVCache` for ``batch`` sequences of up to ``max_len`` tokens (no parameters)."""
    dtype = self.dtype if dtype is None else dtype
    shape = (batch, max_len, self.n_head, self.n_embd // self.n_head)
    return KVCache(keys=tuple(jnp.zeros(shape, dtype) for _ in range(self.n_layer)),
                   values=tuple(jnp.zeros(shape, dtype) for _ in range(self.n_layer)),
                   valid=jnp.zeros((batch, max_len), bool))

  def hidden_states(self, tokens=None, *, embeddings=None, positions=None, attention_mask=None, cache=None,
                    cache_index=None, train: bool):
    """The final (``ln_f``) hidden states ``[B, T, D]`` and the updated cache (None without one).

    Args:
      tokens: ``[B, T]`` int token ids; or give ``embeddings`` instead.
      embeddings: ``[B, T, D]`` input embeddings (e.g. a vision prefix followed by :meth:`embed` of
        text); positions are added here, as for tokens.
      positions: ``[B, T]`` (or ``[T]``) int positions, each ``< n_positions``. Default: real tokens
        counted from 0 (``cumsum(attention_mask) - 1``, continuing after the cache's real tokens).
      attention_mask: ``[B, T]`` bool, True for real tokens; padded tokens are never attended to. Default
        all True.
      cache: a :class:`KVCache` (from :meth:`init_cache`); the new keys/values are written to slots
        ``cache_index .. cache_index + T - 1`` and the queries attend every valid slot up to their own.
      cache_index: int (may be traced) first slot to write; required with ``cache``. The caller keeps
        ``cache_index + T <= max_len`` (``dynamic_update_slice`` would clamp silently).
      train: enables dropout (rng ``"dropout"``).
    """
    if (tokens is None) == (embeddings is None):
      raise ValueError("GPT2 needs exactly one of tokens [B, T] or embeddings [B, T, D]")
    if tokens is not None:
      tokens = jnp.asarray(tokens)
      if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"GPT2 tokens must be int [B, T]; got {tokens.dtype} {tokens.shape}")
      x = self.embed(tokens)
    else:
      x = jnp.asarray(embeddings)
      if x.ndim != 3 or x.shape[-1] != self.n_embd:
        raise ValueError(f"GPT2 embeddings must be [B, T, n_embd={self.n_embd}]; got {x.shape}")
      x = x.astype(self.dtype)
    b, t = x.shape[:2]
    if (cache is None) != (cache_index is None):
      raise ValueError("GPT2: pass cache and cache_index together (or neither)")
    if cache is None and t > self.n_positions:
      raise ValueError(f"GPT2 sequence length {t} exceeds n_positions={self.n_positions}")
    real = jnp.ones((b, t), bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    if real.shape != (b, t):
      raise ValueError(f"GPT2 attention_mask must be [B, T] = {(b, t)}; got {real.shape}")
    if positions is None:
      before = 0 if cache is None else jnp.sum(cache.valid, axis=1, keepdims=True)
      positions = jnp.maximum(before + jnp.cumsum(real, axis=1) - 1, 0)
    x = x + self.wpe(jnp.asarray(positions))
    x = self.drop(x, deterministic=not train)

    if cache is None:
      mask = None if attention_mask is None else real[:, None, None, :]
      causal = True
      layer_caches = [None] * self.n_layer
    else:
      s = cache.valid.shape[1]
      valid = jax.lax.dynamic_update_slice(cache.valid, real, (0, cache_index))
      visible = jnp.arange(s)[None, :] <= cache_index + jnp.arange(t)[:, None]  # [T, S]
      mask = valid[:, None, None, :] & visible[None, None]
      causal = False
      layer_caches = list(zip(cache.keys, cache.values, strict=True))
    new = []
    for block, kv in zip(self.h, layer_caches, strict=True):
      x, kv = block(x, mask=mask, causal=causal, kv_cache=kv, cache_index=cache_index, train=train)
      new.append(kv)
    x = self.ln_f(x)
    if cache is None:
      return x, None
    return x, KVCache(keys=tuple(k for k, _ in new), values=tuple(v for _, v in new), valid=valid)

  def __call__(self, tokens=None, *, embeddings=None, positions=None, attention_mask=None, cache=None,
               cache_index=None, train: bool):
    """``(logits [B, T, V] float32, new_cache or None)``; arguments as in :meth:`hidden_states`."""
    h, new_cache = self.hidden_states(tokens, embeddings=embeddings, positions=positions,
                                      attention_mask=attention_mask, cache=cache, cache_index=cache_index,
                                      train=train)
    return self.logits(h), new_cache


# ------------------------------------------------------------------------------------------- decoding


def _unwrap(params):
  """Accepts ``params`` or ``{"params": params}``."""
  if isinstance(params, Mapping) and set(params) == {"params"}:
    return params["params"]
  return params


def filter_logits(logits: jax.Array, top_k=None, top_p=None) -> jax.Array:
  """``logits [..., V]`` with everything outside the top-k and then the nucleus (top-p) set to -inf.

  ``top_k`` (0/None = off) keeps the ``k`` largest logits; ``top_p`` (None or >= 1 = off) then keeps the
  smallest set of most likely tokens whose probability (after top-k) reaches ``p`` (Holtzman et al., 2020),
  at least one token. Ties with the last kept logit are kept. Both may be traced values.
  """
  v = logits.shape[-1]
  top_k = jnp.asarray(0 if top_k is None else top_k, jnp.int32)
  top_p = jnp.asarray(1.0 if top_p is None else top_p, jnp.float32)
  ranked = -jnp.sort(-logits, axis=-1)  # descending
  k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
  in_k = jnp.arange(v) < k
  probs = jax.nn.softmax(jnp.where(in_k, ranked, -jnp.inf), axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = in_k & ((mass_before < top_p) | (top_p >= 1.0))
  n_keep = jnp.maximum(jnp.sum(keep, axis=-1, keepdims=True), 1)
  threshold = jnp.take_along_axis(ranked, n_keep - 1, axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def _choose(logits, rng, temperature, top_k, top_p, greedy):
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits / temperature, top_k, top_p)
  return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)


def _last_real(mask):
  """Index of the last True of each row of ``mask [B, T]`` (``T - 1`` for an all-False row)."""
  t = mask.shape[1]
  return t - 1 - jnp.argmax(mask[:, ::-1], axis=1)


@functools.partial(jax.jit, static_argnames=("model",))
def _embed(model, params, tokens):
  return model.apply({"params": params}, tokens, method=GPT2.embed)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "use_cache", "greedy", "has_eos",
                                             "return_logits"))
def _generate(model, params, emb, prompt_mask, rng, temperature, top_k, top_p, eos_id, pad_id, *,
              max_new_tokens, use_cache, greedy, has_eos, return_logits):
  variables = {"params": params}
  run = functools.partial(model.apply, variables, train=False, method=GPT2.hidden_states)
  head = functools.partial(model.apply, variables, method=GPT2.logits)
  emb = emb.astype(model.dtype)
  b, p, d = emb.shape
  n = max_new_tokens
  rows = jnp.arange(b)
  last = _last_real(prompt_mask)

  if use_cache:
    cache = model.init_cache(b, p + n)
    h, cache = run(embeddings=emb, attention_mask=prompt_mask, cache=cache, cache_index=0)
    state = cache
  else:
    buf = jnp.zeros((b, p + n, d), emb.dtype).at[:, :p].set(emb)
    real = jnp.zeros((b, p + n), bool).at[:, :p].set(prompt_mask)
    h, _ = run(embeddings=buf, attention_mask=real)
    state = (buf, real)
  logits = head(h[rows, last])  # [B, V]

  def choose(i, logits, done):
    tok = _choose(logits, jax.random.fold_in(rng, i), temperature, top_k, top_p, greedy)
    tok = jnp.where(done, pad_id, tok)
    if has_eos:
      done = done | (tok == eos_id)
    return tok, done

  def advance(i, state, tok):
    """Feeds token ``tok [B]`` at slot ``p + i``; returns the new state and next-token logits."""
    if use_cache:
      h, state = run(tok[:, None], cache=state, cache_index=p + i)
      return state, head(h[:, 0])
    buf, real = state
    buf = buf.at[:, p + i].set(model.apply(variables, tok[:, None], method=GPT2.embed)[:, 0])
    real = real.at[:, p + i].set(True)
    h, _ = run(embeddings=buf, attention_mask=real)
    return (buf, real), head(h[:, p + i])

  out = jnp.full((b, n), pad_id, jnp.int32)  # pad_id traced: [B, N] filled at run time
  step_logits = jnp.zeros((b, n, logits.shape[-1]), jnp.float32) if return_logits else None
  done = jnp.zeros((b,), bool)

  def cond(carry):
    i, _, _, _, done, _ = carry
    return (i < n - 1) & ~jnp.all(done)

  def body(carry):
    i, state, logits, out, done, step_logits = carry
    if return_logits:  # rows that finished earlier record zeros
      step_logits = step_logits.at[:, i].set(jnp.where(done[:, None], 0.0, logits))
    tok, done = choose(i, logits, done)
    out = out.at[:, i].set(tok)
    state, logits = advance(i, state, tok)
    return i + 1, state, logits, out, done, step_logits

  carry = (jnp.int32(0), state, logits, out, done, step_logits)
  i, _, logits, out, done, step_logits = jax.lax.while_loop(cond, body, carry)
  if return_logits:
    step_logits = step_logits.at[:, i].set(jnp.where(done[:, None], 0.0, logits))
  tok, _ = choose(i, logits, done)  # the last token needs no forward pass
  out = out.at[:, i].set(tok)
  return (out, step_logits) if return_logits else out


def generate(model: GPT2, params, prompt, prompt_mask=None, max_new_tokens: int = 16, *, rng=None,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             use_cache: bool = True, eos_id: int | None = None, pad_id: int | None = None,
             return_logits: bool = False):
  """Autoregressive decoding from GPT-2: one compiled ``lax.while_loop`` (compiled once per shape, per
  greedy/sampling, ``use_cache``, eos or not and ``return_logits``; other settings are traced).

  Args:
    model: a :class:`GPT2`.
    params: its parameters (or ``{"params": params}``).
    prompt: ``[B, P]`` int token ids, or ``[B, P, D]`` input embeddings (e.g. a Frozen visual prefix
      followed by :meth:`GPT2.embed` of text).
    prompt_mask: ``[B, P]`` bool, True for real prompt tokens (default all True). Any padding layout
      works (left padding is usual); every row needs at least one real token.
    max_new_tokens: ``N``, the number of tokens to produce; ``P + N <= n_positions``.
    rng: PRNG key; required when ``temperature > 0``.
    temperature: 0 = greedy (argmax); otherwise sample from ``softmax(logits / temperature)``.
    top_k: sample only among the ``k`` most likely tokens (None/0 = all).
    top_p: nucleus sampling: the smallest set of tokens with probability >= ``p`` (None/1 = all).
    use_cache: True: a :class:`KVCache` (prefill once, then one token per step). False: the reference
      path that recomputes the whole fixed-size ``P + N`` buffer at every step (same results).
    eos_id: after a row produces this token its later tokens are ``pad_id``; decoding stops when every
      row has finished.
    pad_id: filler after ``eos_id`` (default ``eos_id``, else 0).
    return_logits: also return the float32 logits each token was chosen from.

  Returns:
    ``tokens [B, N]`` int32 (the new tokens only), and ``logits [B, N, V]`` when ``return_logits``
    (zeros for steps after a row finished).
  """
  params = _unwrap(params)
  prompt = jnp.asarray(prompt)
  if prompt.ndim not in (2, 3):
    raise ValueError(f"prompt must be token ids [B, P] or embeddings [B, P, D]; got shape {prompt.shape}")
  if prompt.ndim == 2 and not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(f"a [B, P] prompt must hold int token ids; got {prompt.dtype}")
  b, p = prompt.shape[:2]
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
  if p + max_new_tokens > model.n_positions:
    raise ValueError(f"prompt length {p} + max_new_tokens {max_new_tokens} exceeds the model's "
                     f"n_positions={model.n_positions}")
  greedy = temperature == 0
  if not greedy and temperature < 0:
    raise ValueError(f"temperature must be >= 0 (0 = greedy); got {temperature}")
  if not greedy and rng is None:
    raise ValueError("sampling (temperature > 0) needs rng=jax.random.PRNGKey(...)")
  if top_p is not None and not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p must be in (0, 1]; got {top_p}")
  mask = jnp.ones((b, p), bool) if prompt_mask is None else jnp.asarray(prompt_mask, bool)
  if mask.shape != (b, p):
    raise ValueError(f"prompt_mask must be [B, P] = {(b, p)}; got {mask.shape}")
  pad_id = (eos_id if eos_id is not None else 0) if pad_id is None else pad_id
  rng = jax.random.PRNGKey(0) if rng is None else rng
  # Token prompts are embedded first, so token and embedding prompts share one compiled loop; every
  # sampling setting except greedy/sampled is a traced argument (no recompilation when it changes).
  emb = _embed(model, params, prompt) if prompt.ndim == 2 else prompt
  return _generate(model, params, emb, mask, rng, jnp.float32(temperature or 1.0), jnp.int32(top_k or 0),
                   jnp.float32(1.0 if top_p is None else top_p), jnp.int32(0 if eos_id is None else eos_id),
                   jnp.int32(pad_id), max_new_tokens=int(max_new_tokens), use_cache=bool(use_cache),
                   greedy=greedy, has_eos=eos_id is not None, return_logits=bool(return_logits))


@functools.partial(jax.jit, static_argnames=("model",))
def _token_log_probs(model, params, prefix, prefix_mask, targets, target_mask):
  variables = {"params": params}
  if prefix.ndim == 2:
    prefix = model.apply(variables, prefix, method=GPT2.embed)
  emb = jnp.concatenate([prefix.astype(model.dtype), model.apply(variables, targets, method=GPT2.embed)], 1)
  real = jnp.concatenate([prefix_mask, target_mask], axis=1)
  h, _ = model.apply(variables, embeddings=emb, attention_mask=real, train=False, method=GPT2.hidden_states)
  # Each target is predicted from the last real position before it (any padding layout).
  p, total = prefix.shape[1], emb.shape[1]
  last_upto = jax.lax.cummax(jnp.where(real, jnp.arange(total), -1), axis=1)
  source = jnp.maximum(last_upto[:, p - 1:total - 1], 0)  # [B, T]
  h = jnp.take_along_axis(h, source[..., None], axis=1)
  logp = jax.nn.log_softmax(model.apply(variables, h, method=GPT2.logits), axis=-1)
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  return jnp.where(target_mask, picked, 0.0)


def token_log_probs(model: GPT2, params, prefix, targets, *, prefix_mask=None, target_mask=None):
  """``log p(target_t | prefix, earlier targets)`` per target token: ``[B, T]`` float32 (0 where masked).

  ``prefix``: ``[B, P]`` int tokens or ``[B, P, D]`` embeddings (Frozen: visual prefix + prompt text),
  with at least one real token per row; ``targets [B, T]`` int (e.g. a candidate answer).
  ``prefix_mask [B, P]`` / ``target_mask [B, T]`` bool mark real tokens (default all True); any padding
  layout works. One uncached forward pass (compiled once per shape).
  """
  params = _unwrap(params)
  prefix, targets = jnp.asarray(prefix), jnp.asarray(targets)
  if prefix.ndim not in (2, 3) or targets.ndim != 2 or prefix.shape[0] != targets.shape[0]:
    raise ValueError(f"expected prefix [B, P] or [B, P, D] and targets [B, T]; got {prefix.shape}, "
                     f"{targets.shape}")
  if not jnp.issubdtype(targets.dtype, jnp.integer) or (prefix.ndim == 2 and not jnp.issubdtype(
      prefix.dtype, jnp.integer)):
    raise ValueError(f"targets (and a [B, P] prefix) must be int token ids; got {targets.dtype}, "
                     f"{prefix.dtype}")
  b, p, t = prefix.shape[0], prefix.shape[1], targets.shape[1]
  pm = jnp.ones((b, p), bool) if prefix_mask is None else jnp.asarray(prefix_mask, bool)
  tm = jnp.ones((b, t), bool) if target_mask is None else jnp.asarray(target_mask, bool)
  if pm.shape != (b, p) or tm.shape != (b, t):
    raise ValueError(f"masks must match prefix [B, P] = {(b, p)} and targets [B, T] = {(b, t)}; got "
                     f"{pm.shape}, {tm.shape}")
  if p + t > model.n_positions:
    raise ValueError(f"prefix {p} + targets {t} tokens exceed n_positions={model.n_positions}")
  return _token_log_probs(model, params, prefix, pm, targets, tm)


def sequence_log_likelihood(model: GPT2, params, prefix, targets, *, prefix_mask=None, target_mask=None):
  """``sum_t log p(target_t | prefix, target_<t)`` over real target tokens: ``[B]`` float32.

  Scores candidate answers given a prompt, as Frozen's few-shot evaluation does (Tsimpoukelli et al.,
  2021); arguments as in :func:`token_log_probs`.
  """
  return token_log_probs(model, params, prefix, targets, prefix_mask=prefix_mask,
                         target_mask=target_mask).sum(axis=-1)


# ------------------------------------------------------------------------------ Hugging Face checkpoints


class HFCheckpointError(ValueError):
  """A Hugging Face GPT-2 directory or state dict that cannot be loaded; the message says what and why."""


_BUFFERS = ("attn.bias", "attn.masked_bias")  # causal-mask buffers of older checkpoints, not parameters
_UNSUPPORTED_TRUE = ("scale_attn_by_inverse_layer_idx", "add_cross_attention")


def config_from_hf(config: Mapping[str, Any], *, source: str = "config.json") -> dict[str, Any]:
  """:class:`GPT2` keyword arguments from a Hugging Face GPT-2 ``config.json`` dict."""
  model_type = config.get("model_type")
  archs = config.get("architectures") or []
  if model_type is not None and model_type != "gpt2":
    raise HFCheckpointError(f"{source}: model_type is {model_type!r}, not 'gpt2'; this loader reads GPT-2 "
                            "checkpoints only")
  if model_type is None and not any(str(a).startswith("GPT2") for a in archs):
    raise HFCheckpointError(f"{source}: neither model_type 'gpt2' nor a GPT2* architecture (architectures="
                            f"{archs}); this loader reads GPT-2 checkpoints only")
  kw = {}
  for name, alt in (("vocab_size", None), ("n_positions", "n_ctx"), ("n_embd", None), ("n_layer", None),
                    ("n_head", None)):
    value = config.get(name, config.get(alt) if alt else None)
    if value is None:
      raise HFCheckpointError(f"{source}: missing required GPT-2 config key {name!r}")
    kw[name] = int(value)
  defaults = GPT2()
  for name in ("n_inner", "activation_function", "layer_norm_epsilon", "embd_pdrop", "attn_pdrop",
               "resid_pdrop"):
    value = config.get(name)
    kw[name] = getattr(defaults, name) if value is None else value
  if kw["activation_function"] not in ACTIVATIONS:
    raise HFCheckpointError(f"{source}: activation_function {kw['activation_function']!r} is not "
                            f"supported; supported: {sorted(ACTIVATIONS)}")
  for name in _UNSUPPORTED_TRUE:
    if config.get(name):
      raise HFCheckpointError(f"{source}: {name}=true is not supported by mmjax's GPT2")
  if config.get("scale_attn_weights") is False:
    raise HFCheckpointError(f"{source}: scale_attn_weights=false is not supported by mmjax's GPT2")
  if kw["n_embd"] % kw["n_head"]:
    raise HFCheckpointError(f"{source}: n_embd={kw['n_embd']} is not divisible by n_head={kw['n_head']}")
  return kw


def hf_param_shapes(model: GPT2) -> dict[str, tuple[int, ...]]:
  """Every tensor name of a Hugging Face GPT-2 checkpoint (no ``transformer.`` prefix) -> its shape."""
  d, inner = model.n_embd, model.n_inner or 4 * model.n_embd
  shapes = {"wte.weight": (model.vocab_size, d), "wpe.weight": (model.n_positions, d),
            "ln_f.weight": (d,), "ln_f.bias": (d,)}
  for i in range(model.n_layer):
    p = f"h.{i}."
    shapes.update({
        p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
        p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
        p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
        p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
        p + "mlp.c_fc.weight": (d, inner), p + "mlp.c_fc.bias": (inner,),
        p + "mlp.c_proj.weight": (inner, d), p + "mlp.c_proj.bias": (d,),
    })
  return shapes


def _normalise_names(names, source: str) -> dict[str, str]:
  """Checkpoint name -> canonical name (``transformer.`` prefix stripped); buffers dropped."""
  out: dict[str, str] = {}
  seen: dict[str, str] = {}
  for name in names:
    canon = name[len("transformer."):] if name.startswith("transformer.") else name
    if canon.startswith("h.") and canon.endswith(_BUFFERS) and canon.count(".") == 3:
      continue  # h.{i}.attn.bias / h.{i}.attn.masked_bias
    if canon in seen:
      raise HFCheckpointError(f"{source}: tensor {canon!r} appears twice (as {seen[canon]!r} and {name!r})")
    seen[canon] = name
    out[name] = canon
  return out


def _check_names_and_shapes(shapes: Mapping[str, tuple], model: GPT2, source: str) -> None:
  """One :class:`HFCheckpointError` listing every missing, unexpected or mis-shaped tensor."""
  expected = hf_param_shapes(model)
  expected_head = {"lm_head.weight": expected["wte.weight"]}
  problems = []
  missing = sorted(set(expected) - set(shapes))
  unexpected = sorted(set(shapes) - set(expected) - set(expected_head))
  if missing:
    problems.append(f"missing tensors {missing}")
  if unexpected:
    problems.append(f"unexpected tensors {unexpected}")
  for name in sorted(set(shapes) & (set(expected) | set(expected_head))):
    want = {**expected, **expected_head}[name]
    got = tuple(shapes[name])
    if got != want:
      problems.append(f"tensor {name!r} has shape {got}, expected {want}")
  if problems:
    raise HFCheckpointError(
        f"{source} does not match its GPT-2 config (vocab_size={model.vocab_size}, n_positions="
        f"{model.n_positions}, n_embd={model.n_embd}, n_layer={model.n_layer}, n_head={model.n_head}): "
        + "; ".join(problems))


def params_from_hf(tensors: Mapping[str, Any], model: GPT2, *, source: str = "state dict") -> dict:
  """Flax ``params`` of ``model`` from Hugging Face GPT-2 tensors (numpy arrays, any float dtype).

  Names may carry the ``transformer.`` prefix or not; ``h.{i}.attn.bias``/``masked_bias`` buffers are
  ignored; ``lm_head.weight`` must equal ``wte.weight`` (tied) when present. Conv1D weights are ``[in,
  out]`` and used as ``x @ W``. Raises :class:`HFCheckpointError` naming every problem.
  """
  names = _normalise_names(tensors, source)
  arrays = {canon: tensors[name] for name, canon in names.items()}
  _check_names_and_shapes({k: np.shape(v) for k, v in arrays.items()}, model, source)
  f32 = lambda name: np.asarray(arrays[name], np.float32)  # noqa: E731
  if "lm_head.weight" in arrays and not np.array_equal(f32("lm_head.weight"), f32("wte.weight")):
    raise HFCheckpointError(f"{source}: lm_head.weight differs from wte.weight; GPT2 ties the output "
                            "projection to the token embedding and cannot load untied weights")
  d, h = model.n_embd, model.n_head
  hd = d // h
  norm = lambda n: {"scale": f32(f"{n}.weight"), "bias": f32(f"{n}.bias")}  # noqa: E731
  params: dict[str, Any] = {
      "wte": {"embedding": f32("wte.weight")},
      "wpe": {"embedding": f32("wpe.weight")},
      "ln_f": norm("ln_f"),
  }
  for i in range(model.n_layer):
    p = f"h.{i}."
    params[f"h_{i}"] = {
        "ln_1": norm(p + "ln_1"),
        "attn": {
            "c_attn": {"kernel": f32(p + "attn.c_attn.weight").reshape(d, 3, h, hd),
                       "bias": f32(p + "attn.c_attn.bias").reshape(3, h, hd)},
            "c_proj": {"kernel": f32(p + "attn.c_proj.weight").reshape(h, hd, d),
                       "bias": f32(p + "attn.c_proj.bias")},
        },
        "ln_2": norm(p + "ln_2"),
        "mlp": {
            "c_fc": {"kernel": f32(p + "mlp.c_fc.weight"), "bias": f32(p + "mlp.c_fc.bias")},
            "c_proj": {"kernel": f32(p + "mlp.c_proj.weight"), "bias": f32(p + "mlp.c_proj.bias")},
        },
    }
  return jax.tree_util.tree_map(jnp.asarray, params)


def _safetensors_files(path: Path) -> list[Path]:
  single = path / "model.safetensors"
  if single.is_file():
    return [single]
  index = path / "model.safetensors.index.json"
  if index.is_file():
    try:
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as e:
      raise HFCheckpointError(f"{index} is not a valid safetensors index ({e})") from None
    missing = [s for s in shards if not (path / s).is_file()]
    if missing:
      raise HFCheckpointError(f"{index} lists shard files that are missing from {path}: {missing}")
    return [path / s for s in shards]
  others = [n for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack") if (path / n).exists()]
  hint = (f" (found {others}: only the safetensors format is read; convert it with transformers' "
          "save_pretrained)") if others else ""
  raise HFCheckpointError(f"{path} has no model.safetensors (nor model.safetensors.index.json){hint}")


def _read_tensors(files: list[Path], model: GPT2) -> dict[str, np.ndarray]:
  import ml_dtypes  # noqa: F401  (a jax dependency; lets numpy read bfloat16 tensors)

  try:
    from safetensors import SafetensorError, safe_open
  except ImportError as e:  # pragma: no cover - a declared dependency
    raise ImportError("reading GPT-2 checkpoints needs the 'safetensors' package (pip install safetensors)"
                      ) from e
  shapes, where = {}, {}
  try:
    for file in files:
      with safe_open(str(file), framework="numpy") as f:
        for name in f.keys():
          shapes[name] = tuple(f.get_slice(name).get_shape())
          where[name] = file
  except (SafetensorError, OSError) as e:
    raise HFCheckpointError(f"could not read the safetensors file {file}: {e}") from None
  source = str(files[0] if len(files) == 1 else files[0].parent)
  names = _normalise_names(shapes, source)
  _check_names_and_shapes({canon: shapes[name] for name, canon in names.items()}, model, source)
  tensors = {}
  for file in files:
    with safe_open(str(file), framework="numpy") as f:
      for name in names:
        if where[name] == file:
          tensors[name] = _get_tensor(f, name, file)
  return tensors


def _get_tensor(f, name, file) -> np.ndarray:
  try:
    return f.get_tensor(name)
  except Exception as e:  # noqa: BLE001 - reported with the tensor and file
    raise HFCheckpointError(f"could not read tensor {name!r} from {file}: {e}") from None


def load_hf_gpt2(path: str | os.PathLike, *, attention: str = "xla", dtype: Any = jnp.float32,
                 dropout: bool = True) -> tuple[GPT2, dict]:
  """``(GPT2 module, params)`` from a LOCAL Hugging Face GPT-2 directory (nothing is downloaded).

  The directory holds ``config.json`` and ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``), as written by ``save_pretrained`` or a hub snapshot. Parameters are
  float32; ``dtype`` is the compute dtype and ``attention`` the kernel of the module; ``dropout=False``
  zeroes the dropout rates (a frozen LM). Raises :class:`HFCheckpointError` for a missing directory or
  file (naming it), a config that is not GPT-2, and missing, unexpected or mis-shaped tensors.
  """
  path = Path(path).expanduser()
  if not path.exists():
    raise HFCheckpointError(f"GPT-2 checkpoint directory {path} does not exist (download it yourself, e.g. "
                            "a Hugging Face 'gpt2' snapshot, and pass its local path)")
  if not path.is_dir():
    raise HFCheckpointError(f"{path} is not a directory; pass the folder holding config.json and "
                            "model.safetensors")
  config_file = path / "config.json"
  if not config_file.is_file():
    raise HFCheckpointError(f"{path} has no config.json (a Hugging Face GPT-2 directory holds config.json "
                            "and model.safetensors)")
  try:
    config = json.loads(config_file.read_text())
  except ValueError as e:
    raise HFCheckpointError(f"{config_file} is not valid JSON: {e}") from None
  if not isinstance(config, dict):
    raise HFCheckpointError(f"{config_file} does not hold a JSON object")
  kw = config_from_hf(config, source=str(config_file))
  if not dropout:
    kw.update(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)
  model = GPT2(**kw, attention=attention, dtype=dtype)
  files = _safetensors_files(path)
  tensors = _read_tensors(files, model)
  return model, params_from_hf(tensors, model, source=str(path))
