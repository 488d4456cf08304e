"""Seed sweeps (``mmjax sweep``): one config trained with several seeds, summarised as mean ± std.

:func:`run_sweep` trains ``<workdir>/seed_<s>`` for each seed, one after the other, with the ordinary
engine (a finished seed is evaluated again, an interrupted one resumes from its latest checkpoint), then
writes ``<workdir>/summary.json`` and ``<workdir>/summary.md``. :func:`markdown_table` turns committed
summaries into the README's results tables (``scripts/make_readme_tables.py``).

Every "std" here is the sample standard deviation over seeds (``ddof=1``); it is ``None`` for one seed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mmjax.errors import UserError

SUMMARY_FORMAT = 1  # version of summary.json's layout
STD_NOTE = "std is the sample standard deviation over seeds (ddof = 1)"
# Order of the metric groups of metrics.json in summaries; unnamed groups follow, then "train", then the
# top-level numbers (step, num_params).
GROUP_ORDER = ("test", "validation", "best")
_DASH = "\u2014"


class SweepError(UserError, ValueError):
  """A sweep that cannot run as asked (bad seeds, a seed set by override, a workdir of another config)."""


def flatten_metrics(final: Mapping) -> tuple[dict[str, float], dict[str, object]]:
  """The numbers of a ``metrics.json`` as ``{"group/metric": value}`` (nested groups joined by ``/``,
  top-level numbers under their own name, e.g. ``num_params``), and its other leaves (``model``,
  ``best/metric``) as ``{path: value}``. Numbers are ordered test, validation, best, other groups,
  train, top level."""
  numbers, others, order = {}, {}, {}

  def walk(node: Mapping, prefix: str) -> None:
    for key, value in node.items():
      path = f"{prefix}{key}"
      if isinstance(value, Mapping):
        walk(value, path + "/")
      elif isinstance(value, int | float) and not isinstance(value, bool):
        numbers[path] = float(value)
        order[path] = len(order)
      elif value is not None:
        others[path] = value

  walk(final, "")

  def rank(path: str) -> tuple[int, int]:
    group = path.split("/", 1)[0] if "/" in path else None
    if group is None:
      return len(GROUP_ORDER) + 2, order[path]
    if group == "train":
      return len(GROUP_ORDER) + 1, order[path]
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER)), order[path]

  return {p: numbers[p] for p in sorted(numbers, key=rank)}, others


def _finite(value):
  return value if value is None or np.isfinite(value) else None


def metric_stats(values: Sequence[float | None]) -> dict:
  """``mean``, ``std`` (sample, ``ddof=1``; ``None`` below two values), ``min``, ``max`` and ``n`` of the
  values that are not ``None``; non-finite results are ``None``."""
  present = np.asarray([v for v in values if v is not None], dtype=np.float64)
  n = int(present.size)
  if not n:
    return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
  std = float(np.std(present, ddof=1)) if n > 1 else None
  return {"mean": _finite(float(present.mean())), "std": _finite(std), "min": _finite(float(present.min())),
          "max": _finite(float(present.max())), "n": n}


def summarize(finals: Mapping[int, Mapping]) -> dict:
  """Statistics over seeds of the final metrics (``{seed: metrics.json contents}``).

  Returns ``{"seeds": [...], "metrics": {path: {"mean", "std", "min", "max", "n", "values"}}, "info":
  {path: value}}``: every number of every group (see :func:`flatten_metrics`), ``std`` the sample
  standard deviation (``ddof=1``), ``values`` one per seed in the order of ``seeds`` (``None`` where a
  seed lacks the metric); ``info`` holds the non-numeric leaves (a list when the seeds disagree).
  """
  seeds = list(finals)
  flat = {s: flatten_metrics(finals[s]) for s in seeds}
  metrics = {}
  for path in dict.fromkeys(p for s in seeds for p in flat[s][0]):
    values = [flat[s][0].get(path) for s in seeds]
    metrics[path] = {**metric_stats(values), "values": [_finite(v) for v in values]}
  info = {}
  for path in dict.fromkeys(p for s in seeds for p in flat[s][1]):
    seen = [flat[s][1].get(path) for s in seeds]
    info[path] = seen[0] if all(v == seen[0] for v in seen) else seen
  return {"seeds": seeds, "metrics": metrics, "info": info}


def git_commit(path: str | os.PathLike | None = None) -> dict | None:
  """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: the mmjax package), or
  ``None`` outside a checkout or without git."""
  where = Path(path) if path is not None else Path(__file__).resolve().parent
  try:
    commit = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10)
    if commit.returncode:
      return None
    status = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def machine_info() -> dict:
  """The machine a sweep ran on: ``os`` (``platform.platform()``), devices (``device_kind``, ``platform``,
  ``device_count``), library versions and CPU (see :func:`mmjax.bench.machine.machine`)."""
  from mmjax.bench.machine import machine

  return {"os": platform.platform(), **machine()}


def describe_machine(info: Mapping, *, os_name: bool = True) -> str:
  """One line for a person: the devices, jax version and (``os_name``) OS of :func:`machine_info`."""
  if info.get("platform") == "cpu":
    cores = info.get("cpu_cores_usable") or info.get("cpu_cores")
    devices = f"CPU ({info.get('cpu_model') or 'unknown model'}" + (f", {cores} cores)" if cores else ")")
  else:
    devices = f"{info.get('device_count', '?')} x {info.get('device_kind', 'unknown device')}"
  line = f"{devices}, jax {info.get('jax', '?')}"
  return f"{line}, {info.get('os', '?')}" if os_name else line


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


def _diff(a, b, prefix="") -> list[str]:
  """Paths where two JSON trees differ."""
  if isinstance(a, dict) and isinstance(b, dict):
    return [d for k in dict.fromkeys([*a, *b]) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
  return [] if a == b else [prefix.rstrip(".")]


def _check_same_config(config, seed_dir: Path) -> None:
  """A seed directory trained with another config cannot be resumed into this sweep."""
  path = seed_dir / "config.json"
  if not path.is_file():
    return
  try:
    before = json.loads(path.read_text())
  except json.JSONDecodeError:
    return  # the engine rewrites it
  differ = _diff(before, json.loads(config.to_json_best_effort()))
  if differ:
    raise SweepError(f"{seed_dir} was trained with another config (differs in {', '.join(differ[:5])}"
                     f"{', ...' if len(differ) > 5 else ''}); use a new --workdir for this sweep, or delete "
                     f"{seed_dir} to train that seed again")


def parse_seeds(text: str) -> list[int]:
  """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix, to distinct integer seeds in the order given."""
  seeds = []
  for part in (p.strip() for p in str(text).split(",")):
    if not part:
      continue
    match = re.fullmatch(r"(-?\d+)(?:-(\d+))?", part)
    if not match:
      raise SweepError(f"seeds must be integers like 0,1,2 or a range 0-4; got {part!r}")
    first, last = int(match[1]), int(match[2]) if match[2] else int(match[1])
    seeds += range(first, last + 1)
  return _check_seeds(seeds)


def _check_seeds(seeds) -> list[int]:
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise SweepError("a sweep needs at least one seed (e.g. --seeds 0,1,2)")
  twice = sorted({s for s in seeds if seeds.count(s) > 1})
  if twice:
    raise SweepError(f"seed(s) {twice} given more than once")
  return seeds


def run_sweep(config_spec: str, overrides: Sequence[str], seeds: Sequence[int], workdir: str | os.PathLike,
              *, echo: Callable[[str], None] = print, devices=None) -> dict:
  """Trains ``config_spec`` (``FILE[:ARG]`` with ``overrides``) once per seed, sequentially, in
  ``<workdir>/seed_<s>``, then writes ``summary.json`` and ``summary.md`` to ``workdir`` and returns the
  summary.

  Each seed's config is ``get_config(config_spec, [*overrides, f"seed={s}"])``, trained by
  :func:`mmjax.train.train_and_evaluate` on ``devices`` (default: all): a finished seed is only
  evaluated again, an interrupted one resumes, so a killed sweep continues where it stopped. A seed
  directory trained with a different config is an error. The summary (:func:`summarize`) holds, for
  every number of every group of the seeds' ``metrics.json``, the mean, the sample standard deviation
  (``ddof=1``), min, max, n and the per-seed values, plus the config spec, overrides, seeds, git commit
  and machine (:func:`machine_info`).
  """
  from mmjax.config import get_config
  from mmjax.train import train_and_evaluate

  overrides = list(overrides)
  seeds = _check_seeds(seeds)
  if any(o.partition("=")[0].strip() == "seed" for o in overrides):
    raise SweepError("the sweep sets the seed of each run; pass seeds with --seeds, not --config.seed")
  workdir = Path(workdir)
  configs = {s: get_config(config_spec, [*overrides, f"seed={s}"]) for s in seeds}  # every error up front
  for s in seeds:
    _check_same_config(configs[s], workdir / f"seed_{s}")
  workdir.mkdir(parents=True, exist_ok=True)
  finals = {}
  for i, s in enumerate(seeds, 1):
    echo(f"mmjax sweep: seed {s} ({i}/{len(seeds)}) in {workdir / f'seed_{s}'}")
    finals[s] = train_and_evaluate(configs[s], workdir / f"seed_{s}", devices=devices, echo=echo)
  summary = {
      "format": SUMMARY_FORMAT,
      "config": config_spec,
      "overrides": overrides,
      **summarize(finals),
      "workdirs": [f"seed_{s}" for s in seeds],
      "note": STD_NOTE,
      "git": git_commit(),
      "machine": machine_info(),
      "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  }
  write_summary(summary, workdir)
  echo(f"mmjax sweep: {len(seeds)} seed(s) summarised in {workdir / 'summary.json'} and summary.md")
  return summary


def write_summary(summary: Mapping, workdir: str | os.PathLike) -> tuple[Path, Path]:
  """Writes ``summary.json`` and ``summary.md`` (:func:`summary_markdown`) to ``workdir`` atomically
  (a temporary file renamed into place); returns their paths."""
  workdir = Path(workdir)
  json_path, md_path = workdir / "summary.json", workdir / "summary.md"
  _write_atomic(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
  _write_atomic(md_path, summary_markdown(summary))
  return json_path, md_path


def format_number(value: float | None) -> str:
  """A number for a person: integers with thousands separators, others with 4 significant digits."""
  if value is None:
    return _DASH
  if float(value).is_integer() and abs(value) >= 1:
    return f"{int(value):,}"
  return f"{value:.4g}"


def summary_markdown(summary: Mapping) -> str:
  """A Markdown page of a sweep summary: what was run, where, and one row per metric with
  ``mean ± std (min–max)`` and n; then the per-seed values."""
  seeds = summary["seeds"]
  model = summary.get("info", {}).get("model")
  overrides = ", ".join(f"`{o}`" for o in summary.get("overrides", ())) or "none"
  git = summary.get("git")
  commit = (f"`{git['commit'][:12]}`" + (" with uncommitted changes" if git.get("dirty") else "")
            if git else "unknown")
  machine = summary.get("machine")
  lines = [
      f"# Sweep: {model + ' from ' if model else ''}`{summary.get('config', '?')}`",
      "",
      f"- overrides: {overrides}",
      f"- seeds: {', '.join(map(str, seeds))} (n = {len(seeds)}), each run in `seed_<seed>/`",
      f"- machine: {describe_machine(machine) if machine else 'unknown'}",
      f"- commit: {commit}",
      f"- written: {summary.get('created', '?')}",
      "",
      f"Each cell is mean ± std (min\u2013max) over the seeds; {STD_NOTE}; {_DASH} where only one seed has "
      "the metric.",
      "",
      "| metric | mean ± std (min\u2013max) | n |",
      "|---|---:|---:|",
  ]
  for path, st in summary["metrics"].items():
    cell = f"{format_number(st['mean'])} ± {format_number(st['std'])}"
    if st["n"] > 1:
      cell += f" ({format_number(st['min'])}\u2013{format_number(st['max'])})"
    lines.append(f"| {path} | {cell} | {st['n']} |")
  lines += ["", "## Per seed", "", "| metric | " + " | ".join(f"seed {s}" for s in seeds) + " |",
            "|---|" + "---:|" * len(seeds)]
  for path, st in summary["metrics"].items():
    lines.append(f"| {path} | " + " | ".join(format_number(v) for v in st["values"]) + " |")
  return "\n".join(lines) + "\n"


def format_cell(stats: Mapping | None, fmt: str = "3f") -> str:
  """``mean ± std`` of :func:`metric_stats` ``stats`` for a table: ``fmt`` is ``"percent"`` (one
  decimal, ``96.9 ± 0.4 %``), ``"<k>f"`` (k decimals) or ``"int"`` (thousands separators, the std left
  out when every seed agrees); the std is left out for one seed; missing metrics are an em dash."""
  if not stats or stats.get("mean") is None:
    return _DASH
  mean, std = stats["mean"], stats.get("std")
  if fmt == "percent":
    return f"{100 * mean:.1f} %" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f} %"
  if fmt == "int":
    same = std is None or stats.get("min") == stats.get("max")
    return f"{mean:,.0f}" if same else f"{mean:,.0f} ± {std:,.0f}"
  match = re.fullmatch(r"(\d)f", fmt)
  if not match:
    raise ValueError(f"unknown cell format {fmt!r}; use 'percent', 'int' or '<k>f' such as '3f'")
  k = int(match[1])
  return f"{mean:.{k}f}" if std is None else f"{mean:.{k}f} ± {std:.{k}f}"


def markdown_table(rows: Sequence[tuple[Sequence[str], Mapping | None]],
                   columns: Sequence[tuple[str, str, str]], *, lead: Sequence[str] = ("model",)) -> str:
  """A Markdown table of sweep summaries.

  ``rows``: ``(leading cells, summary)`` pairs (one leading cell per ``lead`` header, e.g. the model and
  its config; a ``None`` summary gives dashes). ``columns``: ``(metric path, header, format)``, e.g.
  ``("test/accuracy", "test acc.", "percent")``, cells by :func:`format_cell`.
  """
  header = [*lead, *(c[1] for c in columns)]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(lead) + "---:|" * len(columns)]
  for cells, summary in rows:
    if len(cells) != len(lead):
      raise ValueError(f"row {cells!r} has {len(cells)} leading cell(s), the table {len(lead)} ({lead})")
    metrics = (summary or {}).get("metrics", {})
    values = [format_cell(metrics.get(path), fmt) for path, _, fmt in columns]
    lines.append("| " + " | ".join([*cells, *values]) + " |")
  return "\n".join(lines)


def table_footnote(summaries: Sequence[Mapping]) -> str:
  """What a table of these summaries shows: seeds per row, the std's definition and the machine(s)."""
  counts = sorted({len(s["seeds"]) for s in summaries})
  seed_sets = {tuple(s["seeds"]) for s in summaries}
  n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}\u2013{counts[-1]}"
  seeds = f" ({', '.join(map(str, next(iter(seed_sets))))})" if len(seed_sets) == 1 else ""
  # Without the OS string: the same machine reports a new kernel build after a restart.
  machines = list(dict.fromkeys(describe_machine(s["machine"], os_name=False)
                                for s in summaries if s.get("machine")))
  where = "; ".join(machines) if machines else "an unrecorded machine"
  if counts == [1]:
    return f"One seed{seeds} per row, so no std. Measured on {where}."
  return (f"Mean ± std over n = {n} seeds{seeds} per row; std is the sample standard deviation "
          f"(ddof = 1). Measured on {where}.")
