"""benchmarks/data_variants.py: stand-ins for the data sets with many target-free images and with none, cut from a
data folder without changing its images, masks or splits."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from data_variants import write_variant  # noqa: E402

from annotation_fixtures import make_dataset  # noqa: E402
from model.dataset import DataError, load_data_folder  # noqa: E402


@pytest.fixture()
def source(tmp_path):
    """30 images, a third of them target-free (make_dataset masks two of every three), split over pool/val/test."""
    splits = ["pool"] * 18 + ["val"] * 6 + ["test"] * 6
    make_dataset(tmp_path / "source", n=30, splits=splits)
    return tmp_path / "source"


def counts(folder) -> dict[str, tuple[int, int]]:
    return {split: (sum(not s.has_lesion for s in folder.split(split)),
                    sum(bool(s.has_lesion) for s in folder.split(split))) for split in ("pool", "val", "test")}


def test_mostly_negative_keeps_every_target_free_image_and_half_as_many_targets(source, tmp_path):
    written = write_variant(source, tmp_path / "out", "mostly_negative", seed=0)
    variant = load_data_folder(tmp_path / "out" / "mostly_negative")
    assert counts(variant) == written == {"pool": (6, 3), "val": (2, 1), "test": (2, 1)}
    original = {s.id: s for s in load_data_folder(source).samples}
    for sample in variant.samples:  # same images, masks and splits
        assert sample.split == original[sample.id].split
        assert sample.image_path.read_bytes() == original[sample.id].image_path.read_bytes()
        assert sample.mask_path.read_bytes() == original[sample.id].mask_path.read_bytes()
    again = write_variant(source, tmp_path / "again", "mostly_negative", seed=0)
    other = write_variant(source, tmp_path / "other", "mostly_negative", seed=1)
    assert again == written
    ids = {p.name for p in (tmp_path / "again" / "mostly_negative" / "images").iterdir()}
    assert ids == {p.name for p in (tmp_path / "out" / "mostly_negative" / "images").iterdir()}
    assert other == written
    assert ids != {p.name for p in (tmp_path / "other" / "mostly_negative" / "images").iterdir()}


def test_all_positive_keeps_the_target_images_only(source, tmp_path):
    write_variant(source, tmp_path / "out", "all_positive")
    variant = load_data_folder(tmp_path / "out" / "all_positive")
    assert counts(variant) == {"pool": (0, 12), "val": (0, 4), "test": (0, 4)}
    assert all(np.array(Image.open(s.mask_path)).any() for s in variant.samples)  # every mask holds a target


def test_a_folder_without_splits_or_tags_is_refused(source, tmp_path):
    rows = (source / "manifest.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("has_lesion")
    blanked = [rows[0]] + [",".join("" if i == column else v for i, v in enumerate(r.split(","))) for r in rows[1:]]
    (source / "manifest.csv").write_text("\n".join(blanked) + "\n")
    with pytest.raises(DataError, match="without has_lesion"):
        write_variant(source, tmp_path / "out", "mostly_negative")
    (source / "manifest.csv").unlink()
    with pytest.raises(DataError, match="no split"):
        write_variant(source, tmp_path / "out", "all_positive")


def test_a_variant_never_overwrites_its_source(source):
    with pytest.raises(DataError, match="would overwrite the source"):
        write_variant(source, source.parent, "source")
    assert (source / "manifest.csv").exists()
