"""Evaluation metrics computed on the host in numpy (no scikit-learn or scipy at runtime)."""

from mmjax.metrics.sentiment import (
  IEMOCAP_EMOTIONS,
  binary_accuracy,
  iemocap_metrics,
  mosi_metrics,
  pearson_corr,
  weighted_f1,
)

__all__ = [
  "IEMOCAP_EMOTIONS",
  "binary_accuracy",
  "iemocap_metrics",
  "mosi_metrics",
  "pearson_corr",
  "weighted_f1",
]
