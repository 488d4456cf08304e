"""TFN: Tensor Fusion Network (Zadeh, Chen, Poria, Cambria and Morency, "Tensor Fusion Network for
Multimodal Sentiment Analysis", EMNLP 2017), after its PyTorch port by the LMF authors
(Justin1904/TensorFusionNetworks, the code :mod:`tests.test_fusion` checks parity with) and the authors'
Theano/Keras code (A2Zadeh/TensorFusionNetwork).

Architecture (paper sec. 3; the modalities in the original order audio, visual, language):

1. Modality embedding subnetworks (sec. 3.2), one per modality, each giving a vector ``h_m [B, D_m]``:

   * ``"mlp"`` (the acoustic and visual subnetworks): the features averaged over time (the originals
     average them in preprocessing), normalised, dropout, then three ReLU layers
     ``hidden -> hidden -> out`` (the originals: three layers of one width, ``out = hidden``);
   * ``"flat"``: the same MLP on the flattened input (``[B, H, W] -> [B, H W]``), for small fixed-size
     inputs such as the 8x8 images of ``digits_av``;
   * ``"lstm"`` (the language subnetwork): token ids are embedded (``embed_dim``; the originals read
     300-d GloVe vectors), float features read as they are; a one-layer LSTM of width ``hidden``, its
     final hidden state, dropout, and a linear layer to ``out`` (no activation, as in the originals).

2. Tensor fusion (eq. 1, :func:`mmjax.layers.fusion.tensor_fusion`): the outer product of the
   ``[1; h_m]``, flattened to ``prod_m (D_m + 1)`` features; its entries are the unimodal, bimodal and
   trimodal terms. With the MOSI widths below (4, 16, 64) that is 5 x 17 x 65 = 5,525 features.
3. Sentiment inference subnetwork (sec. 3.4): dropout, two ReLU layers of ``post_fusion_dim``, a linear
   output of ``output_dim``. With ``output_range = (lo, hi)`` the output is ``lo + (hi - lo) sigmoid(.)``
   (the originals' regression head: (-3, 3) in the PyTorch port, (-4, 4) in the Theano code); with
   ``output_range = None`` the output is plain logits (classification).

Defaults are those of the PyTorch original's ``train.py`` on CMU-MOSI: hidden widths (audio 4, visual 16,
language 128), language output 64, dropouts 0.3 everywhere, ``post_fusion_dim`` 32, output range (-3, 3).
The authors' Theano code uses wider subnetworks (three 32-unit layers for the acoustic and visual
features, a 128-unit LSTM with a 64-d output), two post-fusion layers of 160 units (its ``--units``
default), dropout 0.2 and the output range (-4, 4); set the fields to those values to follow it.

Deviations from the original code, and why:

* Input normalisation: LayerNorm over the features (learned scale and bias) instead of the originals'
  BatchNorm1d, because mmjax models are pure functions of their parameters (the engine carries no
  mutable batch statistics). In evaluation mode BatchNorm is a fixed per-feature affine map, so the
  originals' eval-mode subnetwork is the ``input_norm="none"`` subnetwork after folding that map into the
  first layer; ``input_norm="none"`` is offered for that.
* Padding: with ``batch[m + "_mask"]`` the time average counts only valid steps and the LSTM's state is
  read at each example's last valid step (the state does not change over padded steps), so front and back
  padding give the same output. The originals average over the padded length and run the LSTM over the
  padding. Without masks (and with front zero padding for the LSTM) the computation is the original one.
* The originals squeeze the batch dimension of a batch of one (``final_states[0].squeeze()``), a bug;
  here a batch of one works like any other.
* Any number (>= 1) and order of modalities; the originals fix three (audio, visual, language).
* The compute ``dtype`` is configurable (parameters stay float32).
* Initialisation is flax's (LeCun normal kernels, zero biases) except the LSTM, which uses PyTorch's
  ``U(-1/sqrt(H), 1/sqrt(H))`` for every weight and bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import axes
from mmjax.layers.embeddings import masked_mean
from mmjax.layers.fusion import tensor_fusion
from mmjax.layers.inputs import check_modalities
from mmjax.models.registry import register

SUBNETS = ("mlp", "flat", "lstm")
NORMS = ("layer", "none")


def _uniform(scale: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


class LSTM(nn.Module):
  """One-layer LSTM ``[B, T, F] -> [B, H]``, the hidden state after each example's last valid step.

  Gates in PyTorch's order ``(i, f, g, o)``: ``c' = s(f) c + s(i) tanh(g)``, ``h' = s(o) tanh(c')`` with
  ``[i f g o] = x W_ih + b_ih + h W_hh + b_hh``. Parameters ``w_ih [F, 4H]``, ``b_ih [4H]``,
  ``w_hh [H, 4H]``, ``b_hh [4H]`` (PyTorch's ``weight_ih_l0`` etc. transposed). ``mask [B, T]`` (True =
  valid) freezes the state over padded steps. The recurrence runs in float32.
  """

  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    h4 = 4 * self.hidden
    init = _uniform(1.0 / math.sqrt(self.hidden))
    w_ih = self.param("w_ih", axes.logical(init, ("embed", "mlp")), (x.shape[-1], h4))
    b_ih = self.param("b_ih", axes.logical(init, ("mlp",)), (h4,))
    w_hh = self.param("w_hh", axes.logical(init, ("embed", "mlp")), (self.hidden, h4))
    b_hh = self.param("b_hh", axes.logical(init, ("mlp",)), (h4,))
    gx = jnp.einsum("btf,fg->btg", x.astype(self.dtype), w_ih.astype(self.dtype)).astype(jnp.float32)
    gx = gx + (b_ih + b_hh)  # [B, T, 4H]
    valid = jnp.ones(x.shape[:2], bool) if mask is None else mask.astype(bool)

    def step(carry, inputs):
      h, c = carry
      g_t, m_t = inputs  # [B, 4H], [B]
      gates = g_t + jnp.dot(h.astype(self.dtype), w_hh.astype(self.dtype)).astype(jnp.float32)
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
      keep = m_t[:, None]
      return (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)), None

    zeros = jnp.zeros((x.shape[0], self.hidden), jnp.float32)
    (h, _), _ = jax.lax.scan(step, (zeros, zeros), (jnp.swapaxes(gx, 0, 1), valid.T))
    return h.astype(self.dtype)


class SubNet(nn.Module):
  """A modality embedding subnetwork ``batch[m] -> [B, out]`` (see the module docstring for the kinds)."""

  kind: str  # "mlp" | "flat" | "lstm"
  hidden: int
  out: int
  dropout: float
  vocab_size: int = 0
  embed_dim: int = 300
  input_norm: str = "layer"  # or "none"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, *, train: bool) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.integer):
      x = axes.embed(self.vocab_size, self.embed_dim, dtype=self.dtype, name="embed")(x)  # [B, T, E]
    if self.kind == "lstm":
      h = LSTM(self.hidden, self.dtype, name="lstm")(x, mask)
      h = nn.Dropout(self.dropout)(h, deterministic=not train)
      return axes.dense(self.out, ("mlp", "embed"), dtype=self.dtype, name="out")(h)
    v = x.reshape(x.shape[0], -1) if self.kind == "flat" else masked_mean(x, mask)  # [B, F]
    if self.input_norm == "layer":
      v = axes.layer_norm(epsilon=1e-5, dtype=self.dtype, name="norm")(v)
    v = nn.Dropout(self.dropout)(v, deterministic=not train)
    h = nn.relu(axes.dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, name="linear_1")(v))
    h = nn.relu(axes.dense(self.hidden, ("mlp", "embed"), dtype=self.dtype, name="linear_2")(h))
    return nn.relu(axes.dense(self.out, ("embed", "mlp"), dtype=self.dtype, name="linear_3")(h))


def check_fields(model, name: str):
  """Checks the per-modality fields shared by TFN and LMF; raises ValueError saying how to fix them."""
  n = len(model.modalities)
  if n == 0:
    raise ConfigError(f"{name} needs at least one modality (model.kwargs.modalities)")
  for field in ("subnets", "hidden_dims", "out_dims", "dropouts"):
    value = getattr(model, field)
    if len(value) != n:
      raise ConfigError(f"{name}: model.kwargs.{field} has {len(value)} entries but there are {n} modalities "
                       f"{tuple(model.modalities)}; give one entry per modality, in the same order")
  bad = [k for k in model.subnets if k not in SUBNETS]
  if bad:
    raise ConfigError(f"{name}: unknown subnetwork kind(s) {bad} in model.kwargs.subnets; use {SUBNETS}")
  if model.input_norm not in NORMS:
    raise ConfigError(f"{name}: model.kwargs.input_norm is {model.input_norm!r}; use one of {NORMS}")
  if any(d < 1 for d in (*model.hidden_dims, *model.out_dims)):
    raise ConfigError(f"{name}: model.kwargs.hidden_dims and out_dims must be >= 1; got "
                     f"{tuple(model.hidden_dims)} and {tuple(model.out_dims)}")


def embed_modalities(model, batch: dict, *, train: bool, name: str) -> list[jax.Array]:
  """Runs each modality's subnetwork (as sub-modules of ``model``, named ``{m}_subnet``): ``[B, D_m]``."""
  check_fields(model, name)
  kinds = {m: "image_or_rgb" if k == "flat" else "sequence"
           for m, k in zip(model.modalities, model.subnets, strict=True)}
  check_modalities(batch, model.modalities, model_name=name, kinds=kinds, vocab_size=model.vocab_size)
  hs = []
  for i, m in enumerate(model.modalities):
    sub = SubNet(model.subnets[i], model.hidden_dims[i], model.out_dims[i], model.dropouts[i],
                 model.vocab_size, model.embed_dim, model.input_norm, model.dtype, name=f"{m}_subnet")
    hs.append(sub(batch[m], batch.get(f"{m}_mask"), train=train))
  return hs


@register("tfn")
class TFN(nn.Module):
  """Per-modality subnetworks, tensor fusion of the ``[1; h_m]``, a two-layer post-fusion MLP."""

  output_dim: int = 1  # 1 = sentiment regression; the number of classes for classification
  modalities: Sequence[str] = ("audio", "vision", "text")  # fusion order (the originals' order)
  subnets: Sequence[str] = ("mlp", "mlp", "lstm")  # per modality: "mlp" | "flat" | "lstm"
  hidden_dims: Sequence[int] = (4, 16, 128)  # per modality: MLP width / LSTM width
  out_dims: Sequence[int] = (4, 16, 64)  # per modality: D_m, the width of h_m
  dropouts: Sequence[float] = (0.3, 0.3, 0.3)  # per modality, inside its subnetwork
  post_fusion_dim: int = 32
  post_fusion_dropout: float = 0.3
  output_range: Sequence[float] | None = (-3.0, 3.0)  # (lo, hi): lo + (hi - lo) sigmoid(y); None = logits
  vocab_size: int = 0  # rows of the token embedding, for token-id modalities
  embed_dim: int = 300  # width of the token embedding (the originals: 300-d GloVe)
  input_norm: str = "layer"  # "layer" | "none": normalisation of the MLP subnetworks' input
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    hs = embed_modalities(self, batch, train=train, name="tfn")
    z = tensor_fusion(hs)  # [B, prod (D_m + 1)]
    y = PostFusion(self.post_fusion_dim, self.output_dim, self.post_fusion_dropout, self.output_range,
                   self.dtype, name="post_fusion")(z, train=train)
    return y, {"fused": z}


class PostFusion(nn.Module):
  """Sentiment inference subnetwork ``[B, N] -> [B, output_dim]`` float32: dropout, two ReLU layers of
  ``width``, a linear output, then :func:`scale_output`."""

  width: int
  output_dim: int
  dropout: float
  output_range: Sequence[float] | None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    h = nn.Dropout(self.dropout)(z, deterministic=not train)
    h = nn.relu(axes.dense(self.width, ("embed", "mlp"), dtype=self.dtype, name="layer_1")(h))
    h = nn.relu(axes.dense(self.width, ("mlp", "embed"), dtype=self.dtype, name="layer_2")(h))
    y = axes.dense(self.output_dim, ("embed", "features"), dtype=self.dtype, name="layer_3")(h)
    return scale_output(y, self.output_range)


def scale_output(y: jax.Array, output_range) -> jax.Array:
  """``lo + (hi - lo) sigmoid(y)`` in float32 for ``output_range = (lo, hi)``; ``y`` itself for None."""
  y = y.astype(jnp.float32)
  if output_range is None:
    return y
  lo, hi = (float(v) for v in output_range)
  return lo + (hi - lo) * jax.nn.sigmoid(y)
