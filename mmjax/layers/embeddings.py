"""Input embeddings: sequences of features or tokens to ``[B, T, width]``, positions, pooling."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.errors import ConfigError
from mmjax.layers import axes


def sinusoidal_positions(length: int, width: int, *, max_timescale: float = 10_000.0) -> np.ndarray:
  """Sinusoidal position table ``[length, width]`` (Vaswani et al., 2017, sec. 3.5).

  Layout ``[sin | cos]`` (concatenated halves); a zero column is appended when ``width`` is odd.
  """
  half = width // 2
  inv_freq = np.exp(-np.log(max_timescale) * np.arange(half) / max(half - 1, 1))
  angles = np.arange(length)[:, None] * inv_freq[None, :]
  table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  if width % 2:
    table = np.concatenate([table, np.zeros((length, 1))], axis=1)
  return table.astype(np.float32)


def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Mean over time of ``x [B, T, D]`` counting only steps where ``mask [B, T]`` is True."""
  if mask is None:
    return x.mean(axis=1)
  m = mask[..., None].astype(x.dtype)
  return (x * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


class SequenceEmbed(nn.Module):
  """Maps one modality to a ``[B, T, width]`` sequence.

  Integer inputs ``[B, T]`` are token ids (a learned embedding of ``vocab_size`` rows); float inputs
  ``[B, T, F]`` (or ``[B, H, W]`` images, read as ``H`` steps of ``W`` features) are projected by a
  dense layer. Sinusoidal positions are added.
  """

  width: int
  vocab_size: int = 0  # needed only for token inputs
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if jnp.issubdtype(x.dtype, jnp.integer):
      if self.vocab_size <= 0:
        raise ConfigError("token inputs need SequenceEmbed.vocab_size > 0 (set the model's vocab_size)")
      h = axes.embed(self.vocab_size, self.width, dtype=self.dtype, name="tokens")(x)
    else:
      if x.ndim != 3:
        raise ValueError(f"feature inputs must be [B, T, F]; got shape {x.shape}")
      h = axes.dense(self.width, ("features", "embed"), dtype=self.dtype, name="proj")(x)
    return h + sinusoidal_positions(h.shape[1], self.width).astype(h.dtype)[None]
