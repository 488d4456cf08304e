"""Draws the README's figures from the committed results (``results/``), never from memory.

    python scripts/make_readme_figures.py      # writes docs/figures/*.png

* ``robustness-digits_av.png``: test accuracy of late fusion, early fusion and MulT as each modality is
  noised (x = noise level) or dropped, mean ± std over the seeds of each sweep (``robustness/*`` metrics
  of ``results/digits_av/<name>/summary.json``, written by the ``robustness`` evaluator).
* ``late_fusion-*.png``: ``mmjax plot`` of the late-fusion seeds' ``metrics.jsonl`` (curves of every seed
  overlaid) and the confusion matrix of seed 0 on the test split.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's mmjax, installed or not

RESULTS = ROOT / "results" / "digits_av"
OUT = ROOT / "docs" / "figures"
ROBUSTNESS = (("late_fusion", "late fusion"), ("early_fusion", "early fusion"), ("mult", "MulT"))
MODALITIES = (("image", "image"), ("audio", "speech"), ("text", "text"))


def robustness_figure(path: Path) -> Path:
  """Three panels (one per model): accuracy against noise level per modality, dropped modalities at the
  right; points are means over seeds, bars one standard deviation."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(ROBUSTNESS), figsize=(4.2 * len(ROBUSTNESS), 3.6), dpi=110, sharey=True)
  for ax, (name, label) in zip(axes, ROBUSTNESS, strict=True):
    summary = json.loads((RESULTS / name / "summary.json").read_text())
    metrics = summary["metrics"]
    levels = sorted({float(k.split("/")[3]) for k in metrics if k.startswith("robustness/noise/")})
    xs = [0.0, *levels]
    drop_x = levels[-1] * 1.3
    for i, (m, shown) in enumerate(MODALITIES):
      keys = ["robustness/clean/accuracy"] + [f"robustness/noise/{m}/{lv:g}/accuracy" for lv in levels]
      means = [100 * metrics[k]["mean"] for k in keys]
      stds = [100 * (metrics[k]["std"] or 0.0) for k in keys]
      ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=f"C{i}", label=f"{shown} noised")
      drop = metrics[f"robustness/drop/{m}/accuracy"]
      ax.errorbar([drop_x], [100 * drop["mean"]], yerr=[100 * (drop["std"] or 0.0)], marker="x",
                  markersize=9, capsize=3, color=f"C{i}", linestyle="none", label=f"{shown} dropped")
    ax.set_xticks([*xs, drop_x], [f"{x:g}" for x in xs] + ["drop"])
    ax.set_title(f"{label} (n = {len(summary['seeds'])} seeds)", fontsize=10)
    ax.set_xlabel("noise (x s.d.; text: swap probability)")
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("test accuracy (%)")
  axes[0].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return path


def curves(name: str = "late_fusion") -> list[Path]:
  """``mmjax plot`` of the committed seed logs of ``name`` -> ``docs/figures/<name>-*.png``."""
  from mmjax.plot import plot_runs

  seeds = sorted((RESULTS / name).glob("seed_*"))
  written = []
  with tempfile.TemporaryDirectory() as tmp:
    for path in plot_runs(seeds, tmp, echo=lambda *a: None):
      if path.name.startswith(("loss", "accuracy", "optimization", "confusion")) and (
          "confusion" not in path.name or ("seed_0" in path.name and path.name.endswith("test.png"))):
        written.append(Path(shutil.copy2(path, OUT / f"{name}-{path.name}")))
  return written


def main() -> int:
  OUT.mkdir(parents=True, exist_ok=True)
  paths = [robustness_figure(OUT / "robustness-digits_av.png"), *curves()]
  for p in paths:
    print(f"make_readme_figures: wrote {p.relative_to(ROOT)}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
