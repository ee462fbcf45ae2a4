"""Presence on val (and test, report only): the map head's P vs the view's max pixel prob vs their mean."""
import sys, json
import numpy as np, torch
from model.adasam import load_checkpoint
from model.cache import DEFAULT_CACHE_DIR, model_inputs
from model.calibrate import presence_probabilities
from model.dataset import SPLIT_SEED, load_data_folder, load_items
from model.image_view import probabilities
torch.set_num_threads(1)
from sklearn.metrics import roc_auc_score
run = sys.argv[1]
model, _ = load_checkpoint(run)
folder = load_data_folder("../shared/datasets/busi", seed=SPLIT_SEED)
cache = model_inputs(model.backbone, 0, DEFAULT_CACHE_DIR)
out = {}
for split in ("val", "test"):
    items = load_items(folder.split(split), cache, with_images=True)
    y = np.array([i.mask.any() for i in items])
    head = presence_probabilities(model, items)
    view = probabilities(model.image_view, torch.stack([i.image for i in items])).flatten(1).max(1).values.numpy()
    out[split] = {"head": roc_auc_score(y, head), "view_max": roc_auc_score(y, view),
                  "mean": roc_auc_score(y, (head + view) / 2)}
print(run, json.dumps(out))
