"""Import of Hugging Face BERT checkpoints (Devlin et al., 2019) into :class:`mmjax.models.bert.BertModel`.

A local directory as ``save_pretrained`` or a hub snapshot writes it: ``config.json`` (read by
:func:`config_from_hf` into a :class:`~mmjax.models.bert.BertConfig`) and ``model.safetensors`` (or a
sharded ``model.safetensors.index.json``); nothing is downloaded. :func:`params_from_hf` maps the tensors
onto BertModel's parameter tree: the ``bert.`` prefix of task models (``BertForPreTraining``,
``BertForSequenceClassification``) is stripped, their heads (``cls.*``, ``classifier.*``) and the
``position_ids`` / ``token_type_ids`` buffers are skipped, the TensorFlow-era LayerNorm names ``gamma`` /
``beta`` (the hub's "bert-base-uncased" still uses them) are read as ``weight`` / ``bias``, PyTorch Linear
weights ``[out, in]`` are transposed to Dense kernels ``[in, out]``, and the attention projections are
reshaped to ``[D, H, Dh]`` / ``[H, Dh, D]``. The loader ``hf_bert`` (``config.init.format = "hf_bert"``)
returns the parameters for grafting (e.g. ``init.target = "text"`` of MAG). Every problem raises one
:class:`HFBertCheckpointError` that names it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models.bert import ACTIVATIONS, BertConfig, BertModel
from mmjax.models.convert.hf_gpt2 import HFCheckpointError, _get_tensor, _safetensors_files, read_hf_config
from mmjax.models.registry import register_loader


class HFBertCheckpointError(HFCheckpointError):
  """A Hugging Face BERT directory or state dict that cannot be loaded; the message says what and why."""


_SKIPPED_PREFIXES = ("cls.", "classifier.", "qa_outputs.")  # task heads, not the encoder
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def config_from_hf(config: Mapping[str, Any], *, source: str = "config.json") -> BertConfig:
  """The :class:`BertConfig` of a Hugging Face BERT ``config.json`` dict (``source`` names it in errors);
  optional keys it lacks take BertConfig's defaults."""
  model_type = config.get("model_type")
  if model_type != "bert":
    raise HFBertCheckpointError(f"{source}: model_type is {model_type!r}, not 'bert'; this loader reads BERT "
                                "checkpoints only")
  if config.get("position_embedding_type", "absolute") != "absolute":
    raise HFBertCheckpointError(f"{source}: position_embedding_type {config['position_embedding_type']!r} is "
                                "not supported (only 'absolute')")
  if config.get("is_decoder") or config.get("add_cross_attention"):
    raise HFBertCheckpointError(f"{source}: BERT decoders / cross-attention are not supported")
  kw: dict[str, Any] = {}
  for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
    if config.get(name) is None:
      raise HFBertCheckpointError(f"{source}: missing required BERT config key {name!r}")
    kw[name] = int(config[name])
  for name in ("max_position_embeddings", "type_vocab_size"):
    if config.get(name) is not None:
      kw[name] = int(config[name])
  for name in ("layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob"):
    if config.get(name) is not None:
      kw[name] = float(config[name])
  act = config.get("hidden_act", "gelu")
  if act not in ACTIVATIONS:
    raise HFBertCheckpointError(f"{source}: hidden_act {act!r} is not supported; supported: "
                                f"{sorted(ACTIVATIONS)}")
  kw["hidden_act"] = act
  try:
    return BertConfig(**kw)
  except ValueError as e:
    raise HFBertCheckpointError(f"{source}: {e}") from None


def hf_param_shapes(cfg: BertConfig) -> dict[str, tuple]:
  """Every tensor of a Hugging Face ``BertModel`` of shape ``cfg`` (canonical names) -> its shape."""
  d, inner = cfg.hidden_size, cfg.intermediate_size
  shapes = {"embeddings.word_embeddings.weight": (cfg.vocab_size, d),
            "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, d),
            "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, d),
            "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
  for i in range(cfg.num_hidden_layers):
    p = f"encoder.layer.{i}."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense"):
      shapes.update({p + name + ".weight": (d, d), p + name + ".bias": (d,)})
    shapes.update({
        p + "attention.output.LayerNorm.weight": (d,), p + "attention.output.LayerNorm.bias": (d,),
        p + "intermediate.dense.weight": (inner, d), p + "intermediate.dense.bias": (inner,),
        p + "output.dense.weight": (d, inner), p + "output.dense.bias": (d,),
        p + "output.LayerNorm.weight": (d,), p + "output.LayerNorm.bias": (d,),
    })
  if cfg.add_pooling_layer:
    shapes.update({"pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)})
  return shapes


def canonical_name(name: str) -> str | None:
  """A checkpoint tensor name as BertModel's (``bert.`` stripped, ``gamma``/``beta`` -> ``weight``/``bias``);
  None for tensors that are not the encoder's (task heads, buffers)."""
  canon = name[len("bert."):] if name.startswith("bert.") else name
  if canon.startswith(_SKIPPED_PREFIXES) or canon in _BUFFERS:
    return None
  if ".LayerNorm." in canon:
    canon = canon.replace(".LayerNorm.gamma", ".LayerNorm.weight")
    canon = canon.replace(".LayerNorm.beta", ".LayerNorm.bias")
  return canon


def _normalise(names, source: str) -> dict[str, str]:
  out, seen = {}, {}
  for name in names:
    canon = canonical_name(name)
    if canon is None:
      continue
    if canon in seen:
      raise HFBertCheckpointError(f"{source}: tensor {canon!r} appears twice (as {seen[canon]!r} and "
                                  f"{name!r})")
    seen[canon] = name
    out[name] = canon
  return out


def _check(shapes: Mapping[str, tuple], cfg: BertConfig, source: str) -> None:
  expected = hf_param_shapes(cfg)
  problems = []
  missing = sorted(set(expected) - set(shapes))
  unexpected = sorted(set(shapes) - set(expected))
  if missing:
    problems.append(f"missing tensors {missing[:8]}{'...' if len(missing) > 8 else ''}")
  if unexpected:
    problems.append(f"unexpected tensors {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
  for name in sorted(set(shapes) & set(expected)):
    if tuple(shapes[name]) != expected[name]:
      problems.append(f"tensor {name!r} has shape {tuple(shapes[name])}, expected {expected[name]}")
  if problems:
    raise HFBertCheckpointError(
        f"{source} does not match its BERT config (vocab_size={cfg.vocab_size}, hidden_size="
        f"{cfg.hidden_size}, num_hidden_layers={cfg.num_hidden_layers}, add_pooling_layer="
        f"{cfg.add_pooling_layer}): "
        + "; ".join(problems))


def params_from_hf(tensors: Mapping[str, Any], config: BertConfig, *, source: str = "state dict") -> dict:
  """Flax ``params`` of a :class:`BertModel` of shape ``config`` from Hugging Face BERT tensors (numpy
  arrays, any float dtype; names as :func:`canonical_name` reads them). Raises
  :class:`HFBertCheckpointError` naming every missing, unexpected or mis-shaped tensor."""
  cfg = config
  names = _normalise(tensors, source)
  arrays = {canon: tensors[name] for name, canon in names.items()}
  _check({k: np.shape(v) for k, v in arrays.items()}, cfg, source)
  f32 = lambda n: np.asarray(arrays[n], np.float32)  # noqa: E731
  h, hd, d = cfg.num_attention_heads, cfg.head_dim, cfg.hidden_size
  norm = lambda n: {"scale": f32(n + ".weight"), "bias": f32(n + ".bias")}  # noqa: E731
  dense = lambda n: {"kernel": f32(n + ".weight").T, "bias": f32(n + ".bias")}  # noqa: E731

  def heads_in(n):  # Linear [out = H*Dh, in = D] -> DenseGeneral kernel [D, H, Dh]
    return {"kernel": f32(n + ".weight").T.reshape(d, h, hd), "bias": f32(n + ".bias").reshape(h, hd)}

  params: dict[str, Any] = {"embeddings": {
      "word_embeddings": {"embedding": f32("embeddings.word_embeddings.weight")},
      "position_embeddings": {"embedding": f32("embeddings.position_embeddings.weight")},
      "token_type_embeddings": {"embedding": f32("embeddings.token_type_embeddings.weight")},
      "LayerNorm": norm("embeddings.LayerNorm"),
  }}
  for i in range(cfg.num_hidden_layers):
    p = f"encoder.layer.{i}."
    params[f"layer_{i}"] = {
        "attention": {
            "query": heads_in(p + "attention.self.query"),
            "key": heads_in(p + "attention.self.key"),
            "value": heads_in(p + "attention.self.value"),
            "output": {
                "dense": {"kernel": f32(p + "attention.output.dense.weight").T.reshape(h, hd, d),
                          "bias": f32(p + "attention.output.dense.bias")},
                "LayerNorm": norm(p + "attention.output.LayerNorm"),
            },
        },
        "intermediate": {"dense": dense(p + "intermediate.dense")},
        "output": {"dense": dense(p + "output.dense"), "LayerNorm": norm(p + "output.LayerNorm")},
    }
  if cfg.add_pooling_layer:
    params["pooler"] = {"dense": dense("pooler.dense")}
  return jax.tree_util.tree_map(jnp.asarray, params)


def _read_config(path: Path) -> BertConfig:
  config_file, config = read_hf_config(path, "BERT", "bert-base-uncased", HFBertCheckpointError)
  return config_from_hf(config, source=str(config_file))


def _read_tensors(files: list[Path]) -> tuple[dict[str, np.ndarray], bool]:
  """Every encoder tensor of ``files`` (task heads skipped), and whether a pooler is among them."""
  import ml_dtypes  # noqa: F401  (lets numpy read bfloat16 tensors)
  from safetensors import SafetensorError, safe_open

  tensors = {}
  try:
    for file in files:
      with safe_open(str(file), framework="numpy") as f:
        for name in f.keys():
          if canonical_name(name) is not None:
            tensors[name] = _get_tensor(f, name, file)
  except (SafetensorError, OSError) as e:
    raise HFBertCheckpointError(f"could not read the safetensors file {file}: {e}") from None
  has_pooler = any(canonical_name(n) == "pooler.dense.weight" for n in tensors)
  return tensors, has_pooler


def load_hf_bert(path: str | os.PathLike, *, attention: str = "xla", dtype: Any = jnp.float32,
                 dropout: bool = True) -> tuple[BertModel, dict]:
  """``(BertModel module, params)`` from a LOCAL Hugging Face BERT directory (nothing is downloaded).

  The pooler is loaded when the checkpoint has one (``add_pooling_layer`` follows it). ``dropout=False``
  zeroes the dropout rates. Raises :class:`HFBertCheckpointError` for a missing directory or file, a config
  that is not BERT, and missing, unexpected or mis-shaped tensors.
  """
  path = Path(path).expanduser()
  cfg = _read_config(path)
  tensors, has_pooler = _read_tensors(_safetensors_files(path))
  cfg = cfg.replace(add_pooling_layer=has_pooler)
  if not dropout:
    cfg = cfg.no_dropout()
  return BertModel(cfg, attention=attention, dtype=dtype), params_from_hf(tensors, cfg, source=str(path))


@register_loader("hf_bert")
def load_params(path: str | os.PathLike, model=None) -> dict:
  """The loader ``hf_bert``: the :class:`BertModel` parameter tree of the local Hugging Face BERT directory
  ``path`` (``config.init.format = "hf_bert"``, ``init.target = "text"`` for MAG). ``model`` is not
  needed: the shapes come from the directory's ``config.json``, and grafting checks them against the
  target subtree (a model without a pooler takes ``init.source`` cut to the layers it has, or
  ``add_pooling_layer=True``)."""
  del model
  return load_hf_bert(path)[1]
