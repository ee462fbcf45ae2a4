"""Export: PNG, COCO RLE and NIfTI (restacked with the source affine), manifest, provenance, atomic and checked."""
from __future__ import annotations

import csv
import json
import os
import zipfile

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from annotation import PredictionRecord, Store, WorkspaceError, export_workspace, export_zip, import_sources
from annotation_fixtures import BUSI, busi_subset, make_dataset, seed_images, write_nifti

# pycocotools 2.0 warns about NumPy 2 copy semantics on every decode; not our concern here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def read_manifest(out):
    with open(out / "manifest.csv", newline="") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def labeled_store(store, tmp_path):
    cases = make_dataset(tmp_path / "set", n=5, splits=["pool", "pool", "val", "test", "pool"])
    import_sources(store, [tmp_path / "set"], progress=False)
    return cases


def test_png_export_has_masks_manifest_and_provenance(store, tmp_path):
    cases = labeled_store(store, tmp_path)
    extra = seed_images(store, 2)
    drawn = np.zeros((4, 5), dtype=bool)
    drawn[1, 1:4] = True
    store.save_mask(extra[0], drawn, "alice")
    store.mark_no_finding(extra[1], "bob")
    summary = export_workspace(store, tmp_path / "out", "png")
    out = tmp_path / "out"
    assert summary.images == 7 and summary.empty == 1 + sum(not m.any() for _, m in cases.values())
    for name, (_, mask) in cases.items():
        assert np.array_equal(np.array(Image.open(out / "masks" / f"{name}.png")) > 0, mask)
    assert np.array_equal(np.array(Image.open(out / "masks" / "img0.png")) > 0, drawn)
    assert not np.array(Image.open(out / "masks" / "img1.png")).any()
    manifest = read_manifest(out)
    assert manifest["img1"]["origin"] == "no_finding" and manifest["img1"]["empty"] == "1"
    assert manifest["case_002"]["split"] == "val" and manifest["img0"]["annotator"] == "alice"
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["images"]["img0"]["annotator"] == "alice"
    assert provenance["images"]["img0"]["origin"] == "human" and provenance["images"]["img0"]["time"]
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_coco_export_uses_rle_that_decodes_to_the_masks(store, tmp_path):
    cases = labeled_store(store, tmp_path)
    export_workspace(store, tmp_path / "out", "coco")
    document = json.loads((tmp_path / "out" / "annotations.json").read_text())
    names = {image["id"]: image["adasam_name"] for image in document["images"]}
    assert len(names) == 5
    decoded = {name: np.zeros_like(mask) for name, (_, mask) in cases.items()}
    for annotation in document["annotations"]:
        assert isinstance(annotation["segmentation"]["counts"], str)
        decoded[names[annotation["image_id"]]] |= mask_utils.decode(
            {**annotation["segmentation"], "counts": annotation["segmentation"]["counts"].encode()}) > 0
    for name, (_, mask) in cases.items():
        assert np.array_equal(decoded[name], mask)


def test_nifti_export_restacks_volume_slices_with_the_source_affine(store, tmp_path):
    data = np.random.default_rng(1).integers(0, 500, (7, 6, 4)).astype(np.int16)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[:3, 3] = [-5, 7, 11]
    write_nifti(tmp_path / "src" / "knee.nii.gz", data, affine)
    import_sources(store, [tmp_path / "src"], progress=False)
    slices = {image.slice_index: image for image in store.images()}
    mask = np.zeros((6, 7), dtype=bool)  # stored slices are transposed: rows = second axis
    mask[2:4, 1:5] = True
    store.save_mask(slices[1].id, mask, "alice")
    store.mark_no_finding(slices[3].id, "alice")
    plain = seed_images(store, 1)[0]
    store.save_mask(plain, np.eye(4, 5, dtype=bool), "bob")

    summary = export_workspace(store, tmp_path / "out", "nifti")
    assert summary.images == 3
    volume = nib.load(tmp_path / "out" / "volumes" / "knee_axis2.nii.gz")
    assert volume.shape == data.shape and np.allclose(volume.affine, affine)
    expected = np.zeros(data.shape, dtype=np.uint8)
    expected[:, :, 1] = mask.T
    assert np.array_equal(np.asanyarray(volume.dataobj), expected)
    single = nib.load(tmp_path / "out" / "masks" / "img0.nii.gz")
    assert np.array_equal(np.asanyarray(single.dataobj)[:, :, 0].T > 0, np.eye(4, 5, dtype=bool))
    manifest = read_manifest(tmp_path / "out")
    assert manifest["knee_s0001"]["mask_file"] == "volumes/knee_axis2.nii.gz"
    assert manifest["knee_s0001"]["slice_index"] == "1"


def test_nnunet_export_is_a_dataset_nnunet_itself_accepts(store, tmp_path):
    cases = labeled_store(store, tmp_path)  # grey PNGs with masks (some empty)
    data = np.random.default_rng(1).integers(0, 500, (7, 6, 4)).astype(np.int16)
    write_nifti(tmp_path / "src" / "knee.nii.gz", data)
    import_sources(store, [tmp_path / "src"], progress=False)
    knee = {image.slice_index: image for image in store.images() if image.slice_index is not None}
    store.save_mask(knee[1].id, np.eye(6, 7, dtype=bool), "alice")  # one slice of four: a 2D case, not a volume
    summary = export_workspace(store, tmp_path / "out", "nnunet")
    out = tmp_path / "out"
    dataset = json.loads((out / "dataset.json").read_text())
    held_out = {image.name for image in store.images() if image.split == "test"}  # in imagesTs/labelsTs
    assert held_out and dataset["numTraining"] == summary.images - len(held_out) == len(cases) + 1 - len(held_out)
    assert dataset["channel_names"] == {"0": "image"} and dataset["labels"] == {"background": 0, "lesion": 1}
    name = read_manifest(out)["knee_s0001"]["name"]
    image = nib.load(out / "imagesTr" / f"{name}_0000.nii.gz")
    assert image.shape == (7, 6, 1) and np.array_equal(np.asanyarray(image.dataobj)[:, :, 0], data[:, :, 1])
    label = np.asanyarray(nib.load(out / "labelsTr" / f"{name}.nii.gz").dataobj)
    assert label.dtype == np.uint8 and np.array_equal(label[:, :, 0].T, np.eye(6, 7, dtype=np.uint8))
    for case, (_, mask) in cases.items():
        labels = "labelsTs" if case in held_out else "labelsTr"
        assert np.array_equal(np.asanyarray(nib.load(out / labels / f"{case}.nii.gz").dataobj)[:, :, 0].T > 0,
                              mask)
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(out), num_processes=1)  # nnU-Net's own check raises on any defect


def test_accepted_predictions_are_exported_only_on_request(store, tmp_path):
    ids = seed_images(store, 3)
    store.register_model("v7", "v7.pt")
    predicted = np.zeros((4, 5), dtype=bool)
    predicted[0, :] = True
    store.record_predictions("v7", [PredictionRecord(ids[0], 0.4, 0.9, mask=predicted)])
    store.accept_prediction(ids[0], "alice")
    with pytest.raises(WorkspaceError, match="--include-predictions"):
        export_workspace(store, tmp_path / "none", "png")
    store.mark_no_finding(ids[1], "alice")
    assert export_workspace(store, tmp_path / "human", "png").images == 1
    summary = export_workspace(store, tmp_path / "all", "png", include_predictions=True)
    assert summary.images == 2
    provenance = json.loads((tmp_path / "all" / "provenance.json").read_text())
    assert provenance["images"]["img0"]["model_version"] == "v7"
    assert provenance["images"]["img0"]["origin"] == "accepted_prediction"


def test_empty_workspace_and_existing_output_are_errors(store, tmp_path):
    seed_images(store, 2)
    with pytest.raises(WorkspaceError, match="nothing to export"):
        export_workspace(store, tmp_path / "out", "png")
    assert not (tmp_path / "out").exists()
    store.mark_no_finding(1, "alice")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(WorkspaceError, match="not an empty folder"):
        export_workspace(store, tmp_path / "taken", "png")
    with pytest.raises(WorkspaceError, match="format"):
        export_workspace(store, tmp_path / "out", "jpeg")
    (tmp_path / "empty").mkdir()
    assert export_workspace(store, tmp_path / "empty", "coco").images == 1


def test_export_zip_holds_the_checked_export_and_leaves_only_the_zip(store, tmp_path):
    seed_images(store, 2)
    store.mark_no_finding(1, "alice")
    (tmp_path / "downloads").mkdir()
    archive, summary = export_zip(store, tmp_path / "downloads", "coco")
    assert archive.parent == tmp_path / "downloads" and archive.name.startswith(f"{store.root.name}-coco-")
    assert [p.name for p in archive.parent.iterdir()] == [archive.name] and summary.images == 1
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        assert {f"{archive.stem}/{f}" for f in summary.files} <= set(names)
        assert json.loads(zipped.read(f"{archive.stem}/annotations.json"))["images"][0]["file_name"]
    with pytest.raises(WorkspaceError, match="format"):
        export_zip(store, tmp_path / "downloads", "zip")


def test_a_failed_check_leaves_no_output_and_stale_temporaries_are_cleared(store, tmp_path, monkeypatch):
    from annotation import export

    seed_images(store, 1)
    store.mark_no_finding(1, "alice")
    stale = tmp_path / ".out.tmp-999999999-deadbeef"
    stale.mkdir()
    monkeypatch.setattr(export, "_write_manifest", lambda *args: (tmp_path / "x").touch() or
                        open(args[1] / "manifest.csv", "w").write("name\n"))
    with pytest.raises(WorkspaceError, match="export check failed"):
        export_workspace(store, tmp_path / "out", "png")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


@pytest.mark.skipif(not BUSI.is_dir(), reason="shared BUSI dataset not present")
def test_busi_round_trip_masks_out_equal_masks_in(tmp_path):
    ids = ["benign_001", "benign_002", "malignant_001", "malignant_002", "normal_001", "normal_002"]
    source = busi_subset(tmp_path / "busi", ids)
    with Store(tmp_path / "ws") as store:
        summary = import_sources(store, [source], progress=False)
        assert (summary.added, summary.masks_added, summary.skipped) == (6, 6, [])
        export_workspace(store, tmp_path / "png", "png")
        export_workspace(store, tmp_path / "coco", "coco")
    manifest = read_manifest(tmp_path / "png")
    with open(source / "manifest.csv", newline="") as handle:
        original = {row["id"]: row for row in csv.DictReader(handle)}
    document = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    by_name = {image["adasam_name"]: image["id"] for image in document["images"]}
    for name in ids:
        truth = np.array(Image.open(source / "masks" / f"{name}.png")) > 0
        assert np.array_equal(np.array(Image.open(tmp_path / "png" / "masks" / f"{name}.png")) > 0, truth)
        rles = [a["segmentation"] for a in document["annotations"] if a["image_id"] == by_name[name]]
        coco = np.zeros_like(truth)
        for rle in rles:
            coco |= mask_utils.decode({**rle, "counts": rle["counts"].encode()}) > 0
        assert np.array_equal(coco, truth)
        assert manifest[name]["split"] == original[name]["split"]
        assert manifest[name]["has_lesion"] == original[name]["has_lesion"]
        assert os.path.basename(manifest[name]["original_path"]) == f"{name}.png"


def test_nifti_export_keeps_every_volume_apart_across_axes_and_same_stems(store, tmp_path):
    """Two scans both named scan.nii.gz (other folders), each sliced along two axes: four mask volumes, none written
    over another, each with its source's shape, affine and only its own slices' masks."""
    paths = []
    for k, folder in enumerate(["a", "b"]):
        data = np.random.default_rng(k).integers(0, 500, (5, 6, 4)).astype(np.int16)
        paths.append(write_nifti(tmp_path / folder / "scan.nii.gz", data, np.diag([0.5 + k, 0.8, 3.0, 1.0])))
        for axis in (0, 2):
            import_sources(store, [tmp_path / folder], axis=axis, progress=False)
    volumes = {v: store.volume(v) for v in {i.volume_id for i in store.images()}}
    assert sorted((v["path"], v["axis"]) for v in volumes.values()) == sorted(
        (str(path.absolute()), axis) for path in paths for axis in (0, 2))
    expected = {v: np.zeros(volume["shape"], np.uint8) for v, volume in volumes.items()}
    for k, image in enumerate(sorted(store.images(), key=lambda i: (i.volume_id, i.slice_index))):
        if image.slice_index % 2:  # every other slice of every volume, each with its own mask
            mask = np.zeros((image.height, image.width), dtype=bool)
            mask[k % image.height, : 1 + k % image.width] = True
            store.save_mask(image.id, mask, "alice")
            index = [slice(None)] * 3
            index[volumes[image.volume_id]["axis"]] = image.slice_index
            expected[image.volume_id][tuple(index)] = mask.T

    export_workspace(store, tmp_path / "out", "nifti")
    volume_of = {image.id: image.volume_id for image in store.images()}
    files = {}
    for row in read_manifest(tmp_path / "out").values():
        files.setdefault(volume_of[int(row["image_id"])], set()).add(row["mask_file"])
    assert sorted(files) == sorted(volumes) and all(len(names) == 1 for names in files.values())
    assert len({name for names in files.values() for name in names}) == 4  # one file per volume and axis
    assert len(list((tmp_path / "out" / "volumes").iterdir())) == 4
    for volume_id, volume in volumes.items():
        saved = nib.load(tmp_path / "out" / files[volume_id].pop())
        assert saved.shape == tuple(volume["shape"]) and np.allclose(saved.affine, volume["affine"])
        assert np.array_equal(np.asanyarray(saved.dataobj), expected[volume_id])


@pytest.mark.parametrize("fmt", ["png", "coco"])
def test_images_sharing_a_name_export_under_names_no_two_share(store, tmp_path, fmt):
    """Images named 'a', 'a' and 'a_1' (or 'A' and 'a', one file on macOS) gave 'a_1' twice: PNG aborted, and COCO
    had two images with one file name."""
    names = ["a", "a", "a_1", "A", "b"]
    for k, name in enumerate(names):
        path = tmp_path / "src" / str(k) / f"{name}.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(np.full((4, 4), k * 10, np.uint8)).save(path)
    import_sources(store, [tmp_path / "src"], progress=False)
    masks = {}
    for k, image in enumerate(store.images()):
        masks[image.id] = np.zeros((4, 4), bool)
        masks[image.id][k % 4, k // 4] = True
        store.save_mask(image.id, masks[image.id], "ann")
    summary = export_workspace(store, tmp_path / "out", fmt)
    manifest = read_manifest(tmp_path / "out")
    assert summary.images == 5 and len({name.casefold() for name in manifest}) == 5
    assert manifest["b"]["image_id"] == str(store.images()[-1].id)  # a name no other image has is kept
    if fmt == "png":
        for name, row in manifest.items():
            exported = np.array(Image.open(tmp_path / "out" / "masks" / f"{name}.png")) > 0
            assert np.array_equal(exported, masks[int(row["image_id"])])
    else:
        document = json.loads((tmp_path / "out" / "annotations.json").read_text())
        assert len({image["file_name"].casefold() for image in document["images"]}) == 5
        assert {image["file_name"] for image in document["images"]} >= {"b.png"}


def test_nnunet_export_keeps_test_split_cases_out_of_training(store, tmp_path):
    cases = make_dataset(tmp_path / "set", n=4, splits=["pool", "val", "test", "pool"])
    import_sources(store, [tmp_path / "set"], progress=False)
    export_workspace(store, tmp_path / "out", "nnunet")
    out = tmp_path / "out"
    trained = sorted(p.name for p in (out / "labelsTr").iterdir())
    held_out = sorted(p.name for p in (out / "labelsTs").iterdir())
    assert held_out == ["case_002.nii.gz"] and len(trained) == len(cases) - 1 and "case_002.nii.gz" not in trained
    assert (out / "imagesTs" / "case_002_0000.nii.gz").exists()
    assert json.loads((out / "dataset.json").read_text())["numTraining"] == 3
