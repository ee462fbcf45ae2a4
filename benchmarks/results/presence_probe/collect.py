"""Presence signals of one run's model on BUSI val and test, per image: the classifier's probability, the CAM's peak,
the image view's peak, the prompt map's peak and the decoder's IoU score for the automatic prompt
(one-off, for analyse.py).

    python benchmarks/results/presence_probe/collect.py RUN OUT.json
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from app.model_commands import load_model  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.dataset import SPLIT_SEED, load_data_folder, load_items  # noqa: E402
from model.evaluate import batch_inputs  # noqa: E402
from model.inference import valid_grid  # noqa: E402
from model import image_view  # noqa: E402

torch.set_num_threads(1)
model = load_model(sys.argv[1]).eval()
folder = load_data_folder(Path(__file__).resolve().parents[4] / "shared" / "datasets" / "busi", seed=SPLIT_SEED)
out = {}
for split in ("val", "test"):
    samples = [s for s in folder.split(split) if s.mask_path is not None]
    items = load_items(samples, model_inputs(model.backbone, model.config.encoder_lora, DEFAULT_CACHE_DIR),
                       with_images=model.config.image_view)
    rows = []
    for start in range(0, len(items), 16):
        chunk = items[start:start + 16]
        emb, geos, imgs = batch_inputs(chunk)
        with torch.no_grad():
            valid = valid_grid(geos, model.grid)
            feats = model.features(emb)
            cams, logits = model.cam(feats, valid)
            view = image_view.on_grid(image_view.probabilities(model.image_view, imgs), geos, model.grid) \
                if model.image_view is not None else torch.zeros_like(cams)
            maps = model.prompt_maps(cams, imgs, geos)
            boxes, _ = model.auto_boxes(maps, [g.resized for g in geos])
            _, iou = model.segment(feats, boxes, model.auto_points(maps))
        p = logits.softmax(1)[:, 1]
        for k, it in enumerate(chunk):
            rows.append({"id": it.id, "lesion": bool(it.mask.any()), "p": float(p[k]),
                         "cam_max": float(cams[k].max()), "view_max": float(view[k].max()),
                         "map_max": float(maps[k].max()), "iou": float(iou[k].reshape(-1)[0])})
    out[split] = rows
Path(sys.argv[2]).write_text(json.dumps(out))
