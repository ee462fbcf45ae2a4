"""start_box variant (thirty-first session; one-off probe, val only): a - click inside a box that start_box made for
the same + clicks starts the box again, among the 1/2/4-pad boxes that hold no - click (the decoder's IoU estimate
picks, as before); none free: the box as it was, edited by the - click as today.
python restart_probe.py (effort.py's arguments)"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort  # noqa: E402
from model import inference  # noqa: E402
from model.inference import (CLICK_BOX_PAD, CLICK_PART_SHARES, START_BOX_PADS, clicks_as_box, cut_outside,  # noqa
                             near_box, part_box)


def candidates(geometry, positive):
    pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
    x, y = positive[0]
    boxes = [clicks_as_box((x, y, x, y), positive, (), k * pad) for k in START_BOX_PADS]
    return [(max(0.0, x0), max(0.0, y0), min(float(geometry.width), x1), min(float(geometry.height), y1))
            for x0, y0, x1, y1 in boxes]


def holds(box, point):
    x0, y0, x1, y1 = box
    return x0 < point[0] < x1 and y0 < point[1] < y1


def start_box(self, geometry, positive, negative=()):
    boxes = [b for b in candidates(geometry, positive) if not any(holds(b, n) for n in negative)]
    return max(boxes, key=lambda b: self._kept_decode(geometry, b)[1]) if boxes else None


def started_at(box, geometry, positive):
    return box is not None and any(max(abs(a - float(b)) for a, b in zip(c, box)) <= 0.5
                                   for c in candidates(geometry, positive))


@torch.no_grad()
def redraw(self, embedding, geometry, positive=(), negative=(), box=None):
    if not positive and not negative and box is None:
        raise ValueError("refine needs at least one click or a box")
    if embedding is not self._embedding:
        self._features = self.model.features(embedding[None])
        self._embedding, self._decoded = embedding, {}
    pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
    if self.model.backbone.box_prompts and positive:
        if not near_box(box, positive):
            box = start_box(self, geometry, positive)
        elif negative and started_at(box, geometry, positive) and any(holds(box, n) for n in negative):
            box = start_box(self, geometry, positive, negative) or box
    if not (box is not None and self.model.backbone.box_prompts and (positive or negative)):
        return self._decode(geometry, box, positive, negative), box
    widened = clicks_as_box(box, positive, (), pad)
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
