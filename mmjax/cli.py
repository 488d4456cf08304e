"""The ``mmjax`` command line: ``train``, ``eval``, ``sample``, ``fewshot``, ``sweep``, ``plot``, ``data``,
``bench``.

This is the user-error boundary: a :class:`mmjax.errors.UserError` (a bad config, path, dataset or
checkpoint) is printed as one paragraph and exits with status 2, without a traceback (``--debug`` shows
it); any other exception is a bug and keeps its traceback (status 1).

``mmjax train --config configs/late_fusion_digits.py --workdir runs/demo --config.optimizer.lr=3e-4``
Any ``--config.a.b=value`` overrides a config field; unknown fields are errors.

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
import textwrap

BENCHMARKS = {
    "attention": "every attention kernel (and PyTorch SDPA) over a grid of shapes",
    "train_step": "compile and step time of one config's jitted train step",
    "decode": "GPT-2 greedy decoding tokens/s, with the KV cache vs. recomputing the sequence",
    "prng": "train-step time with each PRNG implementation (config.prng_impl), interleaved",
    "profile": "where a train step's time goes: a profiler trace broken down by XLA operation and model code",
}

EXAMPLES = {
    "train": "mmjax train --config configs/late_fusion_digits.py --workdir runs/demo --config.num_steps=300",
    "eval": "mmjax eval --config configs/late_fusion_digits.py --workdir runs/demo --split test --step best",
    "sample": ("mmjax sample --config configs/mfm_digits.py --workdir runs/mfm --from audio --to image "
               "--per_class 2"),
    "fewshot": "mmjax fewshot --config configs/frozen_digits.py --workdir runs/frozen_digits --shots 0,1,5",
    "sweep": ("mmjax sweep --config configs/late_fusion_digits.py --seeds 0,1,2 --workdir runs/sweeps/lf "
              "--config.num_steps=600\n  (each seed trains in WORKDIR/seed_<s>; run again to resume a killed "
              "sweep)"),
    "plot": "mmjax plot runs/demo   # writes runs/demo/plots/*.png\n  mmjax plot runs/sweeps/lf/seed_* --out "
            "runs/plots/lf",
    "data": "mmjax data list\n  mmjax data build cmu_mosei/unaligned --manual_dir ~/mult_data",
    "data build": ("mmjax data build digits_av\n  mmjax data build cmu_mosei/unaligned --manual_dir "
                   "~/mult_data\n  mmjax data build digits_av --overwrite   # build a damaged dataset again"),
    "data list": "mmjax data list --data_dir ~/tensorflow_datasets",
}


def _version() -> str:
  from mmjax import __version__

  return __version__


def _sub(sub, name, help_text, example_key=None, **kwargs):
  """A subcommand whose ``--help`` ends with an example (``EXAMPLES[example_key or name]``)."""
  return sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                        epilog="example:\n  " + EXAMPLES[example_key or name],
                        formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def _step(text: str):
  """``--step``: a number, ``latest`` or ``best``."""
  if text in ("latest", "best"):
    return text
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a step number, 'latest' or 'best'; got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="mmjax", description="JAX model zoo for multimodal learning.",
      epilog="examples:\n  " + "\n  ".join(EXAMPLES[k] for k in ("train", "eval")) +
             "\n  mmjax bench attention --quick\n\nRun `mmjax COMMAND --help` for the options of a command.",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--version", action="version", version=f"mmjax {_version()}")
  p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

  train = _sub(sub, "train", "train a config (resumes from the workdir's latest checkpoint)")
  train.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
  train.add_argument("--workdir", required=True, help="run directory (checkpoints, logs, metrics)")

  ev = _sub(sub, "eval", "evaluate a checkpoint of a workdir with the task's metrics")
  ev.add_argument("--config", required=True)
  ev.add_argument("--workdir", required=True)
  ev.add_argument("--split", default=None, help="split to evaluate (default: the config's test split)")
  ev.add_argument("--step", type=_step, default=None,
                  help="checkpoint: a step number, 'latest' (default) or 'best' (needs best_metric)")

  smp = _sub(sub, "sample", "PNG grid of one modality generated from another (generative models)")
  smp.add_argument("--config", required=True)
  smp.add_argument("--workdir", required=True)
  smp.add_argument("--from", dest="source", required=True, help="modality to generate from, e.g. audio")
  smp.add_argument("--to", dest="target", required=True, help="modality to generate, e.g. image")
  smp.add_argument("--split", default=None, help="split to draw examples from (default: the test split)")
  smp.add_argument("--step", type=_step, default=None, help="checkpoint: a number, 'latest' or 'best'")
  smp.add_argument("--per_class", type=int, default=2, help="examples per class")
  smp.add_argument("--out", default=None, help="PNG path (default: WORKDIR/samples/...)")

  fs = _sub(sub, "fewshot", "few-shot accuracy of a Frozen checkpoint (interleaved prompts), or of its "
                            "language model alone on text-only prompts")
  fs.add_argument("--config", required=True)
  fs.add_argument("--workdir", required=True)
  fs.add_argument("--protocol", default="fast_binding,classification",
                  help="comma-separated: fast_binding (new names bound in the prompt), classification")
  fs.add_argument("--shots", default="0,1,2,3,4,5", help="support examples per class, comma-separated")
  fs.add_argument("--episodes", type=int, default=200, help="episodes per protocol and shot count")
  fs.add_argument("--ways", type=int, default=2, help="classes per episode")
  fs.add_argument("--split", default=None, help="split to draw images from (default: the test split)")
  fs.add_argument("--seed", type=int, default=0)
  fs.add_argument("--step", type=_step, default=None, help="checkpoint: a number, 'latest' or 'best'")
  fs.add_argument("--no_open_ended", action="store_true", help="skip the open-ended (greedy decoding) scores")
  fs.add_argument("--text_support", action="store_true",
                  help="Frozen: support examples as text stand-ins (--text_repeats words), the query an "
                       "image (a diagnostic)")
  fs.add_argument("--snap_prefix", action="store_true",
                  help="Frozen: replace each image prefix vector by its nearest token embedding (not in the "
                       "paper; the checkpoint is unchanged)")
  fs.add_argument("--text_repeats", type=int, default=2,
                  help="a language model alone: each image of an episode is its class name this many times")

  sw = _sub(sub, "sweep", "train one config with several seeds; summary.json/.md of mean ± std")
  sw.add_argument("--config", required=True, help="config file, optionally FILE:ARG")
  sw.add_argument("--seeds", required=True, help="comma-separated seeds or ranges, e.g. 0,1,2 or 0-4")
  sw.add_argument("--workdir", required=True, help="sweep directory: seed_<s>/, summary.json/.md")

  plot = _sub(sub, "plot", "PNG figures of runs: metric curves overlaid, confusion matrices")
  plot.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="run directories (--workdir of train)")
  plot.add_argument("--out", default=None, metavar="DIR",
                    help="output folder (default WORKDIR/plots; required for several)")

  data = _sub(sub, "data", "dataset commands: build, list")
  data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
  build = _sub(data_sub, "build", "prepare a dataset (array_record) for training", "data build")
  build.add_argument("name", help="dataset name, e.g. digits_av or cmu_mosei/unaligned")
  build.add_argument("--data_dir", default="", help="TFDS data directory (default ~/tensorflow_datasets)")
  build.add_argument("--manual_dir", default="",
                     help="folder with the files of a dataset you downloaded yourself (e.g. cmu_mosei)")
  build.add_argument("--overwrite", action="store_true",
                     help="build a prepared dataset again (e.g. a damaged file); the old version is deleted "
                          "once the new one is complete")
  lst = _sub(data_sub, "list", "list mmjax's datasets and their configs, prepared or not", "data list")
  lst.add_argument("--data_dir", default="", help="TFDS data directory (default ~/tensorflow_datasets)")
  # Listed for --help only: main() hands "bench ..." to _bench before parsing.
  sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS) + " (mmjax bench NAME --help)",
                 add_help=False)
  for sp in (train, ev):
    sp.add_argument("--multihost", action="store_true",
                    help="one process per host: jax.distributed.initialize() discovers the cluster (SLURM, "
                         "Open MPI, TPU pod slice)")
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


def _user_error(e: BaseException) -> str:
  """One paragraph: ``mmjax: error: <message>``, wrapped at 110 columns (the message's own line breaks,
  e.g. lists of mismatched names, are kept)."""
  lines = str(e).strip().splitlines() or [type(e).__name__]
  first = textwrap.fill(f"mmjax: error: {lines[0]}", width=110, subsequent_indent="  ",
                        break_on_hyphens=False, break_long_words=False)  # paths stay whole
  return "\n".join([first, *lines[1:]])


def main(argv=None) -> int:
  """Entry point of the ``mmjax`` console script; returns the exit status."""
  from mmjax.errors import UserError

  argv = sys.argv[1:] if argv is None else list(argv)
  debug = "--debug" in argv
  argv = [a for a in argv if a != "--debug"]
  try:
    return _main(argv)
  except UserError as e:
    if debug:
      raise
    print(_user_error(e), file=sys.stderr)
    return 2


def _main(argv) -> int:
  if argv and argv[0] == "bench":  # before the override split: train_step takes --config.* itself
    return _bench(argv[1:])
  rest, overrides = _split_overrides(argv)
  args = _parser().parse_args(rest)
  if overrides and args.command not in ("train", "eval", "sample", "fewshot", "sweep"):
    raise SystemExit(f"mmjax: error: --config.* overrides apply to train/eval/sample/fewshot/sweep, not "
                     f"{args.command}")
  if args.command == "plot":
    from mmjax.plot import plot_runs

    plot_runs(args.workdirs, args.out)
    return 0
  if args.command == "sweep":
    from mmjax.sweep import parse_seeds, run_sweep

    run_sweep(args.config, overrides, parse_seeds(args.seeds), args.workdir)
    return 0

  from mmjax.config import get_config

  if args.command == "data":
    from mmjax.data import pipeline

    if args.data_command == "list":
      import logging

      absl = logging.getLogger("absl")  # tfds warns about every unprepared variant
      level = absl.level
      absl.setLevel(logging.ERROR)
      try:
        return _data_list(pipeline.list_datasets(args.data_dir or None))
      finally:  # main() may be called in-process (tests, notebooks): leave logging as it was
        absl.setLevel(level)
    builder = pipeline.prepare(args.name, args.data_dir or None, args.manual_dir or None,
                               overwrite=args.overwrite)
    for note in pipeline.build_notes(builder):
      print(f"mmjax: {args.name} {note}")
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f"mmjax: {args.name} ready in {builder.data_dir}: {splits}")
    return 0

  if args.command == "sample":
    from mmjax.evaluators import cross_modal
    from mmjax.train import restore_run

    config = get_config(args.config, overrides)
    run, state = restore_run(args.workdir, args.step, config=config)
    split = args.split or config.data.test_split or config.data.eval_split
    path = cross_modal.sample(run, state.params, args.source, args.target, split=split,
                              step=int(state.step), per_class=args.per_class, out=args.out)
    print(f"mmjax: wrote {path}")
    return 0

  if args.command == "fewshot":
    import jax

    from mmjax.evaluators.fewshot import fewshot_scores
    from mmjax.files import write_json
    from mmjax.train import restore_run

    shots = tuple(int(k) for k in args.shots.split(",") if k.strip())
    protocols = tuple(p.strip() for p in args.protocol.split(",") if p.strip())
    run, state = restore_run(args.workdir, args.step, config=get_config(args.config, overrides),
                             devices=jax.local_devices()[:1])
    result = fewshot_scores(run, state.params, protocols=protocols, shots=shots, episodes=args.episodes,
                            ways=args.ways, split=args.split, seed=args.seed,
                            open_ended=not args.no_open_ended, text_repeats=args.text_repeats,
                            snap_prefix=args.snap_prefix, text_support=args.text_support)
    path = write_json(f"{args.workdir}/fewshot.json", {**result, "step": int(state.step)})
    print(f"mmjax: wrote {path}")
    return 0

  from mmjax.train import evaluate_checkpoint, maybe_initialize_distributed, train_and_evaluate

  maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                               multihost=args.multihost)
  config = get_config(args.config, overrides)
  if args.command == "train":
    train_and_evaluate(config, args.workdir)
  else:
    result = evaluate_checkpoint(config, args.workdir, args.split or config.data.test_split, args.step)
    print(json.dumps(result, indent=2))
  return 0


def _data_list(rows) -> int:
  """Prints the table of ``mmjax data list``."""
  print(f"{'dataset':34} {'kind':22} {'prepared':9} splits")
  for r in rows:
    name = f"{r['name']}/{r['config']}" if r["config"] else r["name"]
    kind = "embedded" if r["embedded"] else ("manual (--manual_dir)" if r["manual"] else "download")
    splits = ", ".join(f"{k} {v}" for k, v in r["splits"].items()) if r["prepared"] else "-"
    print(f"{name:34} {kind:22} {'yes' if r['prepared'] else 'no':9} {splits}")
  if rows:
    print(f"(data directory: {rows[0]['data_dir'].split('/' + rows[0]['name'])[0]})")
  return 0
