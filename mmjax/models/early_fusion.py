"""Early-fusion baseline: all modalities in one sequence, one joint transformer.

Each modality is embedded to a common width (:class:`mmjax.layers.SequenceEmbed`, with its own sinusoidal
positions), tagged with a learned modality-type embedding, and the sequences are concatenated along time
with their masks; a single pre-LN transformer encodes the joint sequence, which is mean-pooled over valid
steps and classified. Fusion happens before any modality-specific processing, as in the early-fusion
baselines surveyed by Baltrusaitis et al. (2019).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import Encoder, SequenceEmbed, axes, masked_mean
from mmjax.layers.inputs import check_modalities
from mmjax.models.late_fusion import modality_inputs
from mmjax.models.registry import register


@register("early_fusion")
class EarlyFusion(nn.Module):
  """Concatenated modality sequences through one transformer encoder, then an MLP classifier."""

  num_classes: int = 10
  modalities: Sequence[str] = ("image", "audio", "text")
  vocab_size: int = 0
  width: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: int = 2
  dropout: float = 0.1
  attention: str = "xla"
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each encoder layer (config.remat; mmjax.layers.remat)

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    if not self.modalities:
      raise ConfigError("EarlyFusion needs at least one modality")
    check_modalities(batch, self.modalities, model_name="early_fusion", vocab_size=self.vocab_size)
    type_embed = self.param(
        "modality_type", axes.logical(nn.initializers.normal(0.02), ("features", "embed")),
        (len(self.modalities), self.width)
    )
    seqs, masks = [], []
    for i, m in enumerate(self.modalities):
      x, mask = modality_inputs(batch, m)
      h = SequenceEmbed(self.width, self.vocab_size, self.dtype, name=f"{m}_embed")(x)
      seqs.append(h + type_embed[i].astype(h.dtype))
      masks.append(jnp.ones(h.shape[:2], bool) if mask is None else mask.astype(bool))
    h = jnp.concatenate(seqs, axis=1)  # [B, sum T_m, width]
    mask = jnp.concatenate(masks, axis=1)
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = Encoder(
        self.num_layers, self.num_heads, self.mlp_ratio, self.dropout, 0.0, self.attention,
        self.dtype, self.remat, name="encoder",
    )(h, mask=mask, train=train)
    z = masked_mean(h, mask)
    h = nn.relu(axes.dense(self.width, ("embed", "mlp"), dtype=self.dtype, name="head_hidden")(z))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    logits = axes.dense(self.num_classes, ("mlp", "features"), dtype=self.dtype, name="head_out")(h)
    return logits.astype(jnp.float32), {"fused": z}
