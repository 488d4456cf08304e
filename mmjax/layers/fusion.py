"""Fusion of one vector per modality: the tensor (outer-product) fusion and its low-rank factorisation.

Inputs are ``M`` modality vectors ``h_m [B, D_m]``. Both operators first append a constant 1 to each
vector, ``z_m = [1; h_m] [B, D_m + 1]`` (the 1 comes first, as in both papers' original code; the papers
write ``[h; 1]``, the same tensor up to a permutation of its entries), so that a
product across modalities keeps every lower-order term: the entry of the product that takes the constant
of every modality but one is that modality's feature itself (a unimodal term), the entries that take the
constant of all but two are the pairwise products (bimodal terms), and so on up to the ``M``-fold products.

* :func:`tensor_fusion` forms the product explicitly, ``Z = z_1 (x) z_2 (x) ... (x) z_M``, flattened to
  ``[B, prod_m (D_m + 1)]`` (row-major: the first modality's index varies slowest).
* :func:`low_rank_fusion` computes ``W . Z + b`` for an output weight ``W [D_1 + 1, ..., D_M + 1, O]``
  given in rank-``R`` CP form, ``W[..., o] = sum_r w_r (x)_m f_m[r, :, o]``, without forming ``Z`` or ``W``:
  ``y = sum_r w_r prod_m (z_m . f_m[r]) + b`` (elementwise product over modalities).
  :func:`low_rank_weight` expands the factors into ``W``, for inspection.
* :class:`LowRankFusion` owns the factors, the rank weights and the bias as parameters.
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


def append_one(h: jax.Array) -> jax.Array:
  """``[B, D] -> [B, 1 + D]``: a constant 1 in front of every vector."""
  return jnp.concatenate([jnp.ones((*h.shape[:-1], 1), h.dtype), h], axis=-1)


def tensor_fusion_size(dims: Sequence[int]) -> int:
  """Width of the flattened fusion tensor of vectors of widths ``dims``: ``prod_m (D_m + 1)``."""
  return math.prod(d + 1 for d in dims)


def tensor_fusion(hs: Sequence[jax.Array]) -> jax.Array:
  """Tensor fusion (Zadeh et al., "Tensor Fusion Network for Multimodal Sentiment Analysis", EMNLP 2017,
  eq. 1 for three modalities): the outer product of the 1-augmented vectors ``[1; h_m]``.

  ``hs``: ``M >= 1`` arrays ``[B, D_m]``. Returns ``[B, prod_m (D_m + 1)]``, the tensor
  ``Z[b, i_1, ..., i_M] = prod_m [1; h_m][b, i_m]`` flattened row-major (first modality slowest). Index 0
  along a modality is its constant 1: ``Z[b, 0, ..., 0] = 1``, ``Z[b, 1 + i, 0, ..., 0] = h_1[b, i]``, ...
  """
  if not hs:
    raise ValueError("tensor_fusion needs at least one modality vector")
  z = append_one(hs[0])
  for h in hs[1:]:
    if h.ndim != 2 or h.shape[0] != z.shape[0]:
      raise ValueError(f"tensor_fusion takes vectors [B, D]; got shapes {[tuple(x.shape) for x in hs]}")
    z = jnp.einsum("bi,bj->bij", z, append_one(h)).reshape(z.shape[0], -1)
  return z


def low_rank_fusion(hs: Sequence[jax.Array], factors: Sequence[jax.Array], rank_weights: jax.Array,
                    bias: jax.Array | None = None) -> jax.Array:
  """Low-rank multimodal fusion (Liu et al., "Efficient Low-rank Multimodal Fusion with Modality-Specific
  Factors", ACL 2018, eqs. 5-6): ``y = sum_r w_r prod_m ([1; h_m] . f_m[r]) + b``.

  ``hs``: ``M`` arrays ``[B, D_m]``; ``factors``: ``M`` arrays ``[R, D_m + 1, O]`` (the modality-specific
  factors; row 0 multiplies the constant 1); ``rank_weights [R]``; ``bias [O]`` or None. Returns
  ``[B, O]``, equal to ``tensor_fusion(hs) @ low_rank_weight(factors, rank_weights).reshape(-1, O) + b``
  but in ``O(R sum_m D_m O)`` instead of ``O(prod_m D_m O)``.
  """
  if len(hs) != len(factors) or not hs:
    raise ValueError(f"low_rank_fusion needs one factor per modality vector; got {len(hs)} vectors and "
                     f"{len(factors)} factors")
  prod = None
  for h, f in zip(hs, factors, strict=True):
    if f.ndim != 3 or f.shape[1] != h.shape[-1] + 1:
      raise ValueError(f"a factor of a vector [B, {h.shape[-1]}] must be [R, {h.shape[-1] + 1}, O]; got "
                       f"{tuple(f.shape)}")
    p = jnp.einsum("bd,rdo->rbo", append_one(h), f)  # [R, B, O]
    prod = p if prod is None else prod * p
  y = jnp.einsum("r,rbo->bo", rank_weights, prod)
  return y if bias is None else y + bias


def low_rank_weight(factors: Sequence[jax.Array], rank_weights: jax.Array) -> jax.Array:
  """The full weight ``W [D_1 + 1, ..., D_M + 1, O] = sum_r w_r (x)_m f_m[r]`` that the factors of
  :func:`low_rank_fusion` stand for (memory ``prod_m (D_m + 1) O``: for inspection and tests)."""
  w = rank_weights[:, None] * jnp.ones((1, factors[0].shape[-1]), factors[0].dtype)  # [R, O]
  for f in factors:
    w = jnp.einsum("r...o,rdo->r...do", w, f)
  return w.sum(axis=0)


def _xavier_normal(in_axis: int, out_axis: int):
  """Glorot normal, ``std = sqrt(2 / (fan_in + fan_out))`` with PyTorch's fans of a ``>= 2``-d tensor."""
  return nn.initializers.variance_scaling(1.0, "fan_avg", "normal", in_axis=in_axis, out_axis=out_axis)


class LowRankFusion(nn.Module):
  """:func:`low_rank_fusion` with its parameters: ``factor_{m}`` ``[R, D_m + 1, O]`` per modality,
  ``rank_weights [R]`` and ``bias [O]``. ``[B, D_m]`` vectors -> ``[B, O]``.

  Initialisation as in the LMF original code: Glorot-normal factors (PyTorch's fans of ``[R, D + 1, O]``:
  in ``(D + 1) O``, out ``R O``), Glorot-normal rank weights (those of a ``[1, R]`` matrix), zero bias.
  """

  features: int  # O
  rank: int  # R
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hs: Sequence[jax.Array]) -> jax.Array:
    if self.rank < 1:
      raise ConfigError(f"LowRankFusion.rank must be >= 1; got {self.rank}")
    factors = [
        self.param(f"factor_{m}", axes.logical(_xavier_normal(1, 0), (None, "embed", "features")),
                   (self.rank, h.shape[-1] + 1, self.features)).astype(self.dtype)
        for m, h in enumerate(hs)
    ]
    std = math.sqrt(2.0 / (self.rank + 1))
    rank_weights = self.param("rank_weights", axes.logical(nn.initializers.normal(std), (None,)),
                              (self.rank,))
    bias = self.param("bias", axes.logical(nn.initializers.zeros_init(), ("features",)), (self.features,))
    hs = [h.astype(self.dtype) for h in hs]
    return low_rank_fusion(hs, factors, rank_weights.astype(self.dtype), bias.astype(self.dtype))
