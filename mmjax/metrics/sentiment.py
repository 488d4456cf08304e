"""Evaluation metrics of the multimodal sentiment benchmarks (CMU-MOSI, CMU-MOSEI, IEMOCAP), in numpy.

Conventions follow ``src/eval_metrics.py`` of the original MulT code (Tsai et al., 2019,
github.com/yaohungt/Multimodal-Transformer), ``eval_mosei_senti`` and ``eval_iemocap``, with the "has0"
binary variant of later papers (MISA, Self-MM; the MMSA toolkit's ``Has0_acc_2`` / ``Has0_F1_score``).
The functions take host arrays (numpy, or anything ``np.asarray`` accepts, e.g. a fetched ``jax.Array``)
of a whole evaluation split and return plain Python floats. No scikit-learn or scipy at runtime: F1 and
accuracy reproduce ``sklearn.metrics.f1_score(average="weighted")`` and ``accuracy_score``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IEMOCAP_EMOTIONS = ("neutral", "happy", "sad", "angry")


def _pair(y_true, y_pred, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
  """Both arrays flattened (like the original's ``.view(-1)``); errors on a size mismatch or no examples."""
  a, b = np.asarray(y_true), np.asarray(y_pred)
  if a.size != b.size:
    raise ValueError(f"{names[0]} and {names[1]} have different numbers of elements: "
                     f"{a.size} (shape {a.shape}) vs {b.size} (shape {b.shape})")
  if a.size == 0:
    raise ValueError(f"{names[0]} and {names[1]} are empty: metrics need at least one example")
  return a.reshape(-1), b.reshape(-1)


def binary_accuracy(y_true, y_pred) -> float:
  """Fraction of positions where ``y_pred == y_true`` (``sklearn.metrics.accuracy_score`` on 1-D labels).

  Used for the binary (two-class) labels of Acc2 and the IEMOCAP emotions, but any discrete labels work.
  Both arrays are flattened and must have the same number of elements (at least one).
  """
  t, p = _pair(y_true, y_pred, ("y_true", "y_pred"))
  return float(np.mean(t == p))


def weighted_f1(y_true, y_pred) -> float:
  """F1 per class, averaged with weights proportional to each class's support in ``y_true``.

  Same as ``sklearn.metrics.f1_score(y_true, y_pred, average="weighted")`` with its default
  ``zero_division``: the classes are the union of the values in both arrays; a class with no true positive
  scores 0 (F1 = 2 TP / (2 TP + FP + FN)); a class present only in ``y_pred`` has weight 0. Not symmetric in
  its arguments (the weights come from ``y_true``). Both arrays are flattened and must have the same number
  of elements (at least one).
  """
  t, p = _pair(y_true, y_pred, ("y_true", "y_pred"))
  total = 0.0
  for c in np.unique(np.concatenate([t, p])):
    is_t, is_p = t == c, p == c
    support = int(np.sum(is_t))
    if support == 0:
      continue
    tp = int(np.sum(is_t & is_p))
    fp = int(np.sum(~is_t & is_p))
    fn = support - tp
    total += support * (2.0 * tp / (2 * tp + fp + fn))
  return total / t.size


def pearson_corr(x, y) -> float:
  """Pearson correlation of two equally long 1-D arrays, in float64.

  Equal to ``np.corrcoef(x, y)[0, 1]`` (what the original computes) and ``scipy.stats.pearsonr``, except
  the degenerate case: when either array is constant (including a single example) the correlation is
  undefined and this returns ``nan`` without a warning (numpy returns ``nan`` with a RuntimeWarning).
  """
  a, b = _pair(x, y, ("x", "y"))
  a, b = a.astype(np.float64), b.astype(np.float64)
  da, db = a - a.mean(), b - b.mean()
  saa, sbb = float(np.dot(da, da)), float(np.dot(db, db))
  if saa == 0.0 or sbb == 0.0:
    return float("nan")
  return float(np.clip(np.dot(da, db) / np.sqrt(saa * sbb), -1.0, 1.0))


def mosi_metrics(preds, labels) -> dict[str, float]:
  """The CMU-MOSI / CMU-MOSEI sentiment metrics of regression outputs (labels in [-3, 3]).

  ``preds`` and ``labels`` are flattened (``[N]``, ``[N, 1]`` and ``[N, 1, 1]`` all work) and must hold the
  same number (at least one) of finite values. Keys, following the original ``eval_mosei_senti``:

  * ``mae``: mean absolute error of the unclipped values.
  * ``corr``: Pearson correlation (:func:`pearson_corr`); ``nan`` when ``preds`` or ``labels`` is
    constant (the original's ``np.corrcoef`` also gives ``nan`` there).
  * ``acc7``: both clipped to [-3, 3] and rounded with ``np.round`` (round half to EVEN, like the original:
    2.5 -> 2, -0.5 -> -0 == 0, 1.5 -> 2), then the fraction of equal classes, over all examples.
  * ``acc5``: the same after clipping to [-2, 2].
  * ``acc2`` / ``f1``: over the examples whose label is not exactly 0 (the original, called with
    ``exclude_zero=True`` from its ``train.py``), positive = ``label > 0`` vs ``pred > 0``; accuracy and
    weighted F1 (:func:`weighted_f1`, weights from the label classes). When every label is 0 there is no
    example to score and both are ``nan`` (the original crashes there).
  * ``f1_mult_order``: the same F1 with the original's argument order, ``f1_score(pred > 0, label > 0)``,
    i.e. weights from the PREDICTED classes; it is what MulT's published F1 measured. It differs from ``f1``
    when the predicted class balance differs from the labels'; ``nan`` in the same case.
  * ``acc2_has0`` / ``f1_has0``: over all examples, zero counted as non-negative: ``label >= 0`` vs
    ``pred >= 0`` (MISA / Self-MM / MMSA "Has0"). The original MulT code does not compute these.
  """
  t, p = _pair(labels, preds, ("labels", "preds"))
  t, p = t.astype(np.float64), p.astype(np.float64)
  for name, a in (("preds", p), ("labels", t)):
    if not np.all(np.isfinite(a)):
      bad = int(np.sum(~np.isfinite(a)))
      raise ValueError(f"{name} contains {bad} non-finite value(s) (nan or inf) out of {a.size}")

  def rounded_acc(bound: float) -> float:
    return float(np.mean(np.round(np.clip(p, -bound, bound)) == np.round(np.clip(t, -bound, bound))))

  nz = t != 0
  if np.any(nz):
    t_bin, p_bin = t[nz] > 0, p[nz] > 0
    acc2, f1, f1_orig = binary_accuracy(t_bin, p_bin), weighted_f1(t_bin, p_bin), weighted_f1(p_bin, t_bin)
  else:
    acc2 = f1 = f1_orig = float("nan")
  return {
    "mae": float(np.mean(np.abs(p - t))),
    "corr": pearson_corr(p, t),
    "acc7": rounded_acc(3.0),
    "acc5": rounded_acc(2.0),
    "acc2": acc2,
    "f1": f1,
    "f1_mult_order": f1_orig,
    "acc2_has0": binary_accuracy(t >= 0, p >= 0),
    "f1_has0": weighted_f1(t >= 0, p >= 0),
  }


def iemocap_metrics(logits, labels, emotions: Sequence[str] = IEMOCAP_EMOTIONS) -> dict[str, float]:
  """Per-emotion binary accuracy and weighted F1 on IEMOCAP (original ``eval_iemocap``).

  ``logits``: ``[N, K, 2]``, or ``[N, 2 K]`` read as ``[N, K, 2]`` (row-major, the original's
  ``view(-1, 4, 2)``: outputs ``2 k`` and ``2 k + 1`` are emotion ``k``'s "absent" and "present"), with
  ``K = len(emotions)``. ``labels``: ``[N, K]`` of 0/1 (1 = emotion present) or ``[N, K, 2]`` one-hot (the
  layout of the data files; the original's dataset takes its argmax). The prediction for emotion ``k`` is
  ``argmax`` over its 2 outputs (ties go to 0, "absent"). Returns ``{emotion}_acc`` and ``{emotion}_f1``
  (:func:`binary_accuracy`, :func:`weighted_f1` with weights from the labels) for each emotion, and their
  unweighted means over emotions, ``mean_acc`` and ``mean_f1``.
  """
  emotions = tuple(emotions)
  k = len(emotions)
  if k == 0 or len(set(emotions)) != k:
    raise ValueError(f"emotions must be non-empty and distinct, got {emotions}")
  x, y = np.asarray(logits), np.asarray(labels)
  if x.ndim == 2 and x.shape[1] == 2 * k:
    x = x.reshape(x.shape[0], k, 2)
  if x.ndim != 3 or x.shape[1:] != (k, 2):
    raise ValueError(f"logits must have shape [N, {k}, 2] or [N, {2 * k}] for {k} emotions, got {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("logits contain non-finite values (nan or inf)")
  if y.ndim == 3 and y.shape[1:] == (k, 2):
    if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(-1) == 1)):
      raise ValueError("labels of shape [N, K, 2] must be one-hot along the last axis")
    y = np.argmax(y, axis=-1)
  if y.ndim != 2 or y.shape[1] != k:
    raise ValueError(f"labels must have shape [N, {k}] (0/1) or [N, {k}, 2] (one-hot), got {y.shape}")
  if not np.all((y == 0) | (y == 1)):
    raise ValueError("labels of shape [N, K] must be 0 (absent) or 1 (present)")
  if y.shape[0] != x.shape[0]:
    raise ValueError(f"logits and labels have different numbers of examples: {x.shape[0]} vs {y.shape[0]}")
  if x.shape[0] == 0:
    raise ValueError("logits and labels are empty: metrics need at least one example")
  pred = np.argmax(x, axis=-1)
  y = y.astype(np.int64)
  out = {}
  for i, name in enumerate(emotions):
    out[f"{name}_acc"] = binary_accuracy(y[:, i], pred[:, i])
    out[f"{name}_f1"] = weighted_f1(y[:, i], pred[:, i])
  out["mean_acc"] = float(np.mean([out[f"{n}_acc"] for n in emotions]))
  out["mean_f1"] = float(np.mean([out[f"{n}_f1"] for n in emotions]))
  return out
