"""The ``mmjax`` command line: ``train``, ``eval``, ``data build``.

``mmjax train --config configs/late_fusion_digits.py --workdir runs/demo --config.optimizer.lr=3e-4``
Any ``--config.a.b=value`` overrides a config field; unknown fields are errors.
"""

from __future__ import annotations

import argparse
import json
import sys


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

  data = sub.add_parser("data", help="dataset commands")
  data_sub = data.add_subparsers(dest="data_command", required=True)
  build = data_sub.add_parser("build", help="prepare a dataset (array_record) for training")
  build.add_argument("name", help="dataset name, e.g. digits_av")
  build.add_argument("--data_dir", default="", help="TFDS data directory (default ~/tensorflow_datasets)")
  build.add_argument("--manual_dir", default="",
                     help="folder with the files of a dataset you downloaded yourself (e.g. cmu_mosei)")
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


def main(argv=None) -> int:
  """Entry point of the ``mmjax`` console script; returns the exit status."""
  argv = sys.argv[1:] if argv is None else list(argv)
  rest, overrides = _split_overrides(argv)
  args = _parser().parse_args(rest)
  if overrides and args.command not in ("train", "eval"):
    raise SystemExit(f"mmjax: error: --config.* overrides only apply to train/eval, not {args.command}")

  from mmjax.config import ConfigError, get_config
  from mmjax.data.pipeline import DatasetError
  from mmjax.train import BatchError, CheckpointError

  try:
    if args.command == "data":
      from mmjax.data import pipeline

      builder = pipeline.prepare(args.name, args.data_dir or None, args.manual_dir or None)
      splits = {k: v.num_examples for k, v in builder.info.splits.items()}
      print(f"mmjax: {args.name} ready in {builder.data_dir}: {splits}")
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
