"""mmjax.layers.dropout: dropout masks from 8- and 16-bit fields of 32-bit random words."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.layers.dropout import Dropout, dropout_keep, keep_bits


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
@pytest.mark.parametrize("rate,shape",
                         [(0.1, (4, 5, 1, 100, 100)), (0.25, (3, 200, 301)), (0.5, (1, 7, 30001))])
def test_rate_is_honoured(impl, rate, shape):
  keep = dropout_keep(jax.random.key(0, impl=impl), rate, shape)
  assert keep.shape == shape and keep.dtype == jnp.bool_
  n = keep.size
  dropped = 1.0 - float(keep.mean())
  q = round(rate * 2 ** keep_bits(rate)) / 2 ** keep_bits(rate)  # the quantised rate
  assert abs(q - rate) <= 2 ** -17
  assert abs(dropped - q) < 5 * np.sqrt(q * (1 - q) / n)  # 5 sigma


def test_every_field_of_the_words_is_used_independently():
  # 8-bit fields (rate 0.25): each quarter of the split axis comes from another byte of the same words
  keep = np.asarray(dropout_keep(jax.random.key(1), 0.25, (400, 1000)))
  quarters = keep.reshape(4, 100, 1000).mean((1, 2))
  np.testing.assert_allclose(quarters, 0.75, atol=0.01)
  assert not any((keep[:100] == keep[100 * i:100 * (i + 1)]).all() for i in (1, 2, 3))
  assert abs(np.corrcoef(keep[:100].ravel(), keep[100:200].ravel())[0, 1]) < 0.02


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
  assert dropout_keep(key, 1e-7, shape).all()  # below 2**-17: quantised to 0
  assert dropout_keep(key, 0.3, shape).shape == shape
  assert not dropout_keep(key, 1.0, shape).any()


def test_zero_rate_keeps_everything_on_a_large_mask():
  assert bool(dropout_keep(jax.random.key(0), 0.0, (8, 5, 500, 500)).all())


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
