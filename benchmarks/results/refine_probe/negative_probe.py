"""- clicks the refined mask still covers: variants on top of the shipped refine (val, effort.py; a probe).

Run from the repository root: python benchmarks/results/refine_probe/negative_probe.py VARIANT RUN START[,START]
VARIANT: neg_subtract (remove the part box's mask under the click) | neg_erase (remove the mask's connected piece
under the click within the part box). Against ecaf580 (the part box for + clicks shipped)."""
import sys, argparse, pathlib, json
import numpy as np
sys.path.insert(0, "benchmarks")
import effort
from model.inference import Predictor, clicks_as_box, CLICK_BOX_PAD, CLICK_PART_SHARE
VARIANT, MODEL, STARTS = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
orig = Predictor.refine


def refine(self, embedding, geometry, positive=(), negative=(), box=None):
    mask = orig(self, embedding, geometry, positive, negative, box)
    if box is None or not negative:
        return mask
    edited = clicks_as_box(box, positive, negative, CLICK_BOX_PAD * max(geometry.height, geometry.width))
    w, h = CLICK_PART_SHARE * (edited[2] - edited[0]), CLICK_PART_SHARE * (edited[3] - edited[1])
    for x, y in negative:
        at = lambda m: m[min(int(y), m.shape[0] - 1), min(int(x), m.shape[1] - 1)]
        if not at(mask):
            continue
        part = self._decode(geometry, (x - w, y - h, x + w, y + h))
        if VARIANT == "neg_subtract" and at(part):
            mask = mask & ~part
        elif VARIANT == "neg_erase":  # the connected piece of the mask under the click, inside the part box
            from scipy import ndimage
            box_m = np.zeros_like(mask)
            box_m[max(0, int(y - h)):int(y + h) + 1, max(0, int(x - w)):int(x + w) + 1] = True
            labels, _ = ndimage.label(mask & box_m)
            mask = mask & ~(labels == labels[min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)])
    return mask


Predictor.refine = refine
args = argparse.Namespace(data="../shared/datasets/busi", model=MODEL, backbone="litemedsam",
                          cache=str(pathlib.Path.home() / ".cache/adasam/embeddings"),
                          split="val", limit=0, starts=STARTS, json=None)
result = effort.run(args)
out = {s: result["starts"][s]["summary"] for s in STARTS}
print("RESULT", VARIANT, MODEL, json.dumps(out), flush=True)
with open("benchmarks/results/refine_probe/negative.jsonl", "a") as f:
    f.write(json.dumps({"variant": VARIANT, "model": MODEL, "summary": out,
                        "images": {s: result["starts"][s]["images"] for s in STARTS}}) + "\n")
