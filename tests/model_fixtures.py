"""Tiny generated data sets for model tests: bright blobs on a noisy background, some images without one."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def blob_image(rng: np.random.Generator, size: tuple[int, int] = (96, 112), present: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image, bool mask): an ellipse brighter than a speckled background (ultrasound-like)."""
    h, w = size
    image = rng.normal(70, 20, size).clip(0, 255)
    mask = np.zeros(size, dtype=bool)
    if present:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ry, rx = rng.uniform(0.1, 0.2) * h, rng.uniform(0.1, 0.2) * w
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
