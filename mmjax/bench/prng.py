"""Benchmark of the PRNG implementations (``config.prng_impl``) on one config's train step.

``mmjax bench prng --config configs/mult_mosei.py [--config.a.b=v ...] [--impls threefry,rbg,unsafe_rbg]
[--rounds 3] [--synthetic] [--out benchmarks/results]``

The train step of ``config`` is built and compiled once per implementation (as ``mmjax train`` builds it,
:func:`mmjax.train.run.build_run`), each runs one untimed step, then ``--rounds`` rounds time one step of
every implementation in turn, on ONE fixed pre-built batch. Interleaving puts each implementation under the
same background load, which on a shared machine drifts more than the differences measured. Each step is
timed by the wall clock and by this process's CPU time (user + system of all threads): on a machine shared
with other jobs the CPU time is the steadier measure of the work a step needs. Results are merged, keyed by
the config string, into ``<out>/prng-<device kind>-<YYYY-MM-DD>.json`` with the machine
(:func:`mmjax.bench.machine.machine`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

from mmjax.bench import machine as M


def time_interleaved(steps: dict, states: dict, batch, rounds: int, on_round=None) -> tuple[dict, dict]:
  """Runs one step of every compiled ``steps[name]`` in turn, ``rounds`` times, updating ``states`` in
  place; returns ``(wall, cpu)``: per name, the seconds of each step (wall clock, and the process's CPU time,
  which hardly depends on other jobs' load). ``on_round(r, cpu)`` is called after each round."""
  import jax

  wall = {name: [] for name in steps}
  cpu = {name: [] for name in steps}
  for r in range(rounds):
    for name in steps:
      t, c = time.perf_counter(), time.process_time()
      states[name], metrics = steps[name](states[name], batch)
      jax.block_until_ready((states[name], metrics))
      wall[name].append(time.perf_counter() - t)
      cpu[name].append(time.process_time() - c)
    if on_round is not None:
      on_round(r, cpu)
  return wall, cpu

def benchmark(config, impls, *, rounds: int, synthetic: bool) -> dict:
  """Compiles ``config``'s train step once per PRNG implementation and times them interleaved."""
  import jax

  from mmjax.data import pipeline
  from mmjax.train.run import build_run, make_global_batch
  from mmjax.train.step import jit_train_step

  steps, states, compile_s = {}, {}, {}
  batch = None
  with tempfile.TemporaryDirectory() as workdir:
    for impl in impls:
      cfg = config.copy_and_resolve_references()
      cfg.prng_impl = impl
      run = build_run(cfg, f"{workdir}/{impl}")
      if batch is None:
        n = cfg.batch_size // jax.process_count()
        local = (pipeline.example_from_features(cfg.data, n, seed=cfg.seed) if synthetic else next(
            pipeline.train_batches(cfg.data, global_batch_size=cfg.batch_size, seed=cfg.seed,
                                   process_index=jax.process_index(), process_count=jax.process_count())))
        batch = jax.block_until_ready(make_global_batch(local, run.batch_sharding))
      states[impl] = run.init()
      t = time.perf_counter()
      steps[impl] = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings,
                                   run.batch_sharding, run.mesh, cfg.optimizer.grad_accum_steps,
                                   impl).lower(states[impl], batch).compile()
      compile_s[impl] = time.perf_counter() - t
      run.checkpointer.close()
      states[impl], _ = steps[impl](states[impl], batch)  # the untimed first step
      jax.block_until_ready(states[impl])
    wall, cpu = time_interleaved(steps, states, batch, rounds)
  base = impls[0]
  med = {impl: (statistics.median(wall[impl]), statistics.median(cpu[impl])) for impl in impls}
  per_impl = {
      impl: {"compile_s": compile_s[impl], "step_s": wall[impl], "step_cpu_s": cpu[impl],
             "step_s_median": med[impl][0], "step_cpu_s_median": med[impl][1],
             f"speedup_vs_{base}_wall": med[base][0] / med[impl][0],
             f"speedup_vs_{base}_cpu": med[base][1] / med[impl][1]}
      for impl in impls}
  return {
      "model": config.model.name,
      "batch_size": config.batch_size,
      "input_shapes": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in batch.items()},
      "model_kwargs": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.model.kwargs.items()},
      "mesh": dict(run.mesh.shape),
      "rounds": rounds,
      "order": "one untimed step each, then rounds of one timed step per implementation in turn",
      "inputs": "synthetic (random, full padded lengths)" if synthetic else "first training batch",
      "impls": per_impl,
  }


def main(argv=None, *, prog: str | None = None) -> int:
  """Command-line entry point (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
  from mmjax.cli import _split_overrides
  from mmjax.config import ConfigError, get_config
  from mmjax.train.state import PRNG_IMPLS

  rest, overrides = _split_overrides(sys.argv[1:] if argv is None else list(argv))
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
  p.add_argument("--impls", default=",".join(PRNG_IMPLS),
                 help="comma-separated implementations; the first is the baseline (default: %(default)s)")
  p.add_argument("--rounds", type=int, default=3, help="timed steps per implementation")
  p.add_argument("--synthetic", action="store_true",
                 help="random inputs of the dataset's padded shapes (for datasets you have not downloaded)")
  p.add_argument("--out", default=str(M.DEFAULT_OUT_DIR), help="results directory (default: %(default)s)")
  args = p.parse_args(rest)
  impls = [i for i in args.impls.split(",") if i]
  unknown = [i for i in impls if i not in PRNG_IMPLS]
  if unknown or not impls:
    raise ConfigError(f"--impls {args.impls!r}: unknown implementation(s) {unknown}; valid: "
                      f"{', '.join(PRNG_IMPLS)}")
  if args.rounds < 1:
    p.error("--rounds must be at least 1")
  config = get_config(args.config, [o for o in overrides if not o.startswith("prng_impl=")])
  result = benchmark(config, impls, rounds=args.rounds, synthetic=args.synthetic)
  key = " ".join([args.config, *(f"--config.{o}" for o in overrides if not o.startswith("data.data_dir="))]
                 + (["--synthetic"] if args.synthetic else []))
  path = M.write_result(args.out, "prng", key, M.machine(), result)
  base = impls[0]
  for impl, r in result["impls"].items():
    print(f"{impl}: step {r['step_s_median']:.2f} s median wall, {r['step_cpu_s_median']:.2f} s CPU "
          f"(x{r[f'speedup_vs_{base}_wall']:.2f} wall, x{r[f'speedup_vs_{base}_cpu']:.2f} CPU vs {base}), "
          f"compile {r['compile_s']:.1f} s")
  print(f"-> {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
