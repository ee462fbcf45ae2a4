"""Flip test-time augmentation of the view's map: val (choice) and test (report only)."""
import sys, json
import torch
from model.adasam import load_checkpoint, AdaSam
from model import image_view as iv
from model.cache import DEFAULT_CACHE_DIR, model_inputs
from model.calibrate import calibrate
from model.dataset import SPLIT_SEED, load_data_folder, load_items
from model.evaluate import evaluate
torch.set_num_threads(1)
run = sys.argv[1]
model, _ = load_checkpoint(run)
folder = load_data_folder("../shared/datasets/busi", seed=SPLIT_SEED)
cache = model_inputs(model.backbone, 0, DEFAULT_CACHE_DIR)
val = load_items(folder.split("val"), cache, with_images=True)
test = load_items(folder.split("test"), cache, with_images=True)
orig = AdaSam.prompt_maps
def tta(self, cams, images, geometries):
    p = (iv.probabilities(self.image_view, images) + iv.probabilities(self.image_view, images.flip(-1)).flip(-1)) / 2
    return (cams + iv.on_grid(p, geometries, self.grid).to(cams.device)) / 2
for name, fn in (("plain", orig), ("flip_tta", tta)):
    AdaSam.prompt_maps = fn
    cal = calibrate(model, val)
    v = evaluate(model, val, with_hd95=False)[0]
    t = evaluate(model, test, with_hd95=False)[0]
    print(run, name, json.dumps({"thr": model.config.cam_threshold, "val_ungated": v["dice_lesion_ungated"],
                                 "val": v["dice_lesion"], "test": t["dice_lesion"],
                                 "test_ungated": t["dice_lesion_ungated"]}), flush=True)
