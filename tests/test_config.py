"""Config files, overrides and validation."""

from pathlib import Path

import jax
import pytest

from mmjax import models
from mmjax.config import ConfigError, apply_override, default_config, get_config, validate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
EXPERIMENTS = sorted(p for p in CONFIGS.glob("*.py") if not p.stem.endswith("_common"))
ARGS = {"mult_mosi": ["", "aligned", "unaligned,lonly"], "mult_mosei": ["", "aligned"],
        "mult_iemocap": ["", "aligned,vonly"], "frozen_digits": ["", "lm", "vocab"],
        "mfm_mosi": ["", "unaligned"], "mag_digits": ["", "gpt2"], "mctn_digits": ["", "image,runlocal"],
        "tfn_mosi": ["", "unaligned"], "tfn_digits": ["", "audio"],
        "visualbert_digits": ["", "pretrain", "scratch"],
        "vilbert_digits": ["", "pretrain", "lxmert", "lxmert,pretrain"],
        "frozen_gpt2": [str(Path(__file__).resolve().parent / "fixtures" / "gpt2_tiny")],
        "clip_coco": [str(Path(__file__).resolve().parent / "fixtures" / "gpt2_tiny"), "bench,sigmoid"]}
CASES = [(p, a) for p in EXPERIMENTS for a in ARGS.get(p.stem, [""])]


@pytest.mark.parametrize("path, arg", CASES, ids=[f"{p.stem}:{a}" for p, a in CASES])
def test_every_config_loads_and_its_model_fits_its_data(path, arg, data_dir):
  """Every experiment config validates; its model initialises on a batch shaped like its dataset's
  (built from the TFDS feature description, so datasets users download themselves need not be present),
  and the output fits the task (loss computable, abstractly)."""
  from mmjax import tasks
  from mmjax.data import pipeline

  cfg = get_config(f"{path}:{arg}" if arg else str(path), [f"data.data_dir={data_dir}"])
  model = models.build(cfg.model.name, dict(cfg.model.kwargs))
  task = tasks.get(cfg.task.name, **dict(cfg.task.kwargs))
  batch = pipeline.example_from_features(cfg.data, batch_size=2)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
  outputs, aux = jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)
  assert outputs.shape[0] == 2

  def train_loss(v):  # the training path, as train_step runs it
    key = jax.random.PRNGKey(1)
    out, aux = model.apply(v, batch, train=True, rngs={"dropout": key, "latent": key})
    return task.loss(out, aux, batch)[0]

  assert jax.eval_shape(train_loss, variables).shape == ()


def test_overrides_set_nested_fields_with_types():
  cfg = get_config(str(CONFIGS / "late_fusion_digits.py"),
                   ["optimizer.lr=5e-4", "num_steps=7", "model.kwargs.width=32", "progress=false",
                    "data.max_lengths.audio=90", "model.kwargs.attention=jax"])
  assert cfg.optimizer.lr == 5e-4 and cfg.num_steps == 7 and cfg.progress is False
  assert cfg.model.kwargs.width == 32 and cfg.data.max_lengths.audio == 90
  assert cfg.model.kwargs.attention == "jax"


def test_override_of_a_model_field_the_file_does_not_set():
  cfg = get_config(str(CONFIGS / "late_fusion_digits.py"), ["model.kwargs.mlp_ratio=3"])
  assert cfg.model.kwargs.mlp_ratio == 3


@pytest.mark.parametrize("override, message", [
    ("optimizer.lrr=1", "unknown config key 'optimizer.lrr'.*Did you mean lr"),
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ("model.kwargs.widht=3", "has no field 'widht'"),
    ("num_steps=abc", "expected a int"),
    ("num_steps", "not of the form key=value"),
    ("mesh.rules.embd=fsdp", "unknown logical axis 'embd'.*Did you mean embed.*Logical axes: embed, mlp"),
    ("mesh.rules.mlp=tensr",
     "mesh.rules.mlp names unknown mesh axis 'tensr'.*Did you mean tensor.*Mesh axes: data, fsdp, tensor"),
    ("mesh.rules.mlp=tensor,tensor", "names a mesh axis twice"),
])
def test_bad_overrides_are_clear_errors(override, message):
  with pytest.raises(ConfigError, match=message):
    get_config(str(CONFIGS / "late_fusion_digits.py"), [override])


def test_unknown_key_in_a_config_file_is_an_error():
  cfg = default_config()
  cfg.model.name = "late_fusion"
  cfg.data.name = "digits_av"
  cfg.optimiser = {"lr": 1.0}
  with pytest.raises(ConfigError, match="unknown config key 'optimiser'"):
    validate(cfg)


def test_unknown_model_is_an_error():
  cfg = default_config()
  cfg.model.name = "no_such_model"
  cfg.data.name = "digits_av"
  with pytest.raises(ConfigError, match="unknown model 'no_such_model'"):
    validate(cfg)


def test_config_argument_selects_unimodal_baseline():
  cfg = get_config(str(CONFIGS / "late_fusion_digits.py") + ":audio")
  assert tuple(cfg.model.kwargs.modalities) == ("audio",)
  with pytest.raises(ValueError, match="unknown config argument"):
    get_config(str(CONFIGS / "late_fusion_digits.py") + ":smell")


def test_missing_config_file():
  with pytest.raises(ConfigError, match="does not exist"):
    get_config("configs/nope.py")


def test_apply_override_rejects_free_form_type_errors():
  cfg = get_config(str(CONFIGS / "late_fusion_digits.py"))
  with pytest.raises(ConfigError):
    apply_override(cfg, "batch_size=1.5")


# --- nested model fields (a dataclass default such as lm: GPT2Config) ---------------------------------------


def test_nested_dataclass_kwargs_build_from_partial_dicts():
  import ml_collections

  from mmjax.models.gpt2 import GPT2Config

  frozen = models.build("frozen", {"lm": {"n_layer": 2, "n_embd": 64, "n_head": 4}})
  assert frozen.lm == GPT2Config(n_layer=2, n_embd=64, n_head=4).no_dropout()  # over Frozen's default
  section = ml_collections.ConfigDict({"lm": {"n_layer": 2}})  # what a config gives: a section, not a dict
  assert models.build("causal_lm", dict(section)).lm == GPT2Config(n_layer=2)  # over GPT2Config()
  assert models.build("causal_lm", {"lm": GPT2Config(n_layer=3)}).lm.n_layer == 3  # an instance as is
  with pytest.raises(ValueError, match=r"model 'frozen' field 'lm' \(GPT2Config\) has no field\(s\) "
                                       r"\['n_layers'\]\. Did you mean \['n_layer'\]\? Its fields are"):
    models.build("frozen", {"lm": {"n_layers": 2}})
  with pytest.raises(ValueError, match="takes a GPT2Config or a mapping of its fields; got 3"):
    models.build("frozen", {"lm": 3})
  with pytest.raises(ValueError, match="not divisible by n_head"):
    models.build("frozen", {"lm": {"n_embd": 10, "n_head": 3}})
  assert models.nested_fields(models.fields("frozen")["lm"])["n_layer"] == 12
  assert models.nested_fields(models.fields("frozen")["num_prefix"]) is None


def _causal_lm_config():
  cfg = default_config()
  cfg.model.name = "causal_lm"
  cfg.data.name = "digits_av_text"
  return validate(cfg)


def test_nested_overrides_are_checked_like_top_level_ones():
  cfg = get_config(str(CONFIGS / "frozen_digits.py"),
                   ["model.kwargs.lm.n_layer=4", "model.kwargs.lm.n_inner=80"])
  assert cfg.model.kwargs.lm.n_layer == 4 and cfg.model.kwargs.lm.n_inner == 80
  assert cfg.model.kwargs.lm.n_embd == 64  # the file's other LM fields stay
  assert models.build(cfg.model.name, dict(cfg.model.kwargs)).lm.n_layer == 4
  cfg = _causal_lm_config()  # no model.kwargs.lm in the file: the override creates the section
  apply_override(cfg, "model.kwargs.lm.n_layer=3")
  assert validate(cfg).model.kwargs.lm.to_dict() == {"n_layer": 3}
  for override, message in [
      ("model.kwargs.lm.n_layers=4", r"model 'causal_lm': model.kwargs.lm has no field 'n_layers'\. "
                                     r"Did you mean n_layer\?"),
      ("model.kwargs.lm.n_layer=abc", "expected a int"),
      ("model.kwargs.bos_id.x=1", "unknown config key 'model.kwargs.bos_id'"),
  ]:
    with pytest.raises(ConfigError, match=message):
      apply_override(_causal_lm_config(), override)


def test_nested_keys_in_a_config_file_are_validated_and_round_trip_through_json():
  import json

  import ml_collections

  cfg = _causal_lm_config()
  cfg.model.kwargs.lm = {"n_layer": 2, "layer_norm_epsilson": 1e-6}
  with pytest.raises(ConfigError, match=r"model.kwargs.lm \(GPT2Config\) has no field "
                                        r"'layer_norm_epsilson'\. Did you mean layer_norm_epsilon\?"):
    validate(cfg)
  cfg = _causal_lm_config()
  cfg.model.kwargs.lm = 5
  with pytest.raises(ConfigError, match=r"'model.kwargs.lm' \(GPT2Config\) must be a dict of its fields"):
    validate(cfg)
  # checkpoints store config.model.kwargs.to_dict() as JSON, runs their config.json: both round-trip
  cfg = get_config(str(CONFIGS / "frozen_digits.py"))
  kwargs = cfg.model.kwargs.to_dict()
  assert isinstance(kwargs["lm"], dict) and json.loads(json.dumps(kwargs))["lm"] == kwargs["lm"]
  again = validate(ml_collections.ConfigDict(json.loads(cfg.to_json_best_effort())))
  assert again.model.kwargs.to_dict()["lm"] == kwargs["lm"]
  rebuilt, built = (models.build("frozen", dict(c.model.kwargs)) for c in (again, cfg))
  assert rebuilt.lm == built.lm


def test_mesh_rules_default_in_one_place_and_take_overrides():
  from mmjax.train.mesh import DEFAULT_RULES, parse_rules

  overrides = ["mesh.rules.mlp=fsdp,tensor", "mesh.rules.embed="]
  cfg = get_config(str(CONFIGS / "late_fusion_digits.py"), overrides)
  assert cfg.mesh.rules.to_dict() == {**DEFAULT_RULES, "mlp": "fsdp,tensor", "embed": ""}
  rules = dict(parse_rules(cfg.mesh.rules.to_dict()))
  assert rules["mlp"] == ("fsdp", "tensor") and "embed" not in rules and rules["heads"] == ("tensor",)
