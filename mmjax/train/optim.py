"""optax optimizers from a config: learning-rate schedules, clipping, weight-decay masks, freezing,
gradient accumulation."""

from __future__ import annotations

import re

import jax
import optax

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
  """The schedule named ``cfg.schedule`` with peak ``cfg.lr`` and ``cfg.warmup_steps`` of linear warm-up."""
  lr, warmup = float(cfg.lr), int(cfg.warmup_steps)
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {cfg.schedule!r}; available: {SCHEDULES}")
  if cfg.schedule == "constant":
    decay = optax.constant_schedule(lr)
  elif cfg.schedule in ("cosine", "warmup_cosine"):
    decay = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  else:
    decay = optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def param_paths(params) -> list[str]:
  """``"a/b/c"`` path strings of every leaf, in tree order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in flat]


def path_mask(params, pattern: str):
  """Tree of bools: True where the leaf's path fully matches the regex ``pattern``."""
  rx = re.compile(pattern)
  flat, treedef = jax.tree_util.tree_flatten(params)
  return jax.tree_util.tree_unflatten(treedef, [bool(rx.fullmatch(p)) for p in param_paths(params)])


def decay_mask(params):
  """Weight decay applies to matrices and embeddings (ndim >= 2), not to biases or LayerNorm scales."""
  return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """Builds the optimizer described by the ``optimizer`` section of a config.

  Fields: ``name`` (adamw | adam | sgd), ``lr``, ``schedule``, ``warmup_steps``, ``b1``, ``b2``, ``eps``,
  ``momentum`` (sgd), ``weight_decay`` (adamw; masked to ndim >= 2 leaves), ``clip_norm`` (global-norm
  clipping; 0 = off), ``frozen`` (regex over parameter paths such as ``"image_encoder/.*"``; matching
  parameters receive zero updates), ``grad_accum_steps`` (> 1 averages gradients over that many steps).
  """
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {cfg.name!r}; available: {OPTIMIZERS}")
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
    pattern = cfg.frozen
    tx = optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()},
        lambda params: jax.tree_util.tree_map(
            lambda frozen: "frozen" if frozen else "train", path_mask(params, pattern)
        ),
    )
  if cfg.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=cfg.grad_accum_steps)
  return tx
