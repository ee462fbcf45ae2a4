"""Variant (thirty-first session; one-off probe, val only): an earlier - click that a + click's widening took back
inside the box (it lies inside the widened box but not inside the box given) no longer moves an edge again; the box
stays widened and the mask loses its part nearer such - clicks than the + clicks. python rewiden_probe.py (effort.py's
arguments)"""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort  # noqa: E402
from model import inference  # noqa: E402
from model.inference import CLICK_BOX_PAD, CLICK_PART_SHARES, clicks_as_box, cut_outside, near_box, part_box  # noqa


def holds(box, point):
    x0, y0, x1, y1 = (float(v) for v in box)
    return x0 < point[0] < x1 and y0 < point[1] < y1


def nearer_cut(mask, negative, positive):
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return mask

    def nearest(points):
        return np.min([(xs + 0.5 - x) ** 2 + (ys + 0.5 - y) ** 2 for x, y in points], axis=0)

    cut = nearest(negative) < nearest(positive)
    mask = mask.copy()
    mask[ys[cut], xs[cut]] = False
    return mask


@torch.no_grad()
def redraw(self, embedding, geometry, positive=(), negative=(), box=None):
    if not positive and not negative and box is None:
        raise ValueError("refine needs at least one click or a box")
    if embedding is not self._embedding:
        self._features = self.model.features(embedding[None])
        self._embedding, self._decoded = embedding, {}
    pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
    if self.model.backbone.box_prompts and positive and not near_box(box, positive):
        box = self.start_box(geometry, positive)
    if not (box is not None and self.model.backbone.box_prompts and (positive or negative)):
        return self._decode(geometry, box, positive, negative), box
    widened = clicks_as_box(box, positive, (), pad)
    retaken = [n for n in negative if holds(widened, n) and not holds(box, n)]
    rest = [n for n in negative if n not in retaken]
    x0, y0, x1, y1 = widened
    inside = any(x0 < x < x1 and y0 < y < y1 for x, y in rest)
    box = clicks_as_box(widened, (), rest, pad, self._decode(geometry, widened) if inside else None)
    mask = self._decode(geometry, box)
    for x, y in dict.fromkeys((float(x), float(y)) for x, y in positive):
        row, column = min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)
        for share in CLICK_PART_SHARES:
            if mask[row, column]:
                break
            mask |= self._decode(geometry, part_box(box, x, y, share))
        if not mask[row, column]:
            mask |= self._decode(geometry, part_box(box, x, y), [(x, y)])
    if retaken and positive:
        mask = nearer_cut(mask, retaken, positive)
    return cut_outside(mask, box, positive, negative), box


inference.Predictor.redraw = redraw
sys.exit(effort.main())
