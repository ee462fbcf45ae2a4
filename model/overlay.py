"""Pictures of a prediction for people: the image with the CAM as a heat map, the mask outline and the box."""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw
from scipy import ndimage

from model.preprocess import normalise_intensity


def display_image(image: np.ndarray) -> np.ndarray:
    """Any image -> H x W x 3 uint8 with the same intensity window the model sees."""
    return (normalise_intensity(image).transpose(1, 2, 0) * 255).round().astype(np.uint8)


def mask_outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def cam_overlay(image: np.ndarray, cam: np.ndarray | None, mask: np.ndarray | None, box: np.ndarray | None,
                cam_alpha: float = 0.4, outline_color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """H x W x 3 uint8: image, CAM heat map blended in (if given), mask outline and prompt box drawn on top."""
    rgb = display_image(image).astype(np.float32)
    if cam is not None:
        heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
        rgb = (1 - cam_alpha) * rgb + cam_alpha * heat
    out = rgb.round().clip(0, 255).astype(np.uint8)
    if mask is not None and mask.any():
        width = max(1, round(max(mask.shape) / 250))
        out[mask_outline(mask, width)] = outline_color
    picture = Image.fromarray(out)
    if box is not None:
        width = max(1, round(max(out.shape[:2]) / 250))
        ImageDraw.Draw(picture).rectangle([float(v) for v in box], outline=(255, 255, 0), width=width)
    return np.asarray(picture)
