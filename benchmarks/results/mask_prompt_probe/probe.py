"""The prompt map as SAM's dense mask prompt, with the box or alone (one-off, thirty-second session): lesion Dice of
a run's proposals on a split, the map (bilinear to the prompt encoder's mask input size) given as logits
(2p - 1) * a. Result on val, seed-0 10% model: `seed0_val.txt`.

    python benchmarks/results/mask_prompt_probe/probe.py RUN val
"""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from app.model_commands import load_model  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.cam import cam_to_box  # noqa: E402
from model.dataset import SPLIT_SEED, load_data_folder, load_items  # noqa: E402
from model.decoder import decode  # noqa: E402
from model.evaluate import batch_inputs  # noqa: E402
from model.inference import valid_grid  # noqa: E402
from model.metrics import dice  # noqa: E402
from model.preprocess import logits_to_original  # noqa: E402

torch.set_num_threads(1)
model = load_model(sys.argv[1]).eval()
cfg = model.config
folder = load_data_folder(ROOT.parent / "shared" / "datasets" / "busi", seed=SPLIT_SEED)
size = tuple(model.backbone.prompt_encoder.mask_input_size)
samples = [s for s in folder.split(sys.argv[2]) if s.mask_path is not None]
inputs = model_inputs(model.backbone, 0, DEFAULT_CACHE_DIR)
items = [i for i in load_items(samples, inputs, with_images=True) if i.mask.any()]
res: dict[str, list[float]] = {}
for start in range(0, len(items), 16):
    chunk = items[start:start + 16]
    emb, geos, imgs = batch_inputs(chunk)
    with torch.no_grad():
        feats = model.features(emb)
        cams, _ = model.cam(feats, valid_grid(geos, model.grid))
        maps = model.prompt_maps(cams, imgs, geos)
        boxes = torch.as_tensor(np.stack([
            cam_to_box(m.numpy(), cfg.cam_threshold, model.cam_scale, g.resized, cfg.cam_component)[0]
            for m, g in zip(maps, geos)]))
        up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
        for name, a in [("box", None), ("a2", 2), ("a5", 5), ("a10", 10), ("a20", 20)]:
            dense = None if a is None else (up * 2 - 1) * a
            for tag, prompt_boxes in [("", boxes), ("nobox", None)]:
                if dense is None and prompt_boxes is None:
                    continue
                logits, _ = decode(model.backbone.mask_decoder, model.backbone.prompt_encoder, feats,
                                   boxes=prompt_boxes, mask_inputs=dense)
                for it, lg, g in zip(chunk, logits, geos):
                    res.setdefault(name + tag, []).append(dice((logits_to_original(lg, g)[0] > 0).numpy(), it.mask))
print({k: round(float(np.mean(v)), 4) for k, v in res.items()})
