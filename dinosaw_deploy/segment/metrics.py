"""Segmentation quality: confusion matrices, per-class IoU, and a whole scan scored strip by strip."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.segment.labels import STRIP_ROWS, LabelClass, ground_truth_strips


def confusion_matrix(prediction: np.ndarray, truth: np.ndarray, size: int) -> np.ndarray:
    """(size, size) pixel counts: rows = true class, columns = predicted class (values 0..size-1);
    add the matrices of tiles to score an image that never sits in memory whole."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise DinosawError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
    flat = truth.astype(np.int64).ravel() * size + prediction.astype(np.int64).ravel()
    return np.bincount(flat, minlength=size * size).reshape(size, size)


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Intersection over union of every class (row) of a confusion matrix; NaN where the class
    occurs neither in the truth nor in the prediction."""
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def class_iou(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Intersection over union of each class in ``truth`` (sorted values); its mean is the mIoU."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise DinosawError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
    values = np.union1d(np.unique(truth), np.unique(prediction))
    confusion = confusion_matrix(np.searchsorted(values, prediction), np.searchsorted(values, truth), len(values))
    return iou_from_confusion(confusion)[np.isin(values, np.unique(truth))]


def scan_quality(labels, classes: list[LabelClass], ground_truth: Path | None, echo: Callable[[str], None]) -> dict[str, Any]:
    """Per-class pixel fractions of the result and, with a ground-truth file, per-class IoU and
    their mean, counted strip by strip (neither image sits in memory whole)."""
    k = len(classes)
    height, width = labels.shape
    counts = np.zeros(k + 1, np.int64)
    confusion = np.zeros((k + 1, k + 1), np.int64)
    if ground_truth is None:
        strips = ((y, None) for y in range(0, height, STRIP_ROWS))
    else:
        strips = ground_truth_strips(ground_truth, classes, (height, width))
    for y, truth in strips:
        rows = STRIP_ROWS if truth is None else truth.shape[0]
        pred = np.asarray(labels[y : y + rows])
        counts += np.bincount(pred.ravel(), minlength=k + 1)[: k + 1]
        if truth is not None:
            confusion += confusion_matrix(pred, truth, k + 1)
    fractions = counts[1:] / max(int(counts.sum()), 1)
    echo("class fractions: " + ", ".join(f"{c.index} ({c.name}) {100 * v:.2f} %" for c, v in zip(classes, fractions)))
    quality: dict[str, Any] = {"fractions": fractions.tolist()}
    if ground_truth is not None:
        scored = confusion[1:, 1:]
        present = scored.sum(axis=1) > 0
        ious = iou_from_confusion(scored)
        if not present.any():
            raise DinosawError(f"{ground_truth}: no ground-truth pixels (every value is 0 = not scored)")
        miou = float(ious[present].mean())
        echo(f"ground truth {ground_truth.name}: mIoU {miou:.4f} over {int(present.sum())} classes; IoU " + ", ".join(
            f"{c.index} ({c.name}) {ious[i]:.4f}" for i, c in enumerate(classes) if present[i]))
        quality.update(miou=miou, iou={c.index: float(ious[i]) for i, c in enumerate(classes) if present[i]})
    return quality
