"""The training state: one pytree holding everything a run needs to resume bit-exactly, and the PRNG
implementations its key may use (``config.prng_impl``)."""

from __future__ import annotations

from typing import Any

import flax
import jax

# config.prng_impl -> JAX's name of the implementation (``jax.random.key(seed, impl=...)``). threefry is
# JAX's default (the same bits on every backend and sharding); rbg / unsafe_rbg draw their random bits with
# XLA's RngBitGenerator, cheaper where dropout masks are large (see benchmarks/README.md). unsafe_rbg also
# splits and folds keys with it (faster, fewer statistical guarantees). Both rbg kinds are deterministic on
# one backend, but their bits differ between CPU, GPU and TPU.
PRNG_IMPLS = {"threefry": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}
# The default of config.prng_impl and of the engine's functions: rbg's dropout masks are cheaper (MulT at the
# original MOSEI shapes: 10% less CPU time per step, benchmarks/README.md), it keys and folds like threefry,
# and runs stay deterministic and resume bit-exactly (tests/test_prng.py).
DEFAULT_PRNG_IMPL = "rbg"


def make_key(seed: int, prng_impl: str) -> jax.Array:
  """A typed PRNG key of ``prng_impl`` (a key of :data:`PRNG_IMPLS`)."""
  return jax.random.key(seed, impl=PRNG_IMPLS[prng_impl])


def wrap_key(data: jax.Array, prng_impl: str) -> jax.Array:
  """The typed key whose raw data (``TrainState.rng``) is ``data``."""
  return jax.random.wrap_key_data(data, impl=PRNG_IMPLS[prng_impl])


@flax.struct.dataclass
class TrainState:
  """``step`` (int32 scalar: optimizer updates so far), model ``params``, optimizer state, the base PRNG key
  as raw ``uint32`` data (``[2]`` for threefry, ``[4]`` for rbg and unsafe_rbg: plain arrays checkpoint
  like any other leaf; :func:`wrap_key` turns them back into a key of the run's ``prng_impl``; each step
  folds in the step number, so resuming replays the same randomness), ``ema_params`` (the parameters'
  exponential moving average, None without ``optimizer.ema_decay``) and ``plateau`` (the
  ReduceLROnPlateau state, None without ``optimizer.plateau``)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  plateau: Any = None
