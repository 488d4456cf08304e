"""Two local CPU processes train one run together (``jax.distributed`` + gloo), as on a multi-host pod,
with the parameters and optimizer state sharded over both (FSDP, mesh ``(1, 2, 1)``)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker

WORKER = Path(__file__).with_name("multiprocess_worker.py")
NUM_PROCESSES = 2
STEPS = 4
TIMEOUT_S = 240


def _child_env() -> dict:
  """This environment with one CPU device per process (no forced device count) and fast compiles."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
  if "xla_backend_optimization_level" not in flags:
    flags += " --xla_backend_optimization_level=0"
  env["XLA_FLAGS"] = " ".join(flags.split())
  return env


def _launch(tmp_path: Path, data_dir: str, tag: str, *extra):
  """Starts the workers; returns ``[(process, out_path, log_path)]``."""
  port = portpicker.pick_unused_port()
  procs = []
  for i in range(NUM_PROCESSES):
    out, log = tmp_path / f"{tag}{i}.json", tmp_path / f"{tag}{i}.log"
    cmd = [sys.executable, str(WORKER), "--process_id", str(i), "--num_processes", str(NUM_PROCESSES),
           "--coordinator", f"localhost:{port}", "--data_dir", data_dir,
           "--workdir", str(tmp_path / "run"), "--out", str(out), "--steps", str(STEPS), *extra]
    with log.open("w") as f:
      procs.append((subprocess.Popen(cmd, env=_child_env(), stdout=f, stderr=subprocess.STDOUT), out, log))
  return procs


def _run(tmp_path: Path, data_dir: str, tag: str) -> list[dict]:
  """Runs the workers to the end; returns their results, or fails with their logs."""
  procs = _launch(tmp_path, data_dir, tag)
  codes = _wait(procs)
  if codes != [0] * NUM_PROCESSES:
    logs = "\n".join(f"--- {tag} worker {i} (exit {c}) ---\n{log.read_text()[-6000:]}"
                     for i, (c, (_, _, log)) in enumerate(zip(codes, procs, strict=True)))
    raise AssertionError(f"{tag} workers did not all exit 0 within {TIMEOUT_S} s: {codes}\n{logs}")
  return [json.loads(out.read_text()) for _, out, _ in procs]


def _wait(procs) -> list[int | None]:
  """Exit codes (None for a worker killed at the timeout)."""
  codes = []
  for proc, _, _ in procs:
    try:
      codes.append(proc.wait(timeout=TIMEOUT_S))
    except subprocess.TimeoutExpired:
      codes.append(None)
  for proc, _, _ in procs:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return codes


def test_two_processes_train_one_run(tmp_path, data_dir):
  """Both processes finish, see one global 2-device mesh, agree on every loss, read disjoint halves of
  the training split, and write one shared set of orbax checkpoints that both restore again."""
  results = _run(tmp_path, data_dir, "train")

  for i, r in enumerate(results):
    assert (r["process_index"], r["process_count"]) == (i, NUM_PROCESSES)
    assert (r["device_count"], r["local_device_count"]) == (NUM_PROCESSES, 1)
    assert len(r["losses"]) == STEPS and np.all(np.isfinite(r["losses"]))
    assert r["final"]["step"] == STEPS
    assert r["sharded_params"], "FSDP split no parameter over the two processes"
  a, b = results
  np.testing.assert_allclose(a["losses"], b["losses"], rtol=0, atol=1e-6)
  for split in ("train", "validation", "test"):
    for key, value in a["final"][split].items():
      np.testing.assert_allclose(value, b["final"][split][key], rtol=0, atol=1e-6, err_msg=f"{split}.{key}")
  assert a["final"]["test"]["count"] == 359  # every test example evaluated exactly once, over both

  # Each process read only its own shard (examples i::2 of the source): disjoint halves of local batches.
  from mmjax.data import pipeline

  source = pipeline.get_builder("digits_av", data_dir).as_data_source()["train"]
  shard_ids = [{int(source[j]["id"]) for j in range(i, len(source), NUM_PROCESSES)}
               for i in range(NUM_PROCESSES)]
  seen = []
  for i, r in enumerate(results):
    assert len(r["ids"]) == STEPS and all(len(batch) == 8 // NUM_PROCESSES for batch in r["ids"])
    ids = {x for batch in r["ids"] for x in batch}
    assert ids <= shard_ids[i], f"process {i} read examples outside its shard"
    seen.append(ids)
  assert not seen[0] & seen[1]

  checkpoints = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
  assert checkpoints == [STEPS // 2, STEPS]
  assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == STEPS

  # Run again: both processes restore the final (sharded) checkpoint, train nothing, evaluate the same.
  again = _run(tmp_path, data_dir, "restore")
  for r in again:
    assert r["final"]["step"] == STEPS and r["losses"] == [] and r["ids"] == []
    for split in ("validation", "test"):
      for key, value in a["final"][split].items():
        np.testing.assert_allclose(r["final"][split][key], value, rtol=0, atol=1e-6, err_msg=f"{split}.{key}")


def test_preemption_of_one_host_checkpoints_every_host_at_one_step(tmp_path, data_dir):
  """SIGTERM reaches only process 1: JAX's preemption sync service names one step to both, both save the
  checkpoint of that step together and exit with status 143 (none waits forever in a collective)."""
  import signal
  import time

  procs = _launch(tmp_path, data_dir, "preempt", "--steps", "100000", "--checkpoint_every", "5")
  first = tmp_path / "run" / "checkpoints" / "5" / "_CHECKPOINT_METADATA"
  deadline = time.time() + TIMEOUT_S
  while not first.exists() and time.time() < deadline and all(p.poll() is None for p, _, _ in procs):
    time.sleep(0.05)
  assert first.exists(), "\n".join(log.read_text()[-3000:] for _, _, log in procs)
  procs[1][0].send_signal(signal.SIGTERM)
  codes = _wait(procs)
  logs = [log.read_text() for _, _, log in procs]
  assert codes == [143, 143], f"{codes}\n" + "\n".join(x[-3000:] for x in logs)
  step = int(re.search(r"preemption\) at step (\d+)", logs[0]).group(1))
  assert 5 < step < 100000
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
  assert saved[-1] == step
  assert (tmp_path / "run" / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").exists()
