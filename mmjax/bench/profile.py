"""Where one config's train step spends its time: a ``jax.profiler`` trace of the compiled step, broken down
by XLA operation and mapped back to the model code that made each operation.

``mmjax bench profile --config configs/mult_mosei.py [--config.a.b=v ...] [--steps 1] [--warmup 1]
[--synthetic] [--top 25] [--out benchmarks/results]``

The step is built and compiled as ``mmjax train`` builds it (:func:`mmjax.train.run.build_run`, one fixed
pre-built global batch), runs ``--warmup`` untimed steps, then ``--steps`` steps under
``jax.profiler.trace`` with a Perfetto trace. Every complete event of the trace whose name is an
instruction of the compiled HLO (a fusion, a custom call, a copy, ...) is one execution of that instruction;
its duration is summed per instruction over the traced steps. Each instruction is labelled from its HLO
metadata (``op_name``, the JAX name stack of the code that produced it):

* ``pass``: ``backward`` when the name stack holds ``transpose(`` (the gradient), ``optimizer`` for the
  update after the gradient (names under ``optimizer``/``optax``/``clip``/``adam``, or no model scope),
  else ``forward``;
* ``primitive``: the JAX primitive at the end of ``op_name`` (``dot_general``, ``exp``, ``reduce_max``,
  ``random_bits``, ...) of the fusion's root;
* ``scope``: the module path inside the model (e.g. ``crossmodal_l_from_a/layer/attn``), numbers dropped.

The result (per-instruction times, and the totals by pass, by primitive and by scope) is merged, keyed by
the config string, into ``<out>/profile-<device kind>-<YYYY-MM-DD>.json`` with the machine; a table of the
``--top`` instructions and the totals is printed. The sum of the instruction times is below the wall time of
the step when the host or the runtime adds time between operations; the two are reported side by side.
On the CPU, XLA runs independent operations on a thread pool, so instruction times can overlap: their sum
may exceed the wall time, and shares are of the summed time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

from mmjax.bench import machine as M

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+) = ")
_OP_NAME = re.compile(r'op_name="(?P<op>[^"]*)"')
_OPTIMIZER_WORDS = ("optimizer", "optax", "adam", "clip", "global_norm", "apply_updates", "ema")


def instruction_metadata(hlo_text: str) -> dict[str, str]:
  """``{instruction name: op_name}`` of every instruction of ``hlo_text`` (the compiled module's text)
  that carries an ``op_name`` in its metadata."""
  found = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    op = m and _OP_NAME.search(line)
    if op:
      found.setdefault(m.group("name"), op.group("op"))
  return found


def label(op_name: str) -> dict[str, str]:
  """``{"pass", "primitive", "scope"}`` of an HLO ``op_name`` such as
  ``jit(train_step)/transpose(jvp(MulT))/crossmodal_l_from_a/layer_0/attn/dot_general``."""
  parts = [p for p in op_name.split("/") if p]
  primitive = parts[-1] if parts else "?"
  lowered = op_name.lower()
  if "transpose(" in op_name:
    kind = "backward"
  elif any(w in lowered for w in _OPTIMIZER_WORDS) or not any(p.startswith("jvp(") for p in parts):
    kind = "optimizer"
  else:
    kind = "forward"
  inside = [p for p in parts[:-1] if not re.match(r"^(jit|pjit|jvp|transpose|vmap|remat|checkpoint|"
                                                   r"while|body|cond|scan|rematted_computation)\b", p)]
  scope = "/".join(re.sub(r"_\d+$", "", p) for p in inside) or "(top level)"
  return {"pass": kind, "primitive": primitive, "scope": scope}


def op_times(trace_dir: str, names: set[str]) -> tuple[dict[str, float], dict[str, int]]:
  """``({instruction: summed self seconds}, {instruction: executions})`` from the Perfetto trace under
  ``trace_dir``, counting only events named after an instruction in ``names``. An instruction that runs
  others (a ``call`` or ``while`` whose body's fusions are events of their own, nested inside it on the same
  thread) is charged only its self time: its duration less that of the events nested in it."""
  paths = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
  if not paths:
    raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(paths[0]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  per_thread = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and e.get("name") in names:
      per_thread[(e.get("pid"), e.get("tid"))].append((float(e["ts"]), float(e.get("dur", 0)), e["name"]))
  seconds, counts = collections.Counter(), collections.Counter()
  for thread in per_thread.values():
    thread.sort(key=lambda ev: (ev[0], -ev[1]))  # parents before the children that start with them
    stack = []  # (end, name) of the enclosing events
    for start, dur, name in thread:
      while stack and stack[-1][0] <= start:
        stack.pop()
      if stack:  # nested: its time is not its parent's own
        seconds[stack[-1][1]] -= dur / 1e6
      seconds[name] += dur / 1e6
      counts[name] += 1
      stack.append((start + dur, name))
  return dict(seconds), dict(counts)


def profile(config, *, steps: int, warmup: int, synthetic: bool) -> dict:
  """Compiles ``config``'s train step, traces ``steps`` steps, and returns the breakdown."""
  import jax

  from mmjax.data import pipeline
  from mmjax.train.run import build_run, make_global_batch
  from mmjax.train.step import jit_train_step

  with tempfile.TemporaryDirectory() as workdir:
    run = build_run(config, f"{workdir}/run")
    state = run.init()
    n = config.batch_size // jax.process_count()
    local = (pipeline.example_from_features(config.data, n, seed=config.seed) if synthetic else next(
        pipeline.train_batches(config.data, global_batch_size=config.batch_size, seed=config.seed,
                               process_index=jax.process_index(), process_count=jax.process_count())))
    batch = jax.block_until_ready(make_global_batch(local, run.batch_sharding))
    step = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding,
                          run.mesh, config.optimizer.grad_accum_steps, config.prng_impl,
                          config.mesh.rules.to_dict())
    compiled = step.lower(state, batch).compile()
    for _ in range(warmup):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    metadata = instruction_metadata(compiled.as_text())
    trace_dir = f"{workdir}/trace"
    t = time.perf_counter()
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        state, _ = compiled(state, batch)
      jax.block_until_ready(state)
    wall = (time.perf_counter() - t) / steps
    seconds, counts = op_times(trace_dir, set(metadata))
    run.checkpointer.close()

  total = sum(seconds.values())
  ops = []
  for name, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
    ops.append({"instruction": name, "seconds_per_step": s / steps, "share": s / total if total else None,
                "executions_per_step": counts[name] / steps, "op_name": metadata[name],
                **label(metadata[name])})
  groups = {}
  for key in ("pass", "primitive", "scope"):
    sums = collections.Counter()
    for op in ops:
      sums[op[key]] += op["seconds_per_step"]
    groups[key] = [{"name": k, "seconds_per_step": v, "share": v * steps / total if total else None}
                   for k, v in sums.most_common()]
  return {"model": config.model.name, "batch_size": config.batch_size, "precision": config.precision,
          "steps": steps, "warmup": warmup, "wall_s_per_step": wall,
          "op_seconds_per_step": total / steps, "instructions_timed": len(ops),
          "by_pass": groups["pass"], "by_primitive": groups["primitive"], "by_scope": groups["scope"],
          "ops": ops, "inputs": "synthetic (random, full padded lengths)" if synthetic else "first batch"}


def _table(rows, first: str, n: int) -> str:
  lines = [f"| {first} | s / step | share |", "|---|---:|---:|"]
  lines += [f"| {r['name']} | {r['seconds_per_step']:.3f} | {100 * (r['share'] or 0):.1f} % |"
            for r in rows[:n]]
  return "\n".join(lines)


def main(argv=None, *, prog: str | None = None) -> int:
  """Command-line entry point (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
  from mmjax.cli import _split_overrides

  rest, overrides = _split_overrides(sys.argv[1:] if argv is None else list(argv))
  p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
  p.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
  p.add_argument("--steps", type=int, default=1, help="traced steps")
  p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  p.add_argument("--synthetic", action="store_true",
                 help="random inputs of the dataset's padded shapes (for datasets you have not downloaded)")
  p.add_argument("--top", type=int, default=25, help="instructions listed in the printed table")
  p.add_argument("--out", default=str(M.DEFAULT_OUT_DIR),
                 help="results directory, created if missing (default: %(default)s)")
  args = p.parse_args(rest)
  if args.steps < 1 or args.warmup < 0 or args.top < 1:
    p.error("--steps and --top must be at least 1, --warmup at least 0")

  from mmjax.config import get_config

  config = get_config(args.config, overrides)
  result = profile(config, steps=args.steps, warmup=args.warmup, synthetic=args.synthetic)
  key = " ".join([args.config, *(f"--config.{o}" for o in overrides if not o.startswith("data.data_dir="))]
                 + (["--synthetic"] if args.synthetic else []))
  path = M.write_result(args.out, "profile", key, M.machine(), result)
  print(f"{key}: {result['wall_s_per_step']:.2f} s per step (wall), {result['op_seconds_per_step']:.2f} s in "
        f"{result['instructions_timed']} timed XLA instructions")
  print(_table(result["by_pass"], "pass", 5))
  print(_table(result["by_primitive"], "primitive (fusion root)", 12))
  print(_table(result["by_scope"], "scope", 12))
  lines = ["| instruction | s / step | share | pass | primitive | scope |", "|---|---:|---:|---|---|---|"]
  for op in result["ops"][:args.top]:
    lines.append(f"| {op['instruction']} | {op['seconds_per_step']:.3f} | {100 * (op['share'] or 0):.1f} % | "
                 f"{op['pass']} | {op['primitive']} | {op['scope']} |")
  print("\n".join(lines))
  print(f"-> {path}")
  return 0
