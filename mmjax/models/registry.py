"""Model registry: the only place that maps a config's ``model.name`` to a module class, and
``config.init.format`` to a loader of foreign weights (:mod:`mmjax.models.convert`).

Model fields whose default is a dataclass instance (e.g. ``lm: GPT2Config``) take, from a config, a
(partial) mapping of that dataclass's fields: :func:`build` turns it into ``dataclasses.replace(default,
**mapping)``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from typing import Any

from mmjax.registry import Registry


def _hint(name: str, known) -> str:
  near = difflib.get_close_matches(name, list(known), n=3)
  return f" Did you mean {near}?" if near else ""


_MODELS = Registry("model")
_LOADERS = Registry("weight loader")
register = _MODELS.register
names = _MODELS.names


def get(name: str) -> type:
  """The model class registered as ``name``; a ``KeyError`` naming the registered ones otherwise."""
  return _MODELS.get(name)


def fields(name: str) -> dict[str, Any]:
  """Constructor fields (name -> default) of a registered model, for config validation. A dataclass
  default (e.g. a ``GPT2Config``) is returned as is: :func:`nested_fields` lists its own fields."""
  cls = get(name)
  skip = {"parent", "name"}
  out = {}
  for f in dataclasses.fields(cls):
    if f.name in skip or not f.init:
      continue
    out[f.name] = f.default if f.default is not dataclasses.MISSING else None
  return out


def nested_fields(default: Any) -> dict[str, Any] | None:
  """The fields (name -> value) of ``default`` when it is a dataclass instance (a nested config such as
  ``GPT2Config``), else None."""
  if not dataclasses.is_dataclass(default) or isinstance(default, type):
    return None
  return {f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init}


def _as_mapping(value: Any) -> dict[str, Any] | None:
  """``value`` as a plain dict when it is a mapping (a dict, or a config section with ``keys()``)."""
  if isinstance(value, Mapping):
    return dict(value)
  if hasattr(value, "keys") and hasattr(value, "__getitem__") and not isinstance(value, (str, bytes)):
    return {k: value[k] for k in value.keys()}
  return None


def resolve_nested(default: Any, value: Any, where: str) -> Any:
  """The value of a field whose default is the dataclass instance ``default``: ``value`` itself when it
  is of that dataclass, ``dataclasses.replace(default, **value)`` when it is a (partial) mapping (nested
  dataclass fields resolved the same way). ``where`` names the field in errors."""
  if isinstance(value, type(default)):
    return value
  mapping = _as_mapping(value)
  kind = type(default).__name__
  if mapping is None:
    raise ValueError(f"{where} takes a {kind} or a mapping of its fields; got {value!r}")
  valid = nested_fields(default)
  unknown = sorted(set(mapping) - set(valid))
  if unknown:
    hint = _hint(unknown[0], valid)
    raise ValueError(f"{where} ({kind}) has no field(s) {unknown}.{hint} Its fields are {sorted(valid)}")
  changes = {}
  for key, item in mapping.items():
    inner = valid[key]
    changes[key] = resolve_nested(inner, item, f"{where}.{key}") if nested_fields(inner) is not None else item
  return dataclasses.replace(default, **changes)


def build(name: str, kwargs: Mapping[str, Any]):
  """Instantiates model ``name`` with ``kwargs``; unknown keyword arguments are a clear error. A mapping
  given for a field whose default is a dataclass instance updates that default (:func:`resolve_nested`)."""
  cls = get(name)
  allowed = fields(name)
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
        f"model {name!r} has no field(s) {unknown}; its fields are {sorted(allowed)}"
    )
  kwargs = {
      key: (resolve_nested(allowed[key], value, f"model {name!r} field {key!r}")
            if nested_fields(allowed[key]) is not None else value)
      for key, value in kwargs.items()
  }
  return cls(**kwargs)


def register_loader(name: str) -> Callable[[Callable], Callable]:
  """Function decorator adding a loader of foreign weights under ``name`` (a ``config.init.format``):
  ``fn(path, model) -> params tree``, where ``model`` is the model being initialised (a loader may read
  its fields for shapes, or ignore it)."""
  return _LOADERS.register(name)


def loader_names() -> list[str]:
  """Sorted names of every registered weight loader."""
  return _LOADERS.names()


def loader(name: str) -> Callable:
  """The weight loader registered as ``name``; a ``KeyError`` listing the known ones otherwise."""
  return _LOADERS.get(name)
