"""Issue 10, "Generalisation": data folders that stand in for the data sets the model is checked on but we do not
have, cut from one we do: two thirds of the images target-free (as the brain MRI set), and every image positive.

Both keep the source's images, masks and splits (pool / val / test) and only drop rows, per split:
- `mostly_negative`: every target-free image, and half as many target images (drawn with `--seed`);
- `all_positive`: the target images only.
Images and masks are linked, not copied (copied where links cannot be made). Then train and score on a variant with
the label-efficiency harness, exactly as on the source:

    python benchmarks/data_variants.py --data ../shared/datasets/busi --out /tmp/busi_variants
    python benchmarks/label_efficiency.py --data /tmp/busi_variants/mostly_negative --out OUT --methods adasam \
        --ablations --fractions 0.1 --seeds 0
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.dataset import DataError, load_data_folder  # noqa: E402

VARIANTS = ("mostly_negative", "all_positive")


def variant_ids(folder, name: str, seed: int) -> set[str]:
    """The image ids `name` keeps of a loaded data folder (model.dataset.DataFolder)."""
    kept: set[str] = set()
    rng = random.Random(seed)
    for split in ("pool", "val", "test"):
        samples = folder.split(split)
        if any(s.has_lesion is None for s in samples):
            raise DataError(f"{folder.root}: {split} has images without has_lesion in manifest.csv: a variant needs "
                            "every image's tag")
        positive = sorted(s.id for s in samples if s.has_lesion)
        negative = sorted(s.id for s in samples if not s.has_lesion)
        if name == "all_positive":
            kept |= set(positive)
        elif name == "mostly_negative":
            count = min(len(positive), (len(negative) + 1) // 2)
            kept |= set(negative) | set(rng.sample(positive, count))
        else:
            raise ValueError(f"unknown variant {name!r}; one of {', '.join(VARIANTS)}")
    return kept


def write_variant(source: str | Path, out: str | Path, name: str, seed: int = 0) -> dict[str, tuple[int, int]]:
    """Write variant `name` of the data folder `source` to `out`/`name`; returns {split: (target-free, target)}."""
    target = Path(out) / name
    if Path(source).resolve() in (target.resolve(), *target.resolve().parents):
        raise DataError(f"{target}: would overwrite the source folder {source}; write the variant elsewhere")
    folder = load_data_folder(source)
    if folder.split_source != "manifest":
        raise DataError(f"{source}: manifest.csv gives no split for its images: a variant keeps the source's splits")
    kept = variant_ids(folder, name, seed)
    if target.exists():
        shutil.rmtree(target)
    for sub in ("images", "masks"):
        (target / sub).mkdir(parents=True)
    counts: dict[str, list[int]] = {split: [0, 0] for split in ("pool", "val", "test")}
    for sample in folder.samples:
        if sample.id not in kept:
            continue
        counts[sample.split][int(bool(sample.has_lesion))] += 1
        for path, sub in ((sample.image_path, "images"), (sample.mask_path, "masks")):
            if path is not None:
                _link(Path(path), target / sub / Path(path).name)
    rows = [row for row in folder.rows if row.get("id") in kept]
    with open(target / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(folder.rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {split: (free, present) for split, (free, present) in counts.items()}


def _link(path: Path, link: Path) -> None:
    try:
        os.symlink(path.resolve(), link)
    except OSError:
        shutil.copy2(path, link)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"))
    parser.add_argument("--out", required=True, help="where the variant folders are written")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0, help="draws the target images mostly_negative keeps")
    args = parser.parse_args()
    for name in args.variants:
        counts = write_variant(args.data, args.out, name, args.seed)
        shares = ", ".join(f"{split} {free} target-free + {present} target"
                           for split, (free, present) in counts.items())
        print(f"{Path(args.out) / name}: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
