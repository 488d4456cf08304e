"""Temporary memory of a compiled train step with and without rematerialisation (``config.remat``).

``python benchmarks/remat_memory.py [--config configs/mult_digits.py] [--modes none,full,dots_saveable]
[--config.a.b=v ...]``

The step is lowered on abstract arrays and compiled, never run: ``compiled.memory_analysis()`` gives the
bytes XLA plans for temporaries (activations kept for the backward pass among them), arguments and outputs.
Defaults: a deep MulT on digits_av (8 crossmodal layers, so 8-layer crossmodal and memory transformers,
width 64, batch 32, one device). Prints one line per mode and the JSON of all of them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

DEEP_MULT = ["model.kwargs.num_layers=8", "model.kwargs.width=64", "model.kwargs.num_heads=4",
             "batch_size=32"]


def measure(config_spec: str, overrides: list[str], modes: list[str]) -> list[dict]:
  import jax

  from mmjax.config import get_config
  from mmjax.data import pipeline
  from mmjax.train.run import build_run
  from mmjax.train.step import jit_train_step

  out = []
  for mode in modes:
    config = get_config(config_spec, [*overrides, f"remat={mode}"])
    with tempfile.TemporaryDirectory() as workdir:
      run = build_run(config, workdir, jax.devices()[:1])
      local = pipeline.example_from_features(config.data, config.batch_size)
      batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=run.batch_sharding)
               for k, v in local.items()}
      step = jit_train_step(run.model, run.optimizer, run.task, run.state_shardings, run.batch_sharding,
                            run.mesh, config.optimizer.grad_accum_steps)
      mem = step.lower(run.abstract_state, batch).compile().memory_analysis()
      run.close()
    out.append({"remat": mode, "temp_bytes": int(mem.temp_size_in_bytes),
                "argument_bytes": int(mem.argument_size_in_bytes),
                "output_bytes": int(mem.output_size_in_bytes), "precision": config.precision,
                "model_kwargs": config.model.kwargs.to_dict(), "batch_size": config.batch_size,
                "jax": jax.__version__, "device": jax.devices()[0].device_kind})
    print(f"remat={mode:16s} temp {mem.temp_size_in_bytes / 2**20:9.2f} MiB   arguments "
          f"{mem.argument_size_in_bytes / 2**20:8.2f} MiB", flush=True)
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/mult_digits.py")
  parser.add_argument("--modes", default="none,full,dots_saveable")
  args, rest = parser.parse_known_args(argv)
  overrides = [a[len("--config."):] for a in rest if a.startswith("--config.")]
  unknown = [a for a in rest if not a.startswith("--config.")]
  if unknown:
    parser.error(f"unknown arguments {unknown}")
  if args.config == "configs/mult_digits.py":
    overrides = [*DEEP_MULT, *overrides]
  print(json.dumps(measure(args.config, overrides, args.modes.split(",")), indent=1, default=str))


if __name__ == "__main__":
  sys.exit(main())
