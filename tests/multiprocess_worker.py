"""One process of the two-process CPU training test (run by ``tests/test_multiprocess.py``, not by pytest).

``python multiprocess_worker.py --process_id I --num_processes 2 --coordinator localhost:PORT
--data_dir D --workdir W --out OUT.json [--steps 4] [--checkpoint_every N]``

Joins the distributed run, then trains the ``runlocal`` late-fusion config with
:func:`mmjax.train.train_and_evaluate` on the global mesh (shared ``--workdir``, orbax checkpoints
included; run again on the same ``--workdir``, it resumes from the latest checkpoint). It records, for
this process, every step's loss (the replicated metrics of the jitted step) and the ``id`` of every
example in the local batches the engine read, and writes them with the final metrics to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
  """Runs one worker; returns the exit status."""
  p = argparse.ArgumentParser()
  p.add_argument("--process_id", type=int, required=True)
  p.add_argument("--num_processes", type=int, required=True)
  p.add_argument("--coordinator", required=True)
  p.add_argument("--data_dir", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--checkpoint_every", type=int, default=0, help="default: half the steps")
  args = p.parse_args(argv)
  t0 = time.perf_counter()

  import jax

  from mmjax.config import get_config
  from mmjax.data import pipeline
  from mmjax.train import loop, mesh

  mesh.maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)

  # Record what the engine reads and computes, without changing it: wrap the batch iterator and the step.
  ids, losses = [], []
  train_batches = pipeline.train_batches

  def recording_batches(*a, **k):
    for batch in train_batches(*a, **k):
      ids.append(batch["id"].tolist())
      yield batch

  jit_train_step = loop.jit_train_step

  class Recording:
    """The compiled step, recording each step's loss (the loop compiles with ``.lower().compile()``)."""

    def __init__(self, compiled):
      self.compiled = compiled

    def __call__(self, state, batch):
      state, metrics = self.compiled(state, batch)
      losses.append(metrics["loss"])  # replicated: every process holds the full value
      return state, metrics

    def __getattr__(self, name):  # cost_analysis, memory_analysis, ...
      return getattr(self.compiled, name)

  def recording_jit(*a, **k):
    step = jit_train_step(*a, **k)
    return types.SimpleNamespace(lower=lambda *args: types.SimpleNamespace(
        compile=lambda: Recording(step.lower(*args).compile())))

  pipeline.train_batches = recording_batches
  loop.jit_train_step = recording_jit

  config = get_config(f"{ROOT / 'configs' / 'late_fusion_digits.py'}:runlocal", [
      f"data.data_dir={args.data_dir}", f"num_steps={args.steps}", "log_every=1", "eval_every=0",
      f"checkpoint_every={args.checkpoint_every or max(args.steps // 2, 1)}", "data.num_threads=1",
      # FSDP over the two processes: each holds half of the sharded parameters and optimizer state, and
      # the checkpoint is written collectively from the shards.
      "mesh.data=1", f"mesh.fsdp={args.num_processes}",
  ])
  final = loop.train_and_evaluate(config, args.workdir, echo=lambda *a, **k: print(*a, flush=True))

  # Which parameters the engine split over the processes (from the run's shardings; nothing is compiled).
  from mmjax.train.run import build_run

  run = build_run(config, args.workdir, read_only=True)
  leaves = jax.tree_util.tree_leaves_with_path(run.abstract_state.params)
  split = [jax.tree_util.keystr(path) for (path, x), sharding in zip(
      leaves, jax.tree_util.tree_leaves(run.state_shardings.params), strict=True)
      if sharding.shard_shape(x.shape) != x.shape]
  run.close()

  result = {
      "sharded_params": split,
      "process_index": jax.process_index(),
      "process_count": jax.process_count(),
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "losses": [float(x) for x in jax.device_get(losses)],
      "ids": ids,
      "final": final,
      "seconds": time.perf_counter() - t0,
  }
  Path(args.out).write_text(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
