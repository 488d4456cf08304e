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
        "mfm_mosi": ["", "unaligned"],
        "frozen_gpt2": [str(Path(__file__).resolve().parent / "fixtures" / "gpt2_tiny")]}
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
