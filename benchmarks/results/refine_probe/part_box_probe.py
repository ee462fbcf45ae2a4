"""+ clicks the box already holds: variants of Predictor.refine, through effort.py on val (a probe).

Run from the repository root: python benchmarks/results/refine_probe/part_box_probe.py VARIANT RUN START[,START]
VARIANT: current | points_inside | union_half | union_quarter | union_small | compose | compose_cut (see
benchmarks/README.md, seventeenth session). Written against 19cbd37: there `current` is the box edits alone; from
ecaf580 on, the shipped refine is `union_quarter`, so `current` run today gives that."""
import json, sys, argparse, pathlib
import numpy as np
import torch
sys.path.insert(0, "benchmarks")
import effort
from model.inference import Predictor, clicks_as_box, CLICK_BOX_PAD, box_to_model, logits_to_original

VARIANT, MODEL, STARTS = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
original = Predictor.refine


def decode(self, geometry, box, points=None):
    boxes = torch.from_numpy(box_to_model(box, geometry))[None]
    logits, _ = self.model.segment(self._features, boxes=boxes, points=points)
    return (logits_to_original(logits[0].cpu(), geometry)[0] > 0).numpy()


def box_mask(shape, box):
    m = np.zeros(shape, bool)
    x0, y0, x1, y1 = [int(round(v)) for v in box]
    m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = True
    return m


def inside(box, x, y):
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def refine(self, embedding, geometry, positive=(), negative=(), box=None):
    if box is None or not positive:
        return original(self, embedding, geometry, positive, negative, box)
    held = [(x, y) for x, y in positive if inside(box, x, y)]
    pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
    edited = clicks_as_box(box, positive, negative, pad)
    if embedding is not self._embedding:
        self._features = self.model.features(embedding[None])
        self._embedding = embedding
    if VARIANT.startswith("compose"):
        frac = 0.25
        main = clicks_as_box(box, positive, (), pad)
        mask = decode(self, geometry, main)
        w, h = (main[2] - main[0]) * frac, (main[3] - main[1]) * frac
        local = lambda x, y: (max(main[0], x - w), max(main[1], y - h), min(main[2], x + w), min(main[3], y + h))
        at = lambda m, x, y: m[min(int(y), m.shape[0] - 1), min(int(x), m.shape[1] - 1)]
        for x, y in held:
            if not at(mask, x, y):
                mask = mask | decode(self, geometry, local(x, y))
        for x, y in negative:
            if at(mask, x, y):
                part = decode(self, geometry, local(x, y))
                if at(part, x, y) and VARIANT == "compose":
                    mask = mask & ~part
                else:  # fall back to the edge cut
                    cut = clicks_as_box(main, (), [(x, y)], pad)
                    mask = mask & box_mask(mask.shape, cut)
        return mask
    if VARIANT == "points_inside" and held:
        coords = np.array(held, dtype=np.float32).reshape(-1, 2) * geometry.scale
        points = (torch.from_numpy(coords)[None], torch.ones(1, len(held)))
        return decode(self, geometry, edited, points)
    mask = decode(self, geometry, edited)
    if VARIANT.startswith("union"):
        frac = {"union_half": 0.5, "union_quarter": 0.25, "union_small": 0.15}[VARIANT]
        w, h = (edited[2] - edited[0]) * frac, (edited[3] - edited[1]) * frac
        for x, y in held:
            if mask[min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)]:
                continue
            local = (max(edited[0], x - w), max(edited[1], y - h), min(edited[2], x + w), min(edited[3], y + h))
            part = decode(self, geometry, local)
            mask = mask | part
    return mask


if VARIANT != "current":
    Predictor.refine = refine
args = argparse.Namespace(data="../shared/datasets/busi", model=MODEL, backbone="litemedsam",
                          cache=str(pathlib.Path.home() / ".cache/adasam/embeddings"),
                          split="val", limit=0, starts=STARTS, json=None)
result = effort.run(args)
out = {s: result["starts"][s]["summary"] for s in STARTS}
print("RESULT", VARIANT, MODEL, json.dumps(out), flush=True)
with open("benchmarks/results/refine_probe/part_box.jsonl", "a") as f:
    f.write(json.dumps({"variant": VARIANT, "model": MODEL, "summary": out,
                        "images": {s: result["starts"][s]["images"] for s in STARTS}}) + "\n")
