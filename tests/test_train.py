"""The engine end to end on digits_av: training, resuming, sharding, and the errors users hit."""

import shutil

import jax
import numpy as np
import pytest

from mmjax.train import BatchError, CheckpointError, train_and_evaluate
from mmjax.train.mesh import batch_sharding, make_mesh
from mmjax.train.run import make_global_batch


def quiet(*args, **kwargs):
  pass


def same_metrics(a, b):
  for split in ("train", "validation", "test"):
    assert a[split].keys() == b[split].keys()
    for k in a[split]:
      np.testing.assert_allclose(a[split][k], b[split][k], rtol=1e-6, err_msg=f"{split}/{k}")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
  """A 6-step runlocal run with checkpoints at steps 3 and 6, on one device."""
  from mmjax.config import get_config
  from tests.conftest import CONFIGS

  config = get_config(f"{CONFIGS / 'late_fusion_digits.py'}:runlocal", [f"data.data_dir={data_dir}",
                                                                        "async_checkpoints=false"])
  workdir = tmp_path_factory.mktemp("run")
  metrics = train_and_evaluate(config, workdir, devices=jax.devices()[:1], echo=quiet)
  return config, workdir, metrics


def test_run_writes_metrics_logs_and_checkpoints(finished_run):
  config, workdir, metrics = finished_run
  assert metrics["step"] == 6 and metrics["validation"]["count"] == 179 and metrics["test"]["count"] == 359
  assert np.isfinite(metrics["train"]["loss"])
  flops = metrics["flops"]  # the step's FLOPs: XLA's and the model's analytic count (mmjax.flops)
  assert flops["xla_train_step"] > 0 and flops["analytic_train_step"] > 0
  assert flops["analytic_over_xla"] == pytest.approx(flops["analytic_train_step"] / flops["xla_train_step"])
  assert (workdir / "metrics.json").exists() and (workdir / "config.json").exists()
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert sum('"split": "train"' in line for line in lines) == 3  # log_every 2
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]


def test_resume_after_a_crash_gives_identical_final_metrics(finished_run, tmp_path):
  """Drop the last checkpoint (as if killed between steps 3 and 6) and rerun: same final metrics."""
  config, workdir, metrics = finished_run
  crashed = tmp_path / "crashed"
  shutil.copytree(workdir, crashed)
  shutil.rmtree(crashed / "checkpoints" / "6")
  (crashed / "metrics.json").unlink()
  lines = []
  resumed = train_and_evaluate(config, crashed, devices=jax.devices()[:1], echo=lines.append)
  assert any("resuming from checkpoint at step 3" in line for line in lines)
  same_metrics(resumed, metrics)


def test_sharded_over_8_devices_equals_1_device(tiny_config, tmp_path):
  assert jax.device_count() == 8
  config = tiny_config(overrides=["num_steps=3", "log_every=1", "eval_every=0", "checkpoint_every=0",
                                  "async_checkpoints=false"])
  one = train_and_evaluate(config, tmp_path / "one", devices=jax.devices()[:1], echo=quiet)
  eight = train_and_evaluate(config, tmp_path / "eight", echo=quiet)
  for split in ("train", "validation", "test"):
    for k, v in one[split].items():
      np.testing.assert_allclose(eight[split][k], v, atol=1e-5, rtol=1e-5, err_msg=f"{split}/{k}")
  losses = [[line for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines() if "train" in line]
            for d in ("one", "eight")]
  assert len(losses[0]) == len(losses[1]) == 3


def test_checkpoint_of_another_model_is_a_clear_error(finished_run, tmp_path):
  config, workdir, _ = finished_run
  other = config.copy_and_resolve_references()
  other.model.kwargs.width = 32
  shutil.copytree(workdir, tmp_path / "w")
  with pytest.raises(CheckpointError, match="written by a different model"):
    train_and_evaluate(other, tmp_path / "w", devices=jax.devices()[:1], echo=quiet)


def test_checkpoint_with_other_state_tree_is_a_clear_error(finished_run, tmp_path):
  config, workdir, _ = finished_run
  other = config.copy_and_resolve_references()
  other.optimizer.name = "sgd"  # no Adam moments in the optimizer state
  shutil.copytree(workdir, tmp_path / "w")
  with pytest.raises(CheckpointError, match="does not match this run's training state"):
    train_and_evaluate(other, tmp_path / "w", devices=jax.devices()[:1], echo=quiet)


def test_corrupt_checkpoint_is_a_clear_error(finished_run, tmp_path):
  config, workdir, _ = finished_run
  shutil.copytree(workdir, tmp_path / "w")
  for f in (tmp_path / "w" / "checkpoints" / "6" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"\x00garbage")
  with pytest.raises(CheckpointError, match="corrupt"):
    train_and_evaluate(config, tmp_path / "w", devices=jax.devices()[:1], echo=quiet)


def test_batch_whose_modalities_disagree_in_size_is_a_clear_error():
  sharding = batch_sharding(make_mesh(devices=jax.devices()[:1]))
  batch = {"image": np.zeros((4, 8, 8), np.float32), "audio": np.zeros((3, 10, 40), np.float32)}
  with pytest.raises(BatchError, match="disagree in batch size"):
    make_global_batch(batch, sharding)
  with pytest.raises(BatchError, match="does not split"):
    make_global_batch({"image": np.zeros((3, 8, 8))}, batch_sharding(make_mesh()))


def test_nan_loss_stops_the_run_naming_the_steps(tiny_config, tmp_path):
  config = tiny_config(overrides=["checkpoint_every=0", "async_checkpoints=false"])
  config.task.kwargs.label_smoothing = float("nan")
  with pytest.raises(FloatingPointError, match="loss is nan in steps 1..2"):
    train_and_evaluate(config, tmp_path, devices=jax.devices()[:1], echo=quiet)
