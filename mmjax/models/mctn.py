"""MCTN — Multimodal Cyclic Translation Network (Pham, Liang, Manzini, Morency, Póczos, "Found in Translation:
Learning Robust Joint Representations by Cyclic Translations Between Modalities", AAAI 2019).

Only the source modality ``S`` is needed to predict; the other modalities are translation targets that shape
the source's representation in training. With targets ``T1`` (and optionally ``T2``, the hierarchical
3-modality MCTN):

* Level 1, cyclic translation ``S -> T1 -> S`` with ONE encoder-decoder used in both directions:
  ``E = Enc(X_S)`` (a bidirectional LSTM, forward and backward outputs summed, ``[B, T_S, H]``),
  ``X^_T1 = Dec(E)`` (an attention LSTM decoder, ``T_T1`` steps), then the back-translation
  ``X^_S = Dec(Enc(X^_T1))`` (cycle consistency).
* Level 2 (``len(targets) == 2``): a second encoder-decoder translates the level-1 encoder outputs
  ``E`` (the joint representation of S and T1) into ``T2``: ``E2 = Enc2(E)``, ``X^_T2 = Dec2(E2)``; no cycle
  (the original: "due to the lack of ground truth").
* Prediction from the joint representation (``E``, or ``E2`` with two targets), as the original's head: an
  LSTM over the sequence, attention pooling ``a_t = softmax_t(tanh(w . h_t + b))``, a dense output.
* Objective: ``L = L_pred + lambda_t * L_t(X^_T1, X_T1) + lambda_c * L_c(X^_S, X_S)
  [+ lambda_t2 * L_t(X^_T2, X_T2)] + head_l2 * ||W_out||^2``, with the original's weights
  ``lambda_t = lambda_c = lambda_t2 = 0.1``, ``head_l2 = 0.01`` (Keras ``l2(0.01)`` on the output kernel) and
  the prediction loss of the task (``classification`` or ``regression``, L1 on MOSI as in the original).
  Translation and cycle losses are MSE over the valid steps of float modalities and cross-entropy over the
  valid tokens of token-id modalities.

The model returns the auxiliary losses in ``aux["losses"]`` as ``{name: (per-example loss [B], weight)}``
(``translation/<T1>``, ``cycle/<S>``, ``translation/<T2>``, ``head_l2``), which the ``classification`` and
``regression`` tasks add to the prediction loss (:func:`mmjax.tasks.classification.aux_losses`). A target
absent from the batch gives no loss: at ``train=False`` the batch may hold the source alone, and the
prediction is the same with or without the targets (nothing flows from a target to the prediction). In
training every target is required. ``aux["translations"]`` holds ``{T: X^_T}`` (features, or token logits).

Padding: ``batch[m + "_mask"]`` (``[B, T]``, True = valid) is honoured everywhere: the LSTMs carry their
state unchanged across padded steps (so the backward direction starts at the last valid step), attention and
pooling skip padded steps, and the translation / cycle losses count only valid target steps. The cycle
encoder reads the translated target under the target's mask.

Deviations from the original code (hainow/MCTN, Keras; facts taken from it, not its code):

* Modalities of different kinds and widths. The original zero-pads every modality's features to the widest
  one so that one LSTM reads source and translated target and one readout writes both. Here each modality
  has its own linear input map to the LSTM width ``hidden_dim`` (a one-hot map, i.e. an embedding, for token
  ids; the cycle feeds it the softmax of the translated logits) and its own readout (features, with the
  original's ``tanh`` or a linear activation, ``output_activation``; or token logits). The encoder and decoder
  LSTMs are shared by the two directions, as in the original. Sequence lengths may differ between modalities
  (the original uses word-aligned sequences of one length): the decoder runs for the target's length.
* The decoder. The original's attention cell scores ``W3 [e_j ; c_{t-1}]`` linearly, so the decoder-state
  term is the same for every ``j`` and cancels in the softmax (the attention never changes over steps), and
  its forget gate reuses the input gate's pre-activation. Here: Bahdanau attention
  ``v . tanh(W e_j + U h_{t-1})`` over the valid encoder steps and a standard LSTM cell whose input is the
  context vector (as in the original, the previous output is not fed back; no teacher forcing).
* LSTM details: flax-style initialisers (LeCun-normal input kernels, orthogonal recurrent kernels, forget
  gate bias 1 as Keras' ``unit_forget_bias``); decoder depth 1 (the original's default depth (1, 1); deeper
  decoders are not implemented, ``encoder_layers`` stacks encoder layers).
* The original trains with Keras' MSE averaged over all (also padded) steps and features; here the mean is
  over valid steps per example, then over examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.errors import ConfigError
from mmjax.layers import axes
from mmjax.layers.inputs import check_modalities
from mmjax.models.registry import register

ACTIVATIONS = ("tanh", "linear")


def _forget_bias_init(hidden: int):
  """Bias ``[4H]`` of gates (i, f, g, o): zeros with the forget gate's quarter at 1."""
  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype).at[hidden:2 * hidden].set(1.0)
  return init


def _lstm_update(z, c, h, valid):
  """One LSTM step from the gate pre-activations ``z [B, 4H]`` (float32); state kept where not ``valid``."""
  i, f, g, o = jnp.split(z.astype(jnp.float32), 4, axis=-1)
  c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
  keep = valid[:, None]
  return jnp.where(keep, c_new, c), jnp.where(keep, h_new, h), jnp.where(keep, h_new, 0.0)


def _valid(mask, b: int, t: int):
  return jnp.ones((b, t), bool) if mask is None else mask.astype(bool)


class LSTM(nn.Module):
  """One LSTM direction over ``x [B, T, D]`` -> outputs ``[B, T, H]`` (zeros at padded steps)."""

  hidden: int
  reverse: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    b, t, _ = x.shape
    gx = axes.dense(4 * self.hidden, ("embed", "mlp"), dtype=self.dtype, use_bias=False, name="input")(x)
    rec = self.param("recurrent", axes.logical(nn.initializers.orthogonal(), ("embed", "mlp")),
                     (self.hidden, 4 * self.hidden))
    bias = self.param("bias", axes.logical(_forget_bias_init(self.hidden), ("mlp",)), (4 * self.hidden,))
    rec = rec.astype(self.dtype)

    def step(carry, xs):
      c, h = carry
      g, valid = xs
      z = g.astype(jnp.float32) + jnp.dot(h.astype(self.dtype), rec).astype(jnp.float32) + bias
      c, h, out = _lstm_update(z, c, h, valid)
      return (c, h), out

    zeros = jnp.zeros((b, self.hidden), jnp.float32)
    xs = (jnp.swapaxes(gx, 0, 1), jnp.swapaxes(_valid(mask, b, t), 0, 1))
    _, out = jax.lax.scan(step, (zeros, zeros), xs, reverse=self.reverse)
    return jnp.swapaxes(out, 0, 1).astype(self.dtype)  # [B, T, H]


class BiEncoder(nn.Module):
  """Stacked bidirectional LSTM, forward and backward outputs summed (the original's ``merge_mode='sum'``):
  ``x [B, T, D] -> [B, T, H]``."""

  hidden: int
  num_layers: int = 1
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, *, train: bool):
    for i in range(self.num_layers):
      if i:
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
      x = (LSTM(self.hidden, False, self.dtype, name=f"forward_{i}")(x, mask)
           + LSTM(self.hidden, True, self.dtype, name=f"backward_{i}")(x, mask))
    return x


class AttentionDecoder(nn.Module):
  """LSTM decoder attending over ``memory [B, S, D]`` at each of ``length`` steps -> ``[B, length, H]``.

  Step ``t``: ``alpha = softmax_j(v . tanh(W m_j + U h_{t-1}))`` over valid ``j``, context
  ``ctx = sum_j alpha_j m_j``, ``(c_t, h_t) = LSTM(ctx, (c_{t-1}, h_{t-1}))``; the state starts at zero."""

  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, memory, mask, length: int):
    b, s, _ = memory.shape
    h_dim = self.hidden
    keys = axes.dense(h_dim, ("embed", "mlp"), dtype=self.dtype, use_bias=False, name="keys")(memory)
    mem_x = axes.dense(4 * h_dim, ("embed", "mlp"), dtype=self.dtype, use_bias=False, name="input")(memory)
    query = self.param("query", axes.logical(axes.default_kernel_init, ("embed", "mlp")), (h_dim, h_dim))
    energy = self.param("energy", axes.logical(axes.default_kernel_init, ("mlp", "features")), (h_dim, 1))
    rec = self.param("recurrent", axes.logical(nn.initializers.orthogonal(), ("embed", "mlp")),
                     (h_dim, 4 * h_dim))
    bias = self.param("bias", axes.logical(_forget_bias_init(h_dim), ("mlp",)), (4 * h_dim,))
    valid_mem = _valid(mask, b, s)
    hq = jnp.concatenate([query, rec], axis=1).astype(self.dtype)  # one matmul of h per step: [H, H + 4H]
    energy = energy[:, 0].astype(self.dtype)
    always = jnp.ones((b,), bool)

    def step(carry, _):
      c, h = carry
      proj = jnp.dot(h.astype(self.dtype), hq)
      q, hz = proj[:, :h_dim], proj[:, h_dim:]
      scores = jnp.einsum("bsa,a->bs", jnp.tanh(keys + q[:, None]), energy).astype(jnp.float32)
      scores = jnp.where(valid_mem, scores, -1e30)
      alpha = jax.nn.softmax(scores, axis=-1)
      cx = jnp.einsum("bs,bsg->bg", alpha.astype(self.dtype), mem_x)
      z = cx.astype(jnp.float32) + hz.astype(jnp.float32) + bias
      c, h, out = _lstm_update(z, c, h, always)
      return (c, h), out

    zeros = jnp.zeros((b, h_dim), jnp.float32)
    _, out = jax.lax.scan(step, (zeros, zeros), None, length=length)
    return jnp.swapaxes(out, 0, 1).astype(self.dtype)  # [B, length, H]


class PredictionHead(nn.Module):
  """The original's head: an LSTM over the joint representation ``[B, T, D]``, attention pooling
  ``a_t = softmax_t(tanh(w . h_t + b))`` over valid steps, a dense output.
  Returns ``(out [B, C], ||W||^2)``."""

  hidden: int
  num_outputs: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    h = LSTM(self.hidden, False, self.dtype, name="lstm")(x, mask)
    score = jnp.tanh(axes.dense(1, ("mlp", "features"), dtype=self.dtype, name="attention")(h)[..., 0])
    score = jnp.where(_valid(mask, *score.shape), score.astype(jnp.float32), -1e30)
    alpha = jax.nn.softmax(score, axis=-1)
    pooled = jnp.einsum("bt,btd->bd", alpha.astype(self.dtype), h)
    kernel = self.param("kernel", axes.logical(axes.default_kernel_init, ("mlp", "features")),
                        (self.hidden, self.num_outputs))
    bias = self.param("bias", axes.logical(nn.initializers.zeros_init(), ("features",)), (self.num_outputs,))
    out = jnp.dot(pooled, kernel.astype(self.dtype)).astype(jnp.float32) + bias
    return out, jnp.sum(jnp.square(kernel))


def _masked_mean(per_step, mask):
  """``per_step [B, T]`` averaged over the valid steps of each example -> ``[B]``."""
  if mask is None:
    return per_step.mean(axis=1)
  m = mask.astype(jnp.float32)
  return (per_step * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


@register("mctn")
class MCTN(nn.Module):
  """Multimodal Cyclic Translation Network; ``__call__`` returns ``(logits [B, C] or predictions [B, 1],
  aux)``.

  ``source`` is the only modality the prediction reads; ``targets`` (one, or two for the hierarchical MCTN)
  are translated to in training. Inputs: float features ``[B, T, F]`` (or images ``[B, H, W]``, read as
  ``H`` steps of ``W`` features) or token ids ``[B, T]`` (``vocab_size`` rows), masks optional."""

  source: str = "text"
  targets: Sequence[str] = ("vision", "audio")  # the paper's MOSI setting: text -> vision (cycle) -> audio
  num_classes: int = 1  # 1 = regression output [B, 1]; >= 2 = classification logits
  vocab_size: int = 0  # rows of the token vocabulary, for token-id modalities
  hidden_dim: int = 32  # LSTM width of the encoders / decoders (the original's hidden_dim)
  head_dim: int = 32  # LSTM width of the prediction head (the original's reg_hidden_dim)
  encoder_layers: int = 1  # stacked bidirectional layers per encoder (the original's depth[0])
  dropout: float = 0.0  # between stacked encoder layers (the original's default 0)
  output_activation: str = "tanh"  # of the float-feature readouts: "tanh" (original) or "linear"
  translation_weight: float = 0.1  # lambda_t, level-1 translation S -> T1
  cycle_weight: float = 0.1  # lambda_c, back-translation T1^ -> S
  translation2_weight: float = 0.1  # level-2 translation joint -> T2
  head_l2: float = 0.01  # L2 factor on the output kernel (Keras l2(0.01) in the original)
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32

  @property
  def modalities(self) -> tuple[str, ...]:
    """Source then targets (read by evaluators such as ``robustness``)."""
    return (self.source, *self.targets)

  def _check_fields(self):
    targets = tuple(self.targets)
    if not 1 <= len(targets) <= 2:
      raise ConfigError(f"MCTN takes one or two target modalities (two = hierarchical MCTN); got targets="
                       f"{targets}: set model.kwargs.targets to e.g. ('audio',) or ('image', 'text')")
    if self.source in targets or len(set(targets)) != len(targets):
      raise ConfigError(f"MCTN's source {self.source!r} and targets {targets} must be distinct modalities; "
                       "fix model.kwargs.source / model.kwargs.targets")
    if self.output_activation not in ACTIVATIONS:
      raise ConfigError(f"output_activation must be one of {ACTIVATIONS}; got {self.output_activation!r}")
    if self.num_classes < 1:
      raise ConfigError(f"num_classes must be 1 (regression) or >= 2 (classes); got {self.num_classes}")
    if min(self.hidden_dim, self.head_dim, self.encoder_layers) < 1:
      raise ConfigError(f"hidden_dim, head_dim and encoder_layers must be >= 1; got {self.hidden_dim}, "
                       f"{self.head_dim}, {self.encoder_layers}")

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    self._check_fields()
    t1 = self.targets[0]
    t2 = self.targets[1] if len(self.targets) > 1 else None
    required = (self.source, *self.targets) if train else (self.source,)
    present = required + tuple(m for m in self.targets if m not in required and m in batch)
    check_modalities(batch, present, model_name="mctn", vocab_size=self.vocab_size,
                     field={m: "source" if m == self.source else "targets" for m in present},
                     missing_hint=" (in training MCTN translates to every target; at evaluation the source "
                                  "alone is enough)")
    tokens = {m: jnp.issubdtype(batch[m].dtype, jnp.integer) for m in present}
    feature_dims = {m: (self.vocab_size if tokens[m] else batch[m].shape[-1]) for m in present}

    def project(m, x):  # x: one-hot / probabilities [B, T, V] or features [B, T, F] -> [B, T, H]
      names = ("vocab" if tokens[m] else "features", "embed")
      return axes.dense(self.hidden_dim, names, dtype=self.dtype, use_bias=not tokens[m], name=f"{m}_in")(x)

    readouts = {}

    def readout(m, h):  # [B, T, H] -> token logits [B, T, V] or features [B, T, F] (float32)
      if m not in readouts:
        names = ("mlp", "vocab" if tokens[m] else "features")
        readouts[m] = axes.dense(feature_dims[m], names, dtype=self.dtype, name=f"{m}_out")
      y = readouts[m](h).astype(jnp.float32)
      return jnp.tanh(y) if (self.output_activation == "tanh" and not tokens[m]) else y

    def as_input(m):  # the batch's modality as the projection's input
      x = batch[m]
      return jax.nn.one_hot(x, self.vocab_size, dtype=self.dtype) if tokens[m] else x.astype(self.dtype)

    def loss_of(m, pred):  # per-example translation loss [B] over the valid steps of batch[m]
      x, mask = batch[m], batch.get(f"{m}_mask")
      if tokens[m]:
        per_step = optax.softmax_cross_entropy_with_integer_labels(pred, x.astype(jnp.int32))
      else:
        per_step = jnp.mean(jnp.square(pred - x.astype(jnp.float32)), axis=-1)
      return _masked_mean(per_step, mask)

    encoder = BiEncoder(self.hidden_dim, self.encoder_layers, self.dropout, self.dtype, name="encoder")
    decoder = AttentionDecoder(self.hidden_dim, self.dtype, name="decoder")
    src_mask = batch.get(f"{self.source}_mask")
    joint = encoder(project(self.source, as_input(self.source)), src_mask, train=train)  # [B, T_S, H]
    losses, translations = {}, {}
    if t1 in batch:
      t1_mask = batch.get(f"{t1}_mask")
      pred_t1 = readout(t1, decoder(joint, src_mask, batch[t1].shape[1]))
      translations[t1] = pred_t1
      losses[f"translation/{t1}"] = (loss_of(t1, pred_t1), self.translation_weight)
      back_in = (jax.nn.softmax(pred_t1, axis=-1) if tokens[t1] else pred_t1).astype(self.dtype)
      back = encoder(project(t1, back_in), t1_mask, train=train)
      pred_src = readout(self.source, decoder(back, t1_mask, batch[self.source].shape[1]))
      losses[f"cycle/{self.source}"] = (loss_of(self.source, pred_src), self.cycle_weight)
    if t2 is not None:
      joint = BiEncoder(self.hidden_dim, self.encoder_layers, self.dropout, self.dtype, name="encoder2")(
          joint, src_mask, train=train)  # [B, T_S, H]
      if t2 in batch:
        pred_t2 = readout(t2, AttentionDecoder(self.hidden_dim, self.dtype, name="decoder2")(
            joint, src_mask, batch[t2].shape[1]))
        translations[t2] = pred_t2
        losses[f"translation/{t2}"] = (loss_of(t2, pred_t2), self.translation2_weight)
    out, l2 = PredictionHead(self.head_dim, self.num_classes, self.dtype, name="head")(joint, src_mask)
    b = out.shape[0]
    if self.head_l2:
      losses["head_l2"] = (jnp.broadcast_to(l2, (b,)), self.head_l2)
    return out, {"losses": losses, "translations": translations, "joint": joint}
