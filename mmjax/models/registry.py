"""Model registry: the only place that maps a config's ``model.name`` to a module class."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from typing import Any

_MODELS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
  """Class decorator adding a model under ``name``."""

  def wrap(cls: type) -> type:
    if name in _MODELS and _MODELS[name] is not cls:
      raise ValueError(f"model name {name!r} is already registered to {_MODELS[name].__name__}")
    _MODELS[name] = cls
    return cls

  return wrap


def names() -> list[str]:
  """Sorted names of every registered model."""
  return sorted(_MODELS)


def get(name: str) -> type:
  """The model class registered as ``name``; a clear ``KeyError`` otherwise."""
  if name not in _MODELS:
    near = difflib.get_close_matches(name, _MODELS, n=3)
    hint = f" Did you mean {near}?" if near else ""
    raise KeyError(f"unknown model {name!r}; registered models: {names()}.{hint}")
  return _MODELS[name]


def fields(name: str) -> dict[str, Any]:
  """Constructor fields (name -> default) of a registered model, for config validation."""
  cls = get(name)
  skip = {"parent", "name"}
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in skip or not f.init:
      continue
    out[f.name] = f.default if f.default is not dataclasses.MISSING else None
  return out


def build(name: str, kwargs: dict[str, Any]):
  """Instantiates model ``name`` with ``kwargs``; unknown keyword arguments are a clear error."""
  cls = get(name)
  allowed = fields(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
        f"model {name!r} has no field(s) {unknown}; its fields are {sorted(allowed)}"
    )
  return cls(**kwargs)
