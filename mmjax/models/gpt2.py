"""GPT-2: the causal language model that Frozen keeps frozen (Radford et al., 2019, "Language Models are
Unsupervised Multitask Learners"), with a functional KV cache. One :class:`GPT2Config` describes its shape;
Frozen, CausalLM, the configs, the sampler (:mod:`mmjax.sampling`) and the Hugging Face import
(:mod:`mmjax.models.convert.hf_gpt2`) all take it.

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
``h_{i}/mlp/c_fc/kernel [D, 4D]``, ``h_{i}/mlp/c_proj/kernel [4D, D]``, ``ln_f``. Every parameter carries
logical axis names for :mod:`mmjax.train.mesh` (``vocab``, ``embed``, ``heads``, ``kv``, ``mlp``, ``norm``).

Entry points beyond ``__call__``: :meth:`GPT2.embed` (token embeddings, to build sequences that interleave
a vision prefix and text, as Frozen does), :meth:`GPT2.hidden_states`, :meth:`GPT2.logits`,
:meth:`GPT2.token_embeddings`, :meth:`GPT2.init_cache`, and :meth:`GPT2.input_states` /
:meth:`GPT2.run_blocks` / :meth:`GPT2.final_norm` (``hidden_states`` without a cache in three steps, so a
model can act between two blocks, as MAG does). Decoding and answer scoring live in
:mod:`mmjax.sampling`. ``GPT2`` takes token ids, not a batch dict, so it is not in the model registry: the
trainable language model is :class:`mmjax.models.causal_lm.CausalLM` (``causal_lm``).

Padding: ``attention_mask [B, T]`` (True = real token) excludes padded keys; default positions count real
tokens only (``cumsum(mask) - 1``), so a left-padded batch gives each example the outputs it gets alone.
Right padding needs no mask (causal attention never shows a real token the padding after it).

Deviations from the Hugging Face PyTorch model: none in the math for float32 (``tests/test_gpt2.py``
checks the logits to 1e-4 and greedy decoding token for token); the options ``scale_attn_weights=False``,
``scale_attn_by_inverse_layer_idx``, ``add_cross_attention`` and untied output embeddings are not
supported (the importer says so).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import axes
from mmjax.layers.attention import dot_product_attention
from mmjax.layers.remat import remat

# Activation names of the Hugging Face config; "gelu_new" is GPT-2's (the tanh approximation of GELU).
ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """The shape and dropout of a GPT-2; names are those of the Hugging Face ``config.json``, defaults the
  124M "gpt2" checkpoint's. Frozen (hashable), so modules and jitted functions can hold it."""

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

  def __post_init__(self):
    if self.activation_function not in ACTIVATIONS:
      raise ConfigError(f"unknown GPT-2 activation_function {self.activation_function!r}; "
                       f"supported: {sorted(ACTIVATIONS)}")
    if self.n_embd % self.n_head:
      raise ConfigError(f"GPT-2 n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

  @property
  def mlp_width(self) -> int:
    """The MLP's hidden width: ``n_inner``, or ``4 * n_embd`` when unset."""
    return self.n_inner or 4 * self.n_embd

  @property
  def head_dim(self) -> int:
    """``Dh = n_embd / n_head``."""
    return self.n_embd // self.n_head

  def replace(self, **changes) -> GPT2Config:
    """A copy with ``changes`` applied (``dataclasses.replace``)."""
    return dataclasses.replace(self, **changes)

  def no_dropout(self) -> GPT2Config:
    """A copy with every dropout rate 0 (a frozen or evaluated LM)."""
    return self.replace(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0)


# Shapes of the released checkpoints (all: vocab 50257, 1024 positions).
VARIANTS: dict[str, GPT2Config] = {
    "gpt2": GPT2Config(n_layer=12, n_embd=768, n_head=12),  # 124M parameters
    "gpt2-medium": GPT2Config(n_layer=24, n_embd=1024, n_head=16),  # 355M
    "gpt2-large": GPT2Config(n_layer=36, n_embd=1280, n_head=20),  # 774M
    "gpt2-xl": GPT2Config(n_layer=48, n_embd=1600, n_head=25),  # 1.5B
}

# Kernels that accept dense masks (the cached path always needs one); others fall back to "xla" there.
_MASK_KERNELS = ("xla", "jax", "chunked", "auto")


def _layer_norm(eps, dtype, name):
  return axes.layer_norm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def _init(std, names):
  return axes.logical(nn.initializers.normal(std), names)


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

  config: GPT2Config
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask, causal, kv_cache=None, cache_index=None, train: bool):
    """``x [B, T, D]`` -> (``[B, T, D]``, updated ``(k, v)`` cache of this layer or None)."""
    cfg = self.config
    d = x.shape[-1]
    hd = d // cfg.n_head
    qkv = axes.dense_general(
        (3, cfg.n_head, hd), ("embed", None, "heads", "kv"), dtype=self.dtype, name="c_attn",
        kernel_init=nn.initializers.normal(0.02),
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
    rate = cfg.attn_pdrop if train else 0.0
    out = dot_product_attention(
        q, k, v, mask=mask, causal=causal, dropout_rate=rate,
        dropout_rng=self.make_rng("dropout") if rate > 0 else None, implementation=impl,
    )
    out = axes.dense_general(
        d, ("heads", "kv", "embed"), axis=(-2, -1), dtype=self.dtype, name="c_proj",
        kernel_init=nn.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layer)),
    )(out)
    return nn.Dropout(cfg.resid_pdrop)(out, deterministic=not train), new_cache


class GPT2MLP(nn.Module):
  """``c_proj(act(c_fc(x)))`` with residual dropout; ``act`` is GELU (tanh approximation) for GPT-2."""

  config: GPT2Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """``x [B, T, D]`` -> ``[B, T, D]``."""
    cfg = self.config
    h = axes.dense(cfg.mlp_width, ("embed", "mlp"), dtype=self.dtype, name="c_fc",
                   kernel_init=nn.initializers.normal(0.02))(x)
    h = ACTIVATIONS[cfg.activation_function](axes.constrain(h, axes.BATCH_LENGTH_MLP))
    h = axes.dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, name="c_proj",
                   kernel_init=nn.initializers.normal(0.02 / math.sqrt(2 * cfg.n_layer)))(h)
    return nn.Dropout(cfg.resid_pdrop)(h, deterministic=not train)


class GPT2Block(nn.Module):
  """Pre-LN block: ``h += attn(ln_1(h))``, ``h += mlp(ln_2(h))`` (Radford et al., 2019, sec. 2.3)."""

  config: GPT2Config
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask, causal, kv_cache=None, cache_index=None, train: bool):
    """``x [B, T, D]`` -> (``[B, T, D]``, this layer's updated cache or None)."""
    eps = self.config.layer_norm_epsilon
    x = axes.constrain(x, axes.BATCH_LENGTH_EMBED)
    h = _layer_norm(eps, self.dtype, "ln_1")(x)
    h, new_cache = GPT2Attention(self.config, self.attention, self.dtype, name="attn")(
        h, mask=mask, causal=causal, kv_cache=kv_cache, cache_index=cache_index, train=train)
    x = x + h
    h = _layer_norm(eps, self.dtype, "ln_2")(x)
    h = GPT2MLP(self.config, self.dtype, name="mlp")(h, train=train)
    return axes.constrain(x + h, axes.BATCH_LENGTH_EMBED), new_cache


class _PositionalGPT2Block(GPT2Block):
  """:class:`GPT2Block` called with positional arguments only, as ``nn.remat`` needs (``causal`` and
  ``train``, arguments 3 and 6 counting ``self``, are static)."""

  def __call__(self, x, mask, causal, kv_cache, cache_index, train):
    return super().__call__(x, mask=mask, causal=causal, kv_cache=kv_cache, cache_index=cache_index,
                            train=train)


class GPT2(nn.Module):
  """GPT-2 language model (Radford et al., 2019) of shape ``config`` (default: the 124M "gpt2").

  ``model.apply(variables, tokens, train=False)`` -> ``(logits [B, T, V] float32, None)``; with
  ``cache=``/``cache_index=`` -> ``(logits, new_cache)``.
  """

  config: GPT2Config = GPT2Config()
  attention: str = "xla"  # see mmjax.layers.attention.IMPLEMENTATIONS; masked calls need xla/jax/chunked/auto
  # ("cudnn"/"pallas" serve calls without attention_mask and cache, e.g. right-padded training batches;
  # masked calls and decoding fall back to "xla")
  dtype: Any = jnp.float32  # compute dtype; parameters are float32
  remat: str = "none"  # rematerialise each block in the backward pass (mmjax.layers.remat.MODES)

  def setup(self):
    cfg = self.config
    self.wte = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=self.dtype,
                        embedding_init=_init(0.02, ("vocab", "embed")))
    self.wpe = nn.Embed(cfg.n_positions, cfg.n_embd, dtype=self.dtype,
                        embedding_init=_init(0.02, ("features", "embed")))
    block = remat(_PositionalGPT2Block, self.remat, static_argnums=(3, 6))
    self.h = [block(cfg, self.attention, self.dtype) for _ in range(cfg.n_layer)]
    self.ln_f = _layer_norm(cfg.layer_norm_epsilon, self.dtype, "ln_f")
    self.drop = nn.Dropout(cfg.embd_pdrop)

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
    cfg = self.config
    shape = (batch, max_len, cfg.n_head, cfg.head_dim)
    return KVCache(keys=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layer)),
                   values=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layer)),
                   valid=jnp.zeros((batch, max_len), bool))

  def _inputs(self, tokens, embeddings, positions, attention_mask, cache, train):
    """``(x [B, T, D], real [B, T])``: embeddings plus positions, after dropout, and the real-token mask."""
    if (tokens is None) == (embeddings is None):
      raise ValueError("GPT2 needs exactly one of tokens [B, T] or embeddings [B, T, D]")
    if tokens is not None:
      tokens = jnp.asarray(tokens)
      if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"GPT2 tokens must be int [B, T]; got {tokens.dtype} {tokens.shape}")
      x = self.embed(tokens)
    else:
      x = jnp.asarray(embeddings)
      if x.ndim != 3 or x.shape[-1] != self.config.n_embd:
        raise ValueError(f"GPT2 embeddings must be [B, T, n_embd={self.config.n_embd}]; got {x.shape}")
      x = x.astype(self.dtype)
    b, t = x.shape[:2]
    if cache is None and t > self.config.n_positions:
      raise ValueError(f"GPT2 sequence length {t} exceeds n_positions={self.config.n_positions}")
    real = jnp.ones((b, t), bool) if attention_mask is None else jnp.asarray(attention_mask, bool)
    if real.shape != (b, t):
      raise ValueError(f"GPT2 attention_mask must be [B, T] = {(b, t)}; got {real.shape}")
    if positions is None:
      before = 0 if cache is None else jnp.sum(cache.valid, axis=1, keepdims=True)
      positions = jnp.maximum(before + jnp.cumsum(real, axis=1) - 1, 0)
    x = x + self.wpe(jnp.asarray(positions))
    x = self.drop(x, deterministic=not train)
    return x, real

  def input_states(self, tokens=None, *, embeddings=None, positions=None, attention_mask=None, train: bool):
    """The input of the first block ``[B, T, D]`` (token or given embeddings plus positions, embedding
    dropout); arguments as in :meth:`hidden_states` (no cache). With :meth:`run_blocks` and :meth:`final_norm`
    it splits :meth:`hidden_states` so a model can act between two blocks (MAG does)."""
    return self._inputs(tokens, embeddings, positions, attention_mask, None, train)[0]

  def run_blocks(self, x, *, attention_mask=None, start: int = 0, stop: int | None = None, train: bool):
    """Blocks ``start .. stop - 1`` (default: all) on ``x [B, T, D]`` without a cache (causal;
    ``attention_mask [B, T]`` bool hides padded keys) -> ``[B, T, D]``. ``ln_f`` is not applied."""
    mask = None if attention_mask is None else jnp.asarray(attention_mask, bool)[:, None, None, :]
    for block in self.h[start:stop]:
      x, _ = block(x, mask, True, None, None, train)
    return x

  def final_norm(self, x):
    """``ln_f(x)``: the final LayerNorm applied to the last block's output."""
    return self.ln_f(x)

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
    if (cache is None) != (cache_index is None):
      raise ValueError("GPT2: pass cache and cache_index together (or neither)")
    x, real = self._inputs(tokens, embeddings, positions, attention_mask, cache, train)
    b, t = x.shape[:2]
    if cache is None:
      mask = None if attention_mask is None else real[:, None, None, :]
      causal = True
      layer_caches = [None] * self.config.n_layer
    else:
      s = cache.valid.shape[1]
      valid = jax.lax.dynamic_update_slice(cache.valid, real, (0, cache_index))
      visible = jnp.arange(s)[None, :] <= cache_index + jnp.arange(t)[:, None]  # [T, S]
      mask = valid[:, None, None, :] & visible[None, None]
      causal = False
      layer_caches = list(zip(cache.keys, cache.values, strict=True))
    new = []
    for block, kv in zip(self.h, layer_caches, strict=True):
      x, kv = block(x, mask, causal, kv, cache_index, train)
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
