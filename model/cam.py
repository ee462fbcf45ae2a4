"""Class activation maps from the presence classifier, and how they become prompts."""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn


def grad_cam(classifier: nn.Module, features: torch.Tensor, valid: torch.Tensor | None = None,
             create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM of the "present" logit w.r.t. the features -> (B x h x w CAM in [0, 1], B x 2 logits).

    Channel weights are the spatially averaged gradients; the map is ReLU(weighted sum), min-max normalised per
    image over the `valid` (unpadded) area (B x h x w, 1 = real image). `create_graph=True` keeps it differentiable
    so a loss on the CAM trains the classifier and the shared adapter.
    """
    with torch.enable_grad():
        if not features.requires_grad:
            features = features.detach().requires_grad_(True)
        logits = classifier(features)
        grads = torch.autograd.grad(logits[:, 1].sum(), features, create_graph=create_graph)[0]
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1))
    if not create_graph:
        cam, logits = cam.detach(), logits.detach()
    if valid is not None:
        cam = cam * valid.to(cam.device)
    flat = cam.flatten(1)
    low = flat.min(dim=1).values if valid is None else torch.zeros_like(flat[:, 0])
    high = flat.max(dim=1).values
    cam = (cam - low[:, None, None]) / (high - low).clamp_min(1e-8)[:, None, None]
    return cam, logits


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
    ys, xs = np.nonzero(region)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32) * scale
    box[[0, 2]] = np.clip(box[[0, 2]], 0, valid_hw[1])
    box[[1, 3]] = np.clip(box[[1, 3]], 0, valid_hw[0])
    return box, False


def cam_peaks(cam: np.ndarray, count: int = 1, scale: float = 4.0, min_distance: int = 4) -> np.ndarray:
    """Up to `count` local maxima of the CAM as (x, y) input-pixel points (extra positive prompts)."""
    local_max = ndimage.maximum_filter(cam, size=2 * min_distance + 1) == cam
    ys, xs = np.nonzero(local_max & (cam > 0))
    order = np.argsort(-cam[ys, xs])[:count]
    return np.stack([xs[order], ys[order]], axis=1).astype(np.float32) * scale + scale / 2
