"""One image-view model's automatic prompt with other maps: the average it ships with ("fused"), the view's map
under flip test-time augmentation ("flip_tta"), and the CAM alone ("cam_only", what Trainer.check_image_view now
compares). Each arm's CAM threshold is chosen on val; test is printed for the record only.

    PYTHONPATH=. python benchmarks/results/image_view/self_training_probe/prompt_maps.py RUN   # from the repo root
"""
import json
import sys

import torch

from model import image_view as iv
from model.adasam import AdaSam, load_checkpoint
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


def flip_tta(self, cams, images, geometries):
    p = (iv.probabilities(self.image_view, images) + iv.probabilities(self.image_view, images.flip(-1)).flip(-1)) / 2
    return (cams + iv.on_grid(p, geometries, self.grid).to(cams.device)) / 2


arms = {"fused": AdaSam.prompt_maps, "flip_tta": flip_tta, "cam_only": lambda self, cams, images, geometries: cams}
for name, prompt_maps in arms.items():
    AdaSam.prompt_maps = prompt_maps
    calibrate(model, val)
    v = evaluate(model, val, with_hd95=False)[0]
    t = evaluate(model, test, with_hd95=False)[0]
    print(run, name, json.dumps({"thr": model.config.cam_threshold, "val_ungated": v["dice_lesion_ungated"],
                                 "val": v["dice_lesion"], "test": t["dice_lesion"],
                                 "test_ungated": t["dice_lesion_ungated"]}), flush=True)
