"""Tests of mmjax.metrics: hand-computed values, cross-checks with scikit-learn and scipy, edge cases."""

import math
import warnings

import numpy as np
import pytest

from mmjax.metrics import binary_accuracy, iemocap_metrics, mosi_metrics, pearson_corr, weighted_f1

# Six examples chosen to exercise the conventions:
#  i | pred | label | |err| | acc7: round(pred) vs round(label) | acc5 (clip 2) | non0: label>0, pred>0 | has0
#  0 |  2.4 |  3.0  |  0.6  |  2 vs  3  no                      |  2 vs 2 yes   |  T, T                 | T, T
#  1 | -0.5 |  0.0  |  0.5  | -0 vs  0  yes (half to even)      | -0 vs 0 yes   |  (label 0: excluded)  | T, F
#  2 |  2.5 |  2.0  |  0.5  |  2 vs  2  yes (half to even)      |  2 vs 2 yes   |  T, T                 | T, T
#  3 | -3.6 | -3.0  |  0.6  | -3 vs -3  yes (clipped)           | -2 vs -2 yes  |  F, F                 | F, F
#  4 |  0.2 | -0.4  |  0.6  |  0 vs -0  yes                     |  0 vs -0 yes  |  F, T                 | F, T
#  5 |  1.0 |  0.5  |  0.5  |  1 vs  0  no (0.5 -> 0)           |  1 vs 0 no    |  T, T                 | T, T
# (has0 column: label >= 0, pred >= 0.)
PREDS = np.array([2.4, -0.5, 2.5, -3.6, 0.2, 1.0])
LABELS = np.array([3.0, 0.0, 2.0, -3.0, -0.4, 0.5])


def test_mosi_metrics_hand_computed():
  m = mosi_metrics(PREDS, LABELS)
  assert m["mae"] == pytest.approx(3.3 / 6)  # (0.6 + 0.5 + 0.5 + 0.6 + 0.6 + 0.5) / 6
  assert m["acc7"] == pytest.approx(4 / 6)  # all but rows 0 and 5
  assert m["acc5"] == pytest.approx(5 / 6)  # all but row 5 (row 0: 2.4 and 3.0 both clip to 2)
  # Non-zero labels (rows 0, 2, 3, 4, 5): label>0 = [T, T, F, F, T], pred>0 = [T, T, F, T, T].
  assert m["acc2"] == pytest.approx(4 / 5)  # only row 4 wrong
  # Class T: support 3, TP 3, FP 1 (row 4), FN 0 -> F1 = 2*3 / (2*3 + 1 + 0) = 6/7.
  # Class F: support 2, TP 1, FP 0, FN 1 (row 4) -> F1 = 2*1 / (2*1 + 0 + 1) = 2/3.
  # Weighted by label support: (3 * 6/7 + 2 * 2/3) / 5 = 82/105.
  assert m["f1"] == pytest.approx(82 / 105)
  # Original argument order, weights from the predicted supports (T: 4, F: 1): (4 * 6/7 + 1 * 2/3) / 5.
  assert m["f1_mult_order"] == pytest.approx(86 / 105)
  # Has0 over all six: label>=0 = [T, T, T, F, F, T], pred>=0 = [T, F, T, F, T, T]: rows 1 and 4 wrong.
  assert m["acc2_has0"] == pytest.approx(4 / 6)
  # Class T: support 4, TP 3, FP 1 (row 4), FN 1 (row 1) -> 6/8. Class F: support 2, TP 1, FP 1, FN 1 -> 2/4.
  # (4 * 3/4 + 2 * 1/2) / 6 = 4/6.
  assert m["f1_has0"] == pytest.approx(4 / 6)
  # corr: the original computes np.corrcoef.
  assert m["corr"] == pytest.approx(np.corrcoef(PREDS, LABELS)[0, 1])
  assert all(isinstance(v, float) for v in m.values())
  assert set(m) == {"mae", "corr", "acc7", "acc5", "acc2", "f1", "f1_mult_order", "acc2_has0", "f1_has0"}


def test_mosi_metrics_accepts_column_shapes():
  ref = mosi_metrics(PREDS, LABELS)
  got = mosi_metrics(PREDS.reshape(-1, 1).astype(np.float32), LABELS.reshape(-1, 1, 1))
  for k, v in ref.items():
    assert got[k] == pytest.approx(v, rel=1e-6), k


def test_pearson_hand_computed_and_constant():
  # x = [1, 2, 3], y = [1, 3, 2]: deviations [-1, 0, 1] and [-1, 1, 0]; sum of products 1,
  # sums of squares 2 and 2 -> r = 1 / sqrt(2 * 2) = 0.5.
  assert pearson_corr([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
  assert pearson_corr([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the degenerate case is nan, silently
    assert math.isnan(pearson_corr([1.0, 1.0, 1.0], [1, 2, 3]))
    assert math.isnan(pearson_corr([5.0], [2.0]))
    m = mosi_metrics(np.full(4, 0.3), [1.0, -2.0, 0.5, 3.0])  # a constant prediction
  assert math.isnan(m["corr"])
  assert m["acc2"] == pytest.approx(3 / 4)  # everything predicted positive; 3 of 4 labels positive


def test_all_zero_labels_give_nan_binary_metrics():
  m = mosi_metrics([0.5, -0.2, 0.0], [0.0, 0.0, 0.0])
  assert math.isnan(m["acc2"]) and math.isnan(m["f1"]) and math.isnan(m["f1_mult_order"])
  assert math.isnan(m["corr"])  # constant labels
  # has0: all labels are non-negative; preds >= 0 = [T, F, T].
  assert m["acc2_has0"] == pytest.approx(2 / 3)
  # Only class T in the labels (support 3, TP 2, FN 1): F1 = 4 / 5, weight 1.
  assert m["f1_has0"] == pytest.approx(0.8)


def test_weighted_f1_and_accuracy_hand_computed():
  y_true = [0, 0, 1, 1, 1, 2]
  y_pred = [0, 1, 1, 1, 0, 0]
  # class 0: TP 1, FP 2, FN 1 -> 2/5; class 1: TP 2, FP 1, FN 1 -> 4/6; class 2: TP 0 -> 0.
  # weights 2, 3, 1: (2 * 2/5 + 3 * 2/3 + 0) / 6 = 2.8 / 6.
  assert weighted_f1(y_true, y_pred) == pytest.approx(2.8 / 6)
  assert binary_accuracy(y_true, y_pred) == pytest.approx(3 / 6)
  assert weighted_f1([1, 1], [1, 1]) == 1.0  # a single class, all right
  assert weighted_f1([1, 1], [0, 0]) == 0.0  # the class present in y_pred only has weight 0


def test_iemocap_metrics_hand_computed():
  # Two emotions, four examples; argmax per emotion: a -> [1, 0, 1, 1], b -> [0, 0, 0, 0].
  logits = np.array([
    [[0.0, 1.0], [2.0, 1.0]],
    [[3.0, -1.0], [0.5, 0.4]],
    [[-1.0, 0.0], [1.0, 1.0]],  # b tied: argmax takes 0 ("absent")
    [[0.2, 0.3], [5.0, -5.0]],
  ])
  labels = np.array([[1, 0], [0, 0], [0, 0], [1, 1]])
  m = iemocap_metrics(logits, labels, emotions=("a", "b"))
  # a: labels [1, 0, 0, 1] vs preds [1, 0, 1, 1] -> acc 3/4. Class 1: support 2, TP 2, FP 1 -> 4/5;
  # class 0: support 2, TP 1, FN 1 -> 2/3; weighted (2 * 4/5 + 2 * 2/3) / 4 = 11/15.
  assert m["a_acc"] == pytest.approx(3 / 4)
  assert m["a_f1"] == pytest.approx(11 / 15)
  # b: labels [0, 0, 0, 1] vs preds [0, 0, 0, 0] -> acc 3/4. Class 0: support 3, TP 3, FP 1 -> 6/7;
  # class 1: TP 0 -> 0; weighted (3 * 6/7 + 0) / 4 = 9/14.
  assert m["b_acc"] == pytest.approx(3 / 4)
  assert m["b_f1"] == pytest.approx(9 / 14)
  assert m["mean_acc"] == pytest.approx(3 / 4)
  assert m["mean_f1"] == pytest.approx((11 / 15 + 9 / 14) / 2)
  # The flat [N, 2K] layout and one-hot labels give the same numbers.
  one_hot = np.eye(2)[labels]
  assert iemocap_metrics(logits.reshape(4, 4), one_hot, emotions=("a", "b")) == m


def test_iemocap_default_emotion_keys():
  rng = np.random.default_rng(0)
  m = iemocap_metrics(rng.normal(size=(10, 8)), rng.integers(0, 2, size=(10, 4)))
  expected = {f"{e}_{s}" for e in ("neutral", "happy", "sad", "angry") for s in ("acc", "f1")}
  assert set(m) == expected | {"mean_acc", "mean_f1"}


def test_cross_check_sklearn_and_scipy():
  sk_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is needed for the cross-check")
  stats = pytest.importorskip("scipy.stats", reason="scipy is needed for the cross-check")
  rng = np.random.default_rng(42)
  for trial in range(20):
    n = int(rng.integers(2, 200))
    labels = np.round(rng.uniform(-3, 3, size=n) * 3) / 3  # multiples of 1/3, like averaged annotations
    labels[rng.random(n) < 0.1] = 0.0
    preds = labels + rng.normal(scale=1.0 + trial * 0.1, size=n)
    m = mosi_metrics(preds, labels)
    nz = labels != 0
    t, p = labels[nz] > 0, preds[nz] > 0
    if nz.any():
      assert m["acc2"] == pytest.approx(sk_metrics.accuracy_score(t, p))
      assert m["f1"] == pytest.approx(sk_metrics.f1_score(t, p, average="weighted", zero_division=0))
      swapped = sk_metrics.f1_score(p, t, average="weighted", zero_division=0)  # the original's order
      assert m["f1_mult_order"] == pytest.approx(swapped)
    assert m["acc2_has0"] == pytest.approx(sk_metrics.accuracy_score(labels >= 0, preds >= 0))
    assert m["f1_has0"] == pytest.approx(
      sk_metrics.f1_score(labels >= 0, preds >= 0, average="weighted", zero_division=0))
    assert m["corr"] == pytest.approx(stats.pearsonr(preds, labels)[0], abs=1e-12)
    assert m["mae"] == pytest.approx(np.mean(np.abs(preds - labels)))
    # Multi-class, including labels absent from one side.
    y_true, y_pred = rng.integers(0, 5, size=n), rng.integers(1, 7, size=n)
    assert weighted_f1(y_true, y_pred) == pytest.approx(
      sk_metrics.f1_score(y_true, y_pred, average="weighted", zero_division=0))
    assert binary_accuracy(y_true, y_pred) == pytest.approx(sk_metrics.accuracy_score(y_true, y_pred))
    # IEMOCAP: per emotion, sklearn on the argmax.
    logits, emo = rng.normal(size=(n, 4, 2)), rng.integers(0, 2, size=(n, 4))
    im = iemocap_metrics(logits, emo)
    for i, e in enumerate(("neutral", "happy", "sad", "angry")):
      pr = logits[:, i].argmax(-1)
      assert im[f"{e}_acc"] == pytest.approx(sk_metrics.accuracy_score(emo[:, i], pr))
      assert im[f"{e}_f1"] == pytest.approx(
        sk_metrics.f1_score(emo[:, i], pr, average="weighted", zero_division=0))


@pytest.mark.parametrize(("preds", "labels", "match"), [
  ([0.1, 0.2], [0.1, 0.2, 0.3], "different numbers of elements: 3"),
  ([], [], "empty"),
  ([0.1, np.nan], [0.1, 0.2], "preds contains 1 non-finite"),
  ([0.1, 0.2], [np.inf, 0.2], "labels contains 1 non-finite"),
])
def test_mosi_errors(preds, labels, match):
  with pytest.raises(ValueError, match=match):
    mosi_metrics(preds, labels)


def test_helper_and_iemocap_errors():
  with pytest.raises(ValueError, match="different numbers of elements"):
    weighted_f1([0, 1], [0])
  with pytest.raises(ValueError, match="empty"):
    binary_accuracy([], [])
  good = np.zeros((3, 4, 2))
  with pytest.raises(ValueError, match=r"logits must have shape \[N, 4, 2\] or \[N, 8\]"):
    iemocap_metrics(np.zeros((3, 6)), np.zeros((3, 4), int))
  with pytest.raises(ValueError, match=r"labels must have shape \[N, 4\]"):
    iemocap_metrics(good, np.zeros((3, 3), int))
  with pytest.raises(ValueError, match="must be 0 \\(absent\\) or 1"):
    iemocap_metrics(good, np.full((3, 4), 2))
  with pytest.raises(ValueError, match="one-hot"):
    iemocap_metrics(good, np.ones((3, 4, 2)))
  with pytest.raises(ValueError, match="different numbers of examples: 3 vs 2"):
    iemocap_metrics(good, np.zeros((2, 4), int))
  with pytest.raises(ValueError, match="non-finite"):
    iemocap_metrics(np.full((3, 4, 2), np.nan), np.zeros((3, 4), int))
  with pytest.raises(ValueError, match="empty"):
    iemocap_metrics(np.zeros((0, 4, 2)), np.zeros((0, 4), int))
