"""Task losses against hand-computed values, and split-level metrics through the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import tasks
from mmjax.errors import ConfigError
from mmjax.train import train_and_evaluate


def test_regression_l1_with_padding_weights():
  task = tasks.get("regression")
  outputs = jnp.array([[1.0], [-2.0], [0.5], [9.0]])
  batch = {"label": jnp.array([0.0, -1.0, 1.0, 0.0]), "_valid": jnp.array([1.0, 1.0, 1.0, 0.0])}
  loss, _ = task.loss(outputs, {}, batch)
  assert float(loss) == pytest.approx((1.0 + 1.0 + 0.5) / 3)  # the padded example (error 9) is ignored
  sums = task.eval_sums(outputs, {}, batch)
  assert float(sums["loss"]) == pytest.approx(2.5) and float(sums["count"]) == 3
  l2 = tasks.get("regression", loss_type="l2")
  assert float(l2.loss(outputs, {}, batch)[0]) == pytest.approx((1.0 + 1.0 + 0.25) / 3)
  with pytest.raises(ValueError, match="outputs \\[B, 1\\]"):
    task.loss(jnp.zeros((4, 2)), {}, batch)
  with pytest.raises(ValueError, match="unknown regression loss"):
    tasks.get("regression", loss_type="huber")


def test_multilabel_binary_cross_entropy():
  task = tasks.get("multilabel_binary", labels=("a", "b"))
  # example 0: label a=1 with logits (0, log 3) -> p = 3/4; label b=0 with logits (0, 0) -> p = 1/2
  outputs = jnp.array([[0.0, np.log(3.0), 0.0, 0.0]])
  batch = {"label": jnp.array([[1, 0]])}
  loss, _ = task.loss(outputs, {}, batch)
  assert float(loss) == pytest.approx((-np.log(0.75) - np.log(0.5)) / 2, rel=1e-6)
  arrays = task.eval_outputs(outputs, {}, batch)
  metrics = task.summarize({k: np.asarray(v) for k, v in arrays.items()})
  assert metrics["a_acc"] == 1.0 and metrics["b_acc"] == 1.0  # argmax (tie -> 0) matches both labels


def test_unknown_task():
  with pytest.raises(ConfigError, match="unknown task 'regresion'. Did you mean regression"):
    tasks.get("regresion")


def test_split_level_metrics_reach_the_final_results(tiny_config, tmp_path):
  """A regression task's per-example outputs are gathered over the split and summarised (MOSI metrics)."""
  config = tiny_config(overrides=["model.kwargs.num_classes=1", "task.name=regression",
                                  "checkpoint_every=0", "eval_every=0", "async_checkpoints=false"])
  final = train_and_evaluate(config, tmp_path, devices=jax.devices()[:2], echo=lambda *a: None)
  for split in ("validation", "test"):
    assert {"loss", "mae", "corr", "acc7", "acc2", "f1", "acc2_has0", "count"} <= set(final[split])
    assert final[split]["loss"] == pytest.approx(final[split]["mae"], rel=1e-5)  # L1 loss is the MAE
  assert final["test"]["count"] == 359
