"""The evaluator registry and what an evaluation returns (see :mod:`mmjax.evaluators`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from mmjax.errors import ConfigError
from mmjax.registry import Registry

_EVALUATORS = Registry("evaluator", ConfigError)
register = _EVALUATORS.register
names = _EVALUATORS.names
get = _EVALUATORS.get


@dataclasses.dataclass
class Result:
  """What one evaluation produced: scalar ``metrics``, ``images`` for TensorBoard (``[H, W]`` or
  ``[H, W, 3]`` uint8, by name) and the ``files`` it wrote."""

  metrics: dict[str, float]
  images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  files: list[Path] = dataclasses.field(default_factory=list)


def specs(config) -> dict[str, dict[str, Any]]:
  """KEY -> ``{"name", "every", "kwargs"}`` of every evaluator a run uses: ``config.evaluators``, plus the
  task's metrics (``split_metrics``) on ``data.eval_split`` every ``eval_every`` steps and on
  ``data.test_split`` at the end, keyed by those split names unless ``config.evaluators`` sets the key."""
  out: dict[str, dict[str, Any]] = {}
  for split, every in ((config.data.eval_split, config.eval_every), (config.data.test_split, 0)):
    if split and split not in out:
      out[split] = {"name": "split_metrics", "every": every, "kwargs": {"split": split}}
  for key, spec in config.evaluators.items():
    spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    out[key] = {"name": spec.get("name", ""), "every": int(spec.get("every", 0)),
                "kwargs": dict(spec.get("kwargs", {}))}
  return out


def build(run) -> dict[str, tuple[int, Any]]:
  """KEY -> ``(every, evaluator)`` for ``run`` (see :func:`specs`)."""
  built = {}
  for key, spec in specs(run.config).items():
    cls = get(spec["name"])
    try:
      built[key] = (spec["every"], cls(run, **spec["kwargs"]))
    except TypeError as e:
      raise ConfigError(f"evaluators.{key} ({spec['name']}) cannot take kwargs {sorted(spec['kwargs'])}: "
                        f"{e}. See `mmjax.evaluators.{spec['name']}` for its arguments.") from None
  return built
