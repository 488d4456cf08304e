"""Helpers of ``benchmarks/run_device.sh``: ``env`` (what the machine has) and ``summary`` (what ran).

``python benchmarks/run_device.py env`` prints the interpreter, the versions and origins of the packages the
benchmarks use, the JAX devices, PyTorch's CUDA and (read-only) ``nvidia-smi``; exit status 1 if mmjax or
one of its dependencies does not import. ``python benchmarks/run_device.py summary --status FILE --out DIR
--start EPOCH ...`` prints one screen: each step's status and time, the train-step results and the attention
grid's coverage written since ``--start``, and the files; exit status 1 unless every step was ``ok``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("numpy", "jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "google.protobuf", "etils",
            "tensorflow_datasets", "grain", "array_record", "ml_collections", "tensorboardX", "torch",
            "mmjax")


def env() -> int:
  """Prints what the benchmarks will run on; 1 if a package mmjax needs does not import."""
  print(f"python {platform.python_version()} at {sys.executable}")
  bad = []
  for name in PACKAGES:
    t = time.perf_counter()
    try:
      mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 - report every failure, not only the first
      print(f"  {name:20s} FAILED: {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}")
      if name != "torch":
        bad.append(name)
      continue
    where = Path(getattr(mod, "__file__", "") or "?").parent
    print(f"  {name:20s} {getattr(mod, '__version__', '?'):14s} {time.perf_counter() - t:5.1f} s  {where}")
  if "jax" not in bad:
    import jax

    t = time.perf_counter()
    devices = jax.devices()
    print(f"jax devices ({time.perf_counter() - t:.1f} s): {devices} kind {devices[0].device_kind!r}")
  try:
    import torch

    print(f"torch cuda: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
  except ImportError:
    pass
  if shutil.which("nvidia-smi"):
    query = "name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,memory.used,memory.total"
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                         text=True, timeout=30)
    print(out.stdout.strip() or out.stderr.strip())
  if bad:
    print("does not import:", ", ".join(bad))
  return 1 if bad else 0


def _since(path: Path, start: float) -> bool:
  return path.stat().st_mtime >= start - 1


def summary(args) -> int:
  """One screen: steps, train-step results, attention coverage, files; 1 unless every step was ok."""
  out = Path(args.out)
  rows = [line.split("\t") for line in Path(args.status).read_text().splitlines() if line.strip()]
  when = datetime.datetime.fromtimestamp(args.start).isoformat(sep=" ", timespec="seconds")
  print()
  print(f"===== run_device.sh summary ({args.mode}, started {when}, "
        f"{time.time() - args.start:.0f} s of {args.total} s) =====")
  print(f"{'step':14s} {'status':24s} {'time':>6s} {'limit':>6s}")
  for name, status, seconds, limit in rows:
    last = ""
    log = Path(args.logs) / f"{name}.log" if args.logs else None
    if status != "ok" and log and log.is_file():
      lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
      last = ("  | " + lines[-1].strip()[:90]) if lines else ""
    print(f"{name:14s} {status:24s} {seconds:>5s}s {limit:>5s}s{last}")
  files = sorted(p for p in out.glob("*") if p.is_file() and _since(p, args.start))

  for path in (p for p in files if p.name.startswith("train_step-") and p.suffix == ".json"):
    doc = json.loads(path.read_text())
    m = doc.get("machine", {})
    print(f"\ntrain_step on {m.get('device_kind')} ({m.get('platform')}), jax {m.get('jax')}: {path.name}")
    print(f"{'model':8s} {'dtype':9s} {'batch':>5s} {'params':>11s} {'compile s':>9s} {'step ms':>9s} "
          f"{'TFLOP/s/dev':>11s} {'MFU':>6s}")
    for r in doc.get("results", {}).values():
      stamp = r.get("timestamp")
      if stamp and datetime.datetime.fromisoformat(stamp).timestamp() < args.start - 1:
        continue  # from an earlier run of the same day
      tf, mfu = r.get("tflops_per_device"), r.get("mfu")
      print(f"{r['model']:8s} {str(r.get('compute_dtype')):9s} {r['batch_size']:5d} {r['num_params']:11,d} "
            f"{r['compile_s']:9.1f} {r['step_s_median'] * 1e3:9.2f} "
            f"{'-' if tf is None else f'{tf:.3g}':>11s} {'-' if mfu is None else f'{mfu:.1%}':>6s}")

  for path in (p for p in files if p.name.startswith("attention-") and p.suffix == ".json"):
    doc = json.loads(path.read_text())
    res = doc.get("results", [])
    done = [r for r in res if "median_s" in r]
    skipped = collections.Counter(r["skipped"].split(":")[0][:40] for r in res if "skipped" in r)
    print(f"\nattention ({doc.get('grid')} grid, {'complete' if doc.get('complete') else 'INCOMPLETE'}, "
          f"{doc.get('elapsed_s', 0):.0f} s): {path.name}")
    print(f"  {len(done)} measured, {sum(skipped.values())} skipped, {doc.get('not_reached', 0)} not reached"
          + (f"; skips: {dict(skipped.most_common(3))}" if skipped else ""))
    best = {}
    for r in done:
      if r["mode"] == "fwd+bwd":
        key = r["shape"]["dtype"]
        best.setdefault(key, {})
        best[key][r["kernel"]] = max(best[key].get(r["kernel"], 0.0), r["tflops"])
    for dtype, kernels in sorted(best.items()):
      print(f"  best fwd+bwd TFLOP/s, {dtype}: "
            + ", ".join(f"{k} {v:.3g}" for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])))

  print(f"\nfiles written to {out}/:" if files else f"\nno files written to {out}/")
  for p in files:
    print(f"  {p.name} ({p.stat().st_size / 1024:.0f} KiB)")
  ok = all(status == "ok" for _, status, _, _ in rows)
  print("all steps ok" if ok else "NOT all steps ok: see the log of each step above")
  return 0 if ok else 1


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="command", required=True)
  sub.add_parser("env", help="what the benchmarks will run on")
  s = sub.add_parser("summary", help="one screen on what ran")
  s.add_argument("--status", required=True, help="the steps' table: name, status, seconds, limit (TSV)")
  s.add_argument("--out", required=True, help="the results folder")
  s.add_argument("--start", type=float, required=True, help="when the run started (seconds since the epoch)")
  s.add_argument("--total", type=int, default=0, help="the run's time budget in seconds")
  s.add_argument("--mode", default="full")
  s.add_argument("--logs", default="", help="folder of the steps' logs (NAME.log)")
  args = p.parse_args(argv)
  return env() if args.command == "env" else summary(args)


if __name__ == "__main__":
  sys.exit(main())
