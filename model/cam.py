"""Class activation maps from the presence classifier, and how they become prompts."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from model.heads import LocationClassifier
from model.preprocess import mask_box


def activation_map(classifier: LocationClassifier, features: torch.Tensor, valid: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's own map -> (B x h x w P(target at this location), 0 on padding; B x 2 image logits).

    An absolute probability, not min-max normalised per image: a target-free image has a dark map, so a threshold
    means the same on every image. `valid` (B x h x w, 1 = real image) keeps padding out of the map and the pooling.
    """
    valid = None if valid is None else valid.to(features.device)
    location_logits = classifier.location_logits(features)
    cam = torch.sigmoid(location_logits)
    if valid is not None:
        cam = cam * valid
    return cam, classifier.pool(location_logits, valid)


def central_box(height: float, width: float) -> np.ndarray:
    """The fallback prompt: a box a quarter of the size in from each side (the paper's choice)."""
    return np.array([width / 4, height / 4, width * 3 / 4, height * 3 / 4], dtype=np.float32)


def cam_to_box(cam: np.ndarray, threshold: float = 0.4, scale: float = 4.0, valid_hw: tuple[int, int] | None = None,
               component: str = "peak") -> tuple[np.ndarray, bool]:
    """A CAM (h x w, [0, 1]) -> (x0, y0, x1, y1) box in model input pixels, and whether it is the fallback.

    `component="peak"` keeps only the connected region above the threshold that contains the CAM's maximum (a
    second, weaker hot spot does not stretch the box across the image); `"all"` boxes every pixel above it, as in
    the paper. `scale` maps CAM cells to input pixels (input size / CAM size).
    """
    region = cam >= threshold
    if valid_hw is None:
        valid_hw = (cam.shape[0] * scale, cam.shape[1] * scale)
    if not region.any() or not np.isfinite(cam).all() or cam.max() <= 0:
        return central_box(*valid_hw), True
    if component == "peak":
        labels, _ = ndimage.label(region)
        peak = np.unravel_index(np.argmax(np.where(region, cam, -1)), cam.shape)
        region = labels == labels[peak]
    box = mask_box(region) * scale
    box[[0, 2]] = np.clip(box[[0, 2]], 0, valid_hw[1])
    box[[1, 3]] = np.clip(box[[1, 3]], 0, valid_hw[0])
    return box, False


def cam_peaks(cam: np.ndarray, count: int = 1, scale: float = 4.0, min_distance: int = 4) -> np.ndarray:
    """Up to `count` local maxima of the CAM as (x, y) input-pixel points (extra positive prompts)."""
    local_max = ndimage.maximum_filter(cam, size=2 * min_distance + 1) == cam
    ys, xs = np.nonzero(local_max & (cam > 0))
    order = np.argsort(-cam[ys, xs])[:count]
    return np.stack([xs[order], ys[order]], axis=1).astype(np.float32) * scale + scale / 2
