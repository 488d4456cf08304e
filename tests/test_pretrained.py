"""Starting from pretrained parameters (config.init) and freezing them (optimizer.frozen)."""

import jax
import numpy as np
import pytest

from mmjax.train import CheckpointError, build_run, train_and_evaluate
from mmjax.train.pretrained import graft, load_run_params

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
  cfg = tiny_config(overrides=[*FAST, f"init.workdir={source_run}", "init.source=image_encoder",
                               "init.target=image_encoder", "optimizer.frozen=image_encoder/.*"])
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
  wide = tiny_config(overrides=[*FAST, f"init.workdir={source_run}", "model.kwargs.width=32"])
  run = build_run(wide, tmp_path / "a", jax.devices()[:1])
  with pytest.raises(CheckpointError, match="has shape .* the model needs"):
    run.init()
  missing = tiny_config(overrides=[*FAST, f"init.workdir={tmp_path / 'nothing'}"])
  run = build_run(missing, tmp_path / "b", jax.devices()[:1])
  with pytest.raises(FileNotFoundError, match="no mmjax run"):
    run.init()
  wrong = tiny_config(overrides=[*FAST, f"init.workdir={source_run}", "init.source=lm"])
  run = build_run(wrong, tmp_path / "c", jax.devices()[:1])
  with pytest.raises(CheckpointError, match="has no parameters at 'lm'"):
    run.init()
