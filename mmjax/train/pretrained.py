"""Starting a run from pretrained parameters (``config.init``), grafted into a subtree of the new model's
parameters.

``init.format`` names the source: ``"mmjax"`` (the latest checkpoint of the mmjax run in ``init.path``) or
a weight loader registered in :mod:`mmjax.models.registry` (e.g. ``"hf_gpt2"``, ``"mult_torch"``: foreign
weights in ``init.path``); ``""`` starts from scratch. ``init.source`` cuts a subtree of those parameters,
``init.target`` is where it goes. The engine names no model: loaders are looked up by name.

Frozen (Tsimpoukelli et al., 2021) is the reason: its language model comes pretrained (a Hugging Face GPT-2,
or a small LM trained by mmjax) and stays frozen (``optimizer.frozen``) while the vision encoder learns.
Grafting happens once, on a fresh start; a resumed run restores its own checkpoint. Every leaf of the
target subtree must be provided with its exact shape (a clear error names the first path that differs);
the optimizer state is rebuilt for the grafted parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import models, pytree
from mmjax.errors import ConfigError
from mmjax.train.checkpoint import CheckpointError

RUN_FORMAT = "mmjax"  # init.format of another mmjax run's checkpoint


def _split(path: str) -> list[str]:
  return [p for p in path.split("/") if p]


def subtree(params, path: str, what: str):
  """``params[a][b]...`` for ``path = "a/b"`` ("" = all); a clear error naming the missing key."""
  node = params
  for i, key in enumerate(_split(path)):
    if not isinstance(node, dict) or key not in node:
      have = sorted(node) if isinstance(node, dict) else type(node).__name__
      raise CheckpointError(f"{what} has no parameters at {'/'.join(_split(path)[:i + 1])!r}; "
                            f"there it has {have}")
    node = node[key]
  return node


def graft(params, pretrained, target: str = ""):
  """A copy of ``params`` with the subtree at ``target`` replaced by ``pretrained``, whose leaves must
  match the subtree's paths and shapes exactly (they take ``params``' dtypes). Works inside ``jit``."""
  current = subtree(params, target, "the model")
  have, want = pytree.flatten(pretrained), pytree.flatten(current)
  missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
  if missing or unexpected:
    raise CheckpointError(f"pretrained parameters do not fit the model at {target or 'the root'!r}: "
                          f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                          f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
  for k, leaf in want.items():
    if tuple(np.shape(have[k])) != tuple(leaf.shape):
      raise CheckpointError(f"pretrained parameter {target + '/' if target else ''}{k} has shape "
                            f"{tuple(np.shape(have[k]))}; the model needs {tuple(leaf.shape)}")

  replaced = jax.tree_util.tree_map(lambda new, old: jnp.asarray(new, dtype=old.dtype),
                                    _match(pretrained, current), current)
  keys = _split(target)
  if not keys:
    return replaced

  def rebuild(node, depth):
    out = dict(node)
    out[keys[depth]] = replaced if depth == len(keys) - 1 else rebuild(node[keys[depth]], depth + 1)
    return out

  return rebuild(params, 0)


def _match(pretrained, like):
  """``pretrained`` re-nested with ``like``'s tree structure (plain dicts; same paths)."""
  flat = pytree.flatten(pretrained)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  return jax.tree_util.tree_unflatten(treedef, [flat[pytree.path_str(path)] for path, _ in leaves])


def load_pretrained(init_cfg, model=None, *, load_run=None):
  """The parameter tree ``config.init`` names (host numpy), cut to ``init.source``; None when
  ``init.format`` is empty. ``model`` (the model being initialised) is passed to the loader;
  ``load_run(path) -> params`` reads another mmjax run (``mmjax.train.run`` passes it: restoring a run is
  its business)."""
  fmt, path = init_cfg.format, init_cfg.path
  if not fmt:
    return None
  if not path:
    raise ConfigError(f"config.init.format is {fmt!r} but init.path is empty: set the run directory or the "
                      "weights file to load")
  if fmt == RUN_FORMAT:
    params, what = load_run(path), f"the run in {path!r}"
  else:
    try:
      load = models.loader(fmt)
    except KeyError as e:
      raise ConfigError(f"config.init.format: {e.args[0]} Or {RUN_FORMAT!r} for an mmjax run.") from None
    params, what = jax.device_get(load(path, model)), f"the {fmt} weights in {path!r}"
  if isinstance(params, dict) and set(params) == {"params"}:
    params = params["params"]
  return subtree(params, init_cfg.source, what)
