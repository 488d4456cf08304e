"""benchmarks/run_device.sh (the one-shot GPU run), its helper benchmarks/run_device.py, and
scripts/check_device_wheels.py: argument handling, the summary, the wheel-set check, and a --smoke run."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "run_device.sh"


def _load(path: Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _env() -> dict:
  """This interpreter and this checkout; one CPU device (the tests' 8 virtual devices left out)."""
  env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


@pytest.mark.parametrize("argv,code", [(["--help"], 0), (["--nope"], 2), (["--out"], 2),
                                       (["--budget-s", "ten"], 2), (["--only", "train_mult,bogus"], 2)])
def test_run_device_arguments(argv, code):
  r = subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
  assert r.returncode == code, r.stderr
  assert "run_device.sh" in r.stdout + r.stderr


def _dry_run(*argv) -> dict:
  """``{step: argv}`` of the commands run_device.sh would run."""
  r = subprocess.run(["bash", str(SCRIPT), "--dry-run", *argv], capture_output=True, text=True, timeout=60,
                     env=_env())
  assert r.returncode == 0, r.stderr
  steps = {}
  for line in r.stdout.splitlines():
    if line.startswith("DRY-RUN "):
      name, _, command = line[len("DRY-RUN "):].partition(":")
      steps[name] = shlex.split(command)
  return steps


def _train_config(argv):
  from mmjax.bench.train_step import compute_dtype
  from mmjax.cli import _split_overrides
  from mmjax.config import get_config

  rest, overrides = _split_overrides(argv[argv.index("train_step") + 1:])
  assert "--synthetic" in rest
  config = get_config(rest[rest.index("--config") + 1], overrides)
  return config, compute_dtype(config)


@pytest.mark.parametrize("smoke", [False, True])
def test_every_train_step_command_is_a_valid_bfloat16_config(smoke, monkeypatch):
  monkeypatch.chdir(ROOT)  # the commands name configs relative to the repository root
  steps = _dry_run(*(["--smoke"] if smoke else []))
  assert list(steps) == ["deps", "env", "train_mult", "train_mfm", "train_frozen", "train_clip", "attention"]
  assert ("--smoke" if smoke else "--full") in steps["attention"]
  configs = {}
  for name in ("train_mult", "train_mfm", "train_frozen", "train_clip"):
    config, dtype = _train_config(steps[name])
    assert dtype == "bfloat16"
    configs[name] = config
  if not smoke:  # the sizes the issue asks for
    mult, mfm, frozen = configs["train_mult"], configs["train_mfm"], configs["train_frozen"]
    assert mult.batch_size == 24 and dict(mult.data.max_lengths) == {"text": 50, "audio": 500, "vision": 500}
    assert mfm.batch_size == 256
    lm = frozen.model.kwargs.lm
    assert (lm.n_layer, lm.n_embd, lm.n_head) == (12, 768, 12) and frozen.init.format == ""
    assert "runlocal" not in " ".join(steps["train_frozen"])
    clip = configs["train_clip"].model.kwargs  # ViT-B/16 and CLIP's text transformer
    assert (clip.width, clip.num_layers, clip.num_heads, clip.patch_size) == (768, 12, 12, 16)
    assert (clip.text_width, clip.text_layers, clip.text_heads) == (512, 12, 8)
    assert configs["train_clip"].data.name == "image_captions/s224"


def test_only_runs_the_named_steps_after_deps_and_env():
  assert list(_dry_run("--only", "train_mfm,attention")) == ["deps", "env", "train_mfm", "attention"]


def test_summary_reports_steps_results_and_files(tmp_path, capsys):
  run_device = _load(ROOT / "benchmarks" / "run_device.py")
  start = time.time()
  out, logs = tmp_path / "results", tmp_path / "logs"
  out.mkdir()
  logs.mkdir()
  (logs / "train_mfm.log").write_text("compiling\nRuntimeError: out of memory\n")
  status = tmp_path / "status.tsv"
  status.write_text("deps\tok\t3\t60\ntrain_mult\tTIMEOUT\t120\t120\ntrain_mfm\tFAILED(rc=1)\t9\t60\n"
                    "attention\tok\t200\t260\n")
  now = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start + 1))
  entry = {"model": "frozen", "compute_dtype": "bfloat16", "batch_size": 64, "num_params": 124_000_000,
           "compile_s": 20.0, "step_s_median": 0.01, "tflops_per_device": 123.0, "mfu": 0.1244,
           "timestamp": now}
  old = dict(entry, model="old", timestamp="2000-01-01T00:00:00")
  (out / "train_step-nvidia-h200-2026-12-02.json").write_text(json.dumps(
      {"machine": {"device_kind": "NVIDIA H200", "platform": "gpu", "jax": "0.11.2"},
       "results": {"a": entry, "b": old}}))
  rec = {"kernel": "cudnn", "mode": "fwd+bwd", "shape": {"dtype": "bfloat16"}, "median_s": 1.0,
         "tflops": 400.0}
  (out / "attention-nvidia-h200-2026-12-02.json").write_text(json.dumps(
      {"grid": "full", "complete": False, "elapsed_s": 200, "not_reached": 300,
       "results": [rec, {"kernel": "cudnn", "mode": "fwd", "shape": {}, "skipped": "cudnn: needs bf16"}]}))
  code = run_device.main(["summary", "--status", str(status), "--out", str(out), "--start", str(start),
                          "--total", "480", "--logs", str(logs)])
  text = capsys.readouterr().out
  assert code == 1 and "NOT all steps ok" in text
  assert "TIMEOUT" in text and "RuntimeError: out of memory" in text
  assert "frozen" in text and "12.4%" in text and "old" not in text  # only this run's entries
  assert "INCOMPLETE" in text and "1 measured, 1 skipped, 300 not reached" in text and "cudnn 400" in text
  assert "attention-nvidia-h200-2026-12-02.json" in text


def _wheel(folder: Path, name: str, version: str, requires=(), files=()) -> None:
  with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
    z.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    for path, text in files:
      z.writestr(path, text)


def test_wheel_check_follows_requirements_with_the_devices_markers(tmp_path, monkeypatch, capsys):
  check = _load(ROOT / "scripts" / "check_device_wheels.py")
  (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["alpha>=1", "numpy"]\n')
  monkeypatch.setattr(check, "ROOT", tmp_path)
  image = tmp_path / "image.txt"
  image.write_text("# the image\nnumpy==2.5.2\nsix\n")
  wheels = tmp_path / "whl"
  wheels.mkdir()
  _wheel(wheels, "alpha", "1.0", ['beta; python_version >= "3.12"', 'gamma; python_version < "3.12"',
                                  "numpy>=1.26", 'delta; extra == "docs"', "six"],
         files=[("alpha/x_pb2.py", "# Protobuf Python Version: 6.31.1\n")])
  _wheel(wheels, "beta", "2.0")
  assert check.check(wheels, image) == 0
  out = capsys.readouterr().out
  assert "complete" in out and ">= 6.31.1" in out
  (wheels / "beta-2.0-py3-none-any.whl").unlink()
  _wheel(wheels, "alpha", "1.1", ["numpy>=3"])  # two versions of alpha, and one needs a newer numpy
  assert check.check(wheels, image) == 1
  out = capsys.readouterr().out
  assert "two versions of alpha" in out and "the image has 2.5.2" in out


@pytest.mark.slow
def test_smoke_run_of_every_step(tmp_path):
  """The whole script at tiny sizes on this CPU (about 2 minutes on 2 busy cores)."""
  r = subprocess.run(["bash", str(SCRIPT), "--smoke", "--out", str(tmp_path)], capture_output=True,
                     text=True, timeout=900, env=_env())
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "all steps ok" in r.stdout
  for step in ("deps", "env", "train_mult", "train_mfm", "train_frozen", "train_clip", "attention"):
    assert f"=== [{step}] ok" in r.stdout
  (train,) = tmp_path.glob("train_step-cpu-*.json")
  results = json.loads(train.read_text())["results"]
  assert sorted(r["model"] for r in results.values()) == ["clip", "frozen", "mfm", "mult"]
  for res in results.values():
    assert res["compute_dtype"] == "bfloat16" and res["mfu"] is None and res["tflops_per_device"] > 0
    assert res["input_shapes"] and res["model_kwargs"]["dtype"] == "bfloat16"
  mult = next(r for r in results.values() if r["model"] == "mult")
  assert mult["input_shapes"]["audio"]["shape"][:2] == [8, 16]
  (att,) = tmp_path.glob("attention-cpu-*.json")
  assert json.loads(att.read_text())["complete"] is True
  assert list(tmp_path.glob("attention-cpu-*.png"))
