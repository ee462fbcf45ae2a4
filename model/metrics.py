"""Evaluation metrics, computed at each image's original resolution."""
from __future__ import annotations

import math
import warnings

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; two empty masks score 1 (a correct "no finding")."""
    total = prediction.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2 * np.logical_and(prediction, truth).sum() / total)


def box_iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """IoU of two (x0, y0, x1, y1) boxes; 0 when either is missing."""
    if a is None or b is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def hd95(prediction: np.ndarray, truth: np.ndarray) -> float:
    """95th-percentile Hausdorff distance in pixels (MONAI). A missed target (empty prediction) scores the image's
    diagonal, the worst distance there is, so a model that finds fewer targets cannot average a better figure over
    the few it finds; NaN without a target (undefined)."""
    if not truth.any():
        return math.nan
    if not prediction.any():
        return float(math.hypot(*truth.shape))
    import torch
    from monai.metrics import compute_hausdorff_distance

    pred = torch.from_numpy(prediction[None, None].astype(np.float32))
    true = torch.from_numpy(truth[None, None].astype(np.float32))
    with warnings.catch_warnings():  # MONAI warns about its own deprecated internals
        warnings.simplefilter("ignore", FutureWarning)
        return float(compute_hausdorff_distance(pred, true, percentile=95.0)[0, 0])


def presence_auc(scores: list[float], labels: list[bool]) -> float:
    """ROC AUC of the presence probability against the image-level truth; NaN with a single class."""
    if len(set(labels)) < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(labels, dtype=int), np.asarray(scores)))


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarise(rows: list[dict]) -> dict:
    """The figures every method reports (`adasam evaluate`, the U-Net and nnU-Net references), from per-image rows
    with `lesion`, `probability`, `dice`, `hd95` and, for a presence-gated mask, `dice_ungated`."""
    lesion_rows = [r for r in rows if r["lesion"]]
    return {"n_images": len(rows), "n_lesion": len(lesion_rows),
            "dice_lesion": nanmean([r["dice"] for r in lesion_rows]),
            "dice_lesion_ungated": nanmean([r.get("dice_ungated", r["dice"]) for r in lesion_rows]),
            "dice_all": float(np.mean([r["dice"] for r in rows])),
            "presence_auc": presence_auc([r["probability"] for r in rows], [r["lesion"] for r in rows]),
            "hd95_lesion": nanmean([r["hd95"] for r in lesion_rows])}
