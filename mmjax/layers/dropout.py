"""Dropout masks from 8- or 16-bit random fields (:func:`dropout_keep`), and the module :class:`Dropout`.

``jax.random.bernoulli`` draws a 32-bit word per element, and asking ``jax.random.bits`` for ``uint16`` or
``uint8`` does not help: under ``rbg`` XLA's RngBitGenerator and under (partitionable) threefry JAX still
generate one 32-bit word per element and truncate it. :func:`dropout_keep` instead draws one 32-bit word
per 2 (16-bit) or 4 (8-bit) elements and cuts each word into its 16- or 8-bit fields, so the bit generator
(the largest elementwise cost of attention dropout on CPU) does a half or a quarter of the work.

The rate is quantised to the field: an element is dropped when its field is below ``round(rate * 2**n)``,
so the realised rate is ``round(rate * 2**n) / 2**n``. 8-bit fields are used when ``rate * 256`` is an
integer (e.g. 0.25, 0.5: exact); otherwise 16-bit fields, whose quantisation error is at most
``2**-17`` (0.1 becomes 6554 / 65536 = 0.100006). Rates below ``2**-17`` keep everything.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def keep_bits(rate: float) -> int:
  """The field width :func:`dropout_keep` draws per element for ``rate``: 8 when ``rate * 256`` is an
  integer, else 16."""
  return 8 if float(rate * 256).is_integer() else 16


def dropout_keep(rng: jax.Array, rate: float, shape) -> jax.Array:
  """Bool keep mask of ``shape``: True with probability ``1 - rate`` (rate quantised to ``2**-bits``,
  :func:`keep_bits`: exact when ``rate * 2**bits`` is an integer), a deterministic function of ``rng``,
  ``rate`` and ``shape``.

  One 32-bit word is drawn per 2 (16-bit) or 4 (8-bit) elements: along the first axis whose size the
  number of fields divides (else the largest axis, rounded up and cut back), field ``i`` of the words fills
  the ``i``-th block of that axis.
  """
  shape = tuple(int(s) for s in shape)
  rate = float(rate)
  if rate <= 0.0:
    return jnp.ones(shape, bool)
  if rate >= 1.0:
    return jnp.zeros(shape, bool)
  bits = keep_bits(rate)
  threshold = round(rate * (1 << bits))
  if threshold == 0:
    return jnp.ones(shape, bool)
  n = 32 // bits
  full = shape or (1,)
  if math.prod(full) == 0:
    return jnp.ones(shape, bool)
  axis = next((i for i, s in enumerate(full) if s % n == 0), max(range(len(full)), key=lambda i: full[i]))
  size = full[axis]
  part = -(-size // n)
  words = jax.random.bits(rng, full[:axis] + (part,) + full[axis + 1:], jnp.uint32)
  field = (1 << bits) - 1
  fields = [(words >> (bits * i)) & field if i < n - 1 else words >> (bits * i) for i in range(n)]
  keep = jnp.concatenate([f >= threshold for f in fields], axis=axis)
  if n * part != size:
    keep = jax.lax.slice_in_dim(keep, 0, size, axis=axis)
  return keep.reshape(shape)


class Dropout(nn.Module):
  """``flax.linen.Dropout`` (inverted dropout, ``rng_collection`` "dropout") with masks from
  :func:`dropout_keep`: the rate is quantised to 8 or 16 bits (see that function)."""

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
