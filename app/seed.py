"""First run: fill an empty default workspace so the tool works on a fresh machine with no data of the user's.

If `../shared/datasets/busi` sits beside the repository, its pool images are imported without their masks (the
images to annotate) and its validation images with their masks (the fixed validation set); its test split is left
alone. Otherwise a small set of synthetic ultrasound-like phantoms is generated. `workspace_note` (a setting) says
which, and the UI shows it.
"""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from annotation import Store, import_sources
from app.status import WORKSPACE_NOTE

REPO = Path(__file__).resolve().parents[1]
BUSI = REPO.parent / "shared" / "datasets" / "busi"
BUSI_NOTE = ("BUSI breast ultrasound images (Al-Dhabyani et al., Data in Brief 2020): {pool} pool images to annotate, "
             "imported without their masks, and {val} validation images with their expert masks. The test split "
             "is not imported.")
PHANTOM_NOTE = ("Synthetic phantoms generated on first run (speckled ultrasound-like noise with dark elliptical "
                "'lesions' in about 70% of them): not real patients, for trying the tool only. {pool} to annotate, "
                "{val} validation images with masks.")


def seed_workspace(store: Store, busi: Path = BUSI, phantoms: int = 60, progress: bool = True) -> str:
    """Import the demo images into an empty workspace and return the note shown to users."""
    if busi.is_dir() and (busi / "manifest.csv").is_file():
        pool, val = _busi_files(busi)
        import_sources(store, pool, with_masks=False, progress=progress, annotator="seed")
        import_sources(store, val, with_masks=True, progress=progress, annotator="seed")
        splits = store.counts().by_split  # (BUSI holds a few duplicate images: each is imported once)
        note = BUSI_NOTE.format(pool=splits.get("pool", 0), val=splits.get("val", 0))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            n_val = max(2, phantoms // 6)
            write_phantoms(Path(tmp), phantoms, n_val)
            import_sources(store, [Path(tmp) / "pool" / "images"], with_masks=False, progress=progress,
                           annotator="seed")
            import_sources(store, [Path(tmp) / "val"], with_masks=True, progress=progress, annotator="seed")
        splits = store.counts().by_split
        note = PHANTOM_NOTE.format(pool=splits.get("pool", 0), val=splits.get("val", 0))
    store.set_setting(WORKSPACE_NOTE, note, who="seed")
    return note


def _busi_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(pool images, val images) named by the manifest; the test split is never listed."""
    images = {p.stem: p for p in (root / "images").iterdir() if not p.name.startswith(".")}
    pool, val = [], []
    with open(root / "manifest.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            path = images.get(row["id"])
            if path is not None and row.get("split") in ("pool", "val"):
                (pool if row["split"] == "pool" else val).append(path)
    return pool, val


def phantom(seed: int, size: tuple[int, int] = (224, 288), lesion: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One speckled grey image and its mask: a dark ellipse with a bright rim when `lesion`, empty otherwise."""
    rng = np.random.default_rng(seed)
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    depth = 0.55 + 0.45 * (1 - y / h)  # ultrasound-like attenuation with depth
    tissue = ndimage.gaussian_filter(rng.normal(0.5, 0.25, size), 1.5) * depth
    mask = np.zeros(size, bool)
    if lesion:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.25, 0.75) * w
        ry, rx = rng.uniform(0.08, 0.18) * h, rng.uniform(0.08, 0.2) * w
        angle = rng.uniform(0, np.pi)
        dy, dx = y - cy, x - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        r = np.sqrt(u ** 2 + v ** 2)
        mask = r <= 1
        tissue = np.where(mask, tissue * 0.25, tissue) + 0.35 * np.exp(-((r - 1) / 0.08) ** 2)
    speckle = rng.rayleigh(0.35, size)
    image = np.clip(tissue * speckle * 255 * 1.4, 0, 255).astype(np.uint8)
    return image, mask


def write_phantoms(root: Path, n: int, n_val: int, size: tuple[int, int] = (224, 288), seed: int = 0) -> None:
    """`root/pool/images`, `root/val/{images,masks}` and a manifest in each: the dataset layout `import` reads."""
    for split, ids in (("val", range(n_val)), ("pool", range(n_val, n))):
        folder = root / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(exist_ok=True)
        rows = []
        for i in ids:
            lesion = (i * 7919 + seed) % 10 < 7
            image, mask = phantom(seed * 100_003 + i, size, lesion)
            name = f"phantom_{i:03d}"
            Image.fromarray(image).save(folder / "images" / f"{name}.png")
            Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "masks" / f"{name}.png")
            rows.append({"id": name, "split": split, "has_lesion": int(lesion)})
        with open(folder / "manifest.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "split", "has_lesion"])
            writer.writeheader()
            writer.writerows(rows)
