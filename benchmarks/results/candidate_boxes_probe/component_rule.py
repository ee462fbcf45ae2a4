"""Which connected component of the prompt map gives the box (one-off, twenty-third session, not shipped): the one
holding the map's peak (shipped), the one with the largest sum of map values ("mass") or the largest area, at each
CAM threshold; Dice per BUSI val and test lesion image, before gating.

    python benchmarks/results/candidate_boxes_probe/component_rule.py RUN OUT.json
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from app.model_commands import load_model  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.dataset import SPLIT_SEED, load_data_folder, load_items  # noqa: E402
from model.evaluate import batch_inputs  # noqa: E402
from model.inference import valid_grid  # noqa: E402
from model.metrics import dice  # noqa: E402
from model.preprocess import logits_to_original  # noqa: E402
torch.set_num_threads(1)
model = load_model(sys.argv[1]).eval()
cfg = model.config
folder = load_data_folder(ROOT.parent / "shared" / "datasets" / "busi", seed=SPLIT_SEED)
THRS = (0.2, 0.3, 0.4, 0.5)

def box_of(cam, thr, scale, hw, rule):
    region = cam >= thr
    if not region.any():
        return None
    labels, n = ndimage.label(region)
    if rule == "peak":
        k = labels[np.unravel_index(np.argmax(np.where(region, cam, -1)), cam.shape)]
    elif rule == "mass":
        k = int(np.argmax(ndimage.sum(cam, labels, index=np.arange(1, n + 1)))) + 1
    elif rule == "area":
        k = int(np.argmax(ndimage.sum(region, labels, index=np.arange(1, n + 1)))) + 1
    ys, xs = np.nonzero(labels == k)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32) * scale
    box[[0, 2]] = np.clip(box[[0, 2]], 0, hw[1])
    box[[1, 3]] = np.clip(box[[1, 3]], 0, hw[0])
    return box

out = {}
for split in ("val", "test"):
    samples = [s for s in folder.split(split) if s.mask_path is not None]
    inputs = model_inputs(model.backbone, cfg.encoder_lora, DEFAULT_CACHE_DIR)
    items = [i for i in load_items(samples, inputs, with_images=True) if i.mask.any()]
    rows = []
    for start in range(0, len(items), 16):
        chunk = items[start:start + 16]
        emb, geos, imgs = batch_inputs(chunk)
        with torch.no_grad():
            feats = model.features(emb)
            cams, _ = model.cam(feats, valid_grid(geos, model.grid))
            maps = model.prompt_maps(cams, imgs, geos)
        for k, (it, g) in enumerate(zip(chunk, geos)):
            row, cache = {"id": it.id}, {}
            for thr in THRS:
                for rule in ("peak", "mass", "area"):
                    b = box_of(maps[k].numpy(), thr, model.cam_scale, g.resized, rule)
                    if b is None:
                        row[f"{rule}@{thr}"] = 0.0
                        continue
                    key = tuple(np.round(b, 2))
                    if key not in cache:
                        with torch.no_grad():
                            lg, _ = model.segment(feats[k:k + 1], torch.as_tensor(b)[None])
                        cache[key] = float(dice((logits_to_original(lg[0], g)[0] > 0).numpy(), it.mask))
                    row[f"{rule}@{thr}"] = cache[key]
            rows.append(row)
    out[split] = rows
Path(sys.argv[2]).write_text(json.dumps(out))
