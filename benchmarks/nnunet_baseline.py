"""Issue 10's strongest standard reference: nnU-Net v2 2D trained on exactly the masks `adasam train --masks F --seed
S` uses, its checkpoint picked on our val split, scored on test with model.metrics as every other method.

nnU-Net is driven through its own command line (`nnUNetv2_plan_and_preprocess`, `nnUNetv2_train`,
`nnUNetv2_predict`), which the test extras install beside this Python (`bash scripts/install.sh --test`; another
installation: `--nnunet-bin DIR`); the tool itself does not need it. Each run has its own nnU-Net folders (`--work`,
by default .tmp/nnunet/<masks>_seed<seed>), so runs never see each other's dataset. The cases are written as the
tool's nnU-Net export writes them (grey NIfTI, x, y, 1, identity affine); fold 0 of a `splits_final.json` trains on
the masked pool images and validates on val, so nnU-Net's own "best" checkpoint is chosen on val. The training
length is nnU-Net's trainer (`nnUNetTrainer`: 1000 epochs of 250 iterations; `nnUNetTrainer_50epochs` and the other
shipped variants shorten it): say which one a figure had. Presence is the largest foreground probability (AUC) and
the mask is nnU-Net's own segmentation, so presence = mask non-empty, as for the U-Net baseline.

    python benchmarks/nnunet_baseline.py --data ../shared/datasets/busi --masks 0.1 --seed 0 --out DIR \
        [--trainer nnUNetTrainer_50epochs] [--device cpu|cuda] [--nnunet-bin DIR] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from model.dataset import SPLIT_SEED, Sample, load_data_folder, masked_ids
from model.metrics import dice, hd95, summarise
from model.preprocess import read_image, read_mask

ROOT = Path(__file__).resolve().parents[1]


def write_case(sample: Sample, images: Path, labels: Path | None) -> np.ndarray:
    """One grey 2D case as the tool's export writes it; returns the mask (original size, bool)."""
    import nibabel as nib

    pixels = read_image(sample.image_path)
    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    mask = read_mask(sample.mask_path, grey.shape) if sample.mask_path else np.zeros(grey.shape, bool)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(grey.astype(np.float32).T[:, :, None]), np.eye(4)),
             images / f"{sample.id}_0000.nii.gz")
    if labels is not None:
        nib.save(nib.Nifti1Image(np.ascontiguousarray(mask.astype(np.uint8).T[:, :, None]), np.eye(4)),
                 labels / f"{sample.id}.nii.gz")
    return mask


def prepare(data: str, fraction: float, seed: int, raw: Path,
            name: str) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """nnUNet_raw/<name>: the masked pool images and val as imagesTr/labelsTr, test as imagesTs. Returns the train
    ids, the val ids and the test masks by id."""
    folder = load_data_folder(data, seed=SPLIT_SEED)
    chosen = masked_ids(folder.split("pool"), fraction, seed)
    train = [s for s in folder.split("pool") if s.id in chosen]
    val = [s for s in folder.split("val") if s.mask_path]
    test = [s for s in folder.split("test") if s.mask_path]
    root = raw / name
    if root.exists():
        shutil.rmtree(root)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for s in train + val:
        write_case(s, root / "imagesTr", root / "labelsTr")
    truth = {s.id: write_case(s, root / "imagesTs", None) for s in test}
    dataset = {"name": name, "channel_names": {"0": "ultrasound"}, "labels": {"background": 0, "lesion": 1},
               "numTraining": len(train) + len(val), "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return [s.id for s in train], [s.id for s in val], truth


def write_splits(preprocessed: Path, name: str, train: list[str], val: list[str]) -> Path:
    """Fold 0 = our split, where nnUNetv2_train looks for it: its best checkpoint is then chosen on our val (without
    the file nnU-Net would make its own 5-fold split of the training cases, val among them)."""
    path = preprocessed / name / "splits_final.json"
    path.write_text(json.dumps([{"train": train, "val": val}], indent=1))
    return path


def score(predictions: Path, truth: dict[str, np.ndarray]) -> dict:
    """The figures `adasam evaluate` reports, from nnU-Net's segmentations and softmax probabilities."""
    import nibabel as nib

    rows = []
    for case, mask in truth.items():
        prediction = np.asarray(nib.load(predictions / f"{case}.nii.gz").dataobj)[:, :, 0].T > 0
        probabilities = np.load(predictions / f"{case}.npz")["probabilities"]  # classes x 1 x H x W
        lesion = bool(mask.any())
        rows.append({"lesion": lesion, "probability": float(probabilities[1].max()), "dice": dice(prediction, mask),
                     "hd95": hd95(prediction, mask) if lesion else float("nan")})
    return summarise(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="run folder: eval_auto.json is written there")
    parser.add_argument("--masks", type=float, default=0.1, help="fraction of the pool's masks (as adasam train)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trainer", default="nnUNetTrainer", help="an nnU-Net trainer class (sets the epochs)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--nnunet-bin", default=str(Path(sys.executable).parent),
                        help="folder holding the nnUNetv2_* commands (default: this Python's)")
    parser.add_argument("--work", default=None, help="this run's nnUNet_raw/preprocessed/results (default: "
                        ".tmp/nnunet/<masks>_seed<seed>)")
    parser.add_argument("--dataset-id", type=int, default=990)
    args = parser.parse_args()

    def command(tool: str) -> str:
        found = shutil.which(tool, path=args.nnunet_bin)
        if found is None:
            parser.error(f"{tool} not in {args.nnunet_bin}: pip install nnunetv2 there, or pass --nnunet-bin DIR")
        return found

    work = Path(args.work or ROOT / ".tmp" / "nnunet" / f"{args.masks:g}_seed{args.seed}")
    env = {**os.environ, "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
           "nnUNet_results": str(work / "results"), "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "2")}
    name = f"Dataset{args.dataset_id:03d}_{Path(args.data).resolve().name}"
    started = time.time()
    train_ids, val_ids, truth = prepare(args.data, args.masks, args.seed, work / "raw", name)
    subprocess.run([command("nnUNetv2_plan_and_preprocess"), "-d", str(args.dataset_id), "-c", "2d", "-np", "2",
                    "-npfp", "2", "--verify_dataset_integrity"], env=env, check=True)
    write_splits(work / "preprocessed", name, train_ids, val_ids)
    subprocess.run([command("nnUNetv2_train"), str(args.dataset_id), "2d", "0", "-tr", args.trainer,
                    "-device", args.device], env=env, check=True)
    trained = time.time()
    predictions = work / "predictions" / name
    subprocess.run([command("nnUNetv2_predict"), "-i", str(work / "raw" / name / "imagesTs"), "-o", str(predictions),
                    "-d", str(args.dataset_id), "-c", "2d", "-f", "0", "-tr", args.trainer, "-chk",
                    "checkpoint_best.pth", "-device", args.device, "--save_probabilities"], env=env, check=True)
    result = score(predictions, truth)
    result.update({"split": "test", "method": "nnunet-2d", "trainer": args.trainer, "device": args.device,
                   "masks": args.masks, "seed": args.seed, "n_masked": len(train_ids),
                   "train_seconds": trained - started, "total_seconds": time.time() - started})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_auto.json").write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
