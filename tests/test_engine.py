"""The engine's second pass: TensorBoard, best checkpoint, plateau schedule, EMA, early stopping, gradient
accumulation, and ``restore_run``."""

import functools
import json
import struct

import jax
import numpy as np
import pytest

from mmjax import models, tasks
from mmjax.train import restore_run, train_and_evaluate
from mmjax.train.optim import make_optimizer
from mmjax.train.run import init_state
from mmjax.train.step import train_step
from tests.test_models import fake_batch

QUIET = dict(devices=jax.devices()[:1], echo=lambda *a, **k: None)

# A run of up to 30 steps that evaluates every 5 steps with a learning rate so small that nothing improves:
# the best checkpoint stays the first evaluation's (step 5), the plateau schedule halves the rate after two
# evaluations without improvement (steps 10 and 15), and early stopping ends the run after three (step 20).
WATCHED = ["num_steps=30", "log_every=5", "eval_every=5", "checkpoint_every=5", "keep_checkpoints=1",
           "best_metric=validation/accuracy", "early_stopping_patience=3", "optimizer.lr=1e-9",
           "optimizer.schedule=constant", "optimizer.warmup_steps=0", "optimizer.plateau.factor=0.5",
           "optimizer.plateau.patience=2", "optimizer.ema_decay=0.5", "async_checkpoints=false"]


@pytest.fixture(scope="module")
def watched(tmp_path_factory, data_dir):
  from mmjax.config import get_config
  from tests.conftest import CONFIGS

  spec = f"{CONFIGS / 'late_fusion_digits.py'}:runlocal"
  config = get_config(spec, [f"data.data_dir={data_dir}", *WATCHED])
  workdir = tmp_path_factory.mktemp("watched")
  lines = []
  final = train_and_evaluate(config, workdir, devices=jax.devices()[:1], echo=lines.append)
  return config, workdir, final, lines


def read_events(folder) -> dict:
  """``{tag: [(step, value)]}`` of the scalars in TensorBoard event files (TFRecord framing: length,
  masked CRC, payload, masked CRC; payloads are ``Event`` protos)."""
  from tensorboardX.proto import event_pb2

  scalars = {}
  for path in sorted(folder.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_tensorboard_has_learning_rate_training_and_validation_metrics(watched):
  _, workdir, final, _ = watched
  scalars = read_events(workdir / "tensorboard")
  for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/steps_per_s",
              "validation/accuracy", "validation/loss", "validation_ema/accuracy", "test/accuracy"):
    assert tag in scalars, (tag, sorted(scalars))
  assert [s for s, _ in scalars["validation/accuracy"]] == [5, 10, 15, 20]
  last = scalars["validation/accuracy"][-1][1]
  np.testing.assert_allclose(last, final["validation"]["accuracy"], rtol=1e-6)


def test_plateau_halves_the_learning_rate_after_patience_evaluations(watched):
  _, workdir, final, _ = watched
  lr = {r["step"]: r["learning_rate"] for r in map(json.loads, (workdir / "metrics.jsonl").open())
        if r["split"] == "train"}
  # Evaluations at 5 (the best), 10 and 15 (no improvement: after 2, the scale drops to 0.5).
  np.testing.assert_allclose([lr[5], lr[10], lr[15], lr[20]], [1e-9, 1e-9, 1e-9, 5e-10], rtol=1e-5)


def test_plateau_update_counts_evaluations_without_improvement():
  opt = make_optimizer(_optimizer_config(factor=0.1, patience=3), 100)
  state = opt.plateau_init()
  scales = []
  for value in (1.0, 0.5, 0.6, 0.6, 0.55, 0.7, 0.4):  # no improvement on 0.5 for three evaluations
    state = opt.plateau_update(state, value)
    scales.append(float(state.scale))
  np.testing.assert_allclose(scales, [1, 1, 1, 1, 0.1, 0.1, 0.1], rtol=1e-6)
  maximise = make_optimizer(_optimizer_config(factor=0.5, patience=1, mode="max"), 100)
  state = maximise.plateau_update(maximise.plateau_init(), 0.9)
  state = maximise.plateau_update(state, 0.8)  # accuracy fell: one evaluation without improvement
  assert float(state.scale) == 0.5


def _optimizer_config(**plateau):
  from mmjax.config import default_config

  cfg = default_config().optimizer
  cfg.plateau.update(plateau)
  return cfg


def test_best_checkpoint_survives_keep_1_and_eval_step_best_evaluates_it(watched, capsys):
  config, workdir, final, _ = watched
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [5, 20]  # the newest (keep_checkpoints=1) and the best
  assert final["best"]["step"] == 5 and final["best"]["metric"] == "validation/accuracy"
  run, state = restore_run(workdir, "best", devices=jax.devices()[:1])
  assert int(state.step) == 5
  from mmjax.cli import main
  from tests.conftest import CONFIGS

  args = ["eval", "--config", f"{CONFIGS / 'late_fusion_digits.py'}:runlocal", "--workdir", str(workdir),
          "--split", "validation", "--step", "best", f"--config.data.data_dir={config.data.data_dir}", *[
              f"--config.{o}" for o in WATCHED]]
  assert main(args) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["step"] == 5
  np.testing.assert_allclose(printed["validation"]["accuracy"], final["best"]["validation"]["accuracy"])


def test_ema_is_evaluated_and_checkpointed_beside_the_parameters(watched):
  _, workdir, final, _ = watched
  assert "validation_ema" in final and "test_ema" in final
  _, state = restore_run(workdir, devices=jax.devices()[:1])
  assert jax.tree_util.tree_structure(state.ema_params) == jax.tree_util.tree_structure(state.params)


def test_early_stopping_after_patience_evaluations_and_resume_stays_stopped(watched):
  config, workdir, final, lines = watched
  # Evaluations at 5 (best), 10, 15 and 20 (three without improvement): stop at 20 of 30 steps.
  assert final["step"] == 20 and final["stopped_early"] and final["best"]["step"] == 5
  assert any("early stopping at step 20" in line for line in lines)
  validation = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").open() if '"validation"' in x]
  assert validation == [5, 10, 15, 20]  # the final evaluation did not repeat step 20's
  import shutil

  again_dir = workdir.parent / "again"
  shutil.copytree(workdir, again_dir)
  again = train_and_evaluate(config, again_dir, **QUIET)
  assert again["step"] == 20 and again["stopped_early"]


def test_gradient_accumulation_equals_the_large_batch_learning_rate_included(schedule="warmup_cosine"):
  """k micro-batches give the update of one batch k times larger, and the schedule counts updates: after
  num_steps updates a decaying schedule has reached its end."""
  from mmjax.config import default_config

  model = models.build("late_fusion", {"vocab_size": 32, "width": 16, "num_heads": 2, "dropout": 0.0})
  cfg = default_config().optimizer
  # SGD with momentum: the update is linear in the gradients, so float32 reduction-order noise stays noise
  # (Adam divides ~0 gradients by their own magnitude and turns that noise into full-size steps).
  cfg.update({"name": "sgd", "momentum": 0.9, "lr": 1e-1, "schedule": schedule, "warmup_steps": 1,
              "clip_norm": 1.0, "ema_decay": 0.9})
  num_steps = 4
  opt = make_optimizer(cfg, num_steps)
  batch = fake_batch()
  task = tasks.get("classification")
  state0 = init_state(model, opt, batch, seed=0)
  runs = {}
  for k in (1, 2):
    step = jax.jit(functools.partial(train_step, model=model, optimizer=opt, task=task, accum_steps=k))
    state, lrs = state0, []
    for i in range(num_steps):
      previous = state
      state, metrics = step(state, batch)
      lrs.append(float(metrics["learning_rate"]))
      if k == 1 and i == 0:  # the EMA of the parameters, by hand: 0.9 * ema + 0.1 * new parameters
        expected = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, previous.ema_params, state.params)
        jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7),
                               state.ema_params, expected)
    runs[k] = (jax.device_get(state.params), lrs, float(metrics["loss"]))
  for k in (2,):
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
                           runs[k][0], runs[1][0])
    np.testing.assert_allclose(runs[k][1], runs[1][1], rtol=1e-6)
    np.testing.assert_allclose(runs[k][2], runs[1][2], rtol=1e-5)
  np.testing.assert_allclose(runs[1][1], [float(opt.schedule(i)) for i in range(num_steps)], rtol=1e-6)
  assert runs[1][1][0] == 0.0 and runs[1][1][1] == pytest.approx(1e-1)  # warm-up, then the decay
  assert runs[1][1][-1] < 0.5e-1  # it decays over the 4 updates, not over 4 x k micro-steps


def test_restore_run_reads_only(watched, tmp_path):
  import shutil

  _, workdir, _, _ = watched
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
  run, state = restore_run(copy, 5, devices=jax.devices()[:1])
  assert int(state.step) == 5 and run.config.num_steps == 30
  after = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
  assert before == after
  from mmjax.train import CheckpointError

  with pytest.raises(CheckpointError, match=r"no checkpoint at step 7.*\[5, 20\]"):
    restore_run(copy, 7, devices=jax.devices()[:1])
