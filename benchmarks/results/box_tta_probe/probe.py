"""Probe (issue 10): is the automatic box systematically tight or loose, and does averaging the decoder over a few
scaled copies of it (test-time box jitter; MedSAM was trained with jittered boxes) lift the proposal?

PYTHONPATH=. python benchmarks/results/box_tta_probe/probe.py RUN [RUN ...] > rows.jsonl
Lesion images of val (chooses) and test (reported only); Dice of the ungated mask against the truth, per variant.
"""
import json
import sys

import numpy as np
import torch

from model.adasam import load_checkpoint
from model.cache import DEFAULT_CACHE_DIR, model_inputs
from model.dataset import SPLIT_SEED, load_data_folder, load_items
from model.evaluate import batch_inputs
from model.inference import Predictor
from model.metrics import dice
from model.preprocess import logits_to_original

torch.set_num_threads(1)
SCALES = {"s0.8": [0.8], "s0.9": [0.9], "base": [1.0], "s1.1": [1.1], "s1.2": [1.2], "s1.3": [1.3],
          "tta3": [0.9, 1.0, 1.1], "tta5": [0.8, 0.9, 1.0, 1.1, 1.2], "tta_up": [1.0, 1.1, 1.2]}


def scaled(boxes: torch.Tensor, s: float, hw: list) -> torch.Tensor:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) / 2 * s
    out = torch.cat([centre - half, centre + half], 1)
    limits = torch.tensor([[w, h, w, h] for h, w in hw], dtype=out.dtype)
    return torch.minimum(out.clamp(min=0), limits)


folder = load_data_folder("../shared/datasets/busi", seed=SPLIT_SEED)
for run in sys.argv[1:]:
    model, _ = load_checkpoint(run)
    cache = model_inputs(model.backbone, 0, DEFAULT_CACHE_DIR)
    predictor = Predictor(model)
    for split in ("val", "test"):
        items = [i for i in load_items(folder.split(split), cache, with_images=True) if i.mask.any()]
        scores = {k: [] for k in SCALES}
        for start in range(0, len(items), 8):
            chunk = items[start:start + 8]
            embeddings, geometries, images = batch_inputs(chunk)
            features, _, _, boxes, _ = predictor.automatic_prompt(embeddings, geometries, images)
            hw = [g.resized for g in geometries]
            logits = {}
            with torch.no_grad():
                for s in sorted({s for v in SCALES.values() for s in v}):
                    logits[s], _ = model.segment(features, scaled(boxes, s, hw))
            for name, ss in SCALES.items():
                mean = torch.stack([logits[s] for s in ss]).mean(0)  # averaged logits
                for item, lg, g in zip(chunk, mean, geometries):
                    scores[name].append(dice((logits_to_original(lg, g)[0] > 0).numpy(), item.mask))
        print(json.dumps({"run": run.rstrip("/").split("/")[-1], "split": split, "n": len(items),
                          **{k: round(float(np.mean(v)), 4) for k, v in scores.items()}}), flush=True)
