"""Annotation effort: how many interactions a simulated annotator needs per test image, through the app's own
actions (`Studio.task` shows the proposal, `Studio.refine` redraws from clicks, exactly as the Annotate tab does).

Three ways to start each lesion image of the test split:
- `proposal`: the trained model's automatic proposal (ADA-SAM's CAM-prompted mask), 0 interactions;
- `box`: one box around the true mask on the pretrained decoder (every SAM annotation tool's workflow; the box counts
  as one interaction);
- `clicks`: nothing shown, clicks only (the app then starts a box at the first positive click).
Then, while Dice < 0.9 and fewer than 10 interactions: one click at the centre (the point farthest from its edge)
of the largest error region, positive inside a missed area, negative inside a false one; every click so far goes
with the box the Annotate tab sends: the proposal's prompt box (none for `clicks`: the app then starts one at the
first click), and after each redraw the box that redraw was given (clicks edit it for LiteMedSAM). Reported per
start: the share accepted untouched (Dice >= 0.9 with no interaction), NoC@90 and NoC@85 (interactions to reach
that Dice; 10 when never reached, with the share reached). Target-free test images are counted apart: the share the
model proposes empty ("no finding" with no interaction).

    python benchmarks/effort.py --data ../shared/datasets/busi --model RUN --json benchmarks/results/effort.json
    python benchmarks/effort.py --quick       # generated blobs, micro backbone: checks the script, not figures
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

MAX_INTERACTIONS = 10
STARTS = ("proposal", "box", "clicks")


def next_click(mask: np.ndarray, truth: np.ndarray) -> tuple[list[float], bool]:
    """([x, y], positive): the centre of the largest connected error region (missed -> positive, false -> negative)."""
    best = None
    for region, positive in ((truth & ~mask, True), (mask & ~truth, False)):
        labels, count = ndimage.label(region)
        if count:
            sizes = ndimage.sum(region, labels, range(1, count + 1))
            k = int(np.argmax(sizes)) + 1
            if best is None or sizes[k - 1] > best[0]:
                best = (sizes[k - 1], labels == k, positive)
    _, component, positive = best
    distance = ndimage.distance_transform_edt(np.pad(component, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return [float(x) + 0.5, float(y) + 0.5], positive


def simulate(studio, truths: dict[str, np.ndarray], start: str) -> list[dict]:
    """Work through every image the queue hands out; returns one row per image."""
    from app.pictures import decode_mask
    from model.metrics import dice
    from model.preprocess import mask_box

    rows = []
    while True:
        task = studio.task("simulated")
        if task["image_id"] is None:
            return rows
        truth = truths[task["name"]]
        shown = decode_mask(task["mask"], truth.shape)
        if not truth.any():
            if start == "proposal":
                rows.append({"name": task["name"], "lesion": False, "empty_proposal": not shown.any()})
            studio.no_finding("simulated", task["view"])
            continue
        positive, negative, used = [], [], 0
        box = task["box"]  # as the Annotate tab: the prompt box shown, then the box each redraw was given
        mask = shown
        if start == "box":
            box, used = [float(v) for v in mask_box(truth)], 1
            drawn = studio.refine("simulated", task["view"], [], [], box)
            mask, box = decode_mask(drawn["mask"], truth.shape), drawn["box"]
        elif start == "clicks":
            mask = np.zeros_like(truth)
        dices = [dice(mask, truth)]
        while dices[-1] < 0.9 and used < MAX_INTERACTIONS:
            point, is_positive = next_click(mask, truth)
            (positive if is_positive else negative).append(point)
            drawn = studio.refine("simulated", task["view"], positive, negative, box)
            mask, box = decode_mask(drawn["mask"], truth.shape), drawn["box"]
            used += 1
            dices.append(dice(mask, truth))
        first = 0 if start != "box" else 1  # interactions before dices[0]
        rows.append({"name": task["name"], "lesion": True, "dices": [round(d, 4) for d in dices],
                     "noc90": next((first + k for k, d in enumerate(dices) if d >= 0.9), MAX_INTERACTIONS),
                     "noc85": next((first + k for k, d in enumerate(dices) if d >= 0.85), MAX_INTERACTIONS),
                     "reached90": any(d >= 0.9 for d in dices)})
        studio.no_finding("simulated", task["view"])  # move on; what is saved does not matter here


def summarise(rows: list[dict], start: str) -> dict:
    lesion = [r for r in rows if r["lesion"]]
    out = {"lesion_images": len(lesion),
           "accepted_untouched": round(float(np.mean([r["dices"][0] >= 0.9 and start != "box" for r in lesion])), 4),
           "noc90_mean": round(float(np.mean([r["noc90"] for r in lesion])), 3),
           "noc85_mean": round(float(np.mean([r["noc85"] for r in lesion])), 3),
           "reached90": round(float(np.mean([r["reached90"] for r in lesion])), 4),
           "dice_start": round(float(np.mean([r["dices"][0] for r in lesion])), 4)}
    negatives = [r for r in rows if not r["lesion"]]
    if negatives:
        out["target_free_images"] = len(negatives)
        out["target_free_proposed_empty"] = round(float(np.mean([r["empty_proposal"] for r in negatives])), 4)
    return out


def split_ids(data: Path, split: str) -> list[str]:
    with open(data / "manifest.csv", newline="") as handle:
        return [row["id"] for row in csv.DictReader(handle) if row["split"] == split]


def workspace_of(folder: Path, data: Path, ids: list[str], model: Path | None) -> Path:
    """The test images as the pool of a fresh workspace (masks left out), with the trained model published."""
    from annotation import Store, import_sources

    images = folder / "images"
    images.mkdir(parents=True)
    for name in ids:
        source = next((data / "images").glob(f"{name}.*"))
        shutil.copy(source, images / source.name)
    workspace = folder / "workspace"
    with Store(workspace) as store:
        import_sources(store, [images], with_masks=False, progress=False)
        if model is not None:
            store.register_model("effort", model / "model.pt", {"note": "the model under test"})
    return workspace


def run(args: argparse.Namespace) -> dict:
    from annotation import Store
    from app.model_slot import ModelSlot
    from app.studio import Studio

    data = Path(args.data)
    ids = split_ids(data, args.split)[: args.limit or None]
    truths = {name: np.asarray(Image.open(next((data / "masks").glob(f"{name}.*")))) > 0 for name in ids}
    truths = {name: mask if mask.ndim == 2 else mask.any(axis=2) for name, mask in truths.items()}
    results, timing = {}, {}
    with tempfile.TemporaryDirectory(prefix="adasam-effort-") as tmp:
        for start in args.starts:
            model = Path(args.model) if start == "proposal" else None
            workspace = workspace_of(Path(tmp) / start, data, ids, model)
            store = Store(workspace)
            studio = Studio(store, ModelSlot(store, args.backbone, args.cache), max_points=MAX_INTERACTIONS + 1)
            started = time.time()
            try:
                rows = simulate(studio, truths, start)
            finally:
                studio.close()
                store.close()
            timing[start] = round(time.time() - started, 1)
            results[start] = {"summary": summarise(rows, start), "images": rows}
            print(start, json.dumps(results[start]["summary"]), flush=True)
    box_noc = results["box"]["summary"]["noc90_mean"] if "box" in results else None
    return {"data": os.path.relpath(data, ROOT), "model": args.model, "backbone": args.backbone, "split": args.split,
            "images": len(ids), "seconds": timing,
            "noc90_ratio_proposal_to_box": round(results["proposal"]["summary"]["noc90_mean"] / box_noc, 3)
            if box_noc and "proposal" in results else None,
            "starts": results, "date": time.strftime("%Y-%m-%d %H:%M")}


def quick_inputs(folder: Path) -> tuple[str, str]:
    """Generated blobs and a micro model trained for a few steps through `adasam train`."""
    from model.testing import write_blob_dataset

    data = write_blob_dataset(folder / "data", n=18, negatives=4)
    run_dir = folder / "run"
    subprocess.run([sys.executable, "-m", "app.cli", "train", "--data", str(data), "--out", str(run_dir),
                    "--backbone", "micro_random", "--steps", "4", "--cache", str(folder / "cache")],
                   check=True, cwd=ROOT, capture_output=True)
    return str(data), str(run_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"))
    parser.add_argument("--model", help="a run folder of `adasam train` (its model.pt is the proposal's model)")
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--cache", default=None, help="embedding cache (default ~/.cache/adasam/embeddings)")
    parser.add_argument("--split", default="test", choices=("val", "test"),
                        help="test for the figures; val to choose between designs (never choose on test)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images")
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS))
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        folder = Path(tempfile.mkdtemp(prefix="adasam-effort-quick-"))
        args.data, args.model = quick_inputs(folder)
        args.backbone, args.cache = "micro_random", str(folder / "cache")
    elif not args.model:
        parser.error("--model RUN is required (a run folder of `adasam train`)")
    if args.cache is None:
        from model.cache import DEFAULT_CACHE_DIR

        args.cache = str(DEFAULT_CACHE_DIR)
    result = run(args)
    summary = {k: v for k, v in result.items() if k != "starts"}
    summary["summaries"] = {start: result["starts"][start]["summary"] for start in args.starts}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
