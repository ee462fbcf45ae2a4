"""One-off probe (kept for reproducibility, not part of the tool; run from the repository root as
`PYTHONPATH=. python THIS_FILE FRACTION SEED [ADASAM_RUN]`): would an image-space map, trained with augmentation,
prompt SAM better than the map head on the frozen embedding, and does it improve with the masks where the map head
does not?

Reads the shipped ADA-SAM run of the same fraction and seed (benchmarks/results/label_efficiency_adasam/runs/...),
trains MONAI's U-Net at 128 px on the same masks (benchmarks/unet_baseline.py, val-picked), and scores on val and
on up to 120 pool lesion images whose masks neither model saw (never test), lesion Dice before presence gating:
  adasam   the shipped proposal (map-head box -> adapter + decoder)
  unet     the U-Net's own mask (> 0.5)
  unet_box the box around the U-Net's largest component -> the same adapter + decoder
  unet_box_pre  the same box -> SAM's pretrained decoder (no ADA-SAM at all: the cost is the U-Net's training)
  fused    mean of the ADA-SAM map and the U-Net probability on the embedding grid -> ADA-SAM's box rule -> decoder
Test is scored too, for the report only (every arm; nothing is chosen by it); gated figures use each arm's presence
(ADA-SAM's classifier, or the U-Net's peak probability >= 0.5 for the arms without ADA-SAM).
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from benchmarks.unet_baseline import UNetConfig, build_unet, train_unet
from model.adasam import AdaSamConfig, build_adasam, load_checkpoint
from model.cache import model_inputs
from model.dataset import load_data_folder, load_items, masked_ids
from model.inference import Predictor, valid_grid
from model.metrics import dice, summarise
from model.preprocess import box_to_original, normalise_intensity, read_image

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared" / "datasets" / "busi"
SCRATCH = Path(tempfile.gettempdir()) / "unet_prompt_probe"
fraction, seed = float(sys.argv[1]), int(sys.argv[2])
tag = f"{fraction:g}"
run = Path(sys.argv[3]) if len(sys.argv) > 3 else (  # an ADA-SAM run folder, or the label-efficiency line's
    ROOT / "benchmarks/results/label_efficiency_adasam/runs" / f"ada_sam_tags_all_{tag}_seed{seed}")
config = UNetConfig(size=128)
started = time.time()
unet_dir = SCRATCH / f"unet_{tag}_seed{seed}"
unet_result = train_unet(str(DATA), fraction, seed, unet_dir, config)
unet = build_unet(config)
unet.load_state_dict(torch.load(unet_dir / "unet.pt"))
unet.eval()
unet_seconds = time.time() - started

if (run / "model.pt").exists():
    model, _ = load_checkpoint(run / "model.pt")
    ARMS = ["adasam", "unet", "unet_box", "unet_box_pre", "fused"]
else:  # no ADA-SAM run of this fraction and seed: the arms that need none
    model = build_adasam(AdaSamConfig())
    ARMS = ["unet", "unet_box_pre"]
model.eval()
predictor = Predictor(model)
folder = load_data_folder(str(DATA))
pool, val = folder.split("pool"), folder.split("val")
chosen = masked_ids(pool, fraction, seed)
held = [s for s in pool if s.id not in chosen and s.mask_path and s.has_lesion is not False][:120]
cache = model_inputs(model.backbone, 0)


@torch.no_grad()
def unet_probability(sample) -> np.ndarray:
    image = read_image(sample.image_path)
    grey = torch.from_numpy(normalise_intensity(image)[:1])[None]
    small = F.interpolate(grey, size=(config.size, config.size), mode="bilinear", align_corners=False, antialias=True)
    prob = torch.sigmoid(unet(small))
    return F.interpolate(prob, size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()


def on_grid(prob: np.ndarray, geometry, grid: int) -> torch.Tensor:
    """An original-size map -> the embedding grid (resized as the image was, padded bottom/right)."""
    h, w = geometry.resized
    resized = F.interpolate(torch.from_numpy(prob)[None, None], size=(h, w), mode="bilinear", align_corners=False)
    padded = F.pad(resized, (0, geometry.size - w, 0, geometry.size - h))
    return F.adaptive_avg_pool2d(padded, grid)[0, 0]


def unet_box(prob: np.ndarray) -> np.ndarray:
    """The U-Net's prompt: the box around its largest component above 0.5; where nothing passes 0.5, the component
    holding its peak above half the peak (so an image always gets a box, as the CAM's fallback does)."""
    mask = prob > 0.5
    if not mask.any():
        labels, _ = ndimage.label(prob >= prob.max() / 2)
        mask = labels == labels[np.unravel_index(np.argmax(prob), prob.shape)]
    labels, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    ys, xs = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


pretrained = Predictor(build_adasam(AdaSamConfig()))  # own backbone, identity adapter: SAM's own decoder


@torch.no_grad()
def score(samples) -> dict:
    """Per arm: lesion Dice before gating (what val and the held-out pool are read by), and, gated, every figure."""
    items = load_items(samples, cache)
    rows = {a: [] for a in ARMS}
    for sample, item in zip(samples, items):
        if item.mask is None:
            continue
        truth, g = item.mask, item.geometry
        prob = unet_probability(sample)
        box = tuple(unet_box(prob))
        masks = {"unet": prob > 0.5, "unet_box_pre": pretrained.refine(item.embedding, g, box=box)}
        presence = {"unet": float(prob.max()), "unet_box_pre": float(prob.max())}
        if "adasam" in ARMS:
            shipped = predictor.predict(item.embedding, g)
            features = model.features(item.embedding[None])
            cams, _ = model.cam(features, valid_grid([g], model.grid))
            fused_map = (cams[0] + on_grid(prob, g, model.grid)) / 2
            boxes, _ = model.auto_boxes(fused_map[None], [g.resized])
            masks.update({"adasam": shipped.raw_mask, "unet_box": predictor.refine(item.embedding, g, box=box),
                          "fused": predictor.refine(item.embedding, g,
                                                    box=tuple(box_to_original(boxes[0].numpy(), g)))})
            presence.update({a: shipped.probability for a in ("adasam", "unet_box", "fused")})
        gate = {a: (presence[a] >= (0.5 if a in ("unet", "unet_box_pre") else model.config.presence_threshold))
                for a in ARMS}
        for a in ARMS:
            raw = masks[a]
            rows[a].append({"id": item.id, "lesion": bool(truth.any()), "probability": presence[a],
                            "dice": dice(raw if gate[a] else np.zeros_like(raw), truth),
                            "dice_ungated": dice(raw, truth), "hd95": float("nan")})
    out = {}
    for a in ARMS:
        summary = summarise(rows[a])
        lesion = [r for r in rows[a] if r["lesion"]]
        out[a] = {"ungated": summary["dice_lesion_ungated"], "gated": summary["dice_lesion"],
                  "dice_all": summary["dice_all"], "auc": summary["presence_auc"],
                  "miss": float(np.mean([r["dice_ungated"] < 0.3 for r in lesion])), "rows": rows[a]}
    return out


splits = {"val": val, "held_pool": held, "test": [s for s in folder.split("test") if s.mask_path]}
result = {"fraction": fraction, "seed": seed, "unet_val_best": max(r["score"] for r in unet_result["val_history"]),
          "unet_best_step": unet_result["best_step"], "unet_seconds": unet_seconds,
          **{name: score(samples) for name, samples in splits.items() if samples}}
brief = {k: ({a: {m: round(x, 3) for m, x in v[a].items() if m != "rows"} for a in ARMS}
             if isinstance(v, dict) else v) for k, v in result.items()}
print(json.dumps(brief))
with open(Path(__file__).with_name("results.jsonl"), "a") as f:
    f.write(json.dumps(result) + "\n")
