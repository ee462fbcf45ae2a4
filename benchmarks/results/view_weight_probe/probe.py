"""How much of the prompt map should the image view be? (one-off, thirty-second session). The shipped map is the
mean of the CAM and the view's map (view share 0.5); here every lesion image of val and test is decoded from the
map (1 - w) * CAM + w * view for w in 0, 0.25, 0.5, 0.75, 1 at every CAM threshold the calibration tries, with the
model's own box rule (peak component). Dice per image, before gating.

    python benchmarks/results/view_weight_probe/probe.py RUN OUT.json
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from app.model_commands import load_model  # noqa: E402
from model import image_view  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.cam import cam_to_box  # noqa: E402
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
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)

out = {"model_threshold": cfg.cam_threshold}
inputs = model_inputs(model.backbone, cfg.encoder_lora, DEFAULT_CACHE_DIR)
for split in sys.argv[3:] or ("val", "test"):
    samples = [s for s in folder.split(split) if s.mask_path is not None]
    items = [i for i in load_items(samples, inputs, with_images=True) if i.mask.any()]
    rows = []
    for start in range(0, len(items), 16):
        chunk = items[start:start + 16]
        emb, geos, imgs = batch_inputs(chunk)
        with torch.no_grad():
            feats = model.features(emb)
            cams, _ = model.cam(feats, valid_grid(geos, model.grid))
            seen = image_view.on_grid(image_view.probabilities(model.image_view, imgs), geos, model.grid)
        for k, (it, g) in enumerate(zip(chunk, geos)):
            row, cache = {"id": it.id}, {}
            for w in SHARES:
                prompt_map = ((1 - w) * cams[k] + w * seen[k]).numpy()
                for thr in THRS:
                    box, _ = cam_to_box(prompt_map, thr, model.cam_scale, g.resized, cfg.cam_component)
                    key = tuple(np.round(box, 2))
                    if key not in cache:
                        with torch.no_grad():
                            lg, _ = model.segment(feats[k:k + 1], torch.as_tensor(box)[None])
                        cache[key] = float(dice((logits_to_original(lg[0], g)[0] > 0).numpy(), it.mask))
                    row[f"{w}@{thr}"] = cache[key]
            rows.append(row)
        print(split, start + len(chunk), "of", len(items), flush=True)
    out[split] = rows
Path(sys.argv[2]).write_text(json.dumps(out))
