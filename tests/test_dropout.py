"""mmjax.layers.dropout: dropout masks from a hash of each element's index."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.layers.dropout import Dropout, _fmix32, dropout_keep, hash_bits, keep_threshold, seed_words


def test_fmix32_matches_murmurhash3():
  # MurmurHash3_x86_32 of an empty input with seed s is fmix32(s): reference values of the published hash
  # (e.g. mmh3.hash(b"", 1, signed=False) == 0x514E28B7)
  got = _fmix32(jnp.asarray([0, 1, 0x2A, 0xFFFFFFFF], jnp.uint32))
  np.testing.assert_array_equal(np.asarray(got), [0, 0x514E28B7, 0x087FCD5C, 0x81F16F39])


def test_seed_words_differ_between_keys_of_every_implementation():
  for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
    root = [jax.random.key(k, impl=impl) for k in range(40)]  # rbg's root words repeat: [0, k, 0, k]
    derived = [jax.random.fold_in(jax.random.key(0, impl=impl), k) for k in range(40)]
    seeds = {tuple(int(w) for w in seed_words(key)) for key in root + derived}
    assert len(seeds) == 80, impl
  np.testing.assert_array_equal(seed_words(jax.random.PRNGKey(5)), seed_words(jax.random.key(5)))


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
@pytest.mark.parametrize("rate,shape",
                         [(0.1, (4, 5, 1, 100, 100)), (0.25, (3, 200, 301)), (0.5, (1, 7, 30001))])
def test_rate_is_honoured(impl, rate, shape):
  keep = dropout_keep(jax.random.key(0, impl=impl), rate, shape)
  assert keep.shape == shape and keep.dtype == jnp.bool_
  n = keep.size
  dropped = 1.0 - float(keep.mean())
  assert abs(keep_threshold(rate) / 2**32 - rate) <= 2**-32
  assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / n)  # 5 sigma


def test_bits_look_independent():
  bits = np.asarray(hash_bits(jax.random.key(1), (512, 1024)))
  # every bit position is set half the time
  ones = np.stack([(bits >> b) & 1 for b in range(32)]).reshape(32, -1).mean(1)
  np.testing.assert_allclose(ones, 0.5, atol=5 * 0.5 / np.sqrt(bits.size))
  # neighbours along either axis, and the same index under another key, are uncorrelated
  keep = (bits >= keep_threshold(0.1)).astype(np.float64)
  other = np.asarray(dropout_keep(jax.random.key(2), 0.1, (512, 1024)), np.float64)
  for a, b in [(keep[:, 1:], keep[:, :-1]), (keep[1:], keep[:-1]), (keep, other)]:
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01
  # a shifted copy of the index sequence is not the same sequence (the seed is not a mere offset)
  flat = keep.ravel()
  assert not any((flat[s:s + 4096] == other.ravel()[:4096]).all() for s in range(64))


def test_a_block_is_the_same_block_of_the_whole_mask():
  key = jax.random.key(7)
  full = (2, 3, 5, 37)
  whole = dropout_keep(key, 0.3, full)
  block = jax.jit(lambda j: dropout_keep(key, 0.3, (2, 3, 5, 8), full_shape=full, offsets=(0, 0, 0, j)))
  for j in (0, 8, 16, 24):
    np.testing.assert_array_equal(block(j), whole[..., j:j + 8])
  part = dropout_keep(key, 0.3, (1, 2, 5, 37), full_shape=full, offsets=(1, 1, 0, 0))
  np.testing.assert_array_equal(part, whole[1:, 1:])
  # the same block, computed transposed (as the chunked kernel's backward pass reads it)
  for j in (0, 16):
    t = dropout_keep(key, 0.3, (2, 3, 5, 8), full_shape=full, offsets=(0, 0, 0, j), layout=(0, 3, 1, 2))
    np.testing.assert_array_equal(t, np.transpose(whole[..., j:j + 8], (0, 3, 1, 2)))
  np.testing.assert_array_equal(dropout_keep(key, 0.3, full, layout=(1, 0, 2, 3)),
                                np.transpose(whole, (1, 0, 2, 3)))
  with pytest.raises(ValueError, match="permutation"):
    dropout_keep(key, 0.3, full, layout=(0, 0, 1, 2))
  with pytest.raises(ValueError, match="same rank"):
    dropout_keep(key, 0.3, (2, 8), full_shape=full)


def test_deterministic_for_a_key_and_different_for_different_keys():
  shape = (6, 50, 70)
  a = dropout_keep(jax.random.key(3), 0.1, shape)
  np.testing.assert_array_equal(a, dropout_keep(jax.random.key(3), 0.1, shape))
  jitted = jax.jit(dropout_keep, static_argnums=(1, 2))
  np.testing.assert_array_equal(a, jitted(jax.random.key(3), 0.1, shape))
  b = dropout_keep(jax.random.key(4), 0.1, shape)
  assert (np.asarray(a) != np.asarray(b)).mean() > 0.1


@pytest.mark.parametrize("shape", [(), (1,), (3, 7), (1, 1, 9), (5, 0)])
def test_odd_shapes_and_the_limits(shape):
  key = jax.random.key(0)
  assert dropout_keep(key, 0.0, shape).all() and dropout_keep(key, 0.0, shape).shape == shape
  assert dropout_keep(key, 1e-11, shape).all()  # below 2**-33: quantised to 0
  assert dropout_keep(key, 0.3, shape).shape == shape
  assert not dropout_keep(key, 1.0, shape).any()


def test_dropout_module():
  x = jnp.ones((16, 64, 32))
  y = Dropout(0.25).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  y = np.asarray(y)
  np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
  assert abs((y == 0).mean() - 0.25) < 0.01
  np.testing.assert_array_equal(Dropout(0.25).apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False), x)  # needs no rng

  class Net(nn.Module):  # the mask of the forward pass is the one the gradient sees
    @nn.compact
    def __call__(self, x):
      return Dropout(0.1)(x, deterministic=False)

  rngs = {"dropout": jax.random.key(5)}
  out = Net().apply({}, x, rngs=rngs)
  grad = jax.grad(lambda x: Net().apply({}, x, rngs=rngs).sum())(x)
  np.testing.assert_array_equal(np.asarray(grad) != 0, np.asarray(out) != 0)
