"""Task losses against hand-computed values, and split-level metrics through the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import tasks
from mmjax.errors import ConfigError, UserError
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


# -m slow: tests/test_multimodal_sentiment.py trains configs/mfm_mosi.py end to end and checks the same
# split-level MOSI metrics by default
@pytest.mark.slow
def test_split_level_metrics_reach_the_final_results(tiny_config, tmp_path):
  """A regression task's per-example outputs are gathered over the split and summarised (MOSI metrics)."""
  config = tiny_config(overrides=["model.kwargs.num_classes=1", "task.name=regression",
                                  "checkpoint_every=0", "eval_every=0", "async_checkpoints=false"])
  final = train_and_evaluate(config, tmp_path, devices=jax.devices()[:2], echo=lambda *a: None)
  for split in ("validation", "test"):
    assert {"loss", "mae", "corr", "acc7", "acc2", "f1", "acc2_has0", "count"} <= set(final[split])
    assert final[split]["loss"] == pytest.approx(final[split]["mae"], rel=1e-5)  # L1 loss is the MAE
  assert final["test"]["count"] == 359


def _label_error(match):
  return pytest.raises(tasks.LabelError, match=match)


def test_check_batch_classification():
  task = tasks.get("classification")
  assert issubclass(tasks.LabelError, UserError)
  task.check_batch({"label": np.array([0, 6, 3])}, (3, 7))  # in range
  # labels 0-9 against 7 classes; the padded row (_valid = 0) holding 12 is not counted
  batch = {"label": np.array([0, 9, 8, 12, 1, 8]), "_valid": np.array([1, 1, 1, 0, 1, 1], np.float32)}
  with _label_error(r"task 'classification': batch\['label'\] holds values \[8, 9\] in 3 of 5 examples "
                    r"outside the valid range \[0, 7\) of the model's 7 classes; set "
                    "model.kwargs.num_classes .* to at least 10"):
    task.check_batch(batch, (6, 7))
  task.check_batch(dict(batch, label=np.array([0, 6, 5, 12, 1, 2])), (6, 7))  # only the padding is out
  with _label_error(r"values \[-1\] in 1 of 2 examples .*map the labels to class ids"):
    task.check_batch({"label": np.array([-1, 2])}, (2, 7))
  with _label_error(r"non-integer values \[0.5\] .*task.name=regression"):
    task.check_batch({"label": np.array([0.5, 2.0])}, (2, 7))
  with _label_error(r"reads its labels from batch\['y'\], which the batch does not have .*"
                    "task.kwargs.label_key"):
    tasks.get("classification", label_key="y").check_batch({"label": np.zeros(2, np.int32)}, (2, 7))


def test_check_batch_multilabel_binary():
  task = tasks.get("multilabel_binary", labels=("a", "b"))
  task.check_batch({"label": np.array([[0, 1], [1, 1]])}, (2, 4))
  batch = {"label": np.array([[0, 2], [1, 1], [3, 0]]), "_valid": np.array([1, 1, 0])}
  with _label_error(r"batch\['label'\] holds values \[2\] in 1 of 2 examples that are not 0/1 flags; .*"
                    r"binarize"):
    task.check_batch(batch, (3, 4))
  task.check_batch(dict(batch, label=np.array([[0, 1], [1, 1], [3, 0]])), (3, 4))  # padding ignored
  with _label_error(r"batch\['label'\] has shape \[2, 3\] but the model predicts 2 binary labels "
                    r"\(outputs \[B, 4\]\), so the labels must be \[B, 2\]"):
    task.check_batch({"label": np.zeros((2, 3), np.int32)}, (2, 4))
  with _label_error(r"the model has 6 outputs .* task.kwargs.labels names 2 labels .*output_dim to 4"):
    task.check_batch({"label": np.zeros((2, 3), np.int32)}, (2, 6))


def test_check_batch_regression():
  unchecked = tasks.get("regression")
  unchecked.check_batch({"label": np.array([-30.0, 4.5])}, (2, 1))  # no label_range: any finite value
  batch = {"label": np.array([0.5, np.nan, 1.0]), "_valid": np.array([1.0, 1.0, 0.0])}
  with _label_error(r"task 'regression': batch\['label'\] holds non-finite values \[nan\] in 1 of 2 "
                    "examples"):
    unchecked.check_batch(batch, (3, 1))
  unchecked.check_batch(dict(batch, _valid=np.array([1.0, 0.0, 1.0])), (3, 1))  # the NaN row is padding
  task = tasks.get("regression", label_range=[-3, 3])  # a list from a config becomes a (hashable) tuple
  assert task.label_range == (-3.0, 3.0) and hash(task)
  task.check_batch({"label": np.array([-3.0, 0.2, 3.0])}, (3, 1))
  with _label_error(r"values \[-4.5, 3.5\] in 2 of 3 examples outside task.kwargs.label_range \[-3, 3\]; .*"
                    "widen task.kwargs.label_range"):
    task.check_batch({"label": np.array([-4.5, 0.0, 3.5])}, (3, 1))
  with pytest.raises(ConfigError, match="label_range must be"):
    tasks.get("regression", label_range=(3, -3))


def test_check_batch_next_token():
  task = tasks.get("next_token")
  tokens = np.array([[1, 2, 40], [3, 99, 0], [77, 1, 1]])
  mask = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 1]], bool)
  batch = {"caption_tokens": tokens, "caption_tokens_mask": mask, "_valid": np.array([1.0, 1.0, 0.0])}
  with _label_error(r"task 'next_token': batch\['caption_tokens'\] holds token ids outside the model's "
                    r"vocabulary \[0, 30\) \(logits \[B, T, 30\]\): values \[40\] in 1 of 2 examples; "
                    r".*at least 41 tokens \(model.kwargs.lm.vocab_size\)"):
    task.check_batch(batch, (3, 3, 30))  # 99 is a padded step, 77 a padded example
  task.check_batch(batch, (3, 3, 50))
  task.check_batch({"tokens": np.array([[5, 60]])}, (1, 2, 61))  # the LM configs' key
  with _label_error(r"values \[60\]"):
    task.check_batch({"tokens": np.array([[5, 60]])}, (1, 2, 60))
  # several candidate keys: the task cannot tell which the model reads, so it checks none ...
  task.check_batch({"tokens": np.array([[99]]), "caption_tokens": np.array([[99]])}, (1, 1, 30))
  # ... unless token_key names it; "" turns the check off
  with _label_error(r"batch\['tokens'\] holds token ids"):
    tasks.get("next_token", token_key="tokens").check_batch(
        {"tokens": np.array([[99]]), "caption_tokens": np.array([[1]])}, (1, 1, 30))
  tasks.get("next_token", token_key="").check_batch({"tokens": np.array([[99]])}, (1, 1, 30))
  with _label_error(r"task.kwargs.token_key is 'text', which the batch does not have"):
    tasks.get("next_token", token_key="text").check_batch({"tokens": np.array([[1]])}, (1, 1, 30))


def test_check_batch_vae():
  task = tasks.get("vae")
  task.check_batch({"image": np.zeros((2, 8, 8))}, (2, 4))  # no label in the batch: nothing to check
  batch = {"label": np.array([0, 3, 9, 12]), "_valid": np.array([1.0, 1.0, 1.0, 0.0])}
  with _label_error(r"task 'vae': batch\['label'\] holds values \[9\] in 1 of 3 examples outside the valid "
                    r"range \[0, 4\) .*num_classes to at least 10 .*label_key=''"):
    task.check_batch(batch, (4, 4))
  task.check_batch(batch, (4, 10))
  task.check_batch({"label": np.array([0.5, -2.0])}, (2,))  # predictions [B] (num_classes=1): finite labels
  with _label_error(r"non-finite values \[inf\]"):
    task.check_batch({"label": np.array([0.5, np.inf])}, (2,))
  tasks.get("vae", label_key="").check_batch(batch, (4, 4))  # a model without a label head


def test_pretraining_weighs_the_models_losses_and_divides_accuracies_by_their_counts():
  task = tasks.get("pretraining")
  aux = {"losses": {"mlm": (jnp.array([1.0, 3.0, 100.0]), 1.0), "itm": (jnp.array([0.5, 0.5, 100.0]), 2.0)},
         "accuracies": {"mlm_accuracy": (jnp.array([1.0, 2.0, 9.0]), jnp.array([2.0, 2.0, 9.0]))}}
  batch = {"_valid": jnp.array([1.0, 1.0, 0.0])}  # the third example is padding
  loss, metrics = task.loss(jnp.zeros((3, 2)), aux, batch)
  assert float(loss) == pytest.approx(2.0 + 2 * 0.5)
  assert float(metrics["mlm"]) == pytest.approx(2.0) and float(metrics["itm"]) == pytest.approx(0.5)
  assert float(metrics["mlm_accuracy"]) == pytest.approx(3 / 4)  # per token, not per example
  sums = task.eval_sums(jnp.zeros((3, 2)), aux, batch)
  assert float(sums["loss"]) == pytest.approx(4.0 + 2 * 1.0) and float(sums["count"]) == 2
  arrays = {k: np.asarray(v)[:2] for k, v in task.eval_outputs(None, aux, batch).items()}  # real rows
  assert task.summarize(arrays) == {"mlm_accuracy": pytest.approx(3 / 4)}
  with pytest.raises(ConfigError, match="aux\\['losses'\\]"):
    task.loss(jnp.zeros((3, 2)), {}, batch)
