"""The training state: one pytree holding everything a run needs to resume bit-exactly."""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
  """``step`` (int32 scalar: optimizer updates so far), model ``params``, optimizer state, the base PRNG key
  (raw uint32 ``[2]``; each step folds in the step number, so resuming replays the same randomness),
  ``ema_params`` (the parameters' exponential moving average, None without ``optimizer.ema_decay``) and
  ``plateau`` (the ReduceLROnPlateau state, None without ``optimizer.plateau``)."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  ema_params: Any = None
  plateau: Any = None
