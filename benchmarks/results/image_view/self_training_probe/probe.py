"""Probe: self-train the image view on the model's own proposals for the unlabeled pool images.

PYTHONPATH=. python benchmarks/results/image_view/self_training_probe/probe.py RUN SEED OUTJSON [--warm] [--save FILE]
(from the repository root; the other scripts here likewise take RUN). Not the shipped code, which is
model.train.Trainer.self_train_image_view.
RUN holds an image-view model trained with `adasam train --masks 0.1 --seed SEED --image-view --tags all`.
Pseudo targets: tag False -> empty mask; tag True -> the model's raw (ungated) mask. The view is retrained
(fresh, or warm from the model's view) on masked (true) + pseudo targets, checkpoint by its own val Dice; then the
CAM threshold is re-calibrated on val, and val + test are scored. Test is for the report only.
"""
import json
import sys
import time

import numpy as np
import torch

from model.adasam import load_checkpoint  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.calibrate import calibrate  # noqa: E402
from model.dataset import SPLIT_SEED, load_data_folder, load_items, masked_ids  # noqa: E402
from model.evaluate import batch_inputs, evaluate  # noqa: E402
from model.image_view import ImageViewTraining, build_unet, fit, lesion_dice, mask_target  # noqa: E402
from model.inference import Predictor  # noqa: E402
from model.metrics import dice  # noqa: E402

torch.set_num_threads(2)
run, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
warm = "--warm" in sys.argv
iou_filter = "--filter" in sys.argv and sys.argv[sys.argv.index("--filter") + 1] == "iou"
t0 = time.time()
model, payload = load_checkpoint(run)
folder = load_data_folder("../shared/datasets/busi", seed=SPLIT_SEED)
pool, val, test = folder.split("pool"), folder.split("val"), folder.split("test")
cache = model_inputs(model.backbone, 0, DEFAULT_CACHE_DIR)
pool_items = load_items(pool, cache, with_images=True)
val_items = load_items(val, cache, with_images=True)
test_items = load_items(test, cache, with_images=True)
chosen = masked_ids(pool, 0.1, seed)
masked = [i for i in pool_items if i.id in chosen]
unlabeled = [i for i in pool_items if i.id not in chosen]
report = {"run": run, "seed": seed, "warm": warm, "iou_filter": iou_filter, "n_masked": len(masked),
          "n_unlabeled": len(unlabeled)}


def scores(tag):
    s_val = evaluate(model, val_items, with_hd95=False)[0]
    s_test = evaluate(model, test_items, with_hd95=False)[0]
    report[tag] = {"val": {k: s_val[k] for k in ("dice_lesion", "dice_lesion_ungated", "dice_all",
                                                  "prompt_box_iou_lesion")},
                   "test": {k: s_test[k] for k in ("dice_lesion", "dice_lesion_ungated", "dice_all",
                                                    "prompt_box_iou_lesion", "presence_auc")},
                   "cam_threshold": model.config.cam_threshold,
                   "view_val": lesion_dice(model.image_view, torch.stack([i.image for i in val_items
                                                                           if i.mask.any()]),
                                           [i.mask for i in val_items if i.mask.any()])}
    print(tag, json.dumps(report[tag]), flush=True)


scores("before")
predictor = Predictor(model)
pseudo, quality = [], []
with torch.no_grad():
    for start in range(0, len(unlabeled), 16):
        chunk = unlabeled[start:start + 16]
        emb, geo, img = batch_inputs(chunk)
        feats = model.features(emb)
        for item, p in zip(chunk, predictor.predict_batch(emb, geo, img)):
            if item.tag is False:
                target = np.zeros_like(p.raw_mask)
            else:
                target = p.raw_mask
                if iou_filter and (p.box_is_fallback or not target.any()):
                    continue
            pseudo.append((item, target))
            if item.tag:  # diagnostics only: the pool's true masks never train
                truth = next(s for s in pool if s.id == item.id)
                from model.preprocess import read_mask
                quality.append(dice(target, read_mask(truth.mask_path, target.shape)))
report["n_pseudo"] = len(pseudo)
report["pseudo_dice_vs_truth_lesion"] = float(np.mean(quality))
print("pseudo", len(pseudo), "mean dice vs truth", np.mean(quality), flush=True)

images = torch.stack([i.image for i in masked] + [i.image for i, _ in pseudo])
targets = torch.stack([mask_target(i.mask) for i in masked] + [mask_target(t) for _, t in pseudo])
val_l = [i for i in val_items if i.mask.any()]
val_images = torch.stack([i.image for i in val_l])
view = model.image_view
if not warm:
    view.load_state_dict(build_unet().state_dict())
view.requires_grad_(True)
cfg = ImageViewTraining() if not warm else ImageViewTraining(min_steps=0, patience=4)
t1 = time.time()
result = fit(view, images, targets, lambda: lesion_dice(view, val_images, [i.mask for i in val_l]), cfg, seed,
             log=lambda r: print(json.dumps(r), flush=True))
view.requires_grad_(False)
report["view_fit"] = {k: result[k] for k in ("best_step", "score", "stopped_at")}
report["view_seconds"] = time.time() - t1
print("view", report["view_fit"], flush=True)
report["calibration"] = calibrate(model, val_items)
scores("after")
report["seconds"] = time.time() - t0
from model import image_view as iv
from model.adasam import AdaSam
def weighted(w):
    def prompt_maps(self, cams, images, geometries):
        seen = iv.on_grid(iv.probabilities(self.image_view, images), geometries, self.grid)
        return (1 - w) * cams + w * seen.to(cams.device)
    return prompt_maps
for w in (0.5, 0.75, 1.0):
    AdaSam.prompt_maps = weighted(w)
    report[f"calibration_w{w}"] = calibrate(model, val_items)
    scores(f"after_w{w}")
json.dump(report, open(out, "w"), indent=1)
if "--save" in sys.argv:
    from model.adasam import save_checkpoint
    save_checkpoint(model, sys.argv[sys.argv.index("--save") + 1])
