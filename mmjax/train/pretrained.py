"""Starting a run from pretrained parameters (``config.init``): another run's checkpoint or a Hugging Face
GPT-2 directory, grafted into a subtree of the new model's parameters.

Frozen (Tsimpoukelli et al., 2021) is the reason: its language model comes pretrained (``init.hf_gpt2``, or
``init.workdir`` of a small LM trained by mmjax) and stays frozen (``optimizer.frozen``) while the vision
encoder learns. Grafting happens once, on a fresh start; a resumed run restores its own checkpoint. Every
leaf of the target subtree must be provided with its exact shape (a clear error names the first path that
differs); the optimizer state is rebuilt for the grafted parameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.train.checkpoint import CheckpointError


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


def _flat(tree) -> dict:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf for path, leaf in flat}


def graft(params, pretrained, target: str = ""):
  """A copy of ``params`` with the subtree at ``target`` replaced by ``pretrained``, whose leaves must
  match the subtree's paths and shapes exactly (they take ``params``' dtypes). Works inside ``jit``."""
  current = subtree(params, target, "the model")
  have, want = _flat(pretrained), _flat(current)
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
  flat = _flat(pretrained)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  return jax.tree_util.tree_unflatten(
      treedef, [flat["/".join(str(getattr(k, "key", k)) for k in path)] for path, _ in leaves])


def load_run_params(workdir, step: int | None = None):
  """Parameters (host numpy) of the checkpoint at ``step`` (default: latest) of the mmjax run in ``workdir``,
  whose ``config.json`` says how to build it."""
  from mmjax.train.run import restore_run  # the run imports this module

  _, state = restore_run(workdir, step, devices=jax.local_devices()[:1])
  return jax.device_get(state.params)


def load_pretrained(init_cfg):
  """The parameter tree ``config.init`` names (host numpy), cut to ``init.source``; None when it names
  none."""
  if init_cfg.workdir and init_cfg.hf_gpt2:
    raise ValueError("config.init: set workdir or hf_gpt2, not both")
  if init_cfg.workdir:
    params = load_run_params(init_cfg.workdir)
    return subtree(params, init_cfg.source, f"the run in {init_cfg.workdir!r}")
  if init_cfg.hf_gpt2:
    from mmjax.models.gpt2 import load_hf_gpt2

    _, params = load_hf_gpt2(init_cfg.hf_gpt2)
    params = params.get("params", params)
    return subtree(jax.device_get(params), init_cfg.source, f"the GPT-2 checkpoint in {init_cfg.hf_gpt2!r}")
  return None
