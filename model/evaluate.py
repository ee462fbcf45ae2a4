"""Scoring a model on embedded images: the figures `adasam evaluate` prints and training uses to pick checkpoints."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from model.adasam import AdaSam
from model.inference import Predictor
from model.metrics import box_iou, dice, hd95, nanmean, summarise
from model.preprocess import Geometry, box_to_model, box_to_original, logits_to_original, mask_box


@dataclass
class Item:
    """One image as training and evaluation see it: its model input plus whatever labels exist."""

    id: str
    embedding: torch.Tensor  # the cached C x h x w embedding; with encoder LoRA the 3 x S x S preprocessed image
    geometry: Geometry
    mask: np.ndarray | None = None  # bool H x W at original size; None = no mask
    tag: bool | None = None  # image-level target present / absent; None = unknown
    image: torch.Tensor | None = None  # 1 x S x S grey image for a model with an image view (model.image_view)


def batch_inputs(items: list[Item]) -> tuple[torch.Tensor, list[Geometry], torch.Tensor | None]:
    """What a Predictor reads for these items: stacked inputs, geometries, and stacked images where all have one."""
    images = [i.image for i in items]
    return (torch.stack([i.embedding for i in items]), [i.geometry for i in items],
            torch.stack(images) if images and all(x is not None for x in images) else None)


def evaluate(model: AdaSam, items: list[Item], prompt: str = "auto", batch_size: int = 8,
             with_hd95: bool = True) -> tuple[dict, list[dict]]:
    """(summary, per-image rows). `prompt="auto"`: nothing from the ground truth touches the prompt; `"oracle"`:
    the ground-truth box prompts lesion images (an upper bound, labelled so)."""
    if prompt not in ("auto", "oracle"):
        raise ValueError(f"prompt must be auto or oracle, not {prompt!r}")
    items = [i for i in items if i.mask is not None]
    if not items:
        raise ValueError("no image with a ground-truth mask to evaluate")
    predictor = Predictor(model)
    rows = []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        predictions = predictor.predict_batch(*batch_inputs(chunk))
        if prompt == "oracle":
            predictions = [_oracle(model, item, p) for item, p in zip(chunk, predictions)]
        for item, p in zip(chunk, predictions):
            truth = item.mask
            lesion = bool(truth.any())
            rows.append({
                "id": item.id, "lesion": lesion, "probability": p.probability,
                "dice": dice(p.mask, truth), "dice_ungated": dice(p.raw_mask, truth),
                "hd95": hd95(p.mask, truth) if (with_hd95 and lesion) else math.nan,
                "box_iou": box_iou(p.box, mask_box(truth)) if lesion else math.nan,
                "box_fallback": p.box_is_fallback,
            })
    lesion_rows = [r for r in rows if r["lesion"]]
    summary = {
        "prompt": prompt if prompt == "auto" else "oracle (ground-truth box: an upper bound, not automatic)",
        **summarise(rows),
        "prompt_box_iou_lesion": nanmean([r["box_iou"] for r in lesion_rows]),
        "prompt_fallback_rate": float(np.mean([r["box_fallback"] for r in rows])),
    }
    if model.config.method == "supervised" or not model.config.has_negatives:
        summary["presence_auc"] = math.nan  # no presence head, or nothing it could tell apart
    return summary, rows


@torch.no_grad()
def _oracle(model: AdaSam, item: Item, prediction):
    """Replace the automatic mask with the decoder's answer to the ground-truth box (lesion images only)."""
    box = mask_box(item.mask)
    if box is None:
        return prediction
    model_box = torch.from_numpy(box_to_model(box, item.geometry))[None]
    logits, _ = model.segment(model.features(item.embedding[None]), model_box)
    mask = (logits_to_original(logits[0].cpu(), item.geometry)[0] > 0).numpy()
    prediction.mask = prediction.raw_mask = mask
    prediction.box = box_to_original(model_box[0].numpy(), item.geometry)
    prediction.box_is_fallback = False
    return prediction
