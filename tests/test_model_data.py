"""Data folders (layout, manifest, generated split) and evaluation metrics."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from model.dataset import DataError, load_data_folder, seeded_split
from model.metrics import box_iou, dice, hd95, nanmean, presence_auc, summarise
from model_fixtures import one_torch_thread, write_blob_dataset, write_blob_folder  # noqa: F401 (autouse)


# -- data folders -----------------------------------------------------------------------------------------------------

def rewrite_manifest(root, rows: list[dict]) -> None:
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_folder_with_manifest(tmp_path):
    root = write_blob_dataset(tmp_path / "d", n=12, negatives=3, size=(20, 24))
    folder = load_data_folder(root)
    assert folder.split_source == "manifest" and len(folder.samples) == 12
    assert [s.id for s in folder.split("val")] == ["img_001", "img_007"]
    assert [s.id for s in folder.split("test")] == ["img_002", "img_008"]
    assert len(folder.split("pool")) == 8
    sample = folder.samples[0]
    assert sample.image_path == root / "images" / "img_000.png" and sample.mask_path == root / "masks" / "img_000.png"
    assert [s.has_lesion for s in folder.samples[:4]] == [False, False, False, True]


def test_has_lesion_is_read_like_the_importer_reads_it(tmp_path):
    root = write_blob_dataset(tmp_path / "d", n=6, negatives=0, size=(20, 24))
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    for row, value in zip(rows, ["TRUE", " yes ", "na", "0", "No", ""]):
        row["has_lesion"] = value
    rewrite_manifest(root, rows)
    assert [s.has_lesion for s in load_data_folder(root).samples] == [True, True, None, False, False, None]
    rows[2]["has_lesion"] = "maybe"  # once read as "no lesion"; now a clear error naming the image
    rewrite_manifest(root, rows)
    with pytest.raises(DataError, match=f"{rows[2]['id']}: has_lesion 'maybe' is not 0 or 1"):
        load_data_folder(root)


def test_folder_without_manifest_gets_a_seeded_split(tmp_path):
    root = write_blob_folder(tmp_path / "d", [True] * 20, size=(16, 16))
    (root / "masks" / "img_003.png").unlink()  # an image without a mask is fine (unlabeled)
    a, b = load_data_folder(root, seed=0), load_data_folder(root, seed=0)
    assert a.split_source == "generated (seed 0)"
    assert [s.split for s in a.samples] == [s.split for s in b.samples]
    counts = {name: len(a.split(name)) for name in ("pool", "val", "test")}
    assert counts == {"pool": 14, "val": 2, "test": 4}
    assert a.samples[3].mask_path is None and a.samples[3].has_lesion is None
    other = load_data_folder(root, seed=1)
    assert [s.split for s in other.samples] != [s.split for s in a.samples]
    a.write_split(tmp_path / "run" / "split.csv")
    with (tmp_path / "run" / "split.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], r["split"]) for r in rows] == [(s.id, s.split) for s in a.samples]


def test_manifest_without_split_column_is_split_by_seed(tmp_path):
    root = write_blob_folder(tmp_path / "d", [True, False] * 5, size=(16, 16))
    (root / "manifest.csv").write_text("id,has_lesion\n" + "".join(f"img_{k:03d},{1 - k % 2}\n" for k in range(10)))
    folder = load_data_folder(root)
    assert folder.split_source.startswith("generated")
    assert [s.has_lesion for s in folder.samples[:2]] == [True, False]


def test_manifest_ids_may_carry_the_extension_as_in_import(tmp_path):
    """`adasam import` reads `img_003.png` as the id of images/img_003.png; `adasam train` said "no row"."""
    root = write_blob_dataset(tmp_path / "d", n=12, negatives=3, size=(20, 24))
    before = {s.id: (s.split, s.has_lesion) for s in load_data_folder(root).samples}
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    for row in rows[::2]:
        row["id"] += ".png"
    rewrite_manifest(root, rows)
    assert {s.id: (s.split, s.has_lesion) for s in load_data_folder(root).samples} == before


def test_a_manifest_split_with_a_blank_cell_is_refused_not_replaced_by_a_generated_one(tmp_path):
    """One empty split cell switched the whole folder to a generated split: the manifest's test images trained."""
    root = write_blob_dataset(tmp_path / "d", n=12, negatives=3, size=(20, 24))
    rows = list(csv.DictReader((root / "manifest.csv").open()))
    rows[5]["split"] = " "
    rewrite_manifest(root, rows)
    with pytest.raises(DataError, match=f"no split for '{rows[5]['id']}' \\(1 row\\(s\\)\\)"):
        load_data_folder(root)


def test_seeded_split_small():
    split = seeded_split(["a", "b", "c"], 0)
    assert sorted(split.values()) == ["pool", "test", "val"]
    split = seeded_split([f"i{k}" for k in range(100)], 3)
    assert sum(v == "val" for v in split.values()) == 10 and sum(v == "test" for v in split.values()) == 20


@pytest.mark.parametrize("case, message", [
    ("no_images_dir", "no images/ folder"),
    ("empty_images", "no images"),
    ("unknown_split", "unknown split"),
    ("missing_row", "no row for image"),
    ("no_id_column", "needs an 'id' column"),
    ("id_twice", "'img_000' is on two rows"),
])
def test_bad_folders_are_one_line_errors(tmp_path, case, message):
    root = tmp_path / "d"
    if case == "no_images_dir":
        root.mkdir()
    elif case == "empty_images":
        (root / "images").mkdir(parents=True)
        (root / "images" / "readme.txt").write_text("no pictures here")
    else:
        write_blob_dataset(root, n=4, negatives=1, size=(16, 16))
        manifest = root / "manifest.csv"
        if case == "unknown_split":
            manifest.write_text(manifest.read_text().replace(",pool", ",training"))
        elif case == "missing_row":
            manifest.write_text("\n".join(manifest.read_text().splitlines()[:-1]) + "\n")
        elif case == "id_twice":
            lines = manifest.read_text().splitlines()
            manifest.write_text("\n".join([*lines, lines[1].replace(",pool", ",test")]) + "\n")
        else:
            manifest.write_text("name,split\nimg_000,pool\n")
    with pytest.raises(DataError, match=message) as err:
        load_data_folder(root)
    assert "\n" not in str(err.value)


# -- metrics ----------------------------------------------------------------------------------------------------------

def test_dice():
    a = np.zeros((10, 10), bool)
    b = a.copy()
    assert dice(a, b) == 1.0  # a correct "no finding"
    b[2:4, 2:4] = True
    assert dice(a, b) == 0.0 and dice(b, b) == 1.0
    a[2:4, 2:6] = True
    assert dice(a, b) == pytest.approx(2 * 4 / 12)


def test_box_iou():
    assert box_iou(np.array([0, 0, 10, 10]), np.array([0, 0, 10, 10])) == 1.0
    assert box_iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == pytest.approx(50 / 150)
    assert box_iou(np.array([0, 0, 1, 1]), np.array([2, 2, 3, 3])) == 0.0
    assert box_iou(None, np.array([0, 0, 1, 1])) == 0.0


def test_hd95_presence_auc_nanmean():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)
    assert hd95(a, a) == 0.0
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(np.zeros_like(a), a) == pytest.approx(math.hypot(20, 20))  # a missed target: the worst distance
    assert math.isnan(hd95(a, np.zeros_like(a)))  # no target: undefined
    assert presence_auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert presence_auc([0.1, 0.8, 0.9], [True, True, False]) == 0.0
    assert math.isnan(presence_auc([0.5, 0.6], [True, True]))
    assert nanmean([1.0, math.nan, 3.0]) == 2.0 and math.isnan(nanmean([math.nan]))


def test_summarise_scores_lesions_apart_and_keeps_the_ungated_dice():
    rows = [{"lesion": True, "probability": 0.9, "dice": 0.8, "dice_ungated": 0.8, "hd95": 4.0},
            {"lesion": True, "probability": 0.3, "dice": 0.0, "dice_ungated": 0.6, "hd95": 30.0},  # gated away
            {"lesion": False, "probability": 0.2, "dice": 1.0, "dice_ungated": 0.0, "hd95": math.nan}]
    summary = summarise(rows)
    assert (summary["n_images"], summary["n_lesion"]) == (3, 2)
    assert summary["dice_lesion"] == pytest.approx(0.4) and summary["dice_lesion_ungated"] == pytest.approx(0.7)
    assert summary["dice_all"] == pytest.approx(0.6) and summary["hd95_lesion"] == 17.0
    assert summary["presence_auc"] == 1.0
    ungated = summarise([{k: v for k, v in r.items() if k != "dice_ungated"} for r in rows])
    assert ungated["dice_lesion_ungated"] == ungated["dice_lesion"]  # a method without a gate
