"""Refine variants on val through effort.py's simulated annotator (a probe, by monkeypatching Studio.refine).

Run from the repository root: python benchmarks/results/refine_probe/probe.py VARIANT RUN START[,START]
VARIANT: current | move | boxonly | move_boxonly | boxedit (see benchmarks/README.md, sixteenth session).
Written against commit 7503fc4, before `boxonly` became the app's refine (model.inference.clicks_as_box): it
imports app.studio.CLICK_BOX_MARGIN, which that change removed; check out 7503fc4 to run it again."""
import json
import sys
import numpy as np
sys.path.insert(0, "benchmarks")
import effort
from app.studio import Studio, CLICK_BOX_MARGIN, _points, _box, mask_box, png_data_url

VARIANT = sys.argv[1]
MODEL = sys.argv[2]
STARTS = sys.argv[3].split(",")


def refine(self, annotator, view, positive, negative, box=None):
    handout = self._handout(annotator, view)
    height, width = handout.shape
    positive, negative = _points(positive, width, height), _points(negative, width, height)
    pad = CLICK_BOX_MARGIN * max(width, height)
    if box is None:
        shown_box = mask_box(handout.mask())
        box = list(handout.box) if shown_box is None else [float(v) for v in shown_box]
        inside = [box and box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in positive]
        if box and positive and "move" in VARIANT and not any(inside):
            # no positive click in the proposal's box: the proposal is elsewhere; a box of its size at the clicks
            half_w, half_h = (box[2] - box[0]) / 2, (box[3] - box[1]) / 2
            xs, ys = [x for x, _ in positive], [y for _, y in positive]
            box = [min(xs) - half_w, min(ys) - half_h, max(xs) + half_w, max(ys) + half_h]
        elif box and positive:
            box = [min([box[0]] + [x - pad for x, _ in positive]), min([box[1]] + [y - pad for _, y in positive]),
                   max([box[2]] + [x + pad for x, _ in positive]), max([box[3]] + [y + pad for _, y in positive])]
    else:
        box = list(box)
        if ("boxonly" in VARIANT or "boxedit" in VARIANT) and positive:
            box = [min([box[0]] + [x - pad for x, _ in positive]), min([box[1]] + [y - pad for _, y in positive]),
                   max([box[2]] + [x + pad for x, _ in positive]), max([box[3]] + [y + pad for _, y in positive])]
    if ("boxonly" in VARIANT or "boxedit" in VARIANT) and box:
        for x, y in negative:  # a negative click inside the box: the nearest edge moves past it
            if box[0] < x < box[2] and box[1] < y < box[3]:
                d = [x - box[0], y - box[1], box[2] - x, box[3] - y]
                k = int(np.argmin(d))
                box[k] = [x + 1, y + 1, x - 1, y - 1][k]
    if "boxonly" in VARIANT:
        sent_pos, sent_neg = [], []
    else:
        sent_pos, sent_neg = positive, negative
    box = _box(box or [0, 0, width, height], width, height)
    embedding, geometry = self.slot.embedding(handout.image_id)
    with self.slot.lock:
        mask = self.slot.predictor.refine(embedding, geometry, positive=sent_pos, negative=sent_neg, box=box)
    return {"image_id": handout.image_id, "mask": png_data_url((mask * 255).astype(np.uint8)),
            "pixels": int(mask.sum())}


if VARIANT != "current":
    Studio.refine = refine
import argparse
args = argparse.Namespace(data="../shared/datasets/busi", model=MODEL, backbone="litemedsam",
                          cache=str(__import__("pathlib").Path.home() / ".cache/adasam/embeddings"),
                          split="val", limit=0, starts=STARTS, json=None)
result = effort.run(args)
out = {s: result["starts"][s]["summary"] for s in STARTS}
print("RESULT", VARIANT, MODEL, json.dumps(out), flush=True)
with open("benchmarks/results/refine_probe/results.jsonl", "a") as f:
    images = {s: result["starts"][s]["images"] for s in STARTS}
    f.write(json.dumps({"variant": VARIANT, "model": MODEL, "summary": out, "images": images}) + "\n")
