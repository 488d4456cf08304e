"""Attention kernels, transformer layers, embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.layers import Encoder, dot_product_attention, masked_mean, sinusoidal_positions


def reference_attention(q, k, v, mask):
  """float64 numpy attention written from the equation, for known-answer comparisons."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  h, kv = q.shape[2], k.shape[2]
  k = np.repeat(k, h // kv, axis=2)
  v = np.repeat(v, h // kv, axis=2)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, -1e30)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


@pytest.mark.parametrize("impl", ["xla", "jax"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_reference(impl, kv_heads, causal):
  rng = np.random.default_rng(0)
  b, lq, lk, h, d = 2, 5, 7, 4, 8
  q = rng.standard_normal((b, lq, h, d)).astype(np.float32)
  k = rng.standard_normal((b, lk, kv_heads, d)).astype(np.float32)
  v = rng.standard_normal((b, lk, kv_heads, d)).astype(np.float32)
  lengths = np.array([7, 4])
  key_mask = (np.arange(lk)[None] < lengths[:, None])[:, None, None, :]
  out = dot_product_attention(q, k, v, mask=key_mask, causal=causal, implementation=impl)
  full = np.broadcast_to(key_mask, (b, h, lq, lk))
  if causal:
    full = full & (np.arange(lk)[None, :] <= np.arange(lq)[:, None])
  np.testing.assert_allclose(out, reference_attention(q, k, v, full), atol=2e-5, rtol=2e-5)


def test_attention_errors_are_clear():
  q = jnp.zeros((1, 3, 4, 8))
  with pytest.raises(ValueError, match="unknown attention implementation"):
    dot_product_attention(q, q, q, implementation="nope")
  with pytest.raises(ValueError, match="multiple of key/value heads"):
    dot_product_attention(q, jnp.zeros((1, 3, 3, 8)), jnp.zeros((1, 3, 3, 8)))
  with pytest.raises(ValueError, match="dropout_rng"):
    dot_product_attention(q, q, q, dropout_rate=0.1)


def test_sinusoidal_positions_layout():
  table = sinusoidal_positions(4, 7)
  assert table.shape == (4, 7)
  np.testing.assert_allclose(table[:, -1], 0.0)  # odd width: zero column
  np.testing.assert_allclose(table[0, :3], 0.0)  # sin(0)
  np.testing.assert_allclose(table[0, 3:6], 1.0)  # cos(0)
  # first frequency is 1: position 2 has sin(2)
  np.testing.assert_allclose(table[2, 0], np.sin(2.0), rtol=1e-6)


def test_masked_mean_ignores_padding():
  x = jnp.array([[[1.0], [3.0], [100.0]]])
  np.testing.assert_allclose(masked_mean(x, jnp.array([[True, True, False]])), [[2.0]])


def test_encoder_ignores_padded_keys():
  """Appending padded steps (masked out) leaves the valid steps' outputs unchanged."""
  enc = Encoder(num_layers=2, num_heads=2, dropout=0.0)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  mask = jnp.ones((2, 5), bool)
  params = enc.init(jax.random.PRNGKey(1), x, mask=mask, train=False)
  out = enc.apply(params, x, mask=mask, train=False)
  x_pad = jnp.concatenate([x, 50 * jnp.ones((2, 3, 8))], axis=1)
  mask_pad = jnp.concatenate([mask, jnp.zeros((2, 3), bool)], axis=1)
  out_pad = enc.apply(params, x_pad, mask=mask_pad, train=False)
  np.testing.assert_allclose(out_pad[:, :5], out, atol=1e-5)
