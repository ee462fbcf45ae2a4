"""Choosing the automatic prompt's thresholds on validation images (never on test).

Two numbers decide what the tool outputs without a person: the CAM threshold that turns the map into a box, and
the presence probability under which the mask is left empty ("no finding"). Both are picked after training, on
the same val images that picked the checkpoint:
- the CAM threshold with the best mean lesion Dice (masks before presence gating, so the choice is about prompts);
- the presence threshold with the best dice_all (an empty ground truth scores 1 only for an empty mask), searched
  only when val holds enough images with and without the target to say anything.
"""
from __future__ import annotations

import numpy as np

from model.adasam import AdaSam
from model.evaluate import Item, evaluate

CAM_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
PRESENCE_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
MIN_PER_CLASS = 5  # fewer val images with (or without) the target than this: keep the presence threshold


def calibrate(model: AdaSam, val: list[Item], cam_thresholds: tuple[float, ...] | None = CAM_THRESHOLDS) -> dict:
    """Set `model.config.cam_threshold` and `presence_threshold` from `val`; returns what was chosen and why.

    `cam_thresholds=None` keeps the configured CAM threshold (the user fixed it)."""
    config = model.config
    report: dict = {}
    val = [i for i in val if i.mask is not None]
    if not val or config.method != "adasam" or config.prompt != "cam":
        return report
    if cam_thresholds and any(i.mask.any() for i in val):
        scores = {}
        for threshold in cam_thresholds:
            config.cam_threshold = float(threshold)
            scores[float(threshold)] = evaluate(model, val, with_hd95=False)[0]["dice_lesion_ungated"]
        best = max(scores, key=lambda t: (scores[t], -abs(t - CAM_THRESHOLDS[2])))
        config.cam_threshold = best
        report["cam_threshold"] = {"chosen": best, "val_dice_lesion": scores}
    if config.has_negatives:
        report.update(_presence(model, evaluate(model, val, with_hd95=False)[1]))
    return report


def _presence(model: AdaSam, rows: list[dict]) -> dict:
    lesion = np.array([r["lesion"] for r in rows])
    if lesion.sum() < MIN_PER_CLASS or (~lesion).sum() < MIN_PER_CLASS:
        return {}
    probability = np.array([r["probability"] for r in rows])
    ungated = np.array([r["dice_ungated"] for r in rows])
    empty_score = np.where(lesion, 0.0, 1.0)  # what an empty ("no finding") mask scores on each image
    scores = {float(t): float(np.where(probability >= t, ungated, empty_score).mean()) for t in PRESENCE_THRESHOLDS}
    best = max(scores, key=lambda t: (scores[t], -abs(t - 0.5)))
    model.config.presence_threshold = best
    return {"presence_threshold": {"chosen": best, "val_dice_all": scores}}
