"""Import of Hugging Face GPT-2 checkpoints (Radford et al., 2019) into :class:`mmjax.models.gpt2.GPT2`.

A local directory as ``save_pretrained`` or a hub snapshot writes it: ``config.json`` (read by
:func:`config_from_hf` into a :class:`~mmjax.models.gpt2.GPT2Config`) and ``model.safetensors`` (or a
sharded ``model.safetensors.index.json``); nothing is downloaded. :func:`params_from_hf` maps the tensors
(``transformer.`` prefix optional, causal-mask buffers ignored, the tied ``lm_head`` checked) onto GPT2's
parameter tree: the Conv1D weights are ``[in, out]`` like a Dense kernel, and ``c_attn [D, 3D]`` /
``c_proj [D, D]`` are reshaped to ``[D, 3, H, Dh]`` / ``[H, Dh, D]``. :func:`load_hf_gpt2` does both;
the loader ``hf_gpt2`` (``config.init.format = "hf_gpt2"``) returns its parameters for grafting. Every
problem (a missing file, a config that is not GPT-2, missing, unexpected or mis-shaped tensors) raises one
:class:`HFCheckpointError` that names it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.errors import UserError
from mmjax.models.gpt2 import ACTIVATIONS, GPT2, GPT2Config
from mmjax.models.registry import register_loader


class HFCheckpointError(UserError, ValueError):
  """A Hugging Face GPT-2 directory or state dict that cannot be loaded; the message says what and why."""

def read_hf_config(path: Path, model_name: str, example: str, error: type = None) -> tuple[Path, dict]:
  """``(path/config.json, its JSON object)`` of a Hugging Face checkpoint directory; ``error`` (default
  :class:`HFCheckpointError`) when the directory or its config.json is missing or not a JSON object. The
  messages name ``model_name`` and a hub snapshot to download (``example``)."""
  error = error or HFCheckpointError
  if not path.exists():
    raise error(f"{model_name} checkpoint directory {path} does not exist (download it yourself, e.g. a "
                f"Hugging Face '{example}' snapshot, and pass its local path)")
  if not path.is_dir():
    raise error(f"{path} is not a directory; pass the folder holding config.json and model.safetensors")
  config_file = path / "config.json"
  if not config_file.is_file():
    raise error(f"{path} has no config.json (a Hugging Face {model_name} directory holds config.json and "
                "model.safetensors)")
  try:
    config = json.loads(config_file.read_text())
  except ValueError as e:
    raise error(f"{config_file} is not valid JSON: {e}") from None
  if not isinstance(config, dict):
    raise error(f"{config_file} does not hold a JSON object")
  return config_file, config



_BUFFERS = ("attn.bias", "attn.masked_bias")  # causal-mask buffers of older checkpoints, not parameters
_UNSUPPORTED_TRUE = ("scale_attn_by_inverse_layer_idx", "add_cross_attention")


def config_from_hf(config: Mapping[str, Any], *, source: str = "config.json") -> GPT2Config:
  """The :class:`GPT2Config` of a Hugging Face GPT-2 ``config.json`` dict (``source`` names it in errors);
  optional keys it lacks take GPT2Config's defaults."""
  model_type = config.get("model_type")
  archs = config.get("architectures") or []
  if model_type is not None and model_type != "gpt2":
    raise HFCheckpointError(f"{source}: model_type is {model_type!r}, not 'gpt2'; this loader reads GPT-2 "
                            "checkpoints only")
  if model_type is None and not any(str(a).startswith("GPT2") for a in archs):
    raise HFCheckpointError(f"{source}: neither model_type 'gpt2' nor a GPT2* architecture (architectures="
                            f"{archs}); this loader reads GPT-2 checkpoints only")
  kw = {}
  for name, alt in (("vocab_size", None), ("n_positions", "n_ctx"), ("n_embd", None), ("n_layer", None),
                    ("n_head", None)):
    value = config.get(name, config.get(alt) if alt else None)
    if value is None:
      raise HFCheckpointError(f"{source}: missing required GPT-2 config key {name!r}")
    kw[name] = int(value)
  defaults = GPT2Config()
  for name in ("n_inner", "activation_function", "layer_norm_epsilon", "embd_pdrop", "attn_pdrop",
               "resid_pdrop"):
    value = config.get(name)
    kw[name] = getattr(defaults, name) if value is None else value
  if kw["activation_function"] not in ACTIVATIONS:
    raise HFCheckpointError(f"{source}: activation_function {kw['activation_function']!r} is not "
                            f"supported; supported: {sorted(ACTIVATIONS)}")
  for name in _UNSUPPORTED_TRUE:
    if config.get(name):
      raise HFCheckpointError(f"{source}: {name}=true is not supported by mmjax's GPT2")
  if config.get("scale_attn_weights") is False:
    raise HFCheckpointError(f"{source}: scale_attn_weights=false is not supported by mmjax's GPT2")
  if kw["n_embd"] % kw["n_head"]:
    raise HFCheckpointError(f"{source}: n_embd={kw['n_embd']} is not divisible by n_head={kw['n_head']}")
  return GPT2Config(**kw)


def _config(config_or_model: GPT2Config | GPT2) -> GPT2Config:
  return config_or_model.config if isinstance(config_or_model, GPT2) else config_or_model


def hf_param_shapes(config: GPT2Config | GPT2) -> dict[str, tuple[int, ...]]:
  """Every tensor name of a Hugging Face GPT-2 checkpoint of shape ``config`` (a :class:`GPT2Config` or a
  :class:`GPT2`; names without the ``transformer.`` prefix) -> its shape."""
  cfg = _config(config)
  d, inner = cfg.n_embd, cfg.mlp_width
  shapes = {"wte.weight": (cfg.vocab_size, d), "wpe.weight": (cfg.n_positions, d),
            "ln_f.weight": (d,), "ln_f.bias": (d,)}
  for i in range(cfg.n_layer):
    p = f"h.{i}."
    shapes.update({
        p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
        p + "attn.c_attn.weight": (d, 3 * d), p + "attn.c_attn.bias": (3 * d,),
        p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
        p + "ln_2.weight": (d,), p + "ln_2.bias": (d,),
        p + "mlp.c_fc.weight": (d, inner), p + "mlp.c_fc.bias": (inner,),
        p + "mlp.c_proj.weight": (inner, d), p + "mlp.c_proj.bias": (d,),
    })
  return shapes


def _normalise_names(names, source: str) -> dict[str, str]:
  """Checkpoint name -> canonical name (``transformer.`` prefix stripped); buffers dropped."""
  out: dict[str, str] = {}
  seen: dict[str, str] = {}
  for name in names:
    canon = name[len("transformer."):] if name.startswith("transformer.") else name
    if canon.startswith("h.") and canon.endswith(_BUFFERS) and canon.count(".") == 3:
      continue  # h.{i}.attn.bias / h.{i}.attn.masked_bias
    if canon in seen:
      raise HFCheckpointError(f"{source}: tensor {canon!r} appears twice (as {seen[canon]!r} and {name!r})")
    seen[canon] = name
    out[name] = canon
  return out


def _check_names_and_shapes(shapes: Mapping[str, tuple], cfg: GPT2Config, source: str) -> None:
  """One :class:`HFCheckpointError` listing every missing, unexpected or mis-shaped tensor."""
  expected = hf_param_shapes(cfg)
  expected_head = {"lm_head.weight": expected["wte.weight"]}
  problems = []
  missing = sorted(set(expected) - set(shapes))
  unexpected = sorted(set(shapes) - set(expected) - set(expected_head))
  if missing:
    problems.append(f"missing tensors {missing}")
  if unexpected:
    problems.append(f"unexpected tensors {unexpected}")
  for name in sorted(set(shapes) & (set(expected) | set(expected_head))):
    want = {**expected, **expected_head}[name]
    got = tuple(shapes[name])
    if got != want:
      problems.append(f"tensor {name!r} has shape {got}, expected {want}")
  if problems:
    raise HFCheckpointError(
        f"{source} does not match its GPT-2 config (vocab_size={cfg.vocab_size}, n_positions="
        f"{cfg.n_positions}, n_embd={cfg.n_embd}, n_layer={cfg.n_layer}, n_head={cfg.n_head}): "
        + "; ".join(problems))


def params_from_hf(tensors: Mapping[str, Any], config: GPT2Config | GPT2, *, source: str = "state dict"
                   ) -> dict:
  """Flax ``params`` of a :class:`GPT2` of shape ``config`` (a :class:`GPT2Config` or a :class:`GPT2`)
  from Hugging Face GPT-2 tensors (numpy arrays, any float dtype).

  Names may carry the ``transformer.`` prefix or not; ``h.{i}.attn.bias``/``masked_bias`` buffers are
  ignored; ``lm_head.weight`` must equal ``wte.weight`` (tied) when present. Conv1D weights are ``[in,
  out]`` and used as ``x @ W``. Raises :class:`HFCheckpointError` naming every problem.
  """
  cfg = _config(config)
  names = _normalise_names(tensors, source)
  arrays = {canon: tensors[name] for name, canon in names.items()}
  _check_names_and_shapes({k: np.shape(v) for k, v in arrays.items()}, cfg, source)
  f32 = lambda name: np.asarray(arrays[name], np.float32)  # noqa: E731
  if "lm_head.weight" in arrays and not np.array_equal(f32("lm_head.weight"), f32("wte.weight")):
    raise HFCheckpointError(f"{source}: lm_head.weight differs from wte.weight; GPT2 ties the output "
                            "projection to the token embedding and cannot load untied weights")
  d, h, hd = cfg.n_embd, cfg.n_head, cfg.head_dim
  norm = lambda n: {"scale": f32(f"{n}.weight"), "bias": f32(f"{n}.bias")}  # noqa: E731
  params: dict[str, Any] = {
      "wte": {"embedding": f32("wte.weight")},
      "wpe": {"embedding": f32("wpe.weight")},
      "ln_f": norm("ln_f"),
  }
  for i in range(cfg.n_layer):
    p = f"h.{i}."
    params[f"h_{i}"] = {
        "ln_1": norm(p + "ln_1"),
        "attn": {
            "c_attn": {"kernel": f32(p + "attn.c_attn.weight").reshape(d, 3, h, hd),
                       "bias": f32(p + "attn.c_attn.bias").reshape(3, h, hd)},
            "c_proj": {"kernel": f32(p + "attn.c_proj.weight").reshape(h, hd, d),
                       "bias": f32(p + "attn.c_proj.bias")},
        },
        "ln_2": norm(p + "ln_2"),
        "mlp": {
            "c_fc": {"kernel": f32(p + "mlp.c_fc.weight"), "bias": f32(p + "mlp.c_fc.bias")},
            "c_proj": {"kernel": f32(p + "mlp.c_proj.weight"), "bias": f32(p + "mlp.c_proj.bias")},
        },
    }
  return jax.tree_util.tree_map(jnp.asarray, params)


def _safetensors_files(path: Path) -> list[Path]:
  single = path / "model.safetensors"
  if single.is_file():
    return [single]
  index = path / "model.safetensors.index.json"
  if index.is_file():
    try:
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, AttributeError) as e:
      raise HFCheckpointError(f"{index} is not a valid safetensors index ({e})") from None
    missing = [s for s in shards if not (path / s).is_file()]
    if missing:
      raise HFCheckpointError(f"{index} lists shard files that are missing from {path}: {missing}")
    return [path / s for s in shards]
  others = [n for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack") if (path / n).exists()]
  hint = (f" (found {others}: only the safetensors format is read; convert it with transformers' "
          "save_pretrained)") if others else ""
  raise HFCheckpointError(f"{path} has no model.safetensors (nor model.safetensors.index.json){hint}")


def _read_tensors(files: list[Path], cfg: GPT2Config) -> dict[str, np.ndarray]:
  import ml_dtypes  # noqa: F401  (a jax dependency; lets numpy read bfloat16 tensors)

  try:
    from safetensors import SafetensorError, safe_open
  except ImportError as e:  # pragma: no cover - a declared dependency
    raise ImportError("reading GPT-2 checkpoints needs the 'safetensors' package (pip install safetensors)"
                      ) from e
  shapes, where = {}, {}
  try:
    for file in files:
      with safe_open(str(file), framework="numpy") as f:
        for name in f.keys():
          shapes[name] = tuple(f.get_slice(name).get_shape())
          where[name] = file
  except (SafetensorError, OSError) as e:
    raise HFCheckpointError(f"could not read the safetensors file {file}: {e}") from None
  source = str(files[0] if len(files) == 1 else files[0].parent)
  names = _normalise_names(shapes, source)
  _check_names_and_shapes({canon: shapes[name] for name, canon in names.items()}, cfg, source)
  tensors = {}
  for file in files:
    with safe_open(str(file), framework="numpy") as f:
      for name in names:
        if where[name] == file:
          tensors[name] = _get_tensor(f, name, file)
  return tensors


def _get_tensor(f, name, file) -> np.ndarray:
  try:
    return f.get_tensor(name)
  except Exception as e:  # noqa: BLE001 - reported with the tensor and file
    raise HFCheckpointError(f"could not read tensor {name!r} from {file}: {e}") from None


def load_hf_gpt2(path: str | os.PathLike, *, attention: str = "xla", dtype: Any = jnp.float32,
                 dropout: bool = True) -> tuple[GPT2, dict]:
  """``(GPT2 module, params)`` from a LOCAL Hugging Face GPT-2 directory (nothing is downloaded).

  The directory holds ``config.json`` and ``model.safetensors`` (or a sharded
  ``model.safetensors.index.json``), as written by ``save_pretrained`` or a hub snapshot. Parameters are
  float32; ``dtype`` is the compute dtype and ``attention`` the kernel of the module; ``dropout=False``
  zeroes the dropout rates (a frozen LM). Raises :class:`HFCheckpointError` for a missing directory or
  file (naming it), a config that is not GPT-2, and missing, unexpected or mis-shaped tensors.
  """
  path = Path(path).expanduser()
  config_file, config = read_hf_config(path, "GPT-2", "gpt2")
  cfg = config_from_hf(config, source=str(config_file))
  if not dropout:
    cfg = cfg.no_dropout()
  files = _safetensors_files(path)
  tensors = _read_tensors(files, cfg)
  return GPT2(cfg, attention=attention, dtype=dtype), params_from_hf(tensors, cfg, source=str(path))


@register_loader("hf_gpt2")
def load_params(path: str | os.PathLike, model=None) -> dict:
  """The loader ``hf_gpt2``: the :class:`GPT2` parameter tree of the local Hugging Face GPT-2 directory
  ``path`` (``config.init.format = "hf_gpt2"``, ``init.target = "lm"`` for Frozen). ``model`` is not
  needed: the shapes come from the directory's ``config.json``, and grafting checks them against the
  target subtree."""
  del model
  return load_hf_gpt2(path)[1]
