"""A name -> object registry, the one mechanism behind models, weight loaders and evaluators: what the
config names is looked up here, so the engine never imports a model or an evaluator module by name."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any


class Registry:
  """Objects of one ``kind`` (e.g. "model") by name. :meth:`register` is a decorator; :meth:`get` raises
  ``error`` (an exception class) naming the unknown name, the closest known ones and every known name."""

  def __init__(self, kind: str, error: type[Exception] = KeyError):
    self.kind = kind
    self.error = error
    self._items: dict[str, Any] = {}

  def register(self, name: str) -> Callable[[Any], Any]:
    """Decorator adding its argument under ``name`` (registering another object under a taken name is an
    error; registering the same one again is not)."""

    def wrap(obj):
      if name in self._items and self._items[name] is not obj:
        raise ValueError(f"{self.kind} name {name!r} is already registered to "
                         f"{getattr(self._items[name], '__qualname__', self._items[name])}")
      self._items[name] = obj
      return obj

    return wrap

  def names(self) -> list[str]:
    """Sorted names of everything registered."""
    return sorted(self._items)

  def get(self, name: str):
    """The object registered as ``name``."""
    if name not in self._items:
      near = difflib.get_close_matches(name, list(self._items), n=3)
      hint = f" Did you mean {', '.join(near)}?" if near else ""
      raise self.error(f"unknown {self.kind} {name!r}.{hint} Registered {self.kind}s: "
                       f"{', '.join(self.names())}.")
    return self._items[name]

  def __contains__(self, name: str) -> bool:
    return name in self._items
