"""The catalogue of user mistakes, through the command line as users run it: each exits with status 2 and
one message that names the problem and the fix, prints no traceback, and leaves the workdir's files
byte-identical. All cases run in one subprocess (``tests/cli_cases.py``), so JAX is imported once."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from mmjax.train import train_and_evaluate
from tests.conftest import CONFIGS, ROOT

LATE = f"{CONFIGS / 'late_fusion_digits.py'}:runlocal"


def snapshot(path: Path) -> dict:
  """``{relative path: bytes}`` of every file under ``path`` (``{}`` when it does not exist)."""
  if path.is_file():
    return {"": path.read_bytes()}
  return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
  from mmjax.config import get_config

  workdir = tmp_path_factory.mktemp("finished")
  cfg = get_config(LATE, [f"data.data_dir={data_dir}", "async_checkpoints=false"])
  train_and_evaluate(cfg, workdir, devices=jax.devices()[:1], echo=lambda *a, **k: None)
  return workdir


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, data_dir, finished):
  """``{case: (result, workdir or None, snapshot before)}`` for every case, run in one subprocess."""
  tmp = tmp_path_factory.mktemp("bad")
  data = f"--config.data.data_dir={data_dir}"
  (tmp / "a_file").write_text("not a directory")
  (tmp / "syntax.py").write_text("def get_config(:\n  pass\n")
  (tmp / "raises.py").write_text("def get_config():\n  raise RuntimeError('boom: no such setting')\n")

  def copy(name):
    shutil.copytree(finished, tmp / name)
    return tmp / name

  def train(workdir, *extra, config=LATE):
    return ["train", "--config", str(config), "--workdir", str(workdir), data, *extra]

  locked = copy("locked")
  cases = {
      "bad variant": (train(tmp / "w1", config=f"{CONFIGS / 'late_fusion_digits.py'}:bogus"), tmp / "w1",
                      "unknown config argument 'bogus'"),
      "syntax error": (train(tmp / "w2", config=tmp / "syntax.py"), tmp / "w2",
                       "has a syntax error at line 1"),
      "get_config raises": (train(tmp / "w3", config=tmp / "raises.py"), tmp / "w3", "boom: no such setting"),
      "mesh": (train(tmp / "w4", "--config.mesh.data=3"), tmp / "w4", "mesh"),
      "workdir is a file": (train(tmp / "a_file"), tmp / "a_file", "is a file"),
      "workdir below a file": (train(tmp / "a_file" / "run"), tmp / "a_file", "lies below the file"),
      "wrong type": (train(tmp / "w5", "--config.num_steps=abc"), tmp / "w5", "expected a int"),
      "unknown evaluator argument": (
          train(tmp / "w6", "--config.evaluators.x.name=robustness", "--config.evaluators.x.kwargs.bogus=1"),
          tmp / "w6", "cannot take kwargs ['bogus']"),
      "unknown attention kernel": (train(tmp / "w7", "--config.model.kwargs.attention=foo"), tmp / "w7",
                                   "foo"),
      "cudnn on the CPU": (train(tmp / "w8", "--config.model.kwargs.attention=cudnn"), tmp / "w8", "cudnn"),
      "out of memory": (train(tmp / "w9", "--config.model.kwargs.width=200000"), tmp / "w9",
                        "needs about"),
      "model field out of range": (
          train(tmp / "w14", "--config.model.kwargs.num_heads=3",
                config=f"{CONFIGS / 'mult_digits.py'}:runlocal"),
          tmp / "w14", "not divisible by num_heads 3"),
      "labels out of range": (train(tmp / "w12", "--config.model.kwargs.num_classes=7"), tmp / "w12",
                              "outside the valid range [0, 7)"),
      # Found while training: the run has written its logs by then (only the message is checked).
      "NaN loss": (train(tmp / "w13", "--config.optimizer.lr=1e30", "--config.optimizer.clip_norm=0.0"), None,
                   "Lower the learning rate"),
      "resume with another model": (train(copy("other_model"), "--config.model.kwargs.width=32"),
                                    tmp / "other_model", "written by a different model"),
      "resume with another optimizer": (train(copy("other_opt"), "--config.optimizer.name=sgd"),
                                        tmp / "other_opt", "does not match this run's training state"),
      "locked workdir": (train(locked), locked, f"in use by process {os.getpid()}"),
      "eval --step best without best_metric": (
          ["eval", "--config", LATE, "--workdir", str(finished), data, "--step", "best"], finished,
          "needs the run's best_metric"),
      "eval a step that was not saved": (
          ["eval", "--config", LATE, "--workdir", str(finished), data, "--step", "5"], finished,
          "no checkpoint at step 5"),
      "eval without checkpoints": (["eval", "--config", LATE, "--workdir", str(tmp / "w10"), data],
                                   tmp / "w10", "no checkpoints"),
      "sample from a classifier": (
          ["sample", "--config", LATE, "--workdir", str(finished), data, "--from", "audio", "--to", "image"],
          finished, "cannot generate"),
      "fewshot on a classifier": (["fewshot", "--config", LATE, "--workdir", str(finished), data], finished,
                                  "cannot read interleaved prompts"),
      "sweep with bad seeds": (["sweep", "--config", LATE, "--seeds", "a,b", "--workdir", str(tmp / "w11")],
                               tmp / "w11", "seed"),
      "plot a missing run": (["plot", str(tmp / "nothing")], tmp / "nothing", "does not exist"),
      "unknown dataset": (["data", "build", "no_such_dataset", "--data_dir", str(tmp / "tfds")], tmp / "tfds",
                          "unknown dataset 'no_such_dataset'"),
  }
  before = {name: snapshot(workdir) if workdir else {} for name, (_, workdir, _) in cases.items()}
  spec = tmp / "cases.json"
  spec.write_text(json.dumps({name: argv for name, (argv, _, _) in cases.items()}))
  out = tmp / "results.json"
  # The lock of "locked workdir" is held by this process, as a live run would hold it.
  fd = os.open(locked / ".mmjax.lock", os.O_RDWR | os.O_CREAT)
  fcntl.flock(fd, fcntl.LOCK_EX)
  os.write(fd, json.dumps({"pid": os.getpid(), "host": "this-host", "started": 0}).encode())
  try:
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_cases.py"), str(spec), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
  finally:
    os.close(fd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  before["locked workdir"] = {k: v for k, v in before["locked workdir"].items() if k != ".mmjax.lock"}
  results = json.loads(out.read_text())
  return {name: (results[name], workdir, before[name], expected)
          for name, (_, workdir, expected) in cases.items()}


CASES = ["bad variant", "syntax error", "get_config raises", "mesh", "workdir is a file",
         "workdir below a file", "wrong type", "unknown evaluator argument", "unknown attention kernel",
         "cudnn on the CPU", "out of memory", "model field out of range", "labels out of range",
         "resume with another model",
         "resume with another optimizer",
         "locked workdir", "eval --step best without best_metric", "eval a step that was not saved",
         "eval without checkpoints", "sample from a classifier", "fewshot on a classifier",
         "sweep with bad seeds", "plot a missing run", "unknown dataset", "NaN loss"]


@pytest.mark.parametrize("case", CASES)
def test_user_mistake_exits_2_with_a_message_and_changes_nothing(case, catalogue):
  result, workdir, before, expected = catalogue[case]
  err = result["stderr"]
  assert result["escaped"] is None, result["escaped"]
  assert result["code"] == 2, (result["code"], err[-2000:], result["stdout"][-1000:])
  assert err.startswith("mmjax: error:") and "Traceback" not in err, err
  assert expected in " ".join(err.split()), err
  if workdir is None:
    return
  after = snapshot(workdir)
  if case == "locked workdir":
    after = {k: v for k, v in after.items() if k != ".mmjax.lock"}
  assert after == before, f"{case} changed {sorted(set(after) ^ set(before)) or 'file contents'} in {workdir}"


def test_a_damaged_metrics_file_reads_as_absent_with_a_warning(finished, tmp_path, data_dir):
  workdir = tmp_path / "w"
  shutil.copytree(finished, workdir)
  (workdir / "metrics.json").write_text("")  # as a kill during the final evaluation left it, before
  lines = []
  from mmjax.config import get_config

  cfg = get_config(LATE, [f"data.data_dir={data_dir}"])
  final = train_and_evaluate(cfg, workdir, devices=jax.devices()[:1], echo=lines.append)
  assert any("is damaged" in line for line in lines), lines
  assert json.loads((workdir / "metrics.json").read_text())["step"] == final["step"] == 6
