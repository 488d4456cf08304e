"""optax optimizers from a config: learning-rate schedules, clipping, weight-decay masks, freezing, the
ReduceLROnPlateau scale and the parameter EMA.

:func:`make_optimizer` returns an :class:`Optimizer`: the optax update rule plus the pieces the train step
and the loop use beside it. Gradient accumulation is not an optax wrapper here: the train step scans over
micro-batches and applies one update (``mmjax.train.step``), so every schedule counts updates.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import optax
from optax import contrib

from mmjax import pytree
from mmjax.errors import ConfigError

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")
PLATEAU_MODES = ("min", "max")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """The schedule named ``cfg.schedule`` with peak ``cfg.lr`` and ``cfg.warmup_steps`` of linear warm-up,
  over ``total_steps`` optimizer updates."""
  lr, warmup = float(cfg.lr), int(cfg.warmup_steps)
  if cfg.schedule not in SCHEDULES:
    raise ConfigError(f"unknown optimizer.schedule {cfg.schedule!r}; available: "
                               f"{', '.join(SCHEDULES)}")
  if cfg.schedule == "constant":
    decay = optax.constant_schedule(lr)
  elif cfg.schedule in ("cosine", "warmup_cosine"):
    decay = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  else:
    decay = optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def path_mask(params, pattern: str):
  """Tree of bools: True where the leaf's path (:func:`mmjax.pytree.path_str`) fully matches ``pattern``."""
  rx = re.compile(pattern)
  flat, treedef = jax.tree_util.tree_flatten(params)
  return jax.tree_util.tree_unflatten(treedef, [bool(rx.fullmatch(p)) for p in pytree.paths(params)])


def decay_mask(params):
  """Weight decay applies to matrices and embeddings (ndim >= 2), not to biases or LayerNorm scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """What the engine needs to optimise: ``tx`` (the optax update rule), ``schedule`` (learning rate per
  update, before the plateau scale), ``plateau`` (``optax.contrib.reduce_on_plateau``, or None) and the
  metric it watches, and ``ema_decay`` (0 = no parameter EMA)."""

  tx: optax.GradientTransformation
  schedule: optax.Schedule
  plateau: optax.GradientTransformationExtraArgs | None = None
  plateau_metric: str = ""
  plateau_mode: str = "min"
  ema_decay: float = 0.0

  def plateau_init(self):
    """The plateau state (scale 1), or None without a plateau schedule."""
    return None if self.plateau is None else self.plateau.init(jnp.zeros((), jnp.float32))

  def plateau_update(self, state, value):
    """The plateau state after one evaluation of the watched metric ``value`` (a scalar): the scale drops
    by ``factor`` after ``patience`` evaluations without improvement (``optax.contrib.reduce_on_plateau``,
    which minimises; a ``max`` metric is negated)."""
    value = jnp.asarray(value, jnp.float32)
    value = -value if self.plateau_mode == "max" else value
    return self.plateau.update(jnp.zeros((), jnp.float32), state, value=value)[1]


def make_optimizer(cfg, total_steps: int) -> Optimizer:
  """Builds the optimizer described by the ``optimizer`` section of a config.

  Fields: ``name`` (adamw | adam | sgd), ``lr``, ``schedule``, ``warmup_steps``, ``b1``, ``b2``, ``eps``,
  ``momentum`` (sgd), ``weight_decay`` (adamw; masked to ndim >= 2 leaves), ``clip_norm`` (global-norm
  clipping; 0 = off), ``frozen`` (regex over parameter paths such as ``"image_encoder/.*"``; matching
  parameters receive zero updates), ``plateau.*`` (ReduceLROnPlateau on an evaluated metric: ``factor``
  (0 = off), ``patience`` (evaluations), ``metric``, ``mode``, ``rtol``, ``cooldown``, ``min_scale``),
  ``ema_decay`` (0 = off). ``grad_accum_steps`` is read by the train step, not here.
  """
  if cfg.name not in OPTIMIZERS:
    raise ConfigError(f"unknown optimizer.name {cfg.name!r}; available: {', '.join(OPTIMIZERS)}")
  schedule = learning_rate_schedule(cfg, total_steps)
  if cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=decay_mask)
  elif cfg.name == "adam":
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:
    opt = optax.sgd(schedule, momentum=cfg.momentum or None)
  chain = []
  if cfg.clip_norm and cfg.clip_norm > 0:
    chain.append(optax.clip_by_global_norm(cfg.clip_norm))
  chain.append(opt)
  tx = optax.chain(*chain)
  if cfg.frozen:
    try:
      re.compile(cfg.frozen)
    except re.error as e:
      raise ConfigError(f"optimizer.frozen {cfg.frozen!r} is not a valid regular expression ({e})"
                                 ) from None
    pattern = cfg.frozen
    tx = optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()},
        lambda params: jax.tree_util.tree_map(
            lambda frozen: "frozen" if frozen else "train", path_mask(params, pattern)
        ),
    )
  plateau, pcfg = None, cfg.plateau
  if pcfg.factor:
    if not 0.0 < pcfg.factor < 1.0:
      raise ConfigError(f"optimizer.plateau.factor must be in (0, 1) (or 0 = off); got {pcfg.factor}")
    if pcfg.mode not in PLATEAU_MODES:
      raise ConfigError(f"optimizer.plateau.mode must be one of {PLATEAU_MODES}; got {pcfg.mode!r}")
    if pcfg.patience < 1:
      raise ConfigError(f"optimizer.plateau.patience must be >= 1 evaluation; got {pcfg.patience}")
    if "/" not in pcfg.metric:
      raise ConfigError(f"optimizer.plateau.metric must be EVALUATOR/METRIC, e.g. 'validation/loss'; "
                                 f"got {pcfg.metric!r}")
    plateau = contrib.reduce_on_plateau(factor=pcfg.factor, patience=pcfg.patience, rtol=pcfg.rtol,
                                        cooldown=pcfg.cooldown, min_scale=pcfg.min_scale)
  if not 0.0 <= cfg.ema_decay < 1.0:
    raise ConfigError(f"optimizer.ema_decay must be in [0, 1) (0 = off); got {cfg.ema_decay}")
  return Optimizer(tx=tx, schedule=schedule, plateau=plateau, plateau_metric=pcfg.metric,
                   plateau_mode=pcfg.mode, ema_decay=float(cfg.ema_decay))
