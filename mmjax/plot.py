"""Figures of training runs for a person to look at: metric curves of one or several run directories
overlaid, an optimization figure, and confusion matrices (``mmjax plot``).

What is read from a run directory (``--workdir`` of ``mmjax train``): ``metrics.jsonl`` (training
windows, ``split == "train"``, and evaluations, any other split) and ``confusion/<split>.json``
(``{"split", "step", "labels", "matrix"}``, rows the true class, columns the predicted one). Figures are
drawn with matplotlib's Agg canvas (no display, no pyplot state) and saved as PNG.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from mmjax.errors import UserError

# Training-window keys drawn together in one "optimization" figure (one panel each), not one figure each.
OPTIMIZATION = ("learning_rate", "grad_norm", "param_norm", "update_norm")
# Bookkeeping and throughput: never drawn.
SKIPPED = frozenset({"step", "split", "count", "steps_per_s", "examples_per_s", "tflops_per_device", "mfu"})
# Metrics drawn first, in this order; the others follow in the order they first appear in the logs.
FIRST = ("loss", "accuracy")
# Annotate each cell of a confusion matrix with its count up to this many classes.
ANNOTATE_MAX_CLASSES = 15
_TICKS_MAX_CLASSES = 40
_SPLIT_STYLES = {"train": ("-", None), "validation": ("--", "o"), "test": (":", "s")}
_OTHER_STYLES = (("-.", "^"), ((0, (5, 2, 1, 2, 1, 2)), "D"), ((0, (1, 1)), "v"), ((0, (8, 3)), "P"))

Curves = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # metric -> split -> (steps, values)


class PlotError(UserError, ValueError):
  """A run directory that cannot be plotted (empty or damaged log, no metrics, bad confusion file)."""


def read_log(workdir: str | os.PathLike, *, echo: Callable[[str], None] = print) -> list[dict]:
  """The records of ``<workdir>/metrics.jsonl``, in file order.

  A last line that is not valid JSON (a run killed or still writing) is skipped with a warning through
  ``echo``; a damaged line elsewhere, an empty log or a missing file raise an error saying what to do.
  """
  workdir = Path(workdir)
  path = workdir / "metrics.jsonl"
  if not workdir.is_dir():
    raise PlotError(f"run directory {workdir} does not exist; pass the --workdir of `mmjax train`")
  if not path.is_file():
    raise PlotError(
        f"{workdir} has no metrics.jsonl: it is not an mmjax run directory (pass the --workdir of "
        "`mmjax train`), or its run has not finished its first log window yet (log_every steps)")
  lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
  if not lines:
    raise PlotError(f"{path} is empty: the run has not logged yet (it writes a line every log_every steps "
                    "and after each evaluation); wait, or lower --config.log_every")
  records = []
  for k, (i, line) in enumerate(lines):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if k == len(lines) - 1:
        echo(f"mmjax: warning: skipped the last line of {path} (line {i}): it is incomplete (the run is "
             "still writing, or was killed while writing)")
        continue
      raise PlotError(f"{path}, line {i}, is not JSON ({e.msg}): the log is damaged; delete that line "
                      "to plot the rest") from None
    if not isinstance(record, dict) or "step" not in record or "split" not in record:
      raise PlotError(f"{path}, line {i}: expected an object with 'step' and 'split', got {line[:80]!r}")
    records.append(record)
  if not records:
    raise PlotError(f"{path} holds only an incomplete line: the run has not logged a full window yet")
  return records


def _is_number(value) -> bool:
  return isinstance(value, int | float) and not isinstance(value, bool)


def metric_curves(records: Iterable[dict]) -> Curves:
  """``{metric: {split: (steps, values)}}`` of the numeric metrics in ``records``, steps ascending.

  Metrics come ``loss`` first, then ``accuracy``, then in order of first appearance; bookkeeping and
  throughput keys (:data:`SKIPPED`) are left out. Where a (split, step) was logged twice (a resumed run
  repeats the steps after its last checkpoint; a finished run evaluated again repeats its final
  evaluation), the later record wins.
  """
  latest: dict[str, dict[str, dict[int, float]]] = {}
  for record in records:
    split, step = str(record["split"]), record["step"]
    if not _is_number(step):
      continue
    for key, value in record.items():
      if key not in SKIPPED and _is_number(value):
        latest.setdefault(key, {}).setdefault(split, {})[int(step)] = float(value)
  order = [m for m in FIRST if m in latest] + [m for m in latest if m not in FIRST]
  curves = {}
  for metric in order:
    curves[metric] = {}
    for split, points in latest[metric].items():
      steps = np.array(sorted(points), dtype=np.int64)
      curves[metric][split] = (steps, np.array([points[s] for s in steps], dtype=np.float64))
  return curves


def run_names(workdirs: Sequence[str | os.PathLike]) -> list[str]:
  """Legend names of run directories: their basenames, or as many trailing path components as make
  them distinct (``a/seed_0``, ``b/seed_0``). The same directory twice is an error."""
  paths = [Path(w).resolve() for w in workdirs]
  if len(set(paths)) < len(paths):
    twice = sorted({str(p) for p in paths if paths.count(p) > 1})
    raise PlotError(f"run directory given more than once: {', '.join(twice)}")
  for depth in range(1, max((len(p.parts) for p in paths), default=1) + 1):
    names = ["/".join(p.parts[-depth:]) for p in paths]
    if len(set(names)) == len(names):
      return names
  return [str(p) for p in paths]  # not reached: distinct resolved paths differ in some trailing part


def read_confusion(path: str | os.PathLike) -> dict:
  """A confusion file ``{"split", "step", "labels", "matrix"}``, checked: a square matrix of counts
  with one row (true class) and one column (predicted class) per label."""
  path = Path(path)
  try:
    data = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise PlotError(f"{path} is not JSON ({e.msg}); evaluate the run again to rewrite it") from None
  if not isinstance(data, dict) or "matrix" not in data:
    raise PlotError(f"{path}: expected an object with 'labels' and 'matrix'")
  try:
    matrix = np.asarray(data["matrix"], dtype=np.float64)
  except (TypeError, ValueError):
    raise PlotError(f"{path}: 'matrix' is not a table of numbers") from None
  n = matrix.shape[0] if matrix.ndim == 2 else -1
  labels = data.get("labels", list(range(max(n, 0))))
  if matrix.ndim != 2 or matrix.shape != (n, n) or len(labels) != n or (matrix < 0).any():
    raise PlotError(f"{path}: expected a square matrix of non-negative counts with one row per label; got "
                    f"shape {matrix.shape} and {len(labels)} labels")
  return {"split": str(data.get("split", path.stem)), "step": data.get("step"), "labels": list(labels),
          "matrix": matrix}


def normalize_rows(matrix) -> np.ndarray:
  """Each row divided by its sum (the fraction of a true class predicted as each class); rows without
  examples stay zero."""
  matrix = np.asarray(matrix, dtype=np.float64)
  totals = matrix.sum(axis=1, keepdims=True)
  return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _colors(n: int) -> list:
  import matplotlib

  cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def _split_styles(splits: Iterable[str]) -> dict:
  """Line style and marker per split: train solid, validation dashed, test dotted, others in turn."""
  styles = {}
  for split in splits:
    k = sum(s not in _SPLIT_STYLES for s in styles)
    styles[split] = _SPLIT_STYLES.get(split) or _OTHER_STYLES[k % len(_OTHER_STYLES)]
  return styles


def _draw(ax, runs: list[tuple[str, Curves]], metric: str, colors: list, styles: dict) -> None:
  from matplotlib.ticker import MaxNLocator

  for (_, curves), color in zip(runs, colors, strict=True):
    for split, (steps, values) in curves.get(metric, {}).items():
      linestyle, marker = styles[split]
      ax.plot(steps, values, color=color, linestyle=linestyle, marker=marker, markersize=4,
              linewidth=1.2 if split == "train" else 1.6, alpha=0.8 if split == "train" else 1.0)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.grid(alpha=0.3)


def _legend(ax, names: list[str], colors: list, styles: dict) -> None:
  """One entry per run (its colour) when there are several, and one per split (its line style)."""
  from matplotlib.lines import Line2D

  handles = []
  if len(names) > 1:
    handles += [Line2D([], [], color=color, linewidth=2, label=name)
                for name, color in zip(names, colors, strict=True)]
  single = colors[0] if len(names) == 1 else "0.3"
  handles += [Line2D([], [], color=single, linestyle=ls, marker=mk, markersize=4, label=split)
              for split, (ls, mk) in styles.items()]
  ax.legend(handles=handles, fontsize=8, loc="best")


def _metric_figure(runs: list[tuple[str, Curves]], metric: str):
  """One metric vs step: every run (a colour) and every split it was logged for (a line style)."""
  seen = dict.fromkeys(s for _, curves in runs for s in curves.get(metric, {}))
  splits = [s for s in _SPLIT_STYLES if s in seen] + [s for s in seen if s not in _SPLIT_STYLES]
  names = [name for name, _ in runs]
  colors, styles = _colors(len(runs)), _split_styles(splits)
  fig = _figure(7, 4.5)
  ax = fig.subplots()
  _draw(ax, runs, metric, colors, styles)
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  ax.set_title(metric if len(runs) > 1 else f"{names[0]}: {metric}")
  _legend(ax, names, colors, styles)
  return fig


def _optimization_figure(runs: list[tuple[str, Curves]], keys: list[str]):
  """Learning rate and gradient/parameter/update norms of the training windows, one panel each."""
  names = [name for name, _ in runs]
  colors = _colors(len(runs))
  styles = {"train": _SPLIT_STYLES["train"]}
  train_only = [(name, {k: {"train": c[k]["train"]} for k in keys if "train" in c.get(k, {})})
                for name, c in runs]
  cols = min(len(keys), 2)
  rows = math.ceil(len(keys) / cols)
  fig = _figure(5 * cols, 3.4 * rows)
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  for ax, key in zip(axes, keys, strict=False):
    _draw(ax, train_only, key, colors, styles)
    ax.set_title(key, fontsize=10)
    ax.set_xlabel("step")
  for ax in axes[len(keys):]:
    ax.set_visible(False)
  if len(runs) > 1:
    _legend(axes[0], names, colors, {})
  fig.suptitle("optimization (training windows)" + ("" if len(runs) > 1 else f": {names[0]}"))
  return fig


def _confusion_figure(confusion: dict, title: str):
  matrix = confusion["matrix"]
  labels = [str(label) for label in confusion["labels"]]
  n = len(labels)
  rates = normalize_rows(matrix)
  size = min(max(4.5, 0.45 * n + 2.5), 16)
  fig = _figure(size + 1, size)
  ax = fig.subplots()
  image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
  if n <= _TICKS_MAX_CLASSES:
    ax.set_xticks(range(n), labels, rotation=45 if max(map(len, labels), default=0) > 3 else 0,
                  ha="right" if max(map(len, labels), default=0) > 3 else "center")
    ax.set_yticks(range(n), labels)
  if n <= ANNOTATE_MAX_CLASSES:
    for i in range(n):
      for j in range(n):
        if matrix[i, j]:
          ax.text(j, i, f"{matrix[i, j]:g}", ha="center", va="center", fontsize=8,
                  color="white" if rates[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  total = matrix.sum()
  accuracy = np.trace(matrix) / total if total else float("nan")
  counts = "; counts in cells" if n <= ANNOTATE_MAX_CLASSES else ""
  ax.set_title(f"{title}\naccuracy {accuracy:.1%} of {total:g} (rows normalised{counts})", fontsize=10)
  return fig


def plot_confusion(confusion: dict, path: str | os.PathLike, title: str = "") -> Path:
  """Writes the row-normalised confusion matrix of :func:`read_confusion` ``confusion`` as a PNG
  (counts annotated up to :data:`ANNOTATE_MAX_CLASSES` classes) and returns its path."""
  path = Path(path)
  _confusion_figure(confusion, title or _confusion_title(confusion)).savefig(path, dpi=120)
  return path


def _confusion_title(confusion: dict, run: str = "") -> str:
  step = confusion.get("step")
  return (f"{run}: " if run else "") + confusion["split"] + (f" at step {step}" if step is not None else "")


def _file_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_") or "metric"


def plot_runs(workdirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None, *,
              echo: Callable[[str], None] = print) -> list[Path]:
  """Writes PNG figures of one or several runs to ``out_dir`` and returns their paths.

  One figure per metric (``<metric>.png``, ``loss`` first): the training windows and every evaluation
  split against the step, one colour per run and one line style per split; ``optimization.png`` with the
  learning rate and the gradient, parameter and update norms; ``confusion-<run>-<split>.png`` for every
  ``confusion/<split>.json`` of a run. Runs are named by :func:`run_names`. ``out_dir`` defaults to
  ``<workdir>/plots`` for one run and is required for several.
  """
  workdirs = [Path(w) for w in workdirs]
  if not workdirs:
    raise PlotError("no run directory given")
  if out_dir is None:
    if len(workdirs) > 1:
      raise PlotError(f"plotting {len(workdirs)} runs together needs an output folder: pass out_dir "
                      "(mmjax plot RUN RUN ... --out DIR)")
    out_dir = workdirs[0] / "plots"
  names = run_names(workdirs)
  runs = []
  for name, workdir in zip(names, workdirs, strict=True):
    curves = metric_curves(read_log(workdir, echo=echo))
    if not curves:
      raise PlotError(f"{workdir / 'metrics.jsonl'} has no numeric metrics to plot (only bookkeeping "
                      f"such as {', '.join(sorted(SKIPPED))}); is it a log of `mmjax train`?")
    runs.append((name, curves))
  confusions = [(name, read_confusion(p)) for name, w in zip(names, workdirs, strict=True)
                for p in sorted((w / "confusion").glob("*.json"))]

  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  metrics = list(dict.fromkeys(m for _, curves in runs for m in curves))
  written, used = [], set()

  def save(fig, stem: str) -> None:
    stem = _file_name(stem)
    unique, k = stem, 2
    while unique in used:
      unique, k = f"{stem}-{k}", k + 1
    used.add(unique)
    path = out_dir / f"{unique}.png"
    fig.savefig(path, dpi=120)
    written.append(path)

  for metric in metrics:
    if metric not in OPTIMIZATION:
      save(_metric_figure(runs, metric), metric)
  optimization = [k for k in OPTIMIZATION if k in metrics]
  if optimization:
    save(_optimization_figure(runs, optimization), "optimization")
  for name, confusion in confusions:
    save(_confusion_figure(confusion, _confusion_title(confusion, name)),
         f"confusion-{name}-{confusion['split']}")
  echo(f"mmjax: wrote {len(written)} figure(s) to {out_dir}")
  return written
