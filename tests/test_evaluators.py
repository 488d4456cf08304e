"""Evaluators from the config: the registry, the robustness evaluator and the confusion matrix."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import evaluators
from mmjax.errors import ConfigError
from mmjax.evaluators import robustness
from mmjax.evaluators.split_metrics import confusion_matrix
from mmjax.train import restore_run, train_and_evaluate

QUIET = dict(devices=jax.devices()[:1], echo=lambda *a, **k: None)


def test_registry_names_and_errors():
  assert {"split_metrics", "cross_modal", "robustness"} <= set(evaluators.names())
  with pytest.raises(ConfigError, match="Did you mean split_metrics"):
    evaluators.get("split_metric")


def test_specs_add_the_task_metrics_on_the_eval_and_test_splits(tiny_config):
  cfg = tiny_config(overrides=["eval_every=7", "evaluators.noise.name=robustness",
                               "evaluators.noise.every=3"])
  specs = evaluators.specs(cfg)
  assert specs["validation"] == {"name": "split_metrics", "every": 7, "kwargs": {"split": "validation"}}
  assert specs["test"] == {"name": "split_metrics", "every": 0, "kwargs": {"split": "test"}}
  assert specs["noise"] == {"name": "robustness", "every": 3, "kwargs": {}}


def test_confusion_matrix_by_hand():
  m = confusion_matrix([0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 0], 3)
  np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 1], [1, 0, 2]])


def test_corrupt_tokens_and_features():
  key = jax.random.PRNGKey(0)
  batch = {"text": jnp.full((4, 50), 7, jnp.int32), "audio": jnp.zeros((4, 50, 3))}
  swapped = robustness.corrupt(batch, "text", "noise", 1.0, key, {"kind": "tokens", "low": 2, "high": 9})
  assert (swapped["text"] >= 2).all() and (swapped["text"] <= 9).all()
  assert 0.7 < float((swapped["text"] != 7).mean()) < 0.95  # every token redrawn; 1/8 land on 7 again
  noised = robustness.corrupt(batch, "audio", "noise", 2.0, key, {"kind": "float", "sd": 0.5})
  assert float(noised["audio"].std()) == pytest.approx(1.0, rel=0.1)
  ones = {"audio": jnp.ones((2, 3))}
  dropped = robustness.corrupt(ones, "audio", "drop", 0.0, key, {"kind": "float", "sd": 1.0})
  assert float(jnp.abs(dropped["audio"]).sum()) == 0.0


@pytest.fixture(scope="module")
def audio_only(tmp_path_factory, data_dir):
  """An audio-only late-fusion run (a few steps): it must ignore the image and the text entirely."""
  from mmjax.config import get_config
  from tests.conftest import CONFIGS

  workdir = tmp_path_factory.mktemp("audio_only")
  cfg = get_config(f"{CONFIGS / 'late_fusion_digits.py'}:audio,runlocal",
                   [f"data.data_dir={data_dir}", "checkpoint_every=0", "async_checkpoints=false",
                    "eval_every=0"])
  train_and_evaluate(cfg, workdir, **QUIET)
  return workdir


def test_robustness_of_a_unimodal_model(audio_only):
  run, state = restore_run(audio_only, devices=jax.devices()[:1])
  ev = evaluators.get("robustness")(run, modalities=("image", "audio", "text"), noise_levels=(0.5, 2.0),
                                    metric="loss")
  result = ev.evaluate(state.params, step=6, name="robust")
  m = result.metrics
  clean = m["clean/loss"]
  for cond in ("drop/image/loss", "drop/text/loss", "noise/image/0.5/loss", "noise/text/2/loss"):
    assert m[cond] == pytest.approx(clean, rel=1e-6), cond  # the model does not read them
  assert m["drop/audio/loss"] != pytest.approx(clean, rel=1e-3)
  assert m["noise/audio/2/loss"] != pytest.approx(clean, rel=1e-3)
  doc = json.loads((audio_only / "robustness" / "robust-step000006.json").read_text())
  assert doc["metric"] == "loss" and doc["noise"]["audio"]["2"]["loss"] == m["noise/audio/2/loss"]
  assert (audio_only / "robustness" / "robust-step000006.png").stat().st_size > 1000
  assert result.images["robust/robustness"].dtype == np.uint8
