"""The ``mmjax`` command line: ``train``, ``eval``, ``sample``, ``fewshot``, ``data build``, ``bench``.

``mmjax train --config configs/late_fusion_digits.py --workdir runs/demo --config.optimizer.lr=3e-4``
Any ``--config.a.b=value`` overrides a config field; unknown fields are errors.

``mmjax sample --config C --workdir W --from audio --to image`` draws a PNG grid of images generated from
speech by a generative model's checkpoint (:mod:`mmjax.generation`).

``mmjax bench attention [ARGS...]`` and ``mmjax bench train_step [ARGS...]`` run the benchmarks of
:mod:`mmjax.bench` with the remaining arguments passed on unchanged (``train_step`` takes ``--config.*``
overrides too); results go to ``benchmarks/results`` under the current directory unless ``--out`` is given.

``mmjax sweep --config C --seeds 0,1,2 --workdir W [--config.a.b=v ...]`` trains C once per seed and writes
``W/summary.json`` and ``W/summary.md`` (:mod:`mmjax.sweep`); ``mmjax plot WORKDIR [WORKDIR ...] [--out DIR]``
draws PNG figures of runs (:mod:`mmjax.plot`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

BENCHMARKS = {
    "attention": "every attention kernel (and PyTorch SDPA) over a grid of shapes",
    "train_step": "compile and step time of one config's jitted train step",
    "decode": "GPT-2 greedy decoding tokens/s, with the KV cache vs. recomputing the sequence",
}


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="mmjax", description="JAX model zoo for multimodal learning.")
  sub = p.add_subparsers(dest="command", required=True)

  train = sub.add_parser("train", help="train a config (resumes from the workdir's latest checkpoint)")
  train.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
  train.add_argument("--workdir", required=True, help="run directory (checkpoints, logs, metrics)")

  ev = sub.add_parser("eval", help="evaluate a checkpoint of a workdir")
  ev.add_argument("--config", required=True)
  ev.add_argument("--workdir", required=True)
  ev.add_argument("--split", default=None, help="split to evaluate (default: the config's test split)")
  ev.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")

  smp = sub.add_parser("sample", help="PNG grid of one modality generated from another (generative models)")
  smp.add_argument("--config", required=True)
  smp.add_argument("--workdir", required=True)
  smp.add_argument("--from", dest="source", required=True, help="modality to generate from, e.g. audio")
  smp.add_argument("--to", dest="target", required=True, help="modality to generate, e.g. image")
  smp.add_argument("--split", default=None, help="split to draw examples from (default: the test split)")
  smp.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  smp.add_argument("--per_class", type=int, default=None, help="examples per class (default: config)")
  smp.add_argument("--out", default=None, help="PNG path (default: WORKDIR/samples/...)")

  fs = sub.add_parser("fewshot", help="few-shot accuracy of a Frozen checkpoint (interleaved prompts), or of "
                                     "its language model alone on text-only prompts")
  fs.add_argument("--config", required=True)
  fs.add_argument("--workdir", required=True)
  fs.add_argument("--protocol", default="fast_binding,classification",
                  help="comma-separated: fast_binding (new names bound in the prompt), classification")
  fs.add_argument("--shots", default="0,1,2,3,4,5", help="support examples per class, comma-separated")
  fs.add_argument("--episodes", type=int, default=200, help="episodes per protocol and shot count")
  fs.add_argument("--ways", type=int, default=2, help="classes per episode")
  fs.add_argument("--split", default=None, help="split to draw images from (default: the test split)")
  fs.add_argument("--seed", type=int, default=0)
  fs.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  fs.add_argument("--no_open_ended", action="store_true", help="skip the open-ended (greedy decoding) scores")
  fs.add_argument("--text_support", action="store_true",
                  help="Frozen: support examples as text stand-ins (--text_repeats words), the query an "
                       "image (a diagnostic)")
  fs.add_argument("--snap_prefix", action="store_true",
                  help="Frozen: replace each image prefix vector by its nearest token embedding (not in the "
                       "paper; the checkpoint is unchanged)")
  fs.add_argument("--text_repeats", type=int, default=2,
                  help="a language model alone: each image of an episode is its class name this many times")

  sw = sub.add_parser("sweep", help="train one config with several seeds; summary.json/.md of mean ± std",
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      epilog="example:\n  mmjax sweep --config configs/late_fusion_digits.py --seeds 0,1,2 "
                             "--workdir runs/sweeps/late_fusion --config.num_steps=600\n"
                             "Each seed trains in WORKDIR/seed_<s> (run again to resume a killed sweep).")
  sw.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
  sw.add_argument("--seeds", required=True, help="comma-separated seeds or ranges, e.g. 0,1,2 or 0-4")
  sw.add_argument("--workdir", required=True, help="sweep directory: seed_<s>/, summary.json/.md")

  plot = sub.add_parser("plot", help="PNG figures of runs: metric curves overlaid, confusion matrices",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="examples:\n  mmjax plot runs/demo   # writes runs/demo/plots/*.png\n"
                               "  mmjax plot runs/sweeps/lf/seed_* --out runs/plots/lf")
  plot.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories (--workdir of train)")
  plot.add_argument("--out", default=None, metavar="DIR",
                    help="output folder (default WORKDIR/plots; required for several)")

  data = sub.add_parser("data", help="dataset commands")
  data_sub = data.add_subparsers(dest="data_command", required=True)
  build = data_sub.add_parser("build", help="prepare a dataset (array_record) for training")
  build.add_argument("name", help="dataset name, e.g. digits_av")
  build.add_argument("--data_dir", default="", help="TFDS data directory (default ~/tensorflow_datasets)")
  build.add_argument("--manual_dir", default="",
                     help="folder with the files of a dataset you downloaded yourself (e.g. cmu_mosei)")
  # Listed for --help only: main() hands "bench ..." to _bench before parsing.
  sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS) + " (mmjax bench NAME --help)",
                 add_help=False)
  for sp in (train, ev):
    sp.add_argument("--coordinator", default=None,
                    help="multi-process: coordinator host:port (or MMJAX_COORDINATOR)")
    sp.add_argument("--num_processes", type=int, default=None)
    sp.add_argument("--process_id", type=int, default=None)
  return p


def _split_overrides(argv):
  """Separates ``--config.a.b=v`` (or ``--config.a.b v``) overrides from the other arguments."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      body = arg[len("--config."):]
      if "=" not in body:
        if i + 1 >= len(argv):
          raise SystemExit(f"mmjax: error: override {arg} needs a value")
        body, i = f"{body}={argv[i + 1]}", i + 1
      overrides.append(body)
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _bench(argv) -> int:
  """``mmjax bench NAME [ARGS...]``: runs ``mmjax.bench.NAME.main(ARGS)``, ARGS passed on unchanged."""
  p = argparse.ArgumentParser(prog="mmjax bench", description="Run a benchmark of mmjax.bench.",
                              epilog="Arguments after NAME go to the benchmark: mmjax bench NAME --help")
  p.add_argument("name", metavar="NAME", choices=sorted(BENCHMARKS),
                 help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
  if not argv or argv[0].startswith("-"):
    p.parse_args(argv)  # --help exits 0; anything else is a usage error (exit 2)
  name = p.parse_args(argv[:1]).name
  module = importlib.import_module(f"mmjax.bench.{name}")
  return module.main(list(argv[1:]), prog=f"mmjax bench {name}")


def main(argv=None) -> int:
  """Entry point of the ``mmjax`` console script; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == "bench":  # before the override split: train_step takes --config.* itself
    from mmjax.config import ConfigError
    from mmjax.data.pipeline import DatasetError

    try:
      return _bench(argv[1:])
    except (ConfigError, DatasetError, FileNotFoundError) as e:
      print(f"mmjax: error: {e}", file=sys.stderr)
      return 2
  rest, overrides = _split_overrides(argv)
  args = _parser().parse_args(rest)
  if overrides and args.command not in ("train", "eval", "sample", "fewshot", "sweep"):
    raise SystemExit(f"mmjax: error: --config.* overrides apply to train/eval/sample, not {args.command}")

  from mmjax.config import ConfigError, get_config
  from mmjax.data.pipeline import DatasetError
  from mmjax.train import BatchError, CheckpointError

  try:
    if args.command in ("plot", "sweep"):
      return _plot_or_sweep(args, overrides)

    if args.command == "data":
      from mmjax.data import pipeline

      builder = pipeline.prepare(args.name, args.data_dir or None, args.manual_dir or None)
      splits = {k: v.num_examples for k, v in builder.info.splits.items()}
      print(f"mmjax: {args.name} ready in {builder.data_dir}: {splits}")
      return 0

    if args.command == "sample":
      from mmjax.generation import sample

      path = sample(get_config(args.config, overrides), args.workdir, args.source, args.target,
                    split=args.split, step=args.step, per_class=args.per_class, out=args.out)
      print(f"mmjax: wrote {path}")
      return 0

    if args.command == "fewshot":
      from mmjax.fewshot import run_fewshot

      shots = tuple(int(k) for k in args.shots.split(",") if k.strip())
      protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip())
      run_fewshot(get_config(args.config, overrides), args.workdir, protocols=protocols, shots=shots,
                  episodes=args.episodes, ways=args.ways, split=args.split, seed=args.seed, step=args.step,
                  open_ended=not args.no_open_ended, text_repeats=args.text_repeats,
                  snap_prefix=args.snap_prefix, text_support=args.text_support)
      return 0

    from mmjax.train import evaluate_checkpoint, maybe_initialize_distributed, train_and_evaluate

    maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    config = get_config(args.config, overrides)
    if args.command == "train":
      train_and_evaluate(config, args.workdir)
    else:
      result = evaluate_checkpoint(config, args.workdir, args.split or config.data.test_split, args.step)
      print(json.dumps(result, indent=2))
    return 0
  except (ConfigError, DatasetError, CheckpointError, BatchError, FileNotFoundError) as e:
    print(f"mmjax: error: {e}", file=sys.stderr)
    return 2


def _plot_or_sweep(args, overrides) -> int:
  """``mmjax plot`` and ``mmjax sweep``; their own errors (``ValueError`` subclasses) exit 2."""
  from mmjax.plot import PlotError
  from mmjax.sweep import SweepError

  try:
    if args.command == "plot":
      from mmjax.plot import plot_runs

      plot_runs(args.workdirs, args.out)
    else:
      from mmjax.sweep import parse_seeds, run_sweep

      run_sweep(args.config, overrides, parse_seeds(args.seeds), args.workdir)
    return 0
  except (PlotError, SweepError) as e:
    print(f"mmjax: error: {e}", file=sys.stderr)
    return 2
