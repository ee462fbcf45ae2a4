"""Can a score the model computes without the truth pick, per image, a better prompt box than the shipped one?
(one-off, thirty-second session). Candidates: the connected components (top 3 by map mass) of the averaged map, the
CAM and the view's map at thresholds 0.2-0.5, de-duplicated; each decoded, with the features a rule could read and
its Dice. Splits: val, test, and the pool's lesion images whose masks the run did not train on ("heldout").

    python benchmarks/results/view_weight_probe/candidates.py RUN SEED OUT.json
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from app.model_commands import load_model  # noqa: E402
from model import image_view  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.dataset import SPLIT_SEED, load_data_folder, load_items, masked_ids  # noqa: E402
from model.evaluate import batch_inputs  # noqa: E402
from model.inference import valid_grid  # noqa: E402
from model.metrics import box_iou, dice  # noqa: E402
from model.preprocess import logits_to_original  # noqa: E402

torch.set_num_threads(1)
model = load_model(sys.argv[1]).eval()
cfg = model.config
folder = load_data_folder(ROOT.parent / "shared" / "datasets" / "busi", seed=SPLIT_SEED)
THRS = (0.2, 0.3, 0.4, 0.5)


def components(m, source, hw):
    out = []
    for thr in THRS:
        region = m >= thr
        if not region.any():
            continue
        labels, n = ndimage.label(region)
        idx = np.arange(1, n + 1)
        mass = ndimage.sum(m, labels, idx)
        peak_label = labels[np.unravel_index(np.argmax(np.where(region, m, -1)), m.shape)]
        for rank, k in enumerate(np.argsort(-mass)[:3]):
            ys, xs = np.nonzero(labels == k + 1)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32) * model.cam_scale
            box[[0, 2]] = np.clip(box[[0, 2]], 0, hw[1])
            box[[1, 3]] = np.clip(box[[1, 3]], 0, hw[0])
            out.append({"source": source, "thr": thr, "mass_rank": rank, "holds_peak": bool(k + 1 == peak_label),
                        "comp_mass": float(mass[k]), "comp_area": int(len(xs)), "comp_peak": float(m[ys, xs].max()),
                        "box": box})
    return out


out = {"threshold": cfg.cam_threshold}
masked = masked_ids(folder.split("pool"), 0.1, int(sys.argv[2]))
inputs = model_inputs(model.backbone, cfg.encoder_lora, DEFAULT_CACHE_DIR)
for split in ("val", "test", "heldout"):
    samples = folder.split("pool" if split == "heldout" else split)
    samples = [s for s in samples if s.mask_path is not None and s.id not in masked]
    items = [i for i in load_items(samples, inputs, with_images=True) if i.mask.any()]
    rows = []
    for start in range(0, len(items), 16):
        chunk = items[start:start + 16]
        emb, geos, imgs = batch_inputs(chunk)
        with torch.no_grad():
            feats = model.features(emb)
            cams, _ = model.cam(feats, valid_grid(geos, model.grid))
            seen = image_view.on_grid(image_view.probabilities(model.image_view, imgs), geos, model.grid)
        avg = (cams + seen) / 2
        for k, (it, g) in enumerate(zip(chunk, geos)):
            maps = {"avg": avg[k].numpy(), "cam": cams[k].numpy(), "view": seen[k].numpy()}
            cands = []
            for source, m in maps.items():
                for c in components(m, source, g.resized):
                    same = [d for d in cands if box_iou(c["box"], d["box"]) >= 0.9]
                    if same:  # one decode for near-equal boxes; the rules that produce it are kept
                        same[0]["aliases"].append([source, c["thr"], c["holds_peak"]])
                    else:
                        cands.append({**c, "aliases": [[source, c["thr"], c["holds_peak"]]]})
            if not cands:
                rows.append({"id": it.id, "cands": []})
                continue
            boxes = torch.as_tensor(np.stack([c["box"] for c in cands]))
            with torch.no_grad():
                logits, ious = model.segment(feats[k:k + 1].expand(len(cands), -1, -1, -1), boxes)
            valid = torch.zeros(logits.shape[-2:])
            h, w = g.resized
            scale = logits.shape[-1] / g.size
            valid[:round(h * scale), :round(w * scale)] = 1
            for c, lg, iou in zip(cands, logits[:, 0], ious.reshape(-1)):
                mask = (lg > 0).float()
                grid_mask = F.adaptive_avg_pool2d(mask[None, None], model.grid)[0, 0].numpy()
                area = float(mask.sum() / valid.sum())
                hi, lo = (lg > 1).float().sum(), (lg > -1).float().sum()
                c.update({"box": [float(v) for v in c["box"]], "dec_iou": float(iou), "area": area,
                          "stability": float(hi / lo) if lo > 0 else 0.0,
                          "dice": float(dice((logits_to_original(lg[None], g)[0] > 0).numpy(), it.mask))})
                for name, m in maps.items():
                    inside = float((m * grid_mask).sum())
                    c[f"{name}_in_mask"] = inside / max(float(grid_mask.sum()), 1e-6)
                    c[f"{name}_captured"] = inside / max(float(m.sum()), 1e-6)
            rows.append({"id": it.id, "cands": cands})
        print(split, start + len(chunk), "of", len(items), flush=True)
    out[split] = rows
Path(sys.argv[3]).write_text(json.dumps(out))
