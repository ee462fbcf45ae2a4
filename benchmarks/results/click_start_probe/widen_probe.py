"""+ clicks outside the box (near it) widen it by 1, 2 or 4 pads, the reach the decoder's IoU rates best (thirtieth
session; one-off probe over c636543, val only; not shipped)."""

import os, sys
from pathlib import Path
import torch

ROOT = Path(os.environ.get("PROBE_ROOT", Path(__file__).resolve().parents[3]))
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference
from model.inference import (
    clicks_as_box,
    CLICK_BOX_PAD,
    CLICK_PART_SHARES,
    START_BOX_PADS,
    near_box,
    part_box,
    cut_outside,
)


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
    if tuple(widened) != tuple(float(v) for v in box):  # some + click outside: choose the reach by IoU
        cands = []
        for k in START_BOX_PADS:
            b = clicks_as_box(box, positive, (), k * pad)
            b = (
                max(0.0, min(b[0], float(box[0]))),
                max(0.0, min(b[1], float(box[1]))),
                min(float(geometry.width), max(b[2], float(box[2]))),
                min(float(geometry.height), max(b[3], float(box[3]))),
            )
            cands.append(b)
        widened = max(cands, key=lambda b: self._kept_decode(geometry, b)[1])
    x0, y0, x1, y1 = widened
    inside = any(x0 < x < x1 and y0 < y < y1 for x, y in negative)
    box = clicks_as_box(widened, (), negative, pad, self._decode(geometry, widened) if inside else None)
    mask = self._decode(geometry, box)
    for x, y in dict.fromkeys((float(x), float(y)) for x, y in positive):
        row, column = min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)
        for share in CLICK_PART_SHARES:
            if mask[row, column]:
                break
            mask |= self._decode(geometry, part_box(box, x, y, share))
        if not mask[row, column]:
            mask |= self._decode(geometry, part_box(box, x, y), [(x, y)])
    return cut_outside(mask, box, positive, negative), box


inference.Predictor.redraw = redraw
sys.exit(effort.main())
