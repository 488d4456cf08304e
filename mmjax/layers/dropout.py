"""Dropout masks from a counter-based integer hash (:func:`dropout_keep`), and the module :class:`Dropout`.

``jax.random.bernoulli`` asks XLA's bit generator for a 32-bit word per element: on CPU a separate pass that
writes the words to memory (threefry: about 20 rounds of integer work per pair of words) before the mask is
applied, the largest elementwise cost of attention dropout in our MulT profile. :func:`dropout_keep` instead
takes two 32-bit seed words from the key (:func:`seed_words`) and hashes each element's linear index with
them:

    h(i) = fmix32(fmix32(i XOR s0) + s1),    keep(i) = h(i) >= round(rate * 2**32)

``fmix32`` is MurmurHash3's finaliser (Appleby, 2008: two multiplications and three xor-shifts, a
bijection of uint32 in which every input bit flips each output bit with probability about 1/2). The whole
mask is a dozen integer operations of an ``iota``, so XLA fuses it into the fusion that applies it: no
random words are written or read, a sharded mask is computed where its shard lives, and a block of a larger
mask (:func:`dropout_keep` with ``full_shape`` and ``offsets``, as the ``chunked`` attention kernel draws
key block by key block) is exactly that block of the whole mask. This is a statistical hash, not a
cryptographic generator, which dropout does not need; the rate is quantised to ``2**-32``. Two keys give
unrelated masks (the seed words are the key's own words, mixed); masks are a deterministic
function of the key, the rate and the (full) shape, so resuming a run draws the same masks.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

_M1, _M2 = 0x85EBCA6B, 0xC2B2AE35  # MurmurHash3 fmix32 multipliers


def _fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser (uint32 in, uint32 out; a bijection)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(_M1)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(_M2)
  return x ^ (x >> 16)


def seed_words(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two uint32 seed words of a PRNG key (typed or raw ``uint32``; any implementation): the key's even and
  odd words, each chain mixed with ``fmix32``. Keys that reach a dropout come from ``split``/``fold_in``, so
  their words already are pseudo-random; the mixing makes root keys (``key(0)``, ``key(1)``, ...) give
  unrelated seeds too. Scalar work only: no bit generator, which keeps the compiled program small."""
  words = jax.random.key_data(rng).reshape(-1).astype(jnp.uint32)
  s0 = _fmix32(words[0] ^ jnp.uint32(0x9E3779B9))
  s1 = _fmix32(words[1] ^ jnp.uint32(0x7F4A7C15)) if words.shape[0] > 1 else _fmix32(s0)
  for i in range(2, words.shape[0]):
    if i % 2:
      s1 = _fmix32(s1 ^ words[i])
    else:
      s0 = _fmix32(s0 ^ words[i])
  return s0, s1


def _linear_index(shape, full_shape, offsets, layout) -> jax.Array:
  """uint32 row-major index into ``full_shape`` of every element of a ``shape`` block at ``offsets``
  (wraps modulo ``2**32``), laid out with its axes in the order ``layout``."""
  out_shape = tuple(shape[a] for a in layout)
  index = jnp.zeros(out_shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    pos = jax.lax.broadcasted_iota(jnp.uint32, out_shape, layout.index(axis))
    if offsets is not None:
      pos = pos + jnp.asarray(offsets[axis]).astype(jnp.uint32)
    index = index + pos * jnp.uint32(stride % 2**32)
    stride *= int(full_shape[axis])
  return index


def _full_leading_axes(shape, full_shape, offsets, layout) -> int:
  """How many leading axes of the block span their whole axis of ``full_shape`` from a static offset 0 and
  lead the layout too."""
  n = 0
  while n < len(shape) and layout[n] == n and shape[n] == full_shape[n] and (
      offsets is None or (isinstance(offsets[n], int) and offsets[n] == 0)):
    n += 1
  return n


def hash_bits(rng: jax.Array, shape, *, full_shape=None, offsets=None, layout=None) -> jax.Array:
  """uint32 pseudo-random words of ``shape``: ``fmix32(fmix32(i ^ s0) + s1)`` of each element's linear
  index ``i`` in ``full_shape`` (default ``shape``), the block starting at ``offsets`` (ints or traced
  scalars; default 0), with ``(s0, s1) =`` :func:`seed_words` ``(rng)``. ``layout`` (a permutation of the
  axes, default the identity) returns the block transposed, ``jnp.transpose(bits, layout)``, computed in
  that order."""
  shape = tuple(int(s) for s in shape)
  full_shape = shape if full_shape is None else tuple(int(s) for s in full_shape)
  layout = tuple(range(len(shape))) if layout is None else tuple(int(a) for a in layout)
  if len(full_shape) != len(shape) or (offsets is not None and len(offsets) != len(shape)):
    raise ValueError(f"hash_bits: shape {shape}, full_shape {full_shape} and offsets {offsets} must have "
                     "the same rank")
  if sorted(layout) != list(range(len(shape))):
    raise ValueError(f"hash_bits: layout {layout} is not a permutation of the {len(shape)} axes")
  # Leading axes that the block spans whole index like one axis: fewer iotas in the fused loop.
  n = _full_leading_axes(shape, full_shape, offsets, layout)
  if n >= 2:
    merged = (math.prod(shape[:n]),)
    index = _linear_index(merged + shape[n:], merged + full_shape[n:],
                          None if offsets is None else (0,) + tuple(offsets[n:]),
                          (0,) + tuple(a - n + 1 for a in layout[n:]))
    index = index.reshape(tuple(shape[a] for a in layout))
  else:
    index = _linear_index(shape, full_shape, offsets, layout)
  s0, s1 = seed_words(rng)
  return _fmix32(_fmix32(index ^ s0) + s1)


def keep_threshold(rate: float) -> int:
  """The uint32 threshold of :func:`dropout_keep`: an element is dropped when its hash is below it."""
  return min(round(float(rate) * 2**32), 2**32 - 1)


def dropout_keep(rng: jax.Array, rate: float, shape, *, full_shape=None, offsets=None,
                 layout=None) -> jax.Array:
  """Bool keep mask of ``shape``: True with probability ``1 - rate`` (quantised to ``2**-32``), a
  deterministic function of ``rng``, ``rate`` and the element's index (see the module docstring).

  With ``full_shape`` and ``offsets``, the mask is the block at ``offsets`` of the mask of ``full_shape``;
  with ``layout``, that block transposed to ``jnp.transpose(mask, layout)`` (see :func:`hash_bits`).
  """
  shape = tuple(int(s) for s in shape)
  out_shape = shape if layout is None else tuple(shape[a] for a in layout)
  rate = float(rate)
  if rate <= 0.0:
    return jnp.ones(out_shape, bool)
  if rate >= 1.0:
    return jnp.zeros(out_shape, bool)
  threshold = keep_threshold(rate)
  if threshold == 0 or math.prod(shape) == 0:
    return jnp.ones(out_shape, bool)
  bits = hash_bits(rng, shape, full_shape=full_shape, offsets=offsets, layout=layout)
  return bits >= jnp.uint32(threshold)


class Dropout(nn.Module):
  """``flax.linen.Dropout`` (inverted dropout, ``rng_collection`` "dropout") with masks from
  :func:`dropout_keep`."""

  rate: float
  rng_collection: str = "dropout"

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    if deterministic or self.rate <= 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep = dropout_keep(self.make_rng(self.rng_collection), self.rate, x.shape)
    return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))
