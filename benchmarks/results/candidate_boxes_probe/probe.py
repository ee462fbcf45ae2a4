"""Candidate prompt boxes for each BUSI val and test lesion image (twenty-third session, one-off, not shipped): the
averaged map's box (what ships), the image view's map alone, the CAM alone, and the averaged map's second-strongest
component; each decoded, with its Dice and the decoder's IoU score. `analyse.py` compares picks.

    python benchmarks/results/candidate_boxes_probe/probe.py RUN OUT.json
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
from model.cam import cam_to_box  # noqa: E402
from model.metrics import dice  # noqa: E402
from model.preprocess import logits_to_original  # noqa: E402
from model import image_view  # noqa: E402
torch.set_num_threads(1)
run = sys.argv[1]
model = load_model(run).eval()
cfg = model.config
folder = load_data_folder(ROOT.parent / "shared" / "datasets" / "busi", seed=SPLIT_SEED)

def second_box(cam, thr, scale, hw):
    region = cam >= thr
    labels, n = ndimage.label(region)
    if n < 2:
        return None
    peak = np.unravel_index(np.argmax(np.where(region, cam, -1)), cam.shape)
    best = [(cam[labels == k].max(), k) for k in range(1, n + 1) if k != labels[peak]]
    k = max(best)[1]
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
            valid = valid_grid(geos, model.grid)
            feats = model.features(emb)
            cams, logits = model.cam(feats, valid)
            view = image_view.on_grid(image_view.probabilities(model.image_view, imgs), geos, model.grid)
            avg = (cams + view) / 2
        for k, (it, g) in enumerate(zip(chunk, geos)):
            hw = g.resized
            cands = {}
            for name, m in (("avg", avg[k]), ("view", view[k]), ("cam", cams[k])):
                b, _ = cam_to_box(m.numpy(), cfg.cam_threshold, model.cam_scale, hw, cfg.cam_component)
                cands[name] = b
            sb = second_box(avg[k].numpy(), cfg.cam_threshold, model.cam_scale, hw)
            if sb is not None:
                cands["avg2"] = sb
            names = list(cands)
            boxes = torch.as_tensor(np.stack([cands[n] for n in names]))
            with torch.no_grad():
                lg, iou = model.segment(feats[k:k + 1].expand(len(names), -1, -1, -1), boxes)
            row = {"id": it.id}
            for j, n in enumerate(names):
                mask = (logits_to_original(lg[j], g)[0] > 0).numpy()
                row[n] = {"dice": float(dice(mask, it.mask)), "iou": float(iou[j].reshape(-1)[0]),
                          "area": float(mask.mean())}
            rows.append(row)
    out[split] = rows
Path(sys.argv[2]).write_text(json.dumps(out))
