"""Starting from pretrained parameters (config.init: another run or a registered weight loader) and freezing
them (optimizer.frozen); the loader registry."""

from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from mmjax import models
from mmjax.config import ConfigError
from mmjax.models import registry
from mmjax.train import CheckpointError, build_run, train_and_evaluate
from mmjax.train.pretrained import graft, load_pretrained
from mmjax.train.run import run_params as load_run_params

GPT2_FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gpt2_tiny"

QUIET = dict(devices=jax.devices()[:1], echo=lambda *a: None)
FAST = ["checkpoint_every=0", "eval_every=0", "async_checkpoints=false"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, data_dir):
  from mmjax.config import get_config

  from .conftest import CONFIGS

  workdir = tmp_path_factory.mktemp("source")
  cfg = get_config(f"{CONFIGS / 'late_fusion_digits.py'}:runlocal", [f"data.data_dir={data_dir}", *FAST])
  train_and_evaluate(cfg, workdir, **QUIET)
  return workdir


def test_graft_replaces_a_subtree_and_checks_shapes():
  params = {"a": {"w": np.zeros((2, 3), np.float32)}, "b": {"w": np.ones(2, np.float32)}}
  out = graft(params, {"w": np.full((2, 3), 7.0)}, "a")
  assert float(out["a"]["w"].sum()) == 42.0 and out["a"]["w"].dtype == np.float32
  np.testing.assert_array_equal(out["b"]["w"], params["b"]["w"])
  with pytest.raises(CheckpointError, match=r"a/w has shape \(3, 2\); the model needs \(2, 3\)"):
    graft(params, {"w": np.zeros((3, 2))}, "a")
  with pytest.raises(CheckpointError, match=r"missing \['w'\], unexpected \['v'\]"):
    graft(params, {"v": np.zeros((2, 3))}, "a")
  with pytest.raises(CheckpointError, match="no parameters at 'c'"):
    graft(params, {"w": np.zeros((2, 3))}, "c")


def test_init_from_another_run_then_freeze_it(source_run, tiny_config, tmp_path):
  source = load_run_params(source_run)
  cfg = tiny_config(overrides=[*FAST, "init.format=mmjax", f"init.path={source_run}",
                               "init.source=image_encoder", "init.target=image_encoder",
                               "optimizer.frozen=image_encoder/.*"])
  run = build_run(cfg, tmp_path / "fresh", jax.devices()[:1])
  state = jax.device_get(run.init())
  run.checkpointer.close()
  for a, b in zip(jax.tree_util.tree_leaves(state.params["image_encoder"]),
                  jax.tree_util.tree_leaves(source["image_encoder"]), strict=True):
    np.testing.assert_array_equal(a, b)
  # The other parameters are freshly initialised (seeded like the source, so compare to a plain init).
  plain = build_run(tiny_config(overrides=FAST), tmp_path / "plain", jax.devices()[:1])
  fresh = jax.device_get(plain.init())
  plain.checkpointer.close()
  np.testing.assert_array_equal(state.params["head_out"]["kernel"], fresh.params["head_out"]["kernel"])
  # Train: the frozen encoder stays bit-identical, the rest moves.
  train_and_evaluate(cfg, tmp_path / "trained", **QUIET)
  trained = load_run_params(tmp_path / "trained")
  for a, b in zip(jax.tree_util.tree_leaves(trained["image_encoder"]),
                  jax.tree_util.tree_leaves(source["image_encoder"]), strict=True):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(trained["head_out"]["kernel"], state.params["head_out"]["kernel"])


def test_bad_init_sources_are_clear_errors(source_run, tiny_config, tmp_path):
  wide = tiny_config(overrides=[*FAST, "init.format=mmjax", f"init.path={source_run}",
                                "model.kwargs.width=32"])
  run = build_run(wide, tmp_path / "a", jax.devices()[:1])
  with pytest.raises(CheckpointError, match="has shape .* the model needs"):
    run.init()
  missing = tiny_config(overrides=[*FAST, "init.format=mmjax", f"init.path={tmp_path / 'nothing'}"])
  run = build_run(missing, tmp_path / "b", jax.devices()[:1])
  with pytest.raises(CheckpointError, match="holds no mmjax run"):
    run.init()
  wrong = tiny_config(overrides=[*FAST, "init.format=mmjax", f"init.path={source_run}", "init.source=lm"])
  run = build_run(wrong, tmp_path / "c", jax.devices()[:1])
  with pytest.raises(CheckpointError, match="has no parameters at 'lm'"):
    run.init()


# --- the loader registry ----------------------------------------------------------------------------------


def test_unknown_loader_and_init_format_are_clear_errors(tiny_config):
  assert {"hf_gpt2", "mult_torch"} <= set(models.loader_names())
  with pytest.raises(KeyError, match=r"unknown weight loader 'hf_gtp2'. Did you mean hf_gpt2\? Registered "
                                     r"weight loaders: .*hf_gpt2"):
    models.loader("hf_gtp2")
  with pytest.raises(ConfigError, match=r"unknown init.format 'hf_gtp2'.*Did you mean hf_gpt2.*'mmjax'"):
    tiny_config(overrides=["init.format=hf_gtp2", "init.path=x"])
  with pytest.raises(ConfigError, match="set init.format and init.path together"):
    tiny_config(overrides=["init.format=mmjax"])
  with pytest.raises(ConfigError, match="set init.format and init.path together"):
    tiny_config(overrides=["init.path=runs/x"])
  with pytest.raises(ValueError, match="already registered"):
    registry.register_loader("hf_gpt2")(lambda path, model: {})


def init_section(**kw):
  import ml_collections

  return ml_collections.ConfigDict(kw)


def test_hf_gpt2_loader_gives_the_lm_subtree_of_causal_lm():
  """The hf_gpt2 loader on the fixture directory: GPT2's parameter tree, exactly the shapes of the ``lm``
  subtree of a causal_lm (or Frozen) built with the directory's GPT2Config; init.source cuts a subtree."""
  from mmjax.models.convert.hf_gpt2 import load_hf_gpt2

  model, want = load_hf_gpt2(GPT2_FIXTURE)
  got = models.loader("hf_gpt2")(GPT2_FIXTURE, None)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
  lm = models.build("causal_lm", {"lm": {"vocab_size": 299, "n_positions": 64, "n_embd": 32, "n_layer": 2,
                                         "n_head": 4}})
  assert (lm.lm.n_embd, lm.lm.n_layer) == (model.config.n_embd, model.config.n_layer)
  tokens = np.zeros((1, 4), np.int32)
  abstract = jax.eval_shape(
      lambda: nn.unbox(lm.init(jax.random.PRNGKey(0), {"caption_tokens": tokens}, train=False)))
  shapes = jax.tree_util.tree_map(lambda a: a.shape, abstract["params"]["lm"])
  assert jax.tree_util.tree_map(np.shape, got) == shapes
  init = init_section(format="hf_gpt2", path=str(GPT2_FIXTURE), source="h_1", target="")
  block = load_pretrained(init, lm)
  assert set(block) == {"ln_1", "attn", "ln_2", "mlp"} and isinstance(block["ln_1"]["scale"], np.ndarray)
  np.testing.assert_array_equal(block["mlp"]["c_fc"]["kernel"], want["h_1"]["mlp"]["c_fc"]["kernel"])
  assert load_pretrained(init_section(format="", path="", source="", target=""), lm) is None


def test_a_registered_loader_initialises_a_subtree_through_the_engine(tiny_config, tmp_path, monkeypatch):
  """A loader registered under a new name is reached from config.init.format, receives the model being
  initialised, and its parameters are grafted at init.target."""
  plain = build_run(tiny_config(overrides=FAST), tmp_path / "plain", jax.devices()[:1])
  plain.checkpointer.close()
  head = plain.abstract_state.params["head_out"]
  seen = []

  def ones(path, model):
    seen.append((path, type(model).__name__))
    return {"head": jax.tree_util.tree_map(lambda a: np.ones(a.shape, np.float32), head)}

  monkeypatch.setitem(registry._LOADERS._items, "ones_for_test", ones)
  cfg = tiny_config(overrides=[*FAST, "init.format=ones_for_test", "init.path=anything", "init.source=head",
                               "init.target=head_out"])
  run = build_run(cfg, tmp_path / "grafted", jax.devices()[:1])
  state = jax.device_get(run.init())
  run.checkpointer.close()
  assert seen == [("anything", "LateFusion")]
  assert all((np.asarray(a) == 1).all() for a in jax.tree_util.tree_leaves(state.params["head_out"]))
