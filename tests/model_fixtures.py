"""Tiny generated data sets for model tests: bright blobs on a noisy background, some images without one."""
from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import pytest
except ImportError:  # the benchmarks import the data-set writers without pytest
    pytest = None


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


# -- model-test helpers ----------------------------------------------------------------------------------------------
# Expensive objects (backbones, real encoder passes) are memoised per process so several test modules share them.
# Shared backbones must never be trained: tests that change weights build their own (micro_backbone, build_backbone).

if pytest is not None:
    @pytest.fixture(scope="module", autouse=True)
    def one_torch_thread():
        """Run a model test module on one torch thread, then restore the setting.

        The test tensors are small, and on a shared 2-core machine OpenMP threads spin-waiting for a busy core made
        the tests 3-5x slower than one thread (measured); one thread also leaves the other core to other work.
        Import this name into a test module to use it.
        """
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(previous)


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


@functools.lru_cache(maxsize=None)
def shared_backbone(name: str):
    """A backbone built once per test process (read-only use: inference, encoding)."""
    from model.backbones import build_backbone

    return build_backbone(name)


def micro_backbone(seed: int = 0, dim: int = 32):
    """The `micro_random` backbone: LiteMedSAM-shaped, small enough to train for dozens of steps in a second or two."""
    from model.backbones import build_micro_random

    return build_micro_random(seed, dim).eval()


def blob_items(backbone, n: int, negatives: int = 0, seed: int = 0, size: tuple[int, int] = (48, 56),
               with_masks: bool = True, prefix: str = "b", radius: tuple[float, float] = (0.1, 0.2)) -> list:
    """model.evaluate.Item list of blob images encoded by `backbone` (first `negatives` without a blob)."""
    import torch

    from model.cache import encode_batch
    from model.evaluate import Item
    from model.preprocess import preprocess_image

    rng = np.random.default_rng(seed)
    pairs = [blob_image(rng, size, present=k >= negatives, radius=radius) for k in range(n)]
    prepared = [preprocess_image(image, backbone.image_size) for image, _ in pairs]
    embeddings = encode_batch(backbone, torch.stack([t for t, _ in prepared])).float()
    return [Item(f"{prefix}{k}", embeddings[k].clone(), geometry, mask if with_masks else None, bool(mask.any()))
            for k, ((_, mask), (_, geometry)) in enumerate(zip(pairs, prepared))]


@functools.lru_cache(maxsize=None)
def tiny_blob_items(n: int = 3) -> tuple:
    """`n` blob images (the first without a blob) encoded once by the shared tiny_random backbone."""
    return tuple(blob_items(shared_backbone("tiny_random"), n, negatives=1, seed=5, size=(96, 112), prefix="t"))


@functools.lru_cache(maxsize=None)
def lite_blob() -> dict:
    """One synthetic blob image encoded once by the real LiteMedSAM weights (~1.5 s on 2 cores)."""
    from model.cache import encode_batch
    from model.preprocess import preprocess_image

    backbone = shared_backbone("litemedsam")
    image, mask = blob_image(np.random.default_rng(11), (150, 180))
    tensor, geometry = preprocess_image(image, backbone.image_size)
    embedding = encode_batch(backbone, tensor[None])[0].float().clone()  # a normal tensor, not an inference one
    return {"backbone": backbone, "image": image, "mask": mask, "embedding": embedding, "geometry": geometry}
