"""Parameter paths: the one way mmjax turns a pytree path into a string (``"encoder/layer_0/kernel"``).

Used wherever a path is shown to a user or matched by a pattern: freezing regexes
(``optimizer.frozen``), checkpoint shape checks, pretrained-weight grafting.
"""

from __future__ import annotations

import jax


def key_str(key) -> str:
  """One path entry as text: a dict key, a sequence index, or an attribute name."""
  for attr in ("key", "idx", "name"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path) -> str:
  """``"a/b/0/c"`` for a path from ``jax.tree_util.tree_flatten_with_path``."""
  return "/".join(key_str(k) for k in path)


def flatten(tree) -> dict:
  """``{path_str: leaf}`` of every leaf, in tree order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_str(p): leaf for p, leaf in flat}


def paths(tree) -> list[str]:
  """Path strings of every leaf, in tree order."""
  return list(flatten(tree))
