"""The ``mmjax`` command line as users run it, in subprocesses: kill and resume, eval, data, errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import CONFIGS, ROOT

CONFIG = f"{CONFIGS / 'late_fusion_digits.py'}:runlocal"
# 30 steps, a checkpoint every 5: long enough to interrupt, short enough for CI.
RUN = ["--config.num_steps=30", "--config.checkpoint_every=5", "--config.log_every=5",
       "--config.eval_every=0"]


def mmjax(*args, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "mmjax", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc, timeout=300):
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"mmjax did not finish in {timeout}s:\n{err[-3000:]}")
  return proc.returncode, out, err


def train(workdir, data_dir, *extra):
  return mmjax("train", "--config", CONFIG, "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
               *RUN, *extra)


def wait_for_checkpoint(proc, workdir, step, timeout=300):
  path = workdir / "checkpoints" / str(step)
  start = time.time()
  while not (path / "_CHECKPOINT_METADATA").exists():
    if proc.poll() is not None:
      pytest.fail(f"run ended before checkpoint {step}:\n{proc.stderr.read()[-3000:]}")
    if time.time() - start > timeout:
      proc.kill()
      pytest.fail(f"no checkpoint {step} after {timeout}s")
    time.sleep(0.05)


def final_metrics(workdir):
  m = json.loads((workdir / "metrics.json").read_text())
  return {k: m[k] for k in ("step", "train", "validation", "test")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """An uninterrupted 30-step run."""
  workdir = tmp_path_factory.mktemp("reference")
  code, out, err = finish(train(workdir, data_dir))
  assert code == 0, err[-3000:]
  return workdir, final_metrics(workdir)


# SIGKILL is tested during a checkpoint write and during the final evaluation (below).
@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_killed_run_resumes_to_the_same_final_metrics(sig, reference, data_dir, tmp_path):
  _, expected = reference
  proc = train(tmp_path, data_dir)
  wait_for_checkpoint(proc, tmp_path, 5)
  proc.send_signal(sig)
  code, out, err = finish(proc)
  assert not (tmp_path / "metrics.json").exists(), "the run finished before it was interrupted"
  if sig == signal.SIGTERM:
    assert code == 143 and "checkpoint saved" in out, err[-2000:]
  else:
    assert code == -signal.SIGKILL
  code, out, err = finish(train(tmp_path, data_dir))
  assert code == 0, err[-3000:]
  assert "resuming from checkpoint at step" in out
  assert final_metrics(tmp_path) == expected


def test_eval_command_reproduces_the_final_test_metrics(reference, data_dir):
  workdir, expected = reference
  code, out, err = finish(mmjax("eval", "--config", CONFIG, "--workdir", str(workdir),
                                f"--config.data.data_dir={data_dir}", *RUN))
  assert code == 0, err[-3000:]
  result = json.loads(out[out.index("{"):])
  assert result["step"] == 30
  assert result["test"]["accuracy"] == pytest.approx(expected["test"]["accuracy"], abs=1e-9)
  assert result["test"]["loss"] == pytest.approx(expected["test"]["loss"], rel=1e-6)


def test_eval_without_checkpoint_is_a_clear_error(tmp_path, data_dir):
  code, _, err = finish(mmjax("eval", "--config", CONFIG, "--workdir", str(tmp_path),
                              f"--config.data.data_dir={data_dir}"))
  assert code == 2 and "no checkpoint" in " ".join(err.split()) and "Traceback" not in err


def test_unknown_config_key_is_a_clear_error(tmp_path):
  code, _, err = finish(mmjax("train", "--config", CONFIG, "--workdir", str(tmp_path),
                              "--config.optimizer.lrate=3"))
  assert code == 2 and "unknown config key 'optimizer.lrate'" in " ".join(err.split())
  assert "Traceback" not in err


def test_missing_dataset_is_a_clear_error(tmp_path):
  code, _, err = finish(mmjax("train", "--config", CONFIG, "--workdir", str(tmp_path / "w"),
                              f"--config.data.data_dir={tmp_path}", "--config.data.prepare=false"))
  flat = " ".join(err.split())
  assert code == 2 and "not prepared" in flat and "mmjax data build digits_av" in flat
  assert "Traceback" not in err


def test_data_build_command(tmp_path):
  code, out, err = finish(mmjax("data", "build", "digits_av", "--data_dir", str(tmp_path)))
  assert code == 0, err[-2000:]
  assert "'train': 1259" in out and (tmp_path / "digits_av" / "1.0.0").is_dir()


def test_console_script_is_installed():
  exe = shutil.which("mmjax", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
  assert exe, "the `mmjax` console script is not on PATH; install the package with pip install -e ."
  result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.parametrize("args, expected", [
    ([f"--config={CONFIGS / 'late_fusion_digits.py'}:smell"], "unknown config argument 'smell'"),
    (["--config.optimizer.schedule=cosin"], "Valid names: constant, cosine, warmup_cosine, linear"),
    (["--config.optimizer.name=lion"], "Valid names: adamw, adam, sgd"),
    (["--config.task.name=foo"], "Valid names: classification, contrastive, multilabel_binary, next_token"),
    (["--config.evaluators.x.name=robustnes"], "Did you mean robustness"),
    (["--config.num_steps=0"], "num_steps must be an integer >= 1"),
    (["--config.log_every=0"], "log_every must be an integer >= 1"),
    (["--config.checkpoint_every=-1"], "checkpoint_every must be an integer >= 0"),
    (["--config.batch_size=0"], "batch_size must be an integer >= 1"),
    (["--config.mesh.data=3"], "mesh"),
    (["--config.best_metric=accuracy"], "EVALUATOR/METRIC"),
    (["--config.early_stopping_patience=3"], "unless best_metric"),
], ids=["variant", "schedule", "optimizer", "task", "evaluator", "num_steps", "log_every", "checkpoint_every",
        "batch_size", "mesh", "best_metric", "early_stopping"])
def test_bad_names_and_values_exit_2_listing_what_is_valid(args, expected, tmp_path, data_dir, capsys):
  """In-process (the CLI's user-error boundary is `main`): exit status 2, one message naming the problem,
  no traceback, and nothing written to the workdir."""
  from mmjax.cli import main

  config = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), CONFIG)
  rest = [a for a in args if not a.startswith("--config=")]
  workdir = tmp_path / "w"
  code = main(["train", "--config", config, "--workdir", str(workdir), f"--config.data.data_dir={data_dir}",
               *rest])
  err = capsys.readouterr().err
  assert code == 2, err
  assert expected in " ".join(err.split()) and err.startswith("mmjax: error:") and "Traceback" not in err, err
  assert not workdir.exists()


def test_second_run_in_a_workdir_is_refused_and_a_kill_during_a_checkpoint_write_resumes(reference, data_dir,
                                                                                          tmp_path):
  """Run B in run A's workdir exits 2 naming A (A goes on untouched); A killed with SIGKILL while orbax
  writes a checkpoint resumes to exactly the uninterrupted run's final metrics."""
  _, expected = reference
  a = train(tmp_path, data_dir)
  wait_for_checkpoint(a, tmp_path, 5)
  code, _, err = finish(train(tmp_path, data_dir), timeout=120)
  assert code == 2 and f"in use by process {a.pid}" in " ".join(err.split()) and "Traceback" not in err, err
  ckpts = tmp_path / "checkpoints"
  start = time.time()
  while a.poll() is None and time.time() - start < 300:
    if any("tmp" in p.name for p in ckpts.iterdir()):  # orbax writes into a temporary folder, then renames
      break
    time.sleep(0.005)
  a.kill()
  finish(a)
  code, out, err = finish(train(tmp_path, data_dir))
  assert code == 0, err[-3000:]
  assert final_metrics(tmp_path) == expected


# -m slow: the default suite keeps the SIGTERM resume and the kill during a checkpoint write; this one adds
# the kill inside the final evaluation (~29 s)
@pytest.mark.slow
def test_kill_during_the_final_evaluation_then_the_next_command_completes(reference, data_dir, tmp_path):
  _, expected = reference
  args = ["train", "--config", CONFIG, "--workdir", str(tmp_path), f"--config.data.data_dir={data_dir}", *RUN]
  proc = subprocess.Popen([sys.executable, "-m", "mmjax", *args], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
  for line in proc.stdout:
    if "step 30: validation" in line:  # the final evaluation has begun (validation done, test next)
      proc.kill()
      break
  finish(proc)
  assert not (tmp_path / "metrics.json").exists()
  code, _, err = finish(train(tmp_path, data_dir))
  assert code == 0, err[-3000:]
  assert final_metrics(tmp_path) == expected


def test_version_data_list_and_help_examples(data_dir, capsys):
  from mmjax import __version__
  from mmjax.cli import main

  with pytest.raises(SystemExit) as e:
    main(["--version"])
  assert e.value.code == 0 and capsys.readouterr().out.strip() == f"mmjax {__version__}"
  assert main(["data", "list", "--data_dir", data_dir]) == 0
  rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[1:-1]}
  assert rows["digits_av"][:2] == ["embedded", "yes"] and rows["cmu_mosei/unaligned"][-2:] == ["no", "-"]
  for command in (["train"], ["eval"], ["sample"], ["fewshot"], ["sweep"], ["plot"], ["data", "build"],
                  ["data", "list"]):
    with pytest.raises(SystemExit):
      main([*command, "--help"])
    out = capsys.readouterr().out
    assert "example:\n  mmjax " + command[0] in out, command
