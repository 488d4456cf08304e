"""LMF: Low-rank Multimodal Fusion (Liu, Shen, Lakshminarasimhan, Liang, Zadeh and Morency, "Efficient
Low-rank Multimodal Fusion with Modality-Specific Factors", ACL 2018), after the original PyTorch code
(Justin1904/Low-rank-Multimodal-Fusion, the code :mod:`tests.test_fusion` checks parity with).

Architecture (paper sec. 3-4; modalities in the original order audio, visual, language):

1. The modality subnetworks of TFN (:mod:`mmjax.models.tfn`; the original LMF code uses the same ones):
   ``h_m [B, D_m]``.
2. Low-rank fusion (eqs. 5-6, :class:`mmjax.layers.fusion.LowRankFusion`): with ``z_m = [1; h_m]`` and
   modality-specific factors ``f_m [R, D_m + 1, O]``, ``y = sum_r w_r prod_m (z_m . f_m[r]) + b``: the
   output of a linear layer on the TFN tensor ``z_1 (x) ... (x) z_M`` whose weight has CP rank ``R``,
   computed without forming the tensor. ``O = output_dim``: as in the original, the fusion's output IS the
   prediction (no post-fusion network). The original weights the rank terms by learned ``w_r``
   ("more flexibility" than the paper's plain sum, eq. 6), which is kept.
3. ``output_range = (lo, hi)`` optionally squashes the output into ``(lo, hi)`` (a TFN option; the
   original LMF predicts without a range: ``None``, the default).

Defaults: the original ``train_mosi.py`` grid gives no single MOSI setting (see ``configs/lmf_mosi.py``);
the defaults are grid values equal to the TFN PyTorch defaults where they overlap (hidden widths 4, 16,
128, language output 128 // 2 = 64 as the script derives it, dropouts 0.3) and rank 4.

Deviations from the original code, and why: those listed in :mod:`mmjax.models.tfn` for the subnetworks
(LayerNorm instead of BatchNorm, masks, any modalities, dtype, initialisation of the subnetworks), and:

* The original's post-fusion dropout (``dropouts[3]``) is constructed but never applied; there is no such
  field here.
* The original trains the factors with their own Adam learning rate (``factor_lr``) and uses Adam's
  coupled L2 weight decay; the mmjax optimizer has one learning rate and decoupled (AdamW) decay, so the
  configs use one learning rate (see ``configs/lmf_mosi.py``).
* ``output.squeeze()`` in the original breaks ``output_dim = 1`` batches of one; not reproduced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mmjax.errors import ConfigError
from mmjax.layers.fusion import LowRankFusion
from mmjax.models.registry import register
from mmjax.models.tfn import embed_modalities, scale_output


@register("lmf")
class LMF(nn.Module):
  """Per-modality subnetworks, then rank-``R`` modality-specific factors on ``[1; h_m]`` (no tensor)."""

  output_dim: int = 1  # 1 = sentiment regression; the number of classes for classification
  modalities: Sequence[str] = ("audio", "vision", "text")
  subnets: Sequence[str] = ("mlp", "mlp", "lstm")  # per modality: "mlp" | "flat" | "lstm" (see tfn.py)
  hidden_dims: Sequence[int] = (4, 16, 128)
  out_dims: Sequence[int] = (4, 16, 64)
  dropouts: Sequence[float] = (0.3, 0.3, 0.3)
  rank: int = 4
  output_range: Sequence[float] | None = None  # (lo, hi) squashes the output; None: plain (the original)
  vocab_size: int = 0
  embed_dim: int = 300
  input_norm: str = "layer"  # "layer" | "none"
  dtype: Any = jnp.float32  # compute dtype (config.precision); parameters stay float32

  @nn.compact
  def __call__(self, batch: dict, *, train: bool):
    hs = embed_modalities(self, batch, train=train, name="lmf")
    if self.rank < 1:
      raise ConfigError(f"lmf: model.kwargs.rank must be >= 1; got {self.rank}")
    y = LowRankFusion(self.output_dim, self.rank, self.dtype, name="fusion")(hs)
    return scale_output(y, self.output_range), {"fused": jnp.concatenate(hs, axis=-1)}
