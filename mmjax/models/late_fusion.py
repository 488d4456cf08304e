"""Late-fusion baseline: one encoder per modality, pooled, concatenated, classified.

Each modality is embedded (:class:`mmjax.layers.SequenceEmbed`), encoded by its own small pre-LN
transformer, and mean-pooled over its valid steps; the pooled vectors are concatenated and an MLP predicts
the class. This is fusion of *representations* (sometimes called intermediate fusion), the standard
"late fusion" baseline of the multimodal literature (e.g. Baltrusaitis et al., 2019, "Multimodal Machine
Learning: A Survey and Taxonomy"). With a single entry in ``modalities`` it is the unimodal baseline.

Batch convention: ``batch[m]`` holds modality ``m`` (``[B, T, F]`` floats, ``[B, T]`` token ids, or
``[B, H, W]`` images read as ``H`` steps of ``W`` features) and ``batch[m + "_mask"]`` (``[B, T]`` bool,
optional) marks its valid steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers import Encoder, SequenceEmbed, axes, masked_mean
from mmjax.layers.inputs import check_modalities
from mmjax.models.registry import register


def modality_inputs(batch: dict, modality: str):
  """``(inputs, mask_or_None)`` of ``modality`` (checked by :func:`~mmjax.layers.inputs.check_modalities`)."""
  return batch[modality], batch.get(f"{modality}_mask")


@register("late_fusion")
class LateFusion(nn.Module):
  """Per-modality transformer encoders, mean-pooled and concatenated, then an MLP classifier."""

  num_classes: int = 10
  modalities: Sequence[str] = ("image", "audio", "text")
  vocab_size: int = 0  # size of the token vocabulary, for token modalities
  width: int = 64
  num_layers: int = 1
  num_heads: int = 4
  mlp_ratio: int = 2
  dropout: float = 0.1
  attention: str = "xla"  # attention kernel, see mmjax.layers.attention
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32
  remat: str = "none"  # rematerialise each encoder layer (config.remat; mmjax.layers.remat)

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    if not self.modalities:
      raise ConfigError("LateFusion needs at least one modality")
    check_modalities(batch, self.modalities, model_name="late_fusion", vocab_size=self.vocab_size)
    pooled = []
    for m in self.modalities:
      x, mask = modality_inputs(batch, m)
      h = SequenceEmbed(self.width, self.vocab_size, self.dtype, name=f"{m}_embed")(x)
      h = nn.Dropout(self.dropout)(h, deterministic=not train)
      h = Encoder(
          self.num_layers, self.num_heads, self.mlp_ratio, self.dropout, 0.0, self.attention,
          self.dtype, self.remat, name=f"{m}_encoder",
      )(h, mask=mask, train=train)
      pooled.append(masked_mean(h, mask))
    z = jnp.concatenate(pooled, axis=-1)  # [B, M * width]
    h = nn.relu(axes.dense(self.width, ("embed", "mlp"), dtype=self.dtype, name="head_hidden")(z))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    logits = axes.dense(self.num_classes, ("mlp", "features"), dtype=self.dtype, name="head_out")(h)
    return logits.astype(jnp.float32), {"fused": z}
