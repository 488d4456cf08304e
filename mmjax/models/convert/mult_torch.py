"""Import of original PyTorch MulT weights (Tsai et al., ACL 2019; yaohungt/Multimodal-Transformer) into
:class:`mmjax.models.mult.MulT`.

:func:`kwargs_from_original_hparams` turns the original ``hyp_params`` into MulT keyword arguments;
:func:`from_torch_state_dict` maps an original ``state_dict`` onto MulT's parameter tree: every name
exactly once (``in_proj_weight`` rows ``[0:d] | [d:2d] | [2d:3d]`` become the ``q | k | v`` kernels,
Linear weights ``[out, in]`` are transposed, Conv1d weights ``[out, in, k]`` become ``[k, in, out]``, and the
layers of each transformer are stacked ``[layers, ...]`` for ``nn.scan``); buffers are ignored and
missing, unexpected or mis-shaped tensors raise one ``ValueError`` naming them all. The loader
``mult_torch`` (``config.init.format = "mult_torch"``) reads such a state dict from a ``.pt`` file (with
``torch.load(..., weights_only=True)``, which runs no pickled code) or from an ``.npz`` of numpy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.errors import UserError
from mmjax.models.mult import _CANONICAL, _LETTERS, MulT
from mmjax.models.registry import register_loader


class MultImportError(UserError, ValueError):
  """Original MulT weights that cannot be imported (missing, unreadable, or not matching the model)."""


def kwargs_from_original_hparams(hp: Mapping) -> dict[str, Any]:
  """MulT keyword arguments from the original ``hyp_params`` (as a dict, e.g. the golden ``hparams``)."""
  flags = [bool(hp.get(f"{x}only", False)) for x in _LETTERS]
  targets = tuple(c for c, f in zip(_CANONICAL, flags, strict=True) if f)
  if len(targets) in (0, 3):
    targets = _CANONICAL
  keys = ("num_heads", "attn_dropout", "attn_dropout_a", "attn_dropout_v", "relu_dropout", "res_dropout",
          "embed_dropout", "out_dropout", "attn_mask", "output_dim")
  out = {k: hp[k] for k in keys if k in hp}
  if "layers" in hp:
    out["num_layers"] = int(hp["layers"])
  out["width"] = int(hp.get("d_model", 30))
  out["target_modalities"] = targets
  return out


_BUFFER_SUFFIXES = (".version", ".embed_positions._float_tensor")


def _transformers(model: MulT):
  """``(original name, width, layers)`` of every transformer the model holds."""
  d, out = model.width, []
  for t in model.target_letters():
    out += [(f"trans_{t}_with_{s}", d, model.num_layers) for s in _LETTERS if s != t]
    out.append((f"trans_{t}_mem", 2 * d, max(model.num_layers, 3)))
  return out


def torch_param_shapes(model: MulT) -> dict[str, tuple]:
  """Name -> shape of every original (non-buffer) parameter; ``None`` = any size (input widths)."""
  d = model.width
  shapes = {f"proj_{x}.weight": (d, None, k) for x, k in zip(_LETTERS, model.kernel_sizes, strict=True)}
  for name, w, n in _transformers(model):
    for i in range(n):
      p = f"{name}.layers.{i}"
      shapes.update({
          f"{p}.self_attn.in_proj_weight": (3 * w, w), f"{p}.self_attn.in_proj_bias": (3 * w,),
          f"{p}.self_attn.out_proj.weight": (w, w), f"{p}.self_attn.out_proj.bias": (w,),
          f"{p}.fc1.weight": (4 * w, w), f"{p}.fc1.bias": (4 * w,),
          f"{p}.fc2.weight": (w, 4 * w), f"{p}.fc2.bias": (w,),
      })
      for j in (0, 1):
        shapes.update({f"{p}.layer_norms.{j}.weight": (w,), f"{p}.layer_norms.{j}.bias": (w,)})
    shapes.update({f"{name}.layer_norm.weight": (w,), f"{name}.layer_norm.bias": (w,)})
  c = 2 * d * len(model.target_letters())
  for p in ("proj1", "proj2"):
    shapes.update({f"{p}.weight": (c, c), f"{p}.bias": (c,)})
  shapes.update({"out_layer.weight": (model.output_dim, c), "out_layer.bias": (model.output_dim,)})
  return shapes


def _to_numpy(t) -> np.ndarray:
  if hasattr(t, "detach"):  # a torch tensor; torch itself is never imported here
    t = t.detach().cpu().numpy()
  return np.asarray(t, np.float32)


def from_torch_state_dict(state_dict: Mapping[str, Any], config_or_model) -> dict:
  """Flax ``params`` (use as ``{"params": params}``) from an original PyTorch MulT ``state_dict``.

  ``config_or_model`` is a :class:`MulT` or its keyword arguments. Buffers (``*.version``,
  ``*.embed_positions._float_tensor``) are ignored; every other name is mapped exactly once. Unexpected
  names, missing names and shape mismatches raise one ``ValueError`` listing them all.
  """
  model = config_or_model if isinstance(config_or_model, MulT) else MulT(**dict(config_or_model))
  arrays = {k: _to_numpy(v) for k, v in state_dict.items() if not k.endswith(_BUFFER_SUFFIXES)}
  expected = torch_param_shapes(model)
  problems = []
  unexpected = sorted(set(arrays) - set(expected))
  missing = sorted(set(expected) - set(arrays))
  if unexpected:
    problems.append(f"unexpected names {unexpected}")
  if missing:
    problems.append(f"missing names {missing}")
  for name in sorted(set(arrays) & set(expected)):
    want, got = expected[name], arrays[name].shape
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=False)):
      shown = tuple("F" if w is None else w for w in want)
      problems.append(f"shape mismatch for {name}: expected {shown}, found {got}")
  if problems:
    raise MultImportError(
        f"the state dict does not match this MulT config (width={model.width}, num_layers="
        f"{model.num_layers}, targets={model.target_modalities}, kernel_sizes={model.kernel_sizes}, "
        f"output_dim={model.output_dim}): " + "; ".join(problems))

  linear = lambda n: {"kernel": arrays[f"{n}.weight"].T, "bias": arrays[f"{n}.bias"]}
  norm = lambda n: {"scale": arrays[f"{n}.weight"], "bias": arrays[f"{n}.bias"]}
  params: dict[str, Any] = {}
  for x in _LETTERS:
    params[f"proj_{x}"] = {"kernel": arrays[f"proj_{x}.weight"].transpose(2, 1, 0)}  # [k, in, out]
  for name, w, n in _transformers(model):
    per_layer = []
    for i in range(n):
      p = f"{name}.layers.{i}"
      wqkv, bqkv = arrays[f"{p}.self_attn.in_proj_weight"], arrays[f"{p}.self_attn.in_proj_bias"]
      attn = {  # in_proj rows [0:w] = q, [w:2w] = k, [2w:3w] = v
          f"{c}_proj": {"kernel": wqkv[j * w:(j + 1) * w].T, "bias": bqkv[j * w:(j + 1) * w]}
          for j, c in enumerate("qkv")
      }
      attn["out_proj"] = linear(f"{p}.self_attn.out_proj")
      per_layer.append({
          "ln0": norm(f"{p}.layer_norms.0"), "ln1": norm(f"{p}.layer_norms.1"), "self_attn": attn,
          "fc1": linear(f"{p}.fc1"), "fc2": linear(f"{p}.fc2"),
      })
    params[name] = {
        "layers": jax.tree_util.tree_map(lambda *a: np.stack(a), *per_layer),  # [layers, ...] for nn.scan
        "layer_norm": norm(f"{name}.layer_norm"),
    }
  for n in ("proj1", "proj2", "out_layer"):
    params[n] = linear(n)
  return jax.tree_util.tree_map(lambda a: jnp.asarray(np.ascontiguousarray(a)), params)


@register_loader("mult_torch")
def load_params(path: str | os.PathLike, model: MulT) -> dict:
  """The loader ``mult_torch``: MulT parameters (shaped by ``model``, the MulT being initialised) from an
  original state dict saved as ``.pt`` (``torch.save(model.state_dict(), path)``; read with
  ``weights_only=True``, needs ``pip install -e ".[torch]"``) or as an ``.npz`` of numpy arrays keyed by the
  original names (no torch needed)."""
  path = Path(path).expanduser()
  if not isinstance(model, MulT):
    raise MultImportError(f"the mult_torch loader builds MulT parameters, but the model being initialised is "
                     f"{type(model).__name__}")
  if not path.is_file():
    raise MultImportError(f"MulT weights {str(path)!r} do not exist (a .pt state dict or an .npz)")
  if path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as z:
      state_dict = {k: z[k] for k in z.files}
  else:
    try:
      import torch
    except ImportError as e:
      raise MultImportError(f"reading {path} needs PyTorch (pip install -e \".[torch]\"), or save the state "
                            "dict as an .npz of numpy arrays") from e
    try:
      state_dict = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - reported with the file
      raise MultImportError(f"could not read {path} as a PyTorch state dict with weights_only=True ({e}); a "
                            "whole pickled model is refused: save model.state_dict() instead") from None
    if not isinstance(state_dict, Mapping):
      raise MultImportError(f"{path} holds a {type(state_dict).__name__}, not a state dict (name -> tensor)")
  return from_torch_state_dict(state_dict, model)
