"""Experiment configs: Python files returning an ``ml_collections.ConfigDict``, command-line overrides,
and validation against the schema in :func:`default_config` (unknown keys are errors).

A config file defines ``get_config(arg=None)``; ``FILE:ARG`` on the command line passes ``ARG``. It
starts from :func:`default_config` and sets what differs. ``model.kwargs`` holds the model's constructor
fields, checked against the registered model class; a field whose default is a dataclass (``lm:
GPT2Config``) takes a (partial) dict of that dataclass's fields, checked too.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from pathlib import Path

import ml_collections

from mmjax.errors import ConfigError

__all__ = ["ConfigError", "apply_override", "default_config", "get_config", "load_config_file", "validate"]

PRECISIONS = ("float32", "bfloat16")
# Other spellings of a precision, rewritten to its name by validate (--config.precision=bf16).
PRECISION_ALIASES = {"bf16": "bfloat16", "fp32": "float32", "f32": "float32"}

# Sections whose keys are free-form dictionaries (checked elsewhere or by the consumer).
FREE_FORM = ("model.kwargs", "task.kwargs", "data.max_lengths", "evaluators", "mesh.rules")


def default_config() -> ml_collections.ConfigDict:
  """Every engine field with its default: the schema that experiment configs fill in."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.prng_impl = "rbg"  # or "threefry", "unsafe_rbg": the training keys' PRNG (mmjax.train.state.PRNG_IMPLS)

  c.model = ml_collections.ConfigDict()
  c.model.name = ""  # a name in mmjax.models.names()
  c.model.kwargs = ml_collections.ConfigDict()  # the model's dataclass fields

  c.task = ml_collections.ConfigDict()
  c.task.name = "classification"
  c.task.kwargs = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = ""  # a TFDS builder name, e.g. "digits_av"
  c.data.data_dir = ""  # TFDS data directory ("" = TFDS default, ~/tensorflow_datasets)
  c.data.train_split = "train"
  c.data.eval_split = "validation"  # evaluated every eval_every steps
  c.data.test_split = "test"  # evaluated once at the end ("" to skip)
  c.data.max_lengths = ml_collections.ConfigDict()  # feature -> padded length, for variable lengths
  c.data.truncate = False  # longer sequences: error (False) or cut to max length (True)
  c.data.tokenizer = ""  # "gpt2:DIR": add <tokenize_field>_tokens from a text feature (GPT-2 BPE)
  c.data.tokenize_field = "caption"
  c.data.keep_labels = ""  # e.g. "0,1,2": train only on examples whose `label` is one of these ("" = all)
  c.data.prepare = True  # build embedded datasets on first use
  c.data.num_threads = 2  # reader threads

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.lr = 1e-3
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.momentum = 0.0
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 0.0
  c.optimizer.frozen = ""  # regex over parameter paths
  c.optimizer.grad_accum_steps = 1  # micro-batches per update (scanned; batch_size is per update)
  c.optimizer.ema_decay = 0.0  # > 0: an EMA of the parameters, evaluated and checkpointed beside them
  c.optimizer.plateau = ml_collections.ConfigDict()  # ReduceLROnPlateau (optax.contrib.reduce_on_plateau)
  c.optimizer.plateau.factor = 0.0  # 0 = off; e.g. 0.1
  c.optimizer.plateau.patience = 10  # evaluations of the metric without improvement before a reduction
  c.optimizer.plateau.metric = "validation/loss"  # EVALUATOR/METRIC
  c.optimizer.plateau.mode = "min"  # or "max"
  c.optimizer.plateau.rtol = 1e-4  # relative improvement that counts
  c.optimizer.plateau.cooldown = 0  # evaluations to wait after a reduction
  c.optimizer.plateau.min_scale = 0.0  # the scale never drops below this

  c.init = ml_collections.ConfigDict()  # start from pretrained parameters (mmjax.train.pretrained)
  c.init.format = ""  # "" = none; "mmjax" = another run's latest checkpoint; or a loader in
  # mmjax.models.loader_names(): "hf_gpt2" (a Hugging Face GPT-2 directory), "mult_torch" (.pt / .npz)
  c.init.path = ""  # the run directory, or the weights the loader reads
  c.init.source = ""  # subtree of those parameters to take ("" = all), e.g. "lm"
  c.init.target = ""  # where it goes in this model's parameters ("" = the whole tree), e.g. "lm"

  # Evaluators (mmjax.evaluators): KEY -> {"name": a registered evaluator, "every": steps between runs
  # (0 = only at the end of training), "kwargs": its arguments}. Metrics are logged as KEY/METRIC. The
  # task's metrics on data.eval_split (every eval_every steps) and data.test_split (at the end) are added
  # under those split names unless this section sets those keys itself.
  c.evaluators = ml_collections.ConfigDict()

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # Logical axis name of a parameter dimension -> mesh axes, comma-separated ("" = replicated), e.g.
  # --config.mesh.rules.embed=fsdp,tensor. Names and defaults: mmjax.train.mesh (LOGICAL_AXES, DEFAULT_RULES).
  c.mesh.rules = ml_collections.ConfigDict(_default_rules())

  # Compute dtype of every model: "float32" or "bfloat16" (matmuls and activations in bfloat16; parameters,
  # optimizer state, softmax, normalisation statistics and losses stay float32). See PRECISIONS.
  c.precision = "float32"
  # Rematerialisation of each transformer / cross-modal block in the backward pass: "none", "full" (keep only
  # the block's inputs) or a jax.checkpoint_policies policy (e.g. "dots_saveable"); mmjax.layers.remat.MODES.
  c.remat = "none"

  c.batch_size = 32  # global, over all processes and devices
  c.eval_batch_size = 128
  c.num_steps = 1000
  c.log_every = 50  # pull metrics to the host, write a log line
  c.eval_every = 500  # 0 = only at the end
  c.checkpoint_every = 500  # 0 = only at the end
  c.keep_checkpoints = 3  # the newest K; the best checkpoint (best_metric) is kept besides them
  c.best_metric = ""  # EVALUATOR/METRIC whose best value's checkpoint is kept, e.g. "validation/accuracy"
  c.best_mode = "max"  # "max" or "min"
  c.early_stopping_patience = 0  # stop after this many evaluations without a new best (0 = never)
  c.tensorboard = True  # TensorBoard event files in <workdir>/tensorboard
  c.async_checkpoints = True
  c.progress = True  # progress bar on process 0
  c.check_memory = True  # refuse a step whose compiled memory exceeds what the device (or host) has
  return c


def _default_rules() -> dict[str, str]:
  from mmjax.train.mesh import DEFAULT_RULES  # the one place the defaults are written

  return dict(DEFAULT_RULES)


def _suggest(key, candidates) -> str:
  near = difflib.get_close_matches(key, list(candidates), n=3)
  return f" Did you mean {', '.join(near)}?" if near else ""


def _check_keys(cfg, schema, prefix: str = "") -> None:
  for key in cfg.keys():
    path = f"{prefix}{key}"
    if key not in schema:
      raise ConfigError(f"unknown config key {path!r}.{_suggest(key, schema.keys())} "
                        f"Known keys here: {sorted(schema.keys())}")
    if path in FREE_FORM:
      continue
    if isinstance(schema[key], ml_collections.ConfigDict):
      if not isinstance(cfg[key], ml_collections.ConfigDict):
        raise ConfigError(f"config key {path!r} must be a section, got {cfg[key]!r}")
      _check_keys(cfg[key], schema[key], path + ".")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Checks every key against :func:`default_config` and ``model.kwargs`` against the model's fields;
  fills engine defaults the file left out. Returns the completed config."""
  schema = default_config()
  _check_keys(cfg, schema)
  full = default_config()
  full.update(cfg)
  from mmjax import models  # models know no config library; config knows models

  if not full.model.name:
    raise ConfigError(f"config sets no model.name; registered models: {models.names()}")
  try:
    fields = models.fields(full.model.name)
  except KeyError as e:
    raise ConfigError(str(e.args[0])) from None
  for key in full.model.kwargs.keys():
    if key not in fields:
      raise ConfigError(f"model {full.model.name!r} has no field {key!r}.{_suggest(key, fields)} "
                        f"Its fields: {sorted(fields)}")
    _check_nested(full.model.name, f"model.kwargs.{key}", fields[key], full.model.kwargs[key])
  formats = ["mmjax", *models.loader_names()]
  if full.init.format and full.init.format not in formats:
    raise ConfigError(f"unknown init.format {full.init.format!r}.{_suggest(full.init.format, formats)} "
                      f"Known: {formats} (or '' for none)")
  if bool(full.init.format) != bool(full.init.path):
    raise ConfigError("set init.format and init.path together (format: 'mmjax' or a loader in "
                      f"{models.loader_names()}; path: the run directory or the weights), or neither")
  if not full.data.name:
    raise ConfigError("config sets no data.name (a dataset, e.g. 'digits_av')")
  if "dtype" in full.model.kwargs:
    raise ConfigError(f"model.kwargs.dtype ({full.model.kwargs.dtype!r}) is set by config.precision for "
                      "every model: remove it and set --config.precision=bfloat16 (or float32)")
  if isinstance(full.precision, str):
    full.precision = PRECISION_ALIASES.get(full.precision.strip().lower(), full.precision.strip())
  _check_names(full)
  _check_ranges(full)
  return full


def _check_names(c) -> None:
  """Names that must be one of a known set: task, optimizer, schedule, PRNG, evaluators."""
  from mmjax import evaluators, tasks
  from mmjax.layers.remat import POLICIES
  from mmjax.train.optim import OPTIMIZERS, SCHEDULES
  from mmjax.train.state import PRNG_IMPLS

  for what, value, known in (("precision", c.precision, PRECISIONS),
                             ("remat", c.remat, ("none", "full", *POLICIES)),
                             ("task.name", c.task.name, tasks.names()),
                             ("prng_impl", c.prng_impl, tuple(PRNG_IMPLS)),
                             ("optimizer.name", c.optimizer.name, OPTIMIZERS),
                             ("optimizer.schedule", c.optimizer.schedule, SCHEDULES)):
    if value not in known:
      raise ConfigError(f"{what} {value!r} is not known.{_suggest(value, known)} Valid names: "
                        f"{', '.join(known)}.")
  reserved = ("step", "model", "num_params", "train", "best", "stopped_early", "flops")  # metrics.json keys
  for key, spec in c.evaluators.items():
    if key in reserved or key.endswith("_ema") or "/" in key:
      raise ConfigError(f"evaluators.{key}: the key may not be one of {reserved}, end in _ema or hold '/'; "
                        "choose another name")
    if not isinstance(spec, ml_collections.ConfigDict):
      raise ConfigError(f"evaluators.{key} must be a section {{name, every, kwargs}}; got {spec!r}")
    unknown = sorted(set(spec.keys()) - {"name", "every", "kwargs"})
    if unknown:
      raise ConfigError(f"evaluators.{key} has unknown fields {unknown}; an evaluator has name, every "
                        "and kwargs")
    name = spec.get("name", "")
    if name not in evaluators.names():
      raise ConfigError(f"evaluators.{key}.name {name!r} is not a registered evaluator."
                        f"{_suggest(str(name), evaluators.names())} Registered: "
                        f"{', '.join(evaluators.names())}.")
    every = spec.get("every", 0)
    if not isinstance(every, int) or every < 0:
      raise ConfigError(f"evaluators.{key}.every must be an integer >= 0 (0 = only at the end of "
                        f"training); got {every!r}")


def _check_ranges(c) -> None:
  """Counts, intervals and modes: each in its valid range, or a message that gives the range."""
  def need(ok, key, value, rule):
    if not ok:
      raise ConfigError(f"{key} must be {rule}; got {value!r}. Fix it in the config file or with "
                        f"--config.{key}=VALUE.")

  for key in ("num_steps", "batch_size", "eval_batch_size", "log_every", "keep_checkpoints"):
    value = c[key]
    need(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")
  for key in ("eval_every", "checkpoint_every", "early_stopping_patience"):
    value = c[key]
    need(isinstance(value, int) and value >= 0, key, value, "an integer >= 0 (0 = off)")
  accum = c.optimizer.grad_accum_steps
  need(isinstance(accum, int) and accum >= 1, "optimizer.grad_accum_steps", accum, "an integer >= 1")
  need(c.batch_size % accum == 0, "batch_size", c.batch_size,
       f"a multiple of optimizer.grad_accum_steps ({accum}): each update averages that many equal "
       "micro-batches")
  need(c.optimizer.lr >= 0, "optimizer.lr", c.optimizer.lr, ">= 0")
  need(c.optimizer.warmup_steps >= 0, "optimizer.warmup_steps", c.optimizer.warmup_steps, ">= 0")
  for axis in ("data", "fsdp", "tensor"):
    size = c.mesh[axis]
    need(isinstance(size, int) and (size >= 1 or size == -1), f"mesh.{axis}", size,
         "an integer >= 1, or -1 for all remaining devices")
  _check_rules(c.mesh.rules)
  need(c.best_mode in ("max", "min"), "best_mode", c.best_mode, "'max' or 'min'")
  if c.best_metric:
    need("/" in c.best_metric, "best_metric", c.best_metric,
         "EVALUATOR/METRIC, e.g. 'validation/accuracy'")
  need(not c.early_stopping_patience or c.best_metric, "early_stopping_patience",
       c.early_stopping_patience, "0 unless best_metric names the metric to watch")


def _check_rules(rules) -> None:
  """``mesh.rules``: known logical axis names, each mapped to known mesh axes (comma-separated strings)."""
  from mmjax.train.mesh import AXES, LOGICAL_AXES, parse_rules

  for key, value in rules.items():
    if key not in LOGICAL_AXES:
      raise ConfigError(f"mesh.rules has unknown logical axis {key!r}.{_suggest(key, LOGICAL_AXES)} Logical "
                        f"axes: {', '.join(LOGICAL_AXES)} (see mmjax/train/mesh.py).")
    if value is not None and not isinstance(value, str):
      raise ConfigError(f"mesh.rules.{key} must be a string of mesh axes, comma-separated ('' = replicated), "
                        f"e.g. 'fsdp' or 'fsdp,tensor'; got {value!r}")
    for axis in (a.strip() for a in (value or "").split(",")):
      if axis and axis not in AXES:
        raise ConfigError(f"mesh.rules.{key} names unknown mesh axis {axis!r}.{_suggest(axis, AXES)} Mesh "
                          f"axes: {', '.join(AXES)}; '' keeps the dimension replicated.")
  try:
    parse_rules(rules.to_dict())
  except ValueError as e:
    raise ConfigError(f"mesh.rules: {e}") from None


def _check_nested(model: str, path: str, default, value) -> None:
  """A model field whose default is a dataclass (e.g. ``lm: GPT2Config``) takes a section of that
  dataclass's fields (a dict in the config file); unknown keys are errors, nested ones checked in turn."""
  from mmjax import models

  nested = models.nested_fields(default)
  if nested is None:
    return
  if not isinstance(value, ml_collections.ConfigDict):
    raise ConfigError(f"config key {path!r} ({type(default).__name__}) must be a dict of its fields "
                      f"{sorted(nested)}, e.g. {{'{next(iter(nested))}': ...}}; got {value!r}")
  for key in value.keys():
    if key not in nested:
      raise ConfigError(f"model {model!r}: {path} ({type(default).__name__}) has no field {key!r}."
                        f"{_suggest(key, nested)} Its fields: {sorted(nested)}")
    _check_nested(model, f"{path}.{key}", nested[key], value[key])


def _kwargs_schema(cfg, keys):
  """``(fields, label)`` at ``model.kwargs.<keys...>``: the model's fields (name -> default), or those of
  the nested dataclass field ``keys`` leads to; None when ``keys`` does not lead to one."""
  from mmjax import models

  schema, label = models.fields(cfg.model.name), f"model {cfg.model.name!r}"
  for i, key in enumerate(keys):
    nested = models.nested_fields(schema.get(key))
    if nested is None:
      return None
    schema, label = nested, f"model {cfg.model.name!r}: model.kwargs.{'.'.join(keys[:i + 1])}"
  return schema, label


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Imports ``FILE`` (or ``FILE:ARG``) and returns its ``get_config(ARG)``, unvalidated. The file's
  folder is on ``sys.path`` while it loads, so configs can share helpers (``configs/digits_common.py``)."""
  path, _, arg = spec.partition(":")
  file = Path(path)
  if not file.is_file():
    raise ConfigError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(f"mmjax_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  sys.path.insert(0, str(file.parent.absolute()))  # config files may import their siblings
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path!r} has a syntax error at line {e.lineno}: {e.msg}. Fix the "
                      "file and run again.") from e
  except Exception as e:
    raise ConfigError(f"config file {path!r} failed while loading: {type(e).__name__}: {e}. Fix the "
                      "file (run with --debug for the traceback).") from e
  finally:
    sys.path.remove(str(file.parent.absolute()))
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config()")
  try:
    cfg = module.get_config(arg) if arg else module.get_config()
  except Exception as e:
    what = f"argument {arg!r}" if arg else "no argument"
    doc = (module.__doc__ or "").strip().split("\n\n")[0]
    raise ConfigError(f"get_config of {path!r} failed with {what}: {type(e).__name__}: {e}"
                      + (f". The file says: {doc}" if doc else "")) from e
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"get_config of {path!r} returned {type(cfg).__name__}, not an "
                      "ml_collections.ConfigDict")
  return cfg


def _parse_value(text: str, current):
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, bool):
    if isinstance(value, str) and value.lower() in ("true", "false"):
      return value.lower() == "true"
    if not isinstance(value, bool):
      raise ConfigError(f"expected true/false, got {text!r}")
  elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  elif isinstance(current, str) and not isinstance(value, str):
    return text
  elif current is not None and isinstance(current, (int, float)) and not isinstance(value, type(current)):
    raise ConfigError(f"expected a {type(current).__name__}, got {text!r}")
  elif isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(current)(value)
  return value


def apply_override(cfg: ml_collections.ConfigDict, assignment: str) -> None:
  """Applies ``"a.b.c=value"`` to ``cfg`` in place. The key must exist (model fields may be added to
  ``model.kwargs``, free-form sections accept new keys); values are parsed as Python literals and
  checked against the current value's type."""
  key, eq, text = assignment.partition("=")
  if not eq:
    raise ConfigError(f"override {assignment!r} is not of the form key=value")
  parts = key.split(".")
  in_kwargs = parts[:2] == ["model", "kwargs"]
  node = cfg
  for i, part in enumerate(parts[:-1]):
    inside = ".".join(parts[:i])
    new_evaluator = inside == "evaluators" or inside.startswith("evaluators.")
    nested_field = in_kwargs and i >= 2 and _kwargs_schema(cfg, parts[2:i + 1])
    if part not in node and (new_evaluator or nested_field):
      with node.unlocked():  # a new evaluator (or a section of one), or a nested model field (e.g. lm:
        node[part] = ml_collections.ConfigDict()  # GPT2Config) the file left at its default
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r}.{_suggest(part, node.keys())}")
    node = node[part]
  leaf = parts[-1]
  section = ".".join(parts[:-1])
  if leaf not in node:
    schema = _kwargs_schema(cfg, parts[2:-1]) if in_kwargs and len(parts) > 2 else None
    if schema is not None:
      fields, label = schema
      if leaf not in fields:
        raise ConfigError(f"{label} has no field {leaf!r}.{_suggest(leaf, fields)}")
      current = fields[leaf]
    elif any(section == f or section.startswith(f + ".") for f in FREE_FORM):
      current = None
    else:
      raise ConfigError(f"unknown config key {key!r}.{_suggest(leaf, node.keys())} "
                        f"Known keys in {section or 'the top level'}: {sorted(node.keys())}")
  else:
    current = node[leaf]
  value = _parse_value(text, current)
  with node.unlocked():
    node[leaf] = value


def get_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
  """Loads ``FILE[:ARG]``, validates it, applies ``overrides`` (``"a.b=v"`` strings), validates again."""
  cfg = validate(load_config_file(spec))
  for assignment in overrides:
    apply_override(cfg, assignment)
  return validate(cfg)
