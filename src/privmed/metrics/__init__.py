"""Metrics, one file per family: :mod:`privmed.metrics.classification` for classifiers."""

from privmed.metrics.classification import classification_metrics

__all__ = ["classification_metrics"]
