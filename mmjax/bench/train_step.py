"""Benchmark of one config's jitted, sharded train step (compile time, step time, throughput, FLOP/s).

``mmjax bench train_step --config configs/late_fusion_digits.py [--config.a.b=v ...] [--steps 50]
[--warmup 5] [--synthetic] [--out benchmarks/results]`` (or ``python benchmarks/train_step.py ...``)

The run is built exactly as :func:`mmjax.train.train_and_evaluate` builds it (mesh over all devices,
model, optimizer, sharded state), the step is compiled ahead of time (``.lower(state, batch).compile()``,
timed separately), then ``--warmup`` steps run untimed and ``--steps`` steps are timed on ONE fixed,
pre-built global batch: data loading and host-to-device transfer are excluded. Each timed step is
followed by ``jax.block_until_ready``; a second pass times the same number of steps back to back (one
block at the end, so dispatch overlaps compute). Results are merged, keyed by the config string, into
``<out>/train_step-<device kind>-<YYYY-MM-DD>.json`` with the machine (:func:`mmjax.bench.machine.machine`);
``--out`` defaults to ``benchmarks/results`` relative to the current working directory (created if missing).
Each result states its sizes (input shapes, ``model.kwargs``, compute dtype from ``config.precision``,
``config.remat``) and, beside FLOP/s,
``tflops_per_device`` and ``mfu`` (over the device's dense peak for the compute dtype; None on the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from mmjax.bench import machine as M


def _cost(compiled) -> dict:
  """``flops`` and ``bytes accessed`` from XLA's cost analysis of the compiled step (None if absent)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend implements it
    return {"flops": None, "bytes_accessed": None}
  if isinstance(cost, (list, tuple)):  # older jax: one dict per module
    cost = cost[0] if cost else {}
  cost = cost or {}
  flops, nbytes = cost.get("flops"), cost.get("bytes accessed")
  return {"flops": float(flops) if flops is not None and flops > 0 else None,
          "bytes_accessed": float(nbytes) if nbytes is not None and nbytes > 0 else None}


def compute_dtype(config) -> str | None:
  """The model's compute dtype as a JAX name: ``config.precision`` (validated, so ``bf16`` has become
  ``"bfloat16"``), or None for a model without a ``dtype`` field."""
  from mmjax import models

  if "dtype" not in models.fields(config.model.name):
    return None
  return config.precision


def _jsonable(value):
  """``value`` with tuples as lists and anything JSON cannot hold (a dtype class) as its string."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return getattr(value, "__name__", None) or str(value)


def utilization(flops_per_device: float | None, step_s: float, dtype: str | None, device) -> dict:
  """``tflops_per_device`` (achieved) and ``mfu``: that over the dense peak of ``device`` for ``dtype``
  (:func:`mmjax.hardware.peak_tflops`; float16 counts as bfloat16). ``mfu`` is None on the CPU (its peak
  is only an estimate) or where the peak or the FLOP count is unknown."""
  from mmjax.hardware import peak_tflops

  tflops = flops_per_device / step_s / 1e12 if flops_per_device else None
  peak = peak_tflops(device.device_kind, device.platform)
  key = "bfloat16" if dtype in ("bfloat16", "float16") else "float32"
  dense = peak.get(key) if device.platform != "cpu" else None
  return {"tflops_per_device": tflops, "peak_tflops_per_device": dense, "peak_dtype": key,
          "peak_source": peak["source"], "mfu": tflops / dense if tflops and dense else None}


def benchmark(config, *, steps: int, warmup: int, synthetic: bool = False) -> dict:
  """Compiles and times ``config``'s train step; returns the measurements (seconds, FLOPs)."""
  import jax

  from mmjax import flops
  from mmjax.data import pipeline
  from mmjax.train.run import build_run, count_params, make_global_batch, model_kwargs
  from mmjax.train.step import jit_train_step

  dtype = compute_dtype(config)
  with tempfile.TemporaryDirectory() as workdir:  # build_run opens a checkpoint directory; nothing is saved
    run = build_run(config, workdir)
    state = run.init()
    if synthetic:  # random features of the dataset's padded shapes: no data needed
      local = pipeline.example_from_features(config.data, config.batch_size // jax.process_count(),
                                             seed=config.seed)
    else:
      local = next(pipeline.train_batches(config.data, global_batch_size=config.batch_size,
                                          seed=config.seed, process_index=jax.process_index(),
                                          process_count=jax.process_count()))
    batch = jax.block_until_ready(make_global_batch(local, run.batch_sharding))
    inputs = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in batch.items()}
    step = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding,
                          run.mesh, config.optimizer.grad_accum_steps, config.prng_impl,
                          config.mesh.rules.to_dict())

    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    for _ in range(warmup):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics) if warmup else state)

    times = []
    for _ in range(steps):
      t = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t)

    t = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    pipelined = (time.perf_counter() - t) / max(steps, 1)
    loss = float(jax.device_get(metrics["loss"]))
    num_params = count_params(state.params)
    run.checkpointer.close()

  median = statistics.median(times)
  cost = _cost(compiled)
  # On a multi-device mesh XLA's cost analysis describes one device's (SPMD-partitioned) program.
  flops_total = cost["flops"] * jax.device_count() if cost["flops"] else None
  analytic = flops.train_step_flops(config.model.name, run.model, batch)
  analytic = analytic and analytic["train_step"]
  return {
      "model": config.model.name,
      "num_params": num_params,
      "batch_size": config.batch_size,
      "compute_dtype": dtype,
      "input_shapes": inputs,  # the global batch the step ran on
      "max_lengths": _jsonable(dict(config.data.max_lengths)),
      "model_kwargs": _jsonable(model_kwargs(config)),  # with dtype (precision) and remat as built
      "precision": config.precision,
      "remat": config.remat,
      "mesh": dict(run.mesh.shape),
      "steps": steps,
      "warmup": warmup,
      "trace_lower_s": t1 - t0,
      "compile_s": t2 - t1,
      "step_s_median": median,
      "step_s_mean": statistics.fmean(times),
      "step_s_min": min(times),
      "step_s_max": max(times),
      "step_s_pipelined": pipelined,
      "steps_per_s": 1.0 / median,
      "examples_per_s": config.batch_size / median,
      "flops_per_step_per_device": cost["flops"],
      "flops_per_step": flops_total,
      "bytes_accessed_per_step_per_device": cost["bytes_accessed"],
      "achieved_flops_per_s": flops_total / median if flops_total else None,
      **utilization(cost["flops"], median, dtype, jax.devices()[0]),
      "flops_source": "XLA cost_analysis() of the compiled step, per device",
      "analytic_flops_per_step": analytic,  # mmjax.flops: matmuls only, all devices; None without a counter
      "analytic_over_xla": analytic / flops_total if analytic and flops_total else None,
      "analytic_flops_per_s": analytic / median if analytic else None,
      "final_loss": loss,
      "excluded": "data loading and host-to-device transfer (one fixed pre-built global batch)",
      "inputs": "synthetic (random, full padded lengths)" if synthetic else "first training batch",
  }


def main(argv=None, *, prog: str | None = None) -> int:
  """Command-line entry point (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
  from mmjax.cli import _split_overrides

  rest, overrides = _split_overrides(sys.argv[1:] if argv is None else list(argv))
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
  p.add_argument("--steps", type=int, default=50, help="timed steps")
  p.add_argument("--warmup", type=int, default=5, help="untimed steps after compilation")
  p.add_argument("--synthetic", action="store_true",
                 help="random inputs of the dataset's padded shapes (for datasets you have not downloaded)")
  p.add_argument("--out", default=str(M.DEFAULT_OUT_DIR),
                 help="results directory, created if missing (default: %(default)s, relative to the "
                      "current working directory)")
  args = p.parse_args(rest)
  if args.steps < 1 or args.warmup < 0:
    p.error("--steps must be at least 1 and --warmup at least 0")

  from mmjax.config import get_config

  config = get_config(args.config, overrides)
  result = benchmark(config, steps=args.steps, warmup=args.warmup, synthetic=args.synthetic)
  # data.data_dir says where the data are, not what is measured: it is left out of the key.
  key = " ".join([args.config, *(f"--config.{o}" for o in overrides if not o.startswith("data.data_dir="))]
                 + (["--synthetic"] if args.synthetic else []))
  path = M.write_result(args.out, "train_step", key, M.machine(), result)
  flops, mfu, ratio = result["achieved_flops_per_s"], result["mfu"], result["analytic_over_xla"]
  print(f"{key}: compile {result['compile_s']:.1f} s, step {result['step_s_median'] * 1e3:.2f} ms median "
        f"({result['step_s_mean'] * 1e3:.2f} mean), {result['steps_per_s']:.1f} steps/s, "
        f"{result['examples_per_s']:.0f} examples/s, "
        f"{'n/a' if flops is None else f'{flops / 1e9:.2f} GFLOP/s'}, "
        f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'} ({result['compute_dtype']}), analytic FLOPs "
        f"{'not available' if ratio is None else f'{ratio:.2f}x XLA'} -> {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
