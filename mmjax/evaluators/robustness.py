"""``robustness``: the task's metric as each modality is dropped, and as noise of rising scale is added to
each modality in turn (after MultiBench, Liang et al., NeurIPS 2021 Datasets and Benchmarks, sec. 3.2:
"modality-specific imperfections" and "missing modalities").

Corruptions, applied to one modality at a time on every example of the split (real and padded steps alike;
masks are kept, so a model still knows each sequence's length):

* **drop**: the modality's values are replaced by zeros (token ids by 0). This is what a model sees when
  a sensor is absent and the pipeline zero-fills; models with a native notion of absence (MVAE's
  ``_present``) are not asked to use it, so every model is measured the same way.
* **noise at level s**: float features get Gaussian noise of standard deviation ``s * sd``, ``sd`` being
  the modality's standard deviation over the split's real values; token modalities have each real token
  replaced by a uniformly random id (between the smallest and largest id seen in the split) with
  probability ``min(s, 1)``. The noise is drawn from a fixed key per (modality, level, batch), so the
  curves are reproducible.

Metrics: ``clean/M``, ``drop/MODALITY/M`` and ``noise/MODALITY/LEVEL/M`` for the watched metric ``M``
(kwarg ``metric``; default ``accuracy`` when the task reports it, else ``loss``). Each evaluation writes
``<workdir>/robustness/NAME-stepN.json`` (every metric of every condition) and a PNG: the metric against
the noise level, one line per modality, the dropped-modality values as markers at the right.

kwargs: ``split`` (default ``data.eval_split``), ``modalities`` (default: the model's ``modalities`` or
``modality_keys``), ``noise_levels`` (default ``(0.25, 0.5, 1.0, 2.0)``), ``metric``, ``seed``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.errors import ConfigError
from mmjax.evaluators.registry import Result, register
from mmjax.evaluators.split_metrics import split_metrics
from mmjax.files import write_json


def modality_stats(run, split: str, modalities) -> dict[str, dict]:
  """Per modality: ``{"kind": "float", "sd": standard deviation of real values}`` or ``{"kind": "tokens",
  "low": smallest id, "high": largest id}``, over the real examples (and real steps) of ``split``."""
  acc = {m: {"n": 0, "s": 0.0, "ss": 0.0, "low": None, "high": None, "int": None} for m in modalities}
  for batch in run.eval_batches(split):
    host = jax.device_get(batch)
    valid = np.asarray(host.get("_valid", np.ones(len(next(iter(host.values())))))) > 0
    for m in modalities:
      x = np.asarray(host[m])[valid]
      mask = host.get(f"{m}_mask")
      if mask is not None:
        x = x[np.asarray(mask)[valid].astype(bool)]
      a = acc[m]
      a["int"] = np.issubdtype(x.dtype, np.integer)
      if x.size == 0:
        continue
      if a["int"]:
        a["low"] = int(x.min()) if a["low"] is None else min(a["low"], int(x.min()))
        a["high"] = int(x.max()) if a["high"] is None else max(a["high"], int(x.max()))
      else:
        x = x.astype(np.float64)
        a["n"] += x.size
        a["s"] += float(x.sum())
        a["ss"] += float((x * x).sum())
  stats = {}
  for m, a in acc.items():
    if a["int"]:
      stats[m] = {"kind": "tokens", "low": a["low"] or 0, "high": a["high"] or 0}
    else:
      n = max(a["n"], 1)
      var = max(a["ss"] / n - (a["s"] / n) ** 2, 0.0)
      stats[m] = {"kind": "float", "sd": float(np.sqrt(var)) or 1.0}
  return stats


def corrupt(batch: dict, modality: str, kind: str, level, key, stats: dict) -> dict:
  """``batch`` with ``modality`` dropped (``kind="drop"``) or noised at ``level`` (``kind="noise"``);
  see the module docstring. Jittable (``level`` may be traced)."""
  x = batch[modality]
  if kind == "drop":
    y = jnp.zeros_like(x)
  elif stats["kind"] == "tokens":
    swap = jax.random.bernoulli(key, jnp.minimum(level, 1.0), x.shape)
    ids = jax.random.randint(jax.random.fold_in(key, 1), x.shape, stats["low"], stats["high"] + 1, x.dtype)
    y = jnp.where(swap, ids, x)
  else:
    y = x + (level * stats["sd"]) * jax.random.normal(key, x.shape, jnp.float32).astype(x.dtype)
  return {**batch, modality: y}


def _level_name(level: float) -> str:
  return f"{level:g}"


@register("robustness")
class Robustness:
  """The task's metric under dropped and noised modalities (see the module docstring)."""

  def __init__(self, run, split: str = "", modalities=None, noise_levels=(0.25, 0.5, 1.0, 2.0),
               metric: str = "", seed: int = 0):
    self.run = run
    self.split = split or run.config.data.eval_split
    model = run.model
    self.modalities = tuple(modalities or getattr(model, "modalities", None)
                            or getattr(model, "modality_keys", ()))
    if not self.modalities:
      raise ConfigError("the robustness evaluator needs kwargs.modalities (this model does not list its "
                        "modalities)")
    self.noise_levels = tuple(float(s) for s in noise_levels)
    if any(s <= 0 for s in self.noise_levels):
      raise ConfigError(f"robustness noise_levels must be > 0; got {self.noise_levels}")
    self.metric = metric
    self.seed = seed
    self._stats = None
    self._jitted = {}  # (modality, kind) -> jitted corrupt, compiled once (the level is an argument)

  def _transform(self, modality: str, kind: str, level: float):
    """``(batch, index) -> corrupted batch`` with a key fixed by (seed, modality, level, batch index)."""
    if (modality, kind) not in self._jitted:
      stats = self._stats[modality]
      self._jitted[modality, kind] = jax.jit(
          lambda batch, key, lvl: corrupt(batch, modality, kind, lvl, key, stats))
    fn = self._jitted[modality, kind]
    base = jax.random.fold_in(jax.random.PRNGKey(self.seed), self.modalities.index(modality))
    base = jax.random.fold_in(base, int(round(level * 1000)))
    return lambda batch, i: fn(batch, jax.random.fold_in(base, i), jnp.float32(level))

  def evaluate(self, params, *, step: int, name: str) -> Result:
    if self._stats is None:
      self._stats = modality_stats(self.run, self.split, self.modalities)
      missing = [m for m in self.modalities if m not in self._stats]
      if missing:
        raise ConfigError(f"robustness: the batch has no modality {missing}")
    clean, _ = split_metrics(self.run, params, self.split)
    metric = self.metric or ("accuracy" if "accuracy" in clean else "loss")
    if metric not in clean:
      raise ConfigError(f"robustness metric {metric!r} is not one of the task's metrics {sorted(clean)}")
    table = {"clean": clean, "drop": {}, "noise": {}}
    for m in self.modalities:
      table["drop"][m], _ = split_metrics(self.run, params, self.split,
                                          transform=self._transform(m, "drop", 0.0))
      table["noise"][m] = {}
      for level in self.noise_levels:
        table["noise"][m][_level_name(level)], _ = split_metrics(
            self.run, params, self.split, transform=self._transform(m, "noise", level))
    metrics = {f"clean/{metric}": clean[metric]}
    metrics.update({f"drop/{m}/{metric}": table["drop"][m][metric] for m in self.modalities})
    for m in self.modalities:
      for level in self.noise_levels:
        metrics[f"noise/{m}/{_level_name(level)}/{metric}"] = table["noise"][m][_level_name(level)][metric]
    result = Result(metrics)
    if self.run.is_main:
      folder = self.run.workdir / "robustness"
      doc = {"split": self.split, "step": step, "metric": metric, "noise_levels": list(self.noise_levels),
             "modalities": list(self.modalities), "stats": self._stats, **table}
      result.files.append(write_json(folder / f"{name}-step{step:06d}.json", doc))
      png = folder / f"{name}-step{step:06d}.png"
      result.images[f"{name}/robustness"] = plot_curves(doc, png, title=f"{self.run.config.model.name} "
                                                        f"({self.split}, step {step})")
      result.files.append(png)
    return result


def plot_curves(doc: dict, path, *, title: str = "") -> np.ndarray:
  """Draws one robustness JSON (``doc``) as a PNG at ``path``: ``metric`` against noise level per
  modality, the clean value at level 0 and the dropped-modality values as markers right of the last
  level. Returns the image as ``uint8 [H, W, 3]``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  metric = doc["metric"]
  levels = [0.0, *doc["noise_levels"]]
  fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
  drop_x = levels[-1] * 1.25 if levels[-1] > 0 else 1.0
  for i, m in enumerate(doc["modalities"]):
    color = f"C{i}"
    ys = [doc["clean"][metric]] + [doc["noise"][m][_level_name(s)][metric] for s in doc["noise_levels"]]
    ax.plot(levels, ys, "o-", color=color, label=f"{m} noised")
    ax.plot([drop_x], [doc["drop"][m][metric]], "x", color=color, markersize=9, markeredgewidth=2,
            label=f"{m} dropped")
  ax.axhline(doc["clean"][metric], color="gray", linewidth=0.8, linestyle=":")
  ax.set_xlabel("noise level (x modality s.d.; token swap prob.)")
  ax.set_ylabel(metric)
  ax.set_xticks(levels + [drop_x], [_level_name(s) for s in levels] + ["drop"])
  if title:
    ax.set_title(title, fontsize=10)
  ax.legend(fontsize=7, ncol=2)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return image
