"""``cross_modal``: cross-modal coherence and sample grids of the generative models (MFM, MVAE, MMVAE).

A generative model exposes ``predict_missing(batch, observed) -> (outputs, {m: reconstruction})``: every
modality reconstructed from the ``observed`` ones alone (MFM through its surrogate inference, MVAE through
the product of the observed experts, MMVAE through their mixture). On top of it:

* **Cross-modal coherence** (Shi et al., NeurIPS 2019, sec. 4): generate modality B from modality A alone,
  classify the generated B with a separately trained *unimodal* classifier of B, and count how often it
  finds the true label: metric ``A->B``. Beside it, ``classifier/B`` is that classifier's accuracy on the
  real B (the ceiling). A classifier is an ordinary mmjax run of a one-modality model (e.g.
  ``configs/late_fusion_digits.py:image``), named by its workdir.
* **Sample grids**: a PNG per evaluation (``<workdir>/samples``, and the TensorBoard image
  ``NAME/samples``; ``mmjax sample`` draws one from any checkpoint) showing, for a few examples of each
  class (columns, sorted by label), the real source (when it can be drawn), the real target and the target
  generated from the source. Images are drawn as they are (values in [0, 1]); feature sequences ``[T, F]``
  as spectrogram-like tiles (features up, time right, cut to the real length), scaled by the real tile's
  range so real and generated share one scale. Token modalities cannot be drawn.

kwargs: ``split`` (default ``data.eval_split``), ``pairs = "audio->image,text->image"`` (coherence),
``classifiers = {"image": WORKDIR, ...}`` (one per target of ``pairs``), ``grid = "audio->image"`` (one
pair, or "" for none), ``grid_per_class`` (default 2).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.data import pipeline
from mmjax.errors import ConfigError, UserError
from mmjax.evaluators.registry import Result, register

PAIR_SEP = "->"


def parse_pairs(text: str) -> list[tuple[str, str]]:
  """``"audio->image,text->image"`` -> ``[("audio", "image"), ("text", "image")]``."""
  pairs = []
  for part in (p.strip() for p in (text or "").split(",")):
    if not part:
      continue
    src, sep, tgt = part.partition(PAIR_SEP)
    if not sep or not src.strip() or not tgt.strip() or src.strip() == tgt.strip():
      raise ConfigError(f"bad cross_modal pair {part!r}: write SOURCE->TARGET with two different modalities")
    pairs.append((src.strip(), tgt.strip()))
  return pairs


def as_input(generated, like):
  """A generated modality as the input a model reads: float means as they are, token logits
  ``[..., T, V]`` -> their argmax ids (``like`` is the real array, giving the dtype)."""
  if jnp.issubdtype(like.dtype, jnp.integer):
    return jnp.argmax(generated, axis=-1).astype(like.dtype)
  return generated.astype(like.dtype)


@dataclasses.dataclass
class Classifier:
  """A trained unimodal classifier: the model, its parameters, the modality it reads, its workdir."""

  modality: str
  model: Any
  params: Any
  workdir: str

  def logits(self, params, inputs, mask=None):
    """Class logits ``[B, C]`` for ``inputs`` of its modality (``mask`` for sequences)."""
    batch = {self.modality: inputs}
    if mask is not None:
      batch[f"{self.modality}_mask"] = mask
    outputs, _ = self.model.apply({"params": params}, batch, train=False)
    return outputs


def load_classifier(run, workdir, modality: str) -> Classifier:
  """The latest checkpoint of the unimodal classifier trained in ``workdir`` (restored on ``run``'s
  devices); a clear error when there is none or when it reads other modalities."""
  hint = (f"train one with `mmjax train --config configs/late_fusion_digits.py:{modality} --workdir "
          f"{workdir}` (or the equivalent for your data), or drop {modality!r} targets from the evaluator's "
          "pairs")
  if not (Path(workdir) / "config.json").is_file():
    raise ConfigError(f"no trained {modality} classifier in {str(workdir)!r} (no config.json): {hint}")
  try:
    other, state = run.open_run(workdir)
  except UserError as e:
    raise ConfigError(f"the {modality} classifier in {str(workdir)!r} cannot be restored ({e}): {hint}"
                      ) from None
  reads = tuple(other.config.model.kwargs.get("modalities", ()))
  if reads != (modality,):
    raise ConfigError(f"the classifier in {str(workdir)!r} reads modalities {reads}, not only {modality!r}; "
                      "coherence needs a unimodal classifier")
  return Classifier(modality, other.model, state.params, str(workdir))


@register("cross_modal")
class CrossModal:
  """Coherence (``pairs``, scored by ``classifiers``) and sample grids (``grid``) on ``split``; see the
  module docstring. ``load_classifiers=False`` skips the classifiers (grids only, as ``mmjax sample``)."""

  def __init__(self, run, split: str = "", pairs: str = "", classifiers=None, grid: str = "",
               grid_per_class: int = 2, label_key: str | None = None, load_classifiers: bool = True):
    self.run = run
    self.split = split or run.config.data.eval_split
    self.label_key = label_key or getattr(run.task, "label_key", "label")
    self.pairs = parse_pairs(pairs)
    grid_pairs = parse_pairs(grid)
    if len(grid_pairs) > 1:
      raise ConfigError(f"a cross_modal grid names one pair (SOURCE->TARGET); got {grid!r}")
    self.grid_pair = grid_pairs[0] if grid_pairs else None
    if grid_per_class < 1:
      raise ConfigError(f"cross_modal grid_per_class must be >= 1; got {grid_per_class}")
    self.grid_per_class = grid_per_class
    modalities = tuple(getattr(run.model, "modalities", ()))
    if not hasattr(run.model, "predict_missing"):
      raise ConfigError(f"model {run.config.model.name!r} cannot generate one modality from another "
                        "(it has no predict_missing); remove the cross_modal evaluator")
    for src, tgt in self.pairs + grid_pairs:
      for m in (src, tgt):
        if m not in modalities:
          raise ConfigError(f"cross_modal pair {src}{PAIR_SEP}{tgt}: the model has no modality {m!r} "
                            f"(it has {modalities})")
    classifiers = dict(classifiers or {})
    self.classifiers = {}
    if load_classifiers:
      for tgt in dict.fromkeys(t for _, t in self.pairs):
        if tgt not in classifiers:
          raise ConfigError(f"coherence to {tgt!r} needs kwargs.classifiers.{tgt} (the workdir of a trained "
                            "unimodal classifier)")
        self.classifiers[tgt] = load_classifier(run, classifiers[tgt], tgt)
    self._sums = jax.jit(self._coherence_sums)
    self._generate = jax.jit(self._generate_from, static_argnames="source")

  def _generate_from(self, params, batch, source):
    return self.run.model.apply({"params": params}, batch, observed=(source,), method="predict_missing")[1]

  def _coherence_sums(self, params, classifier_params, batch):
    label = batch[self.label_key].astype(jnp.int32)
    valid = batch.get("_valid", jnp.ones(label.shape, jnp.float32))
    sums = {"count": valid.sum()}

    def correct(tgt, inputs):
      logits = self.classifiers[tgt].logits(classifier_params[tgt], inputs, batch.get(f"{tgt}_mask"))
      return ((jnp.argmax(logits, -1) == label) * valid).sum()

    for tgt in self.classifiers:
      sums[f"classifier/{tgt}"] = correct(tgt, batch[tgt])
    for src in dict.fromkeys(s for s, _ in self.pairs):
      generated = self._generate_from(params, batch, src)
      for s, tgt in self.pairs:
        if s == src:
          sums[f"{src}{PAIR_SEP}{tgt}"] = correct(tgt, as_input(generated[tgt], batch[tgt]))
    return sums

  def coherence(self, params, split: str | None = None) -> dict:
    """``{"A->B": accuracy, "classifier/B": accuracy}`` over every example of ``split``."""
    if not self.pairs:
      return {}
    classifier_params = {t: c.params for t, c in self.classifiers.items()}
    total = None
    for batch in self.run.eval_batches(split or self.split):
      sums = self._sums(params, classifier_params, batch)
      total = sums if total is None else jax.tree_util.tree_map(jnp.add, total, sums)
    total = jax.device_get(total)
    count = max(float(total.pop("count")), 1.0)
    return {k: float(v) / count for k, v in total.items()}

  def grid(self, params, split: str | None = None, per_class: int | None = None):
    """Rows of tiles (real source if drawable, real target, generated target) for the grid examples, and
    their labels."""
    if self.grid_pair is None:
      raise ConfigError("no grid pair: set the cross_modal evaluator's grid (e.g. 'audio->image')")
    src, tgt = self.grid_pair
    per_class = self.grid_per_class if per_class is None else per_class
    batch = grid_examples(self.run.config.data, split or self.split, per_class, self.label_key)
    if np.issubdtype(batch[tgt].dtype, np.integer):
      raise ConfigError(f"cannot draw {tgt!r}: it is a token modality (grids draw images and feature "
                        "sequences)")
    generated = np.asarray(jax.device_get(self._generate(params, batch, src)[tgt]))
    images = tuple(getattr(self.run.model, "image_modalities", ()))
    kind = {m: "image" if m in images else "sequence" for m in (src, tgt)}
    mask = {m: batch.get(f"{m}_mask", [None] * len(batch[m])) for m in (src, tgt)}
    rows = []
    if not np.issubdtype(batch[src].dtype, np.integer):
      rows.append([tile(x, kind[src], mask[src][i])[0] for i, x in enumerate(batch[src])])
    real, fake = [], []
    for i, x in enumerate(batch[tgt]):
      t, scale = tile(x, kind[tgt], mask[tgt][i])
      real.append(t)
      fake.append(tile(generated[i], kind[tgt], mask[tgt][i], scale)[0])
    return rows + [real, fake], batch[self.label_key]

  def write_grid(self, params, path, split: str | None = None, per_class: int | None = None) -> np.ndarray:
    """Writes the grid of :meth:`grid` as a PNG at ``path`` (process 0 only); returns the image."""
    rows, _ = self.grid(params, split, per_class)
    image = render(rows)
    if jax.process_index() == 0:
      save_png(image, path)
    return image

  def grid_path(self, step: int, name: str = "") -> Path:
    """``<workdir>/samples/SRC-to-TGT[-NAME]-stepN.png``."""
    src, tgt = self.grid_pair
    tag = f"-{name}" if name else ""
    return self.run.workdir / "samples" / f"{src}-to-{tgt}{tag}-step{step:06d}.png"

  def evaluate(self, params, *, step: int, name: str) -> Result:
    """Coherence on the split, and the grid's PNG (also returned as an image for TensorBoard)."""
    result = Result(self.coherence(params))
    if self.grid_pair is not None:
      path = self.grid_path(step)
      result.images[f"{name}/samples"] = self.write_grid(params, path)
      result.files.append(path)
    return result


def grid_examples(data_cfg, split: str, per_class: int, label_key: str = "label", max_scan: int = 5000):
  """A batch (numpy, padded like training batches) of the first ``per_class`` examples of each class in
  ``split``, sorted by label; for non-integer labels, the first ``10 * per_class`` examples."""
  if per_class < 1:
    raise ConfigError(f"generation.grid_per_class must be >= 1; got {per_class}")
  source = pipeline.open_split(data_cfg, split)
  pad = pipeline.PadAndCast(dict(data_cfg.max_lengths), data_cfg.truncate)
  chosen, counts = [], {}
  for i in range(min(len(source), max_scan)):
    example = pad(source[i])
    label = np.asarray(example[label_key])
    if label.ndim or not np.issubdtype(label.dtype, np.integer):
      chosen.append(example)
      if len(chosen) == 10 * per_class:
        break
      continue
    y = int(label)
    if counts.get(y, 0) < per_class:
      counts[y] = counts.get(y, 0) + 1
      chosen.append(example)
  if not chosen:
    raise ConfigError(f"split {split!r} of {data_cfg.name!r} is empty")
  chosen.sort(key=lambda e: float(np.asarray(e[label_key]).reshape(-1)[0]))
  return pipeline.stack(chosen)


def tile(x, kind: str, mask=None, scale=None):
  """A 2-D tile in [0, 1] and its ``(lo, hi)`` scale: ``kind="image"`` ``[H, W]`` as it is (clipped to
  [0, 1]); ``kind="sequence"`` ``[T, F]`` cut to the valid steps of ``mask``, transposed to ``[F, T]``
  (features up) and scaled by ``scale`` (default: its own range)."""
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or kind not in ("image", "sequence"):
    raise ValueError(f"can only draw [H, W] images or [T, F] sequences; got {kind!r} of shape {x.shape}")
  if kind == "image":
    return np.clip(x, 0.0, 1.0), (0.0, 1.0)
  if mask is not None:
    x = x[: max(int(np.sum(mask)), 1)]
  x = x.T[::-1]  # features up, low index at the bottom
  lo, hi = scale if scale is not None else (float(x.min()), float(x.max()))
  return np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0), (lo, hi)


def render(rows, *, min_height: int = 32, gap: int = 2, background: int = 48) -> np.ndarray:
  """Rows of 2-D tiles in [0, 1] as one grayscale ``uint8`` image. Small tiles are enlarged by an integer
  factor (nearest neighbour) to at least ``min_height`` pixels; columns share their widest tile's width."""
  zoomed = []
  for row in rows:
    h = max(t.shape[0] for t in row)
    z = max(1, math.ceil(min_height / h))
    zoomed.append([np.kron(t, np.ones((z, z), np.float32)) for t in row])
  ncols = max(len(r) for r in zoomed)
  widths = [max(r[c].shape[1] for r in zoomed if c < len(r)) for c in range(ncols)]
  heights = [max(t.shape[0] for t in r) for r in zoomed]
  canvas = np.full((sum(heights) + gap * (len(rows) + 1), sum(widths) + gap * (ncols + 1)), background,
                   np.uint8)
  y = gap
  for r, row in enumerate(zoomed):
    x = gap
    for c, t in enumerate(row):
      canvas[y:y + t.shape[0], x:x + t.shape[1]] = np.round(t * 255).astype(np.uint8)
      x += widths[c] + gap
    y += heights[r] + gap
  return canvas


def save_png(image: np.ndarray, path) -> Path:
  """Writes a ``uint8`` image (``[H, W]`` grayscale or ``[H, W, 3]``) as a PNG, creating the folder."""
  from PIL import Image

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)
  return path


def write_png(rows, path, **kwargs) -> None:
  """Writes rows of 2-D tiles in [0, 1] as one grayscale PNG (:func:`render`, then :func:`save_png`)."""
  save_png(render(rows, **kwargs), path)


def sample(run, params, source: str, target: str, *, split: str, step: int, per_class: int = 2,
           out=None) -> Path:
  """``mmjax sample``: the grid of ``target`` generated from ``source`` by ``params`` (a checkpoint of
  ``run`` at ``step``) on ``split``, written as a PNG to ``out`` (default:
  ``<workdir>/samples/SOURCE-to-TARGET-SPLIT-stepN.png``). Returns the path."""
  grids = CrossModal(run, split=split, grid=f"{source}{PAIR_SEP}{target}", grid_per_class=per_class,
                     load_classifiers=False)
  path = Path(out) if out else grids.grid_path(step, split)
  grids.write_grid(params, path)
  return path
