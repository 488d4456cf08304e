"""MBT: Multimodal Bottleneck Transformer (Nagrani, Yang, Arnab, Jansen, Schmid and Sun, "Attention
Bottlenecks for Multimodal Fusion", NeurIPS 2021; original JAX/Flax code: google-research/scenic,
``scenic/projects/mbt/model.py``).

Architecture (paper sec. 3, "Multimodal fusion transformers"; section and equation numbers were not checked
against a stored copy of the paper here, so the parts are cited by their titles and content). ``L`` layers,
fusion layer ``L_f`` = ``fusion_layer``, ``B`` = ``num_bottlenecks``; every modality ``m`` has its own
transformer parameters ``theta_m``:

1. Tokens per modality (the ViT / AST tokenisation): ``z_m = [z_cls,m; embed(x_m)]``, a learned CLS token
   (zero-initialised, as in the original) in front of the embedded sequence
   (:class:`mmjax.layers.SequenceEmbed`).
2. Layers ``l < L_f`` ("mid fusion": early layers process each modality alone): separate streams,
   ``z_m^{l+1} = Transformer(z_m^l; theta_m)``. No information crosses modalities.
3. Layers ``l >= L_f`` with ``fusion="bottleneck"`` ("Fusion via attention bottlenecks"): ``B`` learned
   bottleneck tokens ``z_fsn`` (initialised ``N(0, 0.02)``) are appended to each modality,
   ``[z_m^{l+1}; zhat_fsn,m^{l+1}] = Transformer([z_m^l; z_fsn^l]; theta_m)``, and the bottleneck update is
   the average over modalities, ``z_fsn^{l+1} = Avg_m(zhat_fsn,m^{l+1})``. Modalities exchange information
   only through those ``B`` tokens (the issue cites these two updates as Eqs. 8-9). The tokens that
   enter layer ``L_f`` are the learned initial ones, so layer ``L_f`` only WRITES into them and a
   modality's tokens first depend on another modality's input at the output of layer ``L_f + 1``: with
   ``fusion_layer = num_layers - 1`` the bottleneck model is still late fusion (as in the original code).
4. Layers ``l >= L_f`` with ``fusion="attention"`` ("Fusion with modality-specific parameters", i.e. full
   pairwise attention between all tokens): every modality's layer attends over the tokens of all
   modalities concatenated, ``z_m^{l+1} = Transformer([z_1^l; ...; z_M^l]; theta_m)`` restricted to the
   positions of ``z_m``. With ``share_weights`` one set of weights serves every modality (the original's
   ``share_encoder``), and from ``L_f`` on the modalities form one stream ("Fusion via vanilla
   self-attention" over ``[z_rgb || z_spec]``).
5. A shared final LayerNorm; ``classifier="token"``: the CLS outputs of the modalities go through one
   shared linear classifier and the logits are averaged (the paper's classification readout; the
   original's ``classifier="token"`` path); ``classifier="gap"``: the mean over all valid tokens of all
   modalities, then the classifier (the original's released AudioSet config uses ``gap``).

``fusion_layer = 0`` is early fusion, ``fusion_layer = num_layers`` late fusion (CLS logits averaged, no
cross-modal attention); ``num_bottlenecks = 0`` with ``fusion="bottleneck"`` keeps the streams separate at
every layer. A single modality runs as a plain ViT-style stream (as in the original).

Padding: ``batch[m + "_mask"]`` (``[B, T]`` bool, True = valid) excludes padded steps of ``m`` from every
attention (CLS and bottleneck tokens are always valid) and from ``gap`` pooling.

Deviations from the paper and the original code, and why:

* Inputs are the pipeline's sequences (token ids, feature frames, image rows) embedded by
  :class:`mmjax.layers.SequenceEmbed` with sinusoidal positions; the original embeds RGB / spectrogram
  patches with a convolution and adds LEARNED positions (initialised from a ViT checkpoint). With no
  pretrained checkpoint here, and variable-length sequences, fixed positions are the simpler choice; the
  CLS token gets no position (it is a learned parameter anyway).
* Transformer blocks are mmjax's pre-LN :class:`mmjax.layers.EncoderLayer` (ReLU MLP of width
  ``mlp_ratio * width``, flax default initialisers); the original's ViT blocks use GELU, Xavier-uniform
  kernels and stochastic depth (``stochastic_droplayer_rate``, 0.3 in its AudioSet config), which are not
  implemented here.
* The classifier is initialised with flax's default (LeCun normal) kernel, not zeros as in the original
  (a zero head is harmless when fine-tuning from ViT, but gives every other parameter a zero gradient at
  the first step when training from scratch). There is no ``representation_size`` pre-logits layer (None
  in the original's config).
* Training loss: the original's trainer, given per-modality logits in training, averages the per-modality
  cross-entropies; mmjax's tasks take one output, so training and evaluation both use the averaged
  logits (the original's evaluation output). The per-modality logits are in ``aux["modality_logits"]``.
* The original adds one extra bottleneck token when ``classifier="token"`` (``n_bottlenecks + 1``, so its
  "4 bottlenecks" are 5 tokens); here ``num_bottlenecks`` is the number of tokens.
* The original's ``test_with_bottlenecks=False`` (drop the fusion at test time) and mixup / multi-crop
  training are not implemented; any number of modalities is allowed (the original: RGB and spectrogram).

Defaults are the paper's MBT-Base: ViT-Base (12 layers, width 768, 12 heads, MLP 3072), ``B = 4``
bottlenecks, fusion from layer 8, dropout 0 (the original's AudioSet config).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import EncoderLayer, SequenceEmbed, axes
from mmjax.layers.inputs import check_modalities
from mmjax.layers.remat import remat
from mmjax.layers.transformer import key_padding_mask
from mmjax.models.registry import register

FUSIONS = ("bottleneck", "attention")
CLASSIFIERS = ("token", "gap")


class _Block(EncoderLayer):
  """:class:`EncoderLayer` with positional arguments only, for ``nn.remat`` (``train`` is static)."""

  def __call__(self, x, mask, train):
    return super().__call__(x, mask=mask, train=train)


def _valid(mask, batch: int, length: int):
  """``[B, T]`` bool validity of a modality (all True when ``mask`` is None)."""
  return jnp.ones((batch, length), bool) if mask is None else jnp.asarray(mask).astype(bool)


@register("mbt")
class MBT(nn.Module):
  """Per-modality transformer streams fused from ``fusion_layer`` on through bottleneck tokens (or full
  attention); CLS logits averaged over modalities."""

  num_classes: int = 10  # output width (1 for MOSI regression)
  modalities: Sequence[str] = ("image", "audio", "text")
  vocab_size: int = 0  # size of the token vocabulary, for token modalities
  width: int = 768  # ViT-Base
  num_layers: int = 12
  num_heads: int = 12
  mlp_ratio: int = 4
  fusion: str = "bottleneck"  # or "attention" (full attention over all modalities' tokens)
  fusion_layer: int = 8  # L_f: first layer with cross-modal exchange; 0 = early, num_layers = late fusion
  num_bottlenecks: int = 4  # B (fusion="bottleneck")
  share_weights: bool = False  # one set of layer weights for all modalities (the original's share_encoder)
  classifier: str = "token"  # per-modality CLS logits averaged; or "gap" (mean over all valid tokens)
  dropout: float = 0.0
  attention_dropout: float = 0.0
  attention: str = "xla"  # attention kernel, see mmjax.layers.attention
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each layer (config.remat; mmjax.layers.remat)

  def _check_fields(self):
    if not self.modalities:
      raise ConfigError("MBT needs at least one modality (model.kwargs.modalities)")
    if self.fusion not in FUSIONS:
      raise ConfigError(f"MBT fusion {self.fusion!r} is unknown; set model.kwargs.fusion to one of {FUSIONS}")
    if self.classifier not in CLASSIFIERS:
      raise ConfigError(f"MBT classifier {self.classifier!r} is unknown; set model.kwargs.classifier to one "
                       f"of {CLASSIFIERS}")
    if not 0 <= self.fusion_layer <= self.num_layers:
      raise ConfigError(f"MBT fusion_layer {self.fusion_layer} is outside [0, num_layers = "
                       f"{self.num_layers}]; 0 fuses from the first layer, num_layers is late fusion (no "
                       "cross-modal attention)")
    if self.num_bottlenecks < 0:
      raise ConfigError(f"MBT num_bottlenecks must be >= 0 (0 keeps the streams separate); got "
                       f"{self.num_bottlenecks}")
    if self.num_layers < 0:
      raise ConfigError(f"MBT num_layers must be >= 0; got {self.num_layers}")

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    self._check_fields()
    n = check_modalities(batch, self.modalities, model_name="mbt", vocab_size=self.vocab_size)
    mods = tuple(self.modalities)
    token = self.classifier == "token"

    # Tokens z_m = [cls_m; embed(x_m)] and their validity, per modality.  [B, 1 + T_m, width]
    z, valid = {}, {}
    for m in mods:
      h = SequenceEmbed(self.width, self.vocab_size, self.dtype, name=f"{m}_embed")(batch[m])
      v = _valid(batch.get(f"{m}_mask"), n, h.shape[1])
      if token:
        cls = self.param(f"{m}_cls", axes.logical(nn.initializers.zeros_init(), ("embed",)), (self.width,))
        h = jnp.concatenate([jnp.broadcast_to(cls.astype(h.dtype), (n, 1, self.width)), h], axis=1)
        v = jnp.concatenate([jnp.ones((n, 1), bool), v], axis=1)
      z[m], valid[m] = h, v

    fused = len(mods) > 1 and not (self.fusion == "bottleneck" and self.num_bottlenecks == 0)
    if fused and self.fusion == "bottleneck" and self.fusion_layer < self.num_layers:
      fsn = self.param("bottleneck", axes.logical(nn.initializers.normal(0.02), (None, "embed")),
                       (self.num_bottlenecks, self.width))
      fsn = jnp.broadcast_to(fsn.astype(self.dtype), (n, self.num_bottlenecks, self.width))  # [B, nb, width]
      fsn_valid = jnp.ones((n, self.num_bottlenecks), bool)

    block_cls = remat(_Block, self.remat, static_argnums=(3,))
    make = lambda name: block_cls(  # noqa: E731
        self.num_heads, self.mlp_ratio, self.dropout, self.attention_dropout, self.attention, self.dtype,
        name=name)
    lengths = [z[m].shape[1] for m in mods]
    for i in range(self.num_layers):
      if self.share_weights:
        shared = make(f"layer_{i}")
        blocks = dict.fromkeys(mods, shared)
      else:
        blocks = {m: make(f"layer_{i}_{m}") for m in mods}
      if i < self.fusion_layer or not fused:  # separate streams
        z = {m: blocks[m](z[m], key_padding_mask(valid[m]), train) for m in mods}
      elif self.fusion == "bottleneck":  # [z_m; z_fsn] per modality, then z_fsn = Avg_m(zhat_fsn,m)
        updates = []
        for m in mods:
          t = z[m].shape[1]
          out = blocks[m](jnp.concatenate([z[m], fsn], axis=1),
                          key_padding_mask(jnp.concatenate([valid[m], fsn_valid], axis=1)), train)
          z[m] = out[:, :t]
          updates.append(out[:, t:])
        fsn = jnp.mean(jnp.stack(updates), axis=0)
      else:  # full attention over the tokens of all modalities
        joint = jnp.concatenate([z[m] for m in mods], axis=1)  # [B, sum T_m, width]
        joint_mask = key_padding_mask(jnp.concatenate([valid[m] for m in mods], axis=1))
        starts = [sum(lengths[:k]) for k in range(len(mods))]
        if self.share_weights:  # one stream
          out = blocks[mods[0]](joint, joint_mask, train)
          z = {m: out[:, s:s + t] for m, s, t in zip(mods, starts, lengths, strict=True)}
        else:  # modality m's weights process every token; m keeps its own positions
          z = {m: blocks[m](joint, joint_mask, train)[:, s:s + t]
               for m, s, t in zip(mods, starts, lengths, strict=True)}
      for m in mods:
        self.sow("intermediates", f"{m}_layer_{i}", z[m])

    norm = axes.layer_norm(dtype=self.dtype, name="encoder_norm")
    z = {m: norm(z[m]) for m in mods}
    head = axes.dense(self.num_classes, ("embed", "features"), dtype=self.dtype, name="output_projection")
    if token:
      cls_out = jnp.stack([z[m][:, 0] for m in mods], axis=1)  # [B, M, width]
      per_modality = head(cls_out).astype(jnp.float32)  # [B, M, C]
      logits = per_modality.mean(axis=1)
      return logits, {"cls": cls_out.astype(jnp.float32), "modality_logits": per_modality}
    joint = jnp.concatenate([z[m] for m in mods], axis=1)
    w = jnp.concatenate([valid[m] for m in mods], axis=1)[..., None].astype(joint.dtype)
    pooled = (joint * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)  # [B, width]
    return head(pooled).astype(jnp.float32), {"pooled": pooled.astype(jnp.float32)}
