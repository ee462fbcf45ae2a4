"""Click rules for a box-trained decoder (LiteMedSAM), each patched into the model.inference of commit 8fa8404 and run
through benchmarks/effort.py (twenty-ninth session; one-off probe). VARIANT names its parts (see val_summary.json):
"negcut" a - click beyond the box cuts the mask at the click, with "keep" unless that removes a + click, with "comp"
removing only the piece of the mask beyond the box that the click lies on; "least" a - click inside the box moves
the edge that removes least of the widened box's mask. "negcut_comp_least" is what f97a0b5 shipped.

    git worktree add /tmp/base 8fa8404
    cd /tmp/base && VARIANT=negcut_comp_least PROBE_ROOT=/tmp/base python PATH/TO/cut_probe.py \
        --data DATA --model RUN --split val --starts proposal --json OUT
"""
import os, sys
from pathlib import Path
import numpy as np
ROOT = Path(os.environ["PROBE_ROOT"])
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference
from model.inference import CLICK_BOX_PAD

VARIANT = os.environ.get("VARIANT", "negcut")

def cut_component(mask, box, x, y, positive):
    from scipy import ndimage
    x0, y0, x1, y1 = box
    outside = mask.copy()
    rows = slice(max(0, int(np.floor(y0))), max(0, int(np.ceil(y1))))
    outside[rows, max(0, int(np.floor(x0))):max(0, int(np.ceil(x1)))] = False
    labels, _ = ndimage.label(outside)
    k = labels[min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)]
    if k == 0:
        return mask
    part = labels == k
    if any(part[min(int(py), mask.shape[0] - 1), min(int(px), mask.shape[1] - 1)] for px, py in positive):
        return mask
    return mask & ~part

def cut_beyond(mask, box, x, y, positive=()):
    before = mask.copy()
    x0, y0, x1, y1 = box
    h, w = mask.shape
    c, r = int(x), int(y)
    if x <= x0: mask[:, :c + 1] = False
    if x >= x1: mask[:, c:] = False
    if y <= y0: mask[:r + 1, :] = False
    if y >= y1: mask[r:, :] = False
    at = [(min(int(py), h - 1), min(int(px), w - 1)) for px, py in positive]
    if "keep" in VARIANT and any(before[p] and not mask[p] for p in at):
        return before
    return mask

def least_box(self, geometry, box, positive, negative, pad):
    edges = list(inference.clicks_as_box(box, positive, (), pad))
    inside = [(x, y) for x, y in negative if edges[0] < x < edges[2] and edges[1] < y < edges[3]]
    if not inside:
        return inference.clicks_as_box(box, positive, negative, pad)
    before = self._decode(geometry, tuple(edges))
    ys, xs = np.nonzero(before)
    for x, y in negative:
        x0, y0, x1, y1 = edges
        if not (x0 < x < x1 and y0 < y < y1):
            continue
        removed = [(xs <= x).sum(), (ys <= y).sum(), (xs >= x).sum(), (ys >= y).sum()]
        k = int(np.argmin(removed))
        edges[k] = (x + 1, y + 1, x - 1, y - 1)[k]
        keep = [xs > x, ys > y, xs < x, ys < y][k]
        xs, ys = xs[keep], ys[keep]
    x0, y0, x1, y1 = edges
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)

def edited_box(self, geometry, box, positive=(), negative=()):
    if box is None or not self.model.backbone.box_prompts or not (positive or negative):
        return box
    pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
    if "least" in VARIANT:
        key = (id(self._features), tuple(box), tuple(map(tuple, positive)), tuple(map(tuple, negative)))
        if getattr(self, "_least_key", None) != key:
            self._least_key, self._least_val = key, least_box(self, geometry, box, positive, negative, pad)
        return self._least_val
    return inference.clicks_as_box(box, positive, negative, pad)
inference.Predictor.edited_box = edited_box

orig_refine = inference.Predictor.refine
def refine(self, embedding, geometry, positive=(), negative=(), box=None):
    mask = orig_refine(self, embedding, geometry, positive=positive, negative=negative, box=box)
    if box is not None and self.model.backbone.box_prompts and (positive or negative) and "negcut" in VARIANT:
        edited = self.edited_box(geometry, box, positive, negative)
        for x, y in negative:
            if not (edited[0] < x < edited[2] and edited[1] < y < edited[3]):
                mask = (cut_component(mask, edited, x, y, positive) if "comp" in VARIANT
                        else cut_beyond(mask, edited, x, y, positive))
    return mask
inference.Predictor.refine = refine
sys.exit(effort.main())
