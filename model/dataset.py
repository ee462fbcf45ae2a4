"""A data folder on disk: `images/`, optional `masks/` with the same stems, optional `manifest.csv`.

This is the layout of `../shared/datasets/*` and what `adasam train/evaluate` read. Without a manifest (or one
without a `split` column) a seeded 70/10/20 pool/val/test split is made; the caller writes it next to the run.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.distributed import Ranks
from model.evaluate import Item
from model.image_view import image_input
from model.manifest import parse_has_lesion, row_for, rows_by_id
from model.preprocess import ImageReadError, read_image, read_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLITS = ("pool", "val", "test")
SPLIT_SEED = 0  # a generated split never depends on a run's --seed, so train and evaluate agree on it


class DataError(ValueError):
    """A data folder that cannot be used (one-line message)."""


@dataclass
class Sample:
    id: str
    image_path: Path
    mask_path: Path | None
    split: str
    has_lesion: bool | None  # image-level tag; None when unknown


@dataclass
class DataFolder:
    root: Path
    samples: list[Sample]
    split_source: str  # "manifest" or "generated (seed N)"
    rows: list[dict] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def write_split(self, path: Path) -> None:
        """Write the split used (id, split, has_lesion) so a generated split can be reproduced and audited."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "split", "has_lesion"])
            for s in self.samples:
                writer.writerow([s.id, s.split, "" if s.has_lesion is None else int(s.has_lesion)])

    def moved_since(self, path: Path) -> list[tuple[str, str, str]]:
        """(id, split then, split now) for each image whose split differs from a run's `split.csv` at `path`
        (none when there is no such file). A generated split is redrawn whenever the images change, so an image a
        run trained on can now sit in test."""
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            then = {row["id"]: row["split"] for row in csv.DictReader(handle)}
        return [(s.id, then[s.id], s.split) for s in self.samples if s.id in then and then[s.id] != s.split]


def load_data_folder(root: str | Path, seed: int = 0) -> DataFolder:
    """Index a data folder; raise DataError for an empty or malformed one."""
    root = Path(root)
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DataError(f"{root}: no images/ folder (expected images/<id>.png, masks/<id>.png, manifest.csv)")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    masks_dir = root / "masks"
    masks = {p.stem: p for p in sorted(masks_dir.iterdir())} if masks_dir.is_dir() else {}
    manifest = _read_manifest(root / "manifest.csv")
    if any((r.get("split") or "").strip() for r in manifest.values()):
        blank = sorted(i for i, r in manifest.items() if not (r.get("split") or "").strip())
        if blank:  # a generated split instead would put some of the manifest's test images into training
            raise DataError(f"{root / 'manifest.csv'}: no split for {blank[0]!r} ({len(blank)} row(s)); "
                            "give every row pool, val or test, or leave the column empty everywhere")
        unknown = {r["split"] for r in manifest.values()} - set(SPLITS)
        if unknown:
            raise DataError(f"{root / 'manifest.csv'}: unknown split(s) {sorted(unknown)}; use pool/val/test")
        rows = {i: row_for(manifest, i, path.name) for i, path in images.items()}
        splits = {i: found[1]["split"] for i, found in rows.items() if found}
        missing = sorted(set(images) - set(splits))
        if missing:
            raise DataError(f"{root / 'manifest.csv'}: no row for image {missing[0]!r} ({len(missing)} missing)")
        source = "manifest"
    else:
        splits = seeded_split(sorted(images), seed)
        source = f"generated (seed {seed})"
    samples = []
    for image_id, path in images.items():
        found = row_for(manifest, image_id, path.name)
        try:
            tag = parse_has_lesion(found[1].get("has_lesion") if found else None)
        except ValueError as exc:
            raise DataError(f"{root / 'manifest.csv'}: {image_id}: {exc}") from None
        samples.append(Sample(image_id, path, masks.get(image_id), splits[image_id], tag))
    return DataFolder(root, samples, source, list(manifest.values()))


def seeded_split(ids: list[str], seed: int) -> dict[str, str]:
    """A reproducible 70/10/20 pool/val/test split."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val, n_test = max(1, round(0.1 * len(ids))), max(1, round(0.2 * len(ids)))
    split = {}
    for rank, index in enumerate(order):
        split[ids[index]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "pool"
    return split


def _read_manifest(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable manifest ({exc})") from None
    if rows and "id" not in rows[0]:
        raise DataError(f"{path}: manifest needs an 'id' column")
    try:
        return rows_by_id(rows)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None


__all__ = ["DataFolder", "Sample", "DataError", "ImageReadError", "load_data_folder", "seeded_split"]


def load_items(samples, cache, with_masks: bool = True, ranks: Ranks = Ranks(), with_images: bool = False) -> list:
    """Read, check and embed samples -> evaluate.Item list (raises ImageReadError on a bad file). Under torchrun the
    cache's misses are encoded across the ranks first. `with_images`: each item also holds the image view's input
    (model.image_view)."""
    images = [read_image(s.image_path) for s in samples]
    masks = [read_mask(s.mask_path, image.shape[:2]) if (with_masks and s.mask_path) else None
             for s, image in zip(samples, images)]
    if ranks.joined:
        cache.fill(images, ranks)
    embedded = cache.get_many(images, progress=ranks.main)
    items = []
    for sample, mask, (embedding, geometry) in zip(samples, masks, embedded):
        tag = sample.has_lesion if sample.has_lesion is not None else (bool(mask.any()) if mask is not None else None)
        items.append(Item(sample.id, embedding, geometry, mask, tag))
    if with_images:
        for item, image in zip(items, images):
            item.image = image_input(image)
    return items


def masked_ids(pool, fraction: float, seed: int) -> set[str]:
    """The pool images whose masks `train --masks FRACTION --seed SEED` uses (benchmarks reuse it for baselines)."""
    maskable = [s for s in pool if s.mask_path is not None]
    rng = np.random.default_rng(seed)
    n_masked = max(1, round(fraction * len(pool)))
    return {maskable[i].id for i in rng.choice(len(maskable), size=min(n_masked, len(maskable)), replace=False)}
