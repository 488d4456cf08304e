"""Copies what the README needs from a finished sweep into the repository's ``results/`` folder.

    python scripts/collect_results.py runs/sweeps/late_fusion results/digits_av/late_fusion

From the sweep directory (``mmjax sweep --workdir``): ``summary.json`` and ``summary.md``, and per seed the
small files that figures are drawn from (``metrics.json``, ``metrics.jsonl``, ``config.json``,
``confusion/*.json``, ``robustness/*.json``, ``fewshot/*.json``, ``zero_shot/*.json``); never checkpoints or
event files. The ``seed_*`` folders already in the destination are removed first, so no file of an earlier
sweep survives beside the new one's. The README's tables (``scripts/make_readme_tables.py``) and figures
(``scripts/make_readme_figures.py``) read only these committed copies.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

PER_SEED = ("metrics.json", "metrics.jsonl", "config.json")
PER_SEED_FOLDERS = ("confusion", "robustness", "fewshot", "zero_shot")


def collect(sweep: Path, dest: Path) -> list[Path]:
  """Copies the summary and the per-seed result files of ``sweep`` to ``dest``; returns the copies."""
  if not (sweep / "summary.json").is_file():
    raise SystemExit(f"collect_results: {sweep} has no summary.json; run `mmjax sweep ... --workdir {sweep}` "
                     "to the end first")
  if dest.resolve() == sweep.resolve():
    raise SystemExit(f"collect_results: the destination {dest} is the sweep itself; name a folder under "
                     "results/")
  dest.mkdir(parents=True, exist_ok=True)
  for stale in sorted(dest.glob("seed_*")):  # an earlier sweep's seeds and files must not outlive it
    shutil.rmtree(stale)
  copied = []
  for name in ("summary.json", "summary.md"):
    copied.append(Path(shutil.copy2(sweep / name, dest / name)))
  for seed_dir in sorted(sweep.glob("seed_*")):
    out = dest / seed_dir.name
    out.mkdir(exist_ok=True)
    for name in PER_SEED:
      if (seed_dir / name).is_file():
        copied.append(Path(shutil.copy2(seed_dir / name, out / name)))
    for folder in PER_SEED_FOLDERS:
      for f in sorted((seed_dir / folder).glob("*.json")):
        (out / folder).mkdir(exist_ok=True)
        copied.append(Path(shutil.copy2(f, out / folder / f.name)))
  return copied


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("sweep", type=Path, help="the sweep's --workdir")
  p.add_argument("dest", type=Path, help="e.g. results/digits_av/late_fusion")
  args = p.parse_args(argv)
  copied = collect(args.sweep, args.dest)
  print(f"collect_results: {len(copied)} files -> {args.dest}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
