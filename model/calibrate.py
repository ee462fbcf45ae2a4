"""Choosing the automatic prompt's CAM threshold and the presence threshold on validation images (never on test).

The threshold that turns the CAM into a box decides what the tool outputs without a person. It is picked after
training, on the same val images that picked the checkpoint: the candidate with the best mean lesion Dice (masks
before presence gating, so the choice is about prompts alone).

The presence threshold (below it the proposal is "no finding") is lowered from 0.5 only when that separates target
from target-free val images better, by balanced accuracy, which cannot prefer "absent everywhere" (it scores 0.5,
like "present everywhere"). A classifier trained on few positives (two thirds of brain MRI slices are target-free)
keeps every probability under 0.5, and 0.5 would call every image empty. It is never raised above 0.5: on BUSI a
stricter, val-tuned gate (0.7 on 17 target-free val images) cost 0.23 test lesion Dice, and in an annotation tool a
missed target costs a drawing while a false proposal costs one key press.
"""
from __future__ import annotations

import numpy as np
import torch

from model.adasam import AdaSam
from model.evaluate import Item, batch_inputs
from model.inference import Predictor
from model.metrics import dice, nanmean
from model.preprocess import logits_to_original

CAM_THRESHOLDS = (0.2, 0.3, 0.4, 0.5)
PRESENCE_DEFAULT = 0.5  # the highest presence threshold calibration may choose


def calibrate(model: AdaSam, val: list[Item], measured: dict[float, float] | None = None) -> dict:
    """Set `model.config.cam_threshold` to the candidate with the best val lesion Dice; returns the choice and the
    score of every candidate ({} when there is nothing to choose: no lesion in val, or no CAM prompt).

    `measured`: threshold -> val lesion Dice (before gating) already known for this model, not evaluated again."""
    config = model.config
    val = [i for i in val if i.mask is not None and i.mask.any()]
    if not val or not config.cam_prompted:
        return {}
    scores = {threshold: (measured or {}).get(threshold) for threshold in CAM_THRESHOLDS}
    scores.update(threshold_scores(model, val, [t for t, score in scores.items() if score is None]))
    best = max(scores, key=lambda t: (scores[t], -abs(t - CAM_THRESHOLDS[2])))  # ties: nearest the method's 0.4
    config.cam_threshold = best
    return {"cam_threshold": {"chosen": best, "val_dice_lesion": scores}}


def threshold_scores(model: AdaSam, val: list[Item], thresholds: list[float],
                     batch_size: int = 8) -> dict[float, float]:
    """Val lesion Dice before gating (as `evaluate` gives it) at each CAM threshold, in one pass over `val` (lesion
    images): the maps are computed once an image and each distinct box decoded once, since thresholds often give the
    same box (on a BUSI round model the four gave 2.4 distinct boxes an image). The model's threshold is left as it
    was."""
    if not thresholds:
        return {}
    predictor, config, kept = Predictor(model), model.config, model.config.cam_threshold
    dices: dict[float, list[float]] = {t: [] for t in thresholds}
    try:
        for start in range(0, len(val), batch_size):
            chunk = val[start:start + batch_size]
            embeddings, geometries, images = batch_inputs(chunk)
            features, cams, _, _, _ = predictor.automatic_prompt(embeddings, geometries, images)
            known: list[dict[bytes, float]] = [{} for _ in chunk]  # per image: box -> its mask's Dice
            for threshold in thresholds:
                config.cam_threshold = threshold
                boxes, _ = model.auto_boxes(cams, [g.resized for g in geometries])
                keys = [box.numpy().tobytes() for box in boxes]
                new = [i for i, key in enumerate(keys) if key not in known[i]]
                if new:
                    rows = torch.tensor(new)
                    logits = predictor.auto_logits(features[rows], cams[rows], boxes[rows])
                    for i, image_logits in zip(new, logits):
                        mask = (logits_to_original(image_logits, geometries[i])[0] > 0).numpy()
                        known[i][keys[i]] = dice(mask, chunk[i].mask)
                dices[threshold] += [known[i][key] for i, key in enumerate(keys)]
    finally:
        config.cam_threshold = kept
    return {threshold: nanmean(values) for threshold, values in dices.items()}


def calibrate_presence(model: AdaSam, val: list[Item]) -> dict:
    """Set `model.config.presence_threshold` to the threshold (0.5, or a midpoint between two val probabilities below
    it) with the best balanced accuracy on val target vs target-free images, the higher of equals; {} when there is
    nothing to choose (no classifier, or val lacks either kind)."""
    config = model.config
    val = [i for i in val if i.mask is not None]
    present = np.array([bool(i.mask.any()) for i in val])
    if config.method == "supervised" or not config.has_negatives or present.all() or not present.any():
        return {}
    probability = presence_probabilities(model, val)
    below = np.unique(probability[probability < PRESENCE_DEFAULT])
    candidates = [PRESENCE_DEFAULT, *((below[1:] + below[:-1]) / 2), *below[:1] / 2]
    scores = {round(float(t), 4): float((probability[present] >= t).mean() + (probability[~present] < t).mean()) / 2
              for t in candidates}
    best = max(scores, key=lambda t: (round(scores[t], 6), t))
    config.presence_threshold = best
    return {"presence_threshold": {"chosen": best, "val_balanced_accuracy": round(scores[best], 4),
                                   "at_default": round(scores[PRESENCE_DEFAULT], 4)}}


def presence_probabilities(model: AdaSam, items: list[Item], batch_size: int = 32) -> np.ndarray:
    """P(target present) per image: the classifier alone (no decoder), as the predictor computes it."""
    predictor, out = Predictor(model), []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        out += [p.probability for p in predictor.presence_batch(*batch_inputs(chunk))]
    return np.array(out)
