"""Would the prompt map gain from the last weights too? (twenty-eighth session; one-off probe, nothing shipped.)

A model with a presence head (model.heads.PresenceHead) carries two classifiers: the val-picked checkpoint's, whose
map prompts SAM, and the run's last EMA teacher's, which answers presence only. The head's map comes out of the same
forward pass that gives its presence logit, so averaging it into the prompt would cost nothing at inference. Here
each candidate prompt map is scored on val and test lesion images at every CAM threshold calibration may choose
(model.calibrate.CAM_THRESHOLDS); the threshold is picked on val, as calibration does, and test is reported there.
Presence is unchanged by the map, so the served figures use the model's own presence threshold.

    python benchmarks/results/map_ensemble_probe/probe.py DATA RUN OUT.json
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from model import image_view  # noqa: E402
from model.adasam import load_checkpoint  # noqa: E402
from model.backbones import build_backbone  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.calibrate import CAM_THRESHOLDS  # noqa: E402
from model.cam import activation_map  # noqa: E402
from model.dataset import load_data_folder, load_items  # noqa: E402
from model.evaluate import batch_inputs  # noqa: E402
from model.inference import Predictor, valid_grid  # noqa: E402
from model.metrics import dice  # noqa: E402
from model.preprocess import logits_to_original  # noqa: E402

VARIANTS = {  # name -> weights of (picked CAM, last teacher's CAM, image view's map)
    "shipped (cam + view) / 2": (0.5, 0.0, 0.5),
    "last teacher's cam + view": (0.0, 0.5, 0.5),
    "both cams, then view: 1/4 1/4 1/2": (0.25, 0.25, 0.5),
    "all three: 1/3 each": (1 / 3, 1 / 3, 1 / 3),
}

torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
data, run, out = sys.argv[1:4]
base = build_backbone("litemedsam")
model, payload = load_checkpoint(Path(run), base)
assert model.presence is not None, "this probe needs a model with a presence head"
predictor, config = Predictor(model), model.config
folder = load_data_folder(data)
report = {"run": run, "presence_threshold": config.presence_threshold, "cam_threshold": config.cam_threshold,
          "images": {}}
for split in ("val", "test"):
    items = load_items(folder.split(split), model_inputs(base, 0, DEFAULT_CACHE_DIR), with_images=True)
    rows = []
    for start in range(0, len(items), 8):
        chunk = items[start:start + 8]
        embeddings, geometries, images = batch_inputs(chunk)
        valid = valid_grid(geometries, model.grid)
        with torch.no_grad():
            embedded = model.embed(embeddings)
            features = model.adapter(embedded)
            cam, _ = model.cam(features, valid)
            last_cam, last_logits = activation_map(model.presence.classifier, model.presence.adapter(embedded), valid)
            view = (torch.zeros_like(cam) if model.image_view is None else  # a dropped view: the cams alone
                    image_view.on_grid(image_view.probabilities(model.image_view, images), geometries, model.grid))
        probability = last_logits.softmax(1)[:, 1]
        row = [{"id": item.id,
                "lesion": bool(item.mask is not None and item.mask.any()), "p": float(probability[i]), "dice": {}}
               for i, item in enumerate(chunk)]
        for name, (a, b, c) in VARIANTS.items():
            if model.image_view is None:
                a, b, c = a / (a + b), b / (a + b), 0.0
            mixed = a * cam + b * last_cam + c * view
            for threshold in CAM_THRESHOLDS:
                config.cam_threshold = threshold
                boxes, _ = model.auto_boxes(mixed, [g.resized for g in geometries])
                logits = predictor.auto_logits(features, mixed, boxes)
                for i, item in enumerate(chunk):
                    if row[i]["lesion"]:
                        mask = (logits_to_original(logits[i], geometries[i])[0] > 0).numpy()
                        row[i]["dice"][f"{name}@{threshold}"] = dice(mask, item.mask)
        rows += row
        print(split, start + len(chunk), "/", len(items), flush=True)
    report["images"][split] = rows
config.cam_threshold = report["cam_threshold"]

gate = report["presence_threshold"]
report["table"] = {}
for name in VARIANTS:
    def lesion_dice(split, threshold, served=False):
        values = [r["dice"][f"{name}@{threshold}"] * (r["p"] >= gate if served else 1)
                  for r in report["images"][split] if r["lesion"]]
        return float(np.mean(values))
    best = max(CAM_THRESHOLDS, key=lambda t: lesion_dice("val", t))
    report["table"][name] = {"threshold": best, "val": lesion_dice("val", best), "test": lesion_dice("test", best),
                             "val_served": lesion_dice("val", best, True),
                             "test_served": lesion_dice("test", best, True),
                             "val_by_threshold": {t: lesion_dice("val", t) for t in CAM_THRESHOLDS}}
    print(f"{name:38s} t={best} val {report['table'][name]['val']:.3f} test {report['table'][name]['test']:.3f} "
          f"served val {report['table'][name]['val_served']:.3f} test {report['table'][name]['test_served']:.3f}")
Path(out).write_text(json.dumps(report, indent=1))
