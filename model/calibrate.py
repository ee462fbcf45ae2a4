"""Choosing the automatic prompt's CAM threshold on validation images (never on test).

The threshold that turns the CAM into a box decides what the tool outputs without a person. It is picked after
training, on the same val images that picked the checkpoint: the candidate with the best mean lesion Dice (masks
before presence gating, so the choice is about prompts alone). The presence threshold stays at 0.5: tuning it on
BUSI's 78 val images (17 without a lesion) raised val dice_all but lowered test lesion Dice by 0.23 and test
dice_all as well (benchmarks/README.md), so it is not calibrated.
"""
from __future__ import annotations

from model.adasam import AdaSam
from model.evaluate import Item, evaluate

CAM_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


def calibrate(model: AdaSam, val: list[Item], measured: dict[float, float] | None = None) -> dict:
    """Set `model.config.cam_threshold` to the candidate with the best val lesion Dice; returns the choice and the
    score of every candidate ({} when there is nothing to choose: no lesion in val, or no CAM prompt).

    `measured`: threshold -> val lesion Dice (before gating) already known for this model, not evaluated again."""
    config = model.config
    val = [i for i in val if i.mask is not None and i.mask.any()]
    if not val or not config.cam_prompted:
        return {}
    scores = {threshold: (measured or {}).get(threshold) for threshold in CAM_THRESHOLDS}
    for threshold, score in scores.items():
        if score is None:
            config.cam_threshold = threshold
            scores[threshold] = evaluate(model, val, with_hd95=False)[0]["dice_lesion_ungated"]
    best = max(scores, key=lambda t: (scores[t], -abs(t - CAM_THRESHOLDS[2])))  # ties: nearest the method's 0.4
    config.cam_threshold = best
    return {"cam_threshold": {"chosen": best, "val_dice_lesion": scores}}
