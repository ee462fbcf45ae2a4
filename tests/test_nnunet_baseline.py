"""The nnU-Net reference of benchmarks/nnunet_baseline.py, without nnU-Net itself: the raw dataset it writes holds
exactly the masks `adasam train` uses, and its scoring reads nnU-Net's outputs in the orientation they were written."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from nnunet_baseline import prepare, score, write_splits  # noqa: E402

from model.dataset import SPLIT_SEED, load_data_folder, masked_ids  # noqa: E402
from model.preprocess import read_mask  # noqa: E402
from model.testing import write_blob_dataset  # noqa: E402


def test_prepare_writes_the_masked_pool_and_val_for_training_and_test_apart(tmp_path):
    data = write_blob_dataset(tmp_path / "data", n=18, size=(40, 56))
    train, val, truth = prepare(str(data), 0.5, 0, tmp_path / "raw", "Dataset990_Test")

    folder = load_data_folder(data, seed=SPLIT_SEED)
    assert set(train) == masked_ids(folder.split("pool"), 0.5, 0)
    assert set(val) == {s.id for s in folder.split("val")}
    assert set(truth) == {s.id for s in folder.split("test")}
    root = tmp_path / "raw" / "Dataset990_Test"
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == sorted(f"{i}.nii.gz" for i in train + val)
    assert sorted(p.name for p in (root / "imagesTs").iterdir()) == sorted(f"{i}_0000.nii.gz" for i in truth)
    assert json.loads((root / "dataset.json").read_text())["numTraining"] == len(train) + len(val)
    sample = next(s for s in folder.split("val") if s.has_lesion)
    label = np.asarray(nib.load(root / "labelsTr" / f"{sample.id}.nii.gz").dataobj)
    assert label.shape == (56, 40, 1)  # x, y, 1 as the tool's nnU-Net export
    assert np.array_equal(label[:, :, 0].T > 0, read_mask(sample.mask_path)) and label.any()


def write_prediction(folder: Path, case: str, mask: np.ndarray, probability: float) -> None:
    """What nnUNetv2_predict writes for a case: the segmentation as read, and softmax probabilities (C x 1 x H x W)."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.astype(np.uint8).T[:, :, None]), np.eye(4)),
             folder / f"{case}.nii.gz")
    foreground = np.where(mask, probability, 0.01)[None].astype(np.float32)  # the peak is `probability`
    np.savez(folder / f"{case}.npz", probabilities=np.stack([1 - foreground, foreground]))


def test_score_reads_predictions_in_the_orientation_they_were_written(tmp_path):
    rng = np.random.default_rng(0)
    truth = {}
    for k in range(4):
        mask = np.zeros((30, 44), bool)
        if k:  # case 0 has no target
            mask[5 + k:15 + k, 3 * k:20 + k] = True  # not symmetric: a transposed read would not match
        truth[f"c{k}"] = mask
    perfect, empty = tmp_path / "perfect", tmp_path / "empty"
    perfect.mkdir()
    empty.mkdir()
    for case, mask in truth.items():
        write_prediction(perfect, case, mask, probability=0.9 if mask.any() else 0.2 + 0.1 * rng.random())
        write_prediction(empty, case, np.zeros_like(mask), probability=0.01)

    good = score(perfect, truth)
    assert (good["n_images"], good["n_lesion"]) == (4, 3)
    assert good["dice_lesion"] == 1.0 and good["dice_all"] == 1.0
    assert good["presence_auc"] == 1.0
    bad = score(empty, truth)
    assert bad["dice_lesion"] == 0.0 and bad["dice_all"] == 0.25  # only the target-free case is right
    assert bad["presence_auc"] == 0.5  # the same foreground peak everywhere


def test_the_split_file_is_where_nnunet_reads_fold_0(tmp_path):
    (tmp_path / "Dataset990_x").mkdir()
    path = write_splits(tmp_path, "Dataset990_x", ["a", "b"], ["c"])
    assert path == tmp_path / "Dataset990_x" / "splits_final.json"  # nnUNetTrainer.do_split's file
    assert json.loads(path.read_text()) == [{"train": ["a", "b"], "val": ["c"]}]


def test_a_run_drives_nnunet_through_its_commands_in_its_own_folders(tmp_path, monkeypatch):
    import nnunet_baseline

    data = write_blob_dataset(tmp_path / "data", n=12, size=(32, 40))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 1\n")  # found by name; never run
        (bin_dir / tool).chmod(0o755)
    calls = []

    def fake_run(command, env, check):  # what nnU-Net would leave behind, from what the command says
        calls.append((Path(command[0]).name, command[1:], env))
        if command[0].endswith("plan_and_preprocess"):
            (Path(env["nnUNet_preprocessed"]) / name).mkdir(parents=True)
        if command[0].endswith("predict"):
            images, out = Path(command[command.index("-i") + 1]), Path(command[command.index("-o") + 1])
            out.mkdir(parents=True)
            for image in images.iterdir():
                grey = np.asarray(nib.load(image).dataobj)[:, :, 0].T
                write_prediction(out, image.name.removesuffix("_0000.nii.gz"), np.zeros(grey.shape, bool), 0.01)

    name = f"Dataset990_{data.name}"
    monkeypatch.setattr(nnunet_baseline.subprocess, "run", fake_run)
    monkeypatch.setattr(sys, "argv", ["nnunet_baseline.py", "--data", str(data), "--masks", "0.5", "--seed", "1",
                                      "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                                      "--nnunet-bin", str(bin_dir), "--trainer", "nnUNetTrainer_5epochs"])
    assert nnunet_baseline.main() == 0

    assert [c[0] for c in calls] == ["nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict"]
    assert all(c[2]["nnUNet_preprocessed"] == str(tmp_path / "work" / "preprocessed") for c in calls)
    assert calls[1][1] == ["990", "2d", "0", "-tr", "nnUNetTrainer_5epochs", "-device", "cpu"]
    assert "checkpoint_best.pth" in calls[2][1]  # the checkpoint val chose
    splits = json.loads((tmp_path / "work" / "preprocessed" / name / "splits_final.json").read_text())
    folder = load_data_folder(data, seed=SPLIT_SEED)
    assert set(splits[0]["train"]) == masked_ids(folder.split("pool"), 0.5, 1)
    result = json.loads((tmp_path / "out" / "eval_auto.json").read_text())
    assert result["n_images"] == len(folder.split("test")) and result["trainer"] == "nnUNetTrainer_5epochs"
    assert result["dice_lesion"] == 0.0  # the empty predictions, scored
