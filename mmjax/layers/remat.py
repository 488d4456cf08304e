"""Rematerialisation (gradient checkpointing) of transformer blocks, chosen by name.

``"none"`` keeps every activation of the forward pass for the backward pass; ``"full"`` keeps only each
block's inputs and recomputes the rest (``jax.checkpoint`` with no policy); any other name is a policy of
``jax.checkpoint_policies`` (:data:`POLICIES`, e.g. ``"dots_saveable"``: keep matmul outputs, recompute
the elementwise work). Blocks are wrapped with ``nn.remat``, which leaves parameter names unchanged, so a
checkpoint trained with one setting loads with any other.
"""

from __future__ import annotations

import inspect

import flax.linen as nn
import jax

from mmjax.errors import ConfigError


def _is_policy(fn) -> bool:
  """A ready policy ``(prim, *args, **params) -> bool``, not a factory that builds one from names."""
  try:
    params = list(inspect.signature(fn).parameters.values())
  except (TypeError, ValueError):
    return False
  named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  return any(p.kind == p.VAR_KEYWORD for p in params) and [p.name for p in named] in ([], ["prim"])


POLICIES = tuple(sorted(n for n in dir(jax.checkpoint_policies)
                        if not n.startswith("_") and _is_policy(getattr(jax.checkpoint_policies, n))))
MODES = ("none", "full", *POLICIES)


def remat(module_cls: type[nn.Module], mode: str, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """``module_cls`` itself for ``"none"``, else ``nn.remat(module_cls)`` with the policy ``mode`` names.

  ``static_argnums`` index ``__call__``'s positional arguments counting ``self`` as 0 (flax's convention);
  Python values that steer tracing (``train``, ``causal``) must be static.
  """
  if mode == "none":
    return module_cls
  if mode not in MODES:
    raise ConfigError(f"unknown remat {mode!r}; valid: {', '.join(MODES)}")
  policy = None if mode == "full" else getattr(jax.checkpoint_policies, mode)
  return nn.remat(module_cls, policy=policy, static_argnums=static_argnums)
