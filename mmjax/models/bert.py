"""BERT: a bidirectional post-LN transformer encoder (Devlin et al., NAACL 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding"), the text model of MAG-BERT (:mod:`mmjax.models.mag`).
One :class:`BertConfig` describes its shape; the model and the Hugging Face import
(:mod:`mmjax.models.convert.hf_bert`) both take it.

Architecture (paper sec. 3, the encoder of Vaswani et al. 2017), width ``D``, ``H`` heads of ``Dh = D / H``,
token ids ``x [B, T]``:

1. ``h = LN(word[x] + position[0..T-1] + token_type[s])`` (learned absolute positions, segment ids ``s``,
   default 0), then dropout (``hidden_dropout_prob``).
2. ``num_hidden_layers`` post-LN blocks: ``h = LN(h + drop(O(attn(Q h, K h, V h))))`` with bidirectional
   self-attention over the valid tokens (``attention_mask``; softmax ``q k^T / sqrt(Dh)``, dropout
   ``attention_probs_dropout_prob`` on the weights), then ``h = LN(h + drop(W2 act(W1 h)))`` with an MLP of
   width ``intermediate_size`` and the exact (erf) GELU.
3. The pooler ``tanh(W h[:, 0])`` on the first (``[CLS]``) token, when ``add_pooling_layer``.

Parameter layout (names follow the Hugging Face checkpoint, ``layer_{i}`` is ``encoder.layer.{i}``):
``embeddings/{word,position,token_type}_embeddings/embedding``, ``embeddings/LayerNorm``,
``layer_{i}/attention/{query,key,value}/kernel [D, H, Dh]``, ``layer_{i}/attention/output/dense/kernel
[H, Dh, D]``, ``layer_{i}/attention/output/LayerNorm``, ``layer_{i}/intermediate/dense [D, I]``,
``layer_{i}/output/dense [I, D]``, ``layer_{i}/output/LayerNorm``, ``pooler/dense``. Every parameter
carries logical axis names (``vocab``, ``features``, ``embed``, ``heads``, ``kv``, ``mlp``, ``norm``).
Initialisation: normal(``initializer_range`` = 0.02) weights and embeddings, zero biases, unit LayerNorms
(BERT's ``init_weights``).

Entry points beyond ``__call__``: :meth:`BertModel.embed` (step 1), :meth:`BertModel.run_layers` (a range
of blocks of step 2) and :meth:`BertModel.pool` (step 3), so a model can act between two layers, as MAG
does. ``BertModel`` takes token ids, not a batch dict, so it is not in the model registry.

Deviations from the Hugging Face PyTorch ``BertModel``: none in the math for float32
(``tests/test_mag.py`` checks the hidden states and the pooled output of a random tiny checkpoint to 1e-5).
Padding uses a boolean key mask (Hugging Face adds the dtype's minimum to the logits): the outputs at valid
tokens agree; padded query rows are not meaningful in either. Not supported (the importer says so):
``position_embedding_type`` other than ``"absolute"``, decoders and cross-attention.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import axes
from mmjax.layers.attention import dot_product_attention
from mmjax.layers.remat import remat

# Activation names of the Hugging Face config; BERT's "gelu" is the exact (erf) GELU.
ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The shape and dropout of a BERT; names are those of the Hugging Face ``config.json``, defaults the
  "bert-base-uncased" checkpoint's. Frozen (hashable), so modules and jitted functions can hold it."""

  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"  # or "gelu_new", "gelu_pytorch_tanh" (tanh approximation), "relu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  add_pooling_layer: bool = True  # the [CLS] pooler (BertModel's default)
  initializer_range: float = 0.02  # std of the normal initialisation of weights and embeddings

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ConfigError(f"unknown BERT hidden_act {self.hidden_act!r}; supported: {sorted(ACTIVATIONS)}")
    if self.hidden_size % self.num_attention_heads:
      raise ConfigError(f"BERT hidden_size={self.hidden_size} is not divisible by num_attention_heads="
                       f"{self.num_attention_heads}")

  @property
  def head_dim(self) -> int:
    """``Dh = hidden_size / num_attention_heads``."""
    return self.hidden_size // self.num_attention_heads

  def replace(self, **changes) -> BertConfig:
    """A copy with ``changes`` applied (``dataclasses.replace``)."""
    return dataclasses.replace(self, **changes)

  def no_dropout(self) -> BertConfig:
    """A copy with every dropout rate 0 (a frozen or evaluated encoder)."""
    return self.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


# Shapes of the released uncased English checkpoints (vocab 30522, 512 positions, 2 token types).
VARIANTS: dict[str, BertConfig] = {
    "bert-base-uncased": BertConfig(),  # 110M parameters
    "bert-large-uncased": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                     intermediate_size=4096),  # 340M
}


def _normal(cfg: BertConfig, names):
  return axes.logical(nn.initializers.normal(cfg.initializer_range), names)


def _layer_norm(cfg: BertConfig, dtype, name):
  return axes.layer_norm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=dtype, name=name)


class BertEmbeddings(nn.Module):
  """``LN(word + position + token_type)`` then dropout: ``[B, T]`` ids (or ``[B, T, D]`` embeddings)
  -> ``[B, T, D]``."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens=None, *, embeddings=None, token_type_ids=None, train: bool):
    cfg = self.config
    word = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=self.dtype, name="word_embeddings",
                    embedding_init=_normal(cfg, ("vocab", "embed")))
    if embeddings is None:
      x = word(tokens)
    else:  # the table is still created (unused), so the parameters match a checkpoint's
      word(jnp.zeros((1, 1), jnp.int32))
      x = embeddings.astype(self.dtype)
    t = x.shape[1]
    position = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=self.dtype,
                        name="position_embeddings", embedding_init=_normal(cfg, ("features", "embed")))
    token_type = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, dtype=self.dtype,
                          name="token_type_embeddings", embedding_init=_normal(cfg, ("features", "embed")))
    types = jnp.zeros(x.shape[:2], jnp.int32) if token_type_ids is None else token_type_ids
    x = x + token_type(types) + position(jnp.arange(t))[None]
    x = _layer_norm(cfg, self.dtype, "LayerNorm")(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=not train)


class BertAttention(nn.Module):
  """``LN(x + drop(O(attn(Q x, K x, V x))))``: self-attention and its output sub-layer."""

  config: BertConfig
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, mask, train: bool):
    """``x [B, T, D]``, ``mask`` broadcastable to ``[B, H, T, T]`` or None -> ``[B, T, D]``."""
    cfg = self.config
    proj = lambda name: axes.dense_general(  # noqa: E731
        (cfg.num_attention_heads, cfg.head_dim), ("embed", "heads", "kv"), dtype=self.dtype, name=name,
        kernel_init=nn.initializers.normal(cfg.initializer_range))
    q, k, v = proj("query")(x), proj("key")(x), proj("value")(x)  # [B, T, H, Dh]
    rate = cfg.attention_probs_dropout_prob if train else 0.0
    impl = self.attention if mask is None or self.attention in ("xla", "jax", "chunked", "auto") else "xla"
    rng = self.make_rng("dropout") if rate > 0 else None
    out = dot_product_attention(q, k, v, mask=mask, dropout_rate=rate, dropout_rng=rng, implementation=impl)
    return _AttentionOutput(cfg, self.dtype, name="output")(out, x, train=train)


class _AttentionOutput(nn.Module):
  """``LN(residual + drop(dense(heads)))`` (Hugging Face's ``BertSelfOutput``)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, heads, residual, *, train: bool):
    cfg = self.config
    h = axes.dense_general(cfg.hidden_size, ("heads", "kv", "embed"), axis=(-2, -1), dtype=self.dtype,
                           name="dense", kernel_init=nn.initializers.normal(cfg.initializer_range))(heads)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=not train)
    return _layer_norm(cfg, self.dtype, "LayerNorm")(h + residual)


class BertLayer(nn.Module):
  """One post-LN block: :class:`BertAttention`, then ``LN(h + drop(W2 act(W1 h)))``."""

  config: BertConfig
  attention: str = "xla"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train):
    """``x [B, T, D]`` -> ``[B, T, D]`` (positional arguments, as ``nn.remat`` needs; ``train`` static)."""
    cfg = self.config
    x = axes.constrain(x, axes.BATCH_LENGTH_EMBED)  # inside the engine's step; a no-op elsewhere
    h = BertAttention(cfg, self.attention, self.dtype, name="attention")(x, mask=mask, train=train)
    u = axes.constrain(_Intermediate(cfg, self.dtype, name="intermediate")(h), axes.BATCH_LENGTH_MLP)
    out = _BertOutput(cfg, self.dtype, name="output")(u, h, train=train)
    return axes.constrain(out, axes.BATCH_LENGTH_EMBED)


class _Intermediate(nn.Module):
  """``act(W1 h)`` (Hugging Face's ``BertIntermediate``)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h = axes.dense(cfg.intermediate_size, ("embed", "mlp"), dtype=self.dtype, name="dense",
                   kernel_init=nn.initializers.normal(cfg.initializer_range))(x)
    return ACTIVATIONS[cfg.hidden_act](h)


class _BertOutput(nn.Module):
  """``LN(residual + drop(W2 u))`` (Hugging Face's ``BertOutput``)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, u, residual, *, train: bool):
    cfg = self.config
    h = axes.dense(cfg.hidden_size, ("mlp", "embed"), dtype=self.dtype, name="dense",
                   kernel_init=nn.initializers.normal(cfg.initializer_range))(u)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=not train)
    return _layer_norm(cfg, self.dtype, "LayerNorm")(h + residual)


class _Pooler(nn.Module):
  """``tanh(W h)`` (Hugging Face's ``BertPooler``; ``h [B, D]`` is the first token's state)."""

  config: BertConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h):
    cfg = self.config
    return jnp.tanh(axes.dense(cfg.hidden_size, ("embed", "mlp"), dtype=self.dtype, name="dense",
                               kernel_init=nn.initializers.normal(cfg.initializer_range))(h))


class BertModel(nn.Module):
  """BERT encoder (Devlin et al., 2019) of shape ``config`` (default: "bert-base-uncased").

  ``model.apply(variables, tokens, train=False)`` -> ``(hidden [B, T, D], pooled [B, D] or None)``.
  """

  config: BertConfig = BertConfig()
  attention: str = "xla"  # see mmjax.layers.attention.IMPLEMENTATIONS; masked calls need xla/jax/chunked/auto
  dtype: Any = jnp.float32  # compute dtype; parameters are float32
  remat: str = "none"  # rematerialise each block in the backward pass (mmjax.layers.remat.MODES)

  def setup(self):
    cfg = self.config
    self.embeddings = BertEmbeddings(cfg, self.dtype)
    block = remat(BertLayer, self.remat, static_argnums=(3,))
    self.layers = [block(cfg, self.attention, self.dtype, name=f"layer_{i}")
                   for i in range(cfg.num_hidden_layers)]
    if cfg.add_pooling_layer:
      self.pooler = _Pooler(cfg, self.dtype)

  def embed(self, tokens=None, *, embeddings=None, token_type_ids=None, train: bool):
    """Step 1: ``[B, T]`` int token ids, or ``embeddings [B, T, D]`` in place of the word embeddings
    (positions and token types are still added) -> ``[B, T, D]``."""
    if (tokens is None) == (embeddings is None):
      raise ValueError("BertModel needs exactly one of tokens [B, T] or embeddings [B, T, D]")
    if tokens is not None:
      tokens = jnp.asarray(tokens)
      if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"BertModel tokens must be int [B, T]; got {tokens.dtype} {tokens.shape}")
      t = tokens.shape[1]
    else:
      embeddings = jnp.asarray(embeddings)
      if embeddings.ndim != 3 or embeddings.shape[-1] != self.config.hidden_size:
        raise ValueError(f"BertModel embeddings must be [B, T, hidden_size={self.config.hidden_size}]; got "
                         f"{embeddings.shape}")
      t = embeddings.shape[1]
    if t > self.config.max_position_embeddings:
      raise ValueError(f"BertModel sequence length {t} exceeds max_position_embeddings="
                       f"{self.config.max_position_embeddings}")
    return self.embeddings(tokens, embeddings=embeddings, token_type_ids=token_type_ids, train=train)

  def run_layers(self, h, *, attention_mask=None, start: int = 0, stop: int | None = None, train: bool):
    """Blocks ``start .. stop - 1`` (default: all) on ``h [B, T, D]``; ``attention_mask [B, T]`` bool
    (True = real token, default all) hides padded keys."""
    mask = None if attention_mask is None else jnp.asarray(attention_mask, bool)[:, None, None, :]
    for layer in self.layers[start:stop]:
      h = layer(h, mask, train)
    return h

  def pool(self, h):
    """Step 3: ``tanh(dense(h[:, 0]))`` of the final hidden states ``[B, T, D]`` -> ``[B, D]``."""
    if not self.config.add_pooling_layer:
      raise ValueError("this BertModel has no pooler (add_pooling_layer=False)")
    return self.pooler(h[:, 0])

  def __call__(self, tokens=None, *, embeddings=None, token_type_ids=None, attention_mask=None, train: bool):
    """``(hidden [B, T, D], pooled [B, D] or None without a pooler)``; arguments as in :meth:`embed` and
    :meth:`run_layers`."""
    h = self.embed(tokens, embeddings=embeddings, token_type_ids=token_type_ids, train=train)
    h = self.run_layers(h, attention_mask=attention_mask, train=train)
    return h, (self.pool(h) if self.config.add_pooling_layer else None)
