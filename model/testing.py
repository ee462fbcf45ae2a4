"""Generated data sets for tests, `--quick` benchmark runs and smoke checks (like `numpy.testing`): bright blobs on
speckled noise, some images without one, in the folder layout `adasam import` and `adasam train` read. Small and
learnable in a few dozen steps; not for measuring a model."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def blob_image(rng: np.random.Generator, size: tuple[int, int] = (96, 112), present: bool = True,
               radius: tuple[float, float] = (0.1, 0.2)) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, bool mask): an ellipse brighter than a speckled background (ultrasound-like); its radii are a
    `radius` range of fractions of the image's sides."""
    h, w = size
    image = rng.normal(70, 20, size).clip(0, 255)
    mask = np.zeros(size, dtype=bool)
    if present:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(*radius) * h, rng.uniform(*radius) * w
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image[mask] = rng.normal(200, 15, mask.sum()).clip(0, 255)
    return image.astype(np.uint8), mask


def write_blob_dataset(root: Path, n: int = 12, negatives: int = 3, seed: int = 0, manifest: bool = True,
                       size: tuple[int, int] = (96, 112)) -> Path:
    """A data folder in the shared layout (images/, masks/, manifest.csv with a pool/val/test split)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        present = k >= negatives
        image, mask = blob_image(rng, size, present)
        name = f"img_{k:03d}"
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"{name}.png")
        split = "val" if k % 6 == 1 else "test" if k % 6 == 2 else "pool"
        rows.append({"id": name, "label": "lesion" if present else "normal", "has_lesion": int(present),
                     "width": size[1], "height": size[0], "split": split})
    if manifest:
        with (root / "manifest.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


def write_blob_folder(root: Path, present: list[bool], seed: int = 0, size: tuple[int, int] = (60, 72)) -> Path:
    """Like write_blob_dataset without a manifest, but with each image's presence chosen by the caller."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for k, is_present in enumerate(present):
        image, mask = blob_image(rng, size, is_present)
        Image.fromarray(image).save(root / "images" / f"img_{k:03d}.png")
        Image.fromarray((mask * 255).astype(np.uint8)).save(root / "masks" / f"img_{k:03d}.png")
    return root
