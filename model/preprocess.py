"""The one preprocessing path shared by training, inference and masks.

An image goes through exactly these steps, whatever its source:

1. Intensity: clipped to its own 0.5th..99.5th percentiles and min-max scaled to [0, 1] (MedSAM's recipe for
   non-CT images; it makes 8-bit, 16-bit and float images comparable).
2. Channels: a grey image is repeated to 3 channels; an RGB image keeps its 3; an alpha channel is dropped.
3. Geometry: the longest side is resized to the backbone's input size (bilinear, antialiased) and the short side is
   padded with zeros at the bottom/right, so pixel (x, y) of the original maps to (x * scale, y * scale).

Masks take step 3 only (nearest neighbour, sampled at pixel centres), boxes are multiplied by the same scale, and
predicted logits are cropped to the unpadded area and resized back to the original size. Change anything an image
goes through and bump PREPROCESS_VERSION: the embedding cache keys on it (masks are not cached).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

PREPROCESS_VERSION = "p1"


class ImageReadError(ValueError):
    """An image or mask file that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class Geometry:
    """How an original (height, width) image sits inside the square model input."""

    height: int
    width: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def resized(self) -> tuple[int, int]:
        return (max(1, round(self.height * self.scale)), max(1, round(self.width * self.scale)))


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D grey or H x W x 3 colour image as float32, keeping its original intensity range."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                array = np.asarray(im, dtype=np.float32)
            elif im.mode in ("L", "1", "P", "LA"):
                array = np.asarray(im.convert("L"), dtype=np.float32)
            else:
                array = np.asarray(im.convert("RGB"), dtype=np.float32)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 2:
        raise ImageReadError(f"{path}: unusable image shape {array.shape}")
    return array


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask as a boolean H x W array (any non-zero pixel is target); check its size against `shape`."""
    array = read_image(path)
    if array.ndim == 3:
        array = array.max(axis=2)
    mask = array > 0
    if shape is not None and mask.shape != tuple(shape):
        raise ImageReadError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}")
    return mask


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """Steps 1 and 2: percentile clip, min-max to [0, 1], 3 channels first (3 x H x W float32)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    image = image[:, :, :3]
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    scaled = np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if scaled.shape[2] == 1:
        scaled = np.repeat(scaled, 3, axis=2)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1), dtype=np.float32)


def preprocess_image(image: np.ndarray, size: int) -> tuple[torch.Tensor, Geometry]:
    """Original image -> (3 x size x size tensor in [0, 1], its geometry)."""
    geometry = Geometry(int(image.shape[0]), int(image.shape[1]), size)
    tensor = torch.from_numpy(normalise_intensity(image))[None]
    tensor = F.interpolate(tensor, size=geometry.resized, mode="bilinear", align_corners=False, antialias=True)
    return _pad(tensor[0], size), geometry


def preprocess_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """Original boolean mask -> 1 x size x size float tensor, aligned with preprocess_image."""
    geometry = Geometry(int(mask.shape[0]), int(mask.shape[1]), size)
    tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    tensor = F.interpolate(tensor, size=geometry.resized, mode="nearest-exact")  # "nearest" shifts half a pixel
    return _pad(tensor[0], size)


def _pad(tensor: torch.Tensor, size: int) -> torch.Tensor:
    return F.pad(tensor, (0, size - tensor.shape[-1], 0, size - tensor.shape[-2]))


def box_to_model(box: np.ndarray | list[float], geometry: Geometry) -> np.ndarray:
    """An (x0, y0, x1, y1) box in original pixels -> model input pixels."""
    return np.asarray(box, dtype=np.float32) * geometry.scale


def box_to_original(box: np.ndarray | list[float], geometry: Geometry) -> np.ndarray:
    """An (x0, y0, x1, y1) box in model input pixels -> original pixels, clipped to the image. Edges, not pixel
    indices: x1 and y1 lie just past the last pixel covered, so a box of the whole image ends at (width, height)."""
    out = np.asarray(box, dtype=np.float32) / geometry.scale
    return np.clip(out, 0, [geometry.width, geometry.height, geometry.width, geometry.height])


def logits_to_original(logits: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Square logits (... x S' x S', any S') -> logits at the original H x W, padding cropped away."""
    logits = logits.float()
    full = logits.shape[-1]
    if full != geometry.size:
        logits = F.interpolate(logits.reshape(-1, 1, full, full), size=(geometry.size, geometry.size),
                               mode="bilinear", align_corners=False)
    h, w = geometry.resized
    logits = logits.reshape(-1, 1, geometry.size, geometry.size)[..., :h, :w]
    out = F.interpolate(logits, size=(geometry.height, geometry.width), mode="bilinear", align_corners=False)
    return out[:, 0]


def mask_box(mask: np.ndarray | torch.Tensor) -> np.ndarray | None:
    """The box a prompt draws around a mask, or None when it is empty: (x0, y0) its first pixel's corner, (x1, y1)
    one past its last pixel, as the decoder's prompts have it (the CAM's box is the box of its region)."""
    mask = mask.numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    ys, xs = np.nonzero(mask > 0.5) if mask.dtype != bool else np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
