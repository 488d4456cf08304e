"""Attention kernel benchmark: every mmjax kernel (and PyTorch SDPA as a peer) over a grid of shapes.

``mmjax bench attention [--quick | --full | --smoke] [--out benchmarks/results] [--reps 10] [--kernels ...]
[--budget-s SECONDS]`` (or ``python benchmarks/attention.py ...``)

Per (kernel, shape, dtype, mode): median time after warm-up (compile excluded, ``block_until_ready``),
TFLOP/s from the analytic count, the fraction of the device's peak (:mod:`mmjax.bench.machine`), and
compile-time memory (temp + argument bytes; on GPU also ``peak_bytes_in_use``). Writes
``attention-<device>-<date>.json`` to ``--out`` (default ``benchmarks/results`` relative to the current
working directory, created if missing) after every record, atomically (``"complete": false`` until the
grid is done), so a run cut off keeps what it measured; the PNG is written at the end. ``--budget-s``
stops starting new measurements after that many seconds (the full grid is ordered most useful first).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.bench import machine as M
from mmjax.files import write_json
from mmjax.layers import attention as A

CPU_MAX_SCORE_ELEMS = 2**25  # dense kernels on CPU: skip when B*H*Lq*Lk exceeds this (time bound)
# --smoke: one tiny shape, to check that the benchmark runs (seconds on a CPU), not to measure anything.
SMOKE_SHAPE = dict(group="self", b=1, h=2, lq=128, lk=128, d=32, causal=False, dtype="float32")


def grid(on_gpu: bool, quick: bool, smoke: bool = False) -> list[dict]:
  """Shapes: self-attention sweep plus the cross-modal shapes the models use (``smoke``: one tiny shape)."""
  if smoke:
    return [dict(SMOKE_SHAPE)]
  shapes = []
  if quick:
    lengths, dims, dtypes, heads = (256, 512, 1024, 2048, 4096), (64,), ("float32",), 4
  else:
    lengths, dims, dtypes, heads = (512, 1024, 2048, 4096, 8192, 16384), (64, 128), ("float32", "bfloat16"), 8
  for d in dims:
    for n in lengths:
      for dt in dtypes:
        shapes.append(dict(group="self", b=1, h=heads, lq=n, lk=n, d=d, causal=False, dtype=dt))
  if quick:
    shapes.append(dict(group="self", b=1, h=heads, lq=512, lk=512, d=64, causal=False, dtype="bfloat16"))
    shapes.append(dict(group="self_causal", b=1, h=heads, lq=1024, lk=1024, d=64, causal=True,
                       dtype="float32"))
  else:
    for n in lengths:
      shapes.append(dict(group="self_causal", b=1, h=heads, lq=n, lk=n, d=64, causal=True, dtype="bfloat16"))
  cross = [("text<-audio", 50, 500), ("audio<-text", 500, 50), ("video<-text", 4096, 64),
           ("text<-video", 64, 4096)]
  for dt in dtypes:
    for name, lq, lk in cross:
      shapes.append(dict(group="cross:" + name, b=8, h=8, lq=lq, lk=lk, d=64, causal=False, dtype=dt,
                         lengths=True))
  if not quick:  # most useful first, so a run cut short (--budget-s, a timeout) keeps those
    shapes.sort(key=_priority)
  return shapes


def _priority(s: dict) -> tuple:
  """Full-grid order: bfloat16 before float32; within a dtype the models' cross-modal shapes, then
  self-attention D=64, causal, D=128; shorter sequences first."""
  if s["group"].startswith("cross"):
    group = 0
  elif s["causal"]:
    group = 2
  else:
    group = 1 if s["d"] == 64 else 3
  return (s["dtype"] != "bfloat16", group, s["lq"] * s["lk"])


def _time(fn, args, reps, warmup=2):
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times), times


def bench_jax(kernel, s, mode, reps, on_gpu) -> dict:
  dtype = jnp.dtype(s["dtype"])
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.standard_normal((s["b"], s["lq"], s["h"], s["d"])), dtype)
  k = jnp.asarray(rng.standard_normal((s["b"], s["lk"], s["h"], s["d"])), dtype)
  v = jnp.asarray(rng.standard_normal((s["b"], s["lk"], s["h"], s["d"])), dtype)
  lengths = None
  if s.get("lengths"):
    lengths = jnp.asarray(np.linspace(s["lk"] // 2, s["lk"], s["b"]).astype(np.int32))
  why = A.unsupported_reason(kernel, query_shape=q.shape, key_shape=k.shape, dtype=dtype,
                             has_lengths=lengths is not None, causal=s["causal"])
  if why:
    return {"skipped": why}
  if not on_gpu and kernel in ("xla", "jax") and s["b"] * s["h"] * s["lq"] * s["lk"] > CPU_MAX_SCORE_ELEMS:
    return {"skipped": f"dense score matrix > {CPU_MAX_SCORE_ELEMS} elements: too slow for CPU"}
  rec = {}
  if kernel == "auto":
    rec["auto_choice"] = A.select_implementation(q.shape, k.shape, dtype, has_lengths=lengths is not None,
                                                 causal=s["causal"])

  def fwd(q, k, v):
    return A.dot_product_attention(q, k, v, key_lengths=lengths, causal=s["causal"], implementation=kernel)

  if mode == "fwd":
    fn = jax.jit(fwd)
  else:
    fn = jax.jit(jax.grad(lambda q, k, v: fwd(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
  t0 = time.perf_counter()
  compiled = fn.lower(q, k, v).compile()
  rec["compile_s"] = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  if mem is not None:
    rec["temp_bytes"] = int(mem.temp_size_in_bytes)
    rec["argument_bytes"] = int(mem.argument_size_in_bytes)
    rec["compile_peak_bytes"] = rec["temp_bytes"] + rec["argument_bytes"]
  rec["median_s"], rec["times_s"] = _time(compiled, (q, k, v), reps)
  if on_gpu:
    stats = jax.devices()[0].memory_stats() or {}
    rec["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
  return rec


def bench_torch(s, mode, reps, on_gpu) -> dict:
  try:
    import torch
    import torch.nn.functional as F
  except ImportError:
    return {"skipped": "torch not installed"}
  dev = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
  if on_gpu and dev == "cpu":
    return {"skipped": "torch has no CUDA here"}
  dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[s["dtype"]]
  if not on_gpu and s["b"] * s["h"] * s["lq"] * s["lk"] > CPU_MAX_SCORE_ELEMS:
    return {"skipped": f"dense score matrix > {CPU_MAX_SCORE_ELEMS} elements: too slow for CPU"}
  g = torch.Generator().manual_seed(0)
  mk = lambda n: torch.randn(s["b"], s["h"], n, s["d"], generator=g).to(dev, dt).requires_grad_(mode != "fwd")  # noqa: E731
  q, k, v = mk(s["lq"]), mk(s["lk"]), mk(s["lk"])
  mask = None
  if s.get("lengths"):
    lengths = torch.tensor(np.linspace(s["lk"] // 2, s["lk"], s["b"]).astype(np.int64), device=dev)
    mask = (torch.arange(s["lk"], device=dev)[None] < lengths[:, None])[:, None, None, :]
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

  def run():
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=s["causal"])
    if mode != "fwd":
      out.float().sum().backward()
    sync()

  with torch.set_grad_enabled(mode != "fwd"):
    for _ in range(2):
      run()
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      run()
      times.append(time.perf_counter() - t)
  return {"median_s": statistics.median(times), "times_s": times, "torch": torch.__version__,
          "torch_threads": torch.get_num_threads()}


def plot(results: list[dict], path: Path, title: str) -> bool:
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  fig, ax = plt.subplots(figsize=(7, 4.5))
  rows = [r for r in results if r["shape"]["group"] == "self" and r["mode"] == "fwd+bwd" and "tflops" in r]
  for dtype in sorted({r["shape"]["dtype"] for r in rows}):
    for d in sorted({r["shape"]["d"] for r in rows}):
      for kernel in sorted({r["kernel"] for r in rows}):
        pts = sorted((r["shape"]["lq"], r["tflops"]) for r in rows
                     if r["kernel"] == kernel and r["shape"]["dtype"] == dtype and r["shape"]["d"] == d)
        if len(pts) > 1:
          ax.plot(*zip(*pts, strict=True), marker="o", label=f"{kernel} {dtype} D={d}")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("sequence length L (self-attention, B=1)")
  ax.set_ylabel("TFLOP/s (forward+backward)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return True


def measure(kernel: str, s: dict, mode: str, reps: int, on_gpu: bool, peak: dict) -> dict:
  """One (kernel, shape, mode) record: times, TFLOP/s, fraction of ``peak``, memory, or why it was skipped."""
  flops = A.attention_flops(s["b"], s["h"], s["lq"], s["lk"], s["d"], causal=s["causal"],
                            backward=mode == "fwd+bwd")
  try:
    rec = (bench_torch(s, mode, reps, on_gpu) if kernel == "torch"
           else bench_jax(kernel, s, mode, reps, on_gpu))
  except Exception as e:  # noqa: BLE001 - record and keep going
    rec = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
  rec = {"kernel": kernel, "mode": mode, "shape": s, "flops": flops, **rec}
  if "median_s" in rec:
    rec["tflops"] = flops / rec["median_s"] / 1e12
    pk = peak.get(s["dtype"])
    rec["fraction_of_peak"] = rec["tflops"] / pk if pk else None
  return rec


def run(argv=None, *, prog: str | None = None) -> Path:
  """Run the benchmark and write JSON (+ PNG); returns the JSON path."""
  p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="small grid (the default on CPU)")
  p.add_argument("--full", action="store_true", help="full grid (the default on GPU)")
  p.add_argument("--smoke", action="store_true",
                 help="one tiny self-attention shape (B=1, H=2, L=128, D=32, float32): checks that it runs")
  p.add_argument("--out", default=str(M.DEFAULT_OUT_DIR),
                 help="results directory, created if missing (default: %(default)s, relative to the "
                      "current working directory)")
  p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10 GPU, 3 CPU)")
  p.add_argument("--kernels", default=None, help="comma-separated subset of kernels (+ 'torch')")
  p.add_argument("--budget-s", type=float, default=None,
                 help="start no new measurement after this many seconds; the rest is counted as not "
                      "reached in the JSON (default: no limit)")
  args = p.parse_args(argv)
  if sum((args.quick, args.full, args.smoke)) > 1:
    p.error("choose at most one of --quick, --full, --smoke")
  if args.reps is not None and args.reps < 1:
    p.error("--reps must be at least 1")
  if args.budget_s is not None and args.budget_s <= 0:
    p.error("--budget-s must be positive")
  start = time.perf_counter()
  device = jax.devices()[0]
  on_gpu = device.platform == "gpu"
  quick = args.quick or (not on_gpu and not args.full)
  reps = args.reps or (10 if on_gpu else 3)
  kernels = ["xla", "jax", "chunked", "auto"] + (["cudnn", "pallas"] if on_gpu else []) + ["torch"]
  if args.kernels:
    kernels = args.kernels.split(",")
  cpu = M.cpu_info()
  peak = M.device_peak(device, cpu)
  json_path = M.result_path(args.out, "attention", device.device_kind if on_gpu else "cpu")
  results = []
  doc = {"machine": M.machine(device, cpu), "peak_tflops": peak,
         "grid": "smoke" if args.smoke else "quick" if quick else "full",
         "reps": reps,
         "cpu_dense_max_score_elements": None if on_gpu else CPU_MAX_SCORE_ELEMS,
         "flop_count": "4*B*H*Lq*Lk*D forward; x3.5 forward+backward; /2 causal",
         "memory": "compile-time memory_analysis temp+argument bytes (compile_peak_bytes)",
         "auto_policy": {"cpu_chunked_above_score_bytes": A.AUTO_CHUNKED_SCORE_BYTES,
                         "accel_chunked_above_score_bytes": A.AUTO_CHUNKED_SCORE_BYTES_ACCEL},
         "budget_s": args.budget_s,
         "complete": False,  # True once every record of the grid was measured (or skipped with a reason)
         "results": results}
  todo = [(s, mode, kernel) for s in grid(on_gpu, quick, smoke=args.smoke) for mode in ("fwd", "fwd+bwd")
          for kernel in kernels]
  for i, (s, mode, kernel) in enumerate(todo):
    if args.budget_s is not None and time.perf_counter() - start > args.budget_s:
      doc["not_reached"] = len(todo) - i
      print(f"time budget of {args.budget_s:.0f} s spent: {len(todo) - i} of {len(todo)} measurements "
            "not reached", flush=True)
      break
    rec = measure(kernel, s, mode, reps, on_gpu, peak)
    results.append(rec)
    doc["elapsed_s"] = time.perf_counter() - start
    write_json(json_path, doc)  # after every record: a run cut off keeps what it measured
    msg = (f"{rec['median_s'] * 1e3:9.2f} ms {rec['tflops']:7.3f} TFLOP/s" if "median_s" in rec
           else "skipped: " + rec["skipped"])
    print(f"{s['group']:18s} {s['lq']:>5}x{s['lk']:<5} D={s['d']:<3} {s['dtype']:8s} {mode:7s} "
          f"{kernel:7s} {msg}", flush=True)
  else:
    doc["complete"] = True
  doc["elapsed_s"] = time.perf_counter() - start
  write_json(json_path, doc)
  if plot(results, json_path.with_suffix(".png"), f"{device.device_kind} - jax {jax.__version__}"):
    print("wrote", json_path.with_suffix(".png"))
  print("wrote", json_path)
  return json_path


def main(argv=None, *, prog: str | None = None) -> int:
  """Command-line entry point (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
  run(argv, prog=prog)
  return 0
