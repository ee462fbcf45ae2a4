"""+ click rules on top of f97a0b5 (twenty-ninth session; one-off probe), run through benchmarks/effort.py in a
checkout of f97a0b5 (PROBE_ROOT). VARIANT: "shrink" retries a missed + click with smaller part
boxes (share/2, share/4); "point" retries it with the part box plus the click as a point; "edge" counts pixels
whose centre lies on a box edge as outside in cut_outside."""
import math, os, sys
from pathlib import Path
import numpy as np
ROOT = Path(os.environ["PROBE_ROOT"])
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference
from model.inference import CLICK_BOX_PAD, CLICK_PART_SHARE, clicks_as_box, part_box
from scipy import ndimage

VARIANT = os.environ.get("VARIANT", "")

def cut_outside(mask, box, positive, negative):
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = mask.shape
    outside = mask.copy()
    rows = slice(max(0, math.floor(y0 + 0.5)), max(0, math.ceil(y1 - 0.5)))
    outside[rows, max(0, math.floor(x0 + 0.5)):max(0, math.ceil(x1 - 0.5))] = False
    pieces, _ = ndimage.label(outside)
    def at(points):
        return {int(pieces[min(max(int(y), 0), height - 1), min(max(int(x), 0), width - 1)]) for x, y in points}
    cut = at(negative) - at(positive) - {0}
    return mask & ~np.isin(pieces, list(cut)) if cut else mask
if "edge" in VARIANT:
    inference.cut_outside = cut_outside

def redraw(self, embedding, geometry, positive=(), negative=(), box=None):
    if embedding is not self._embedding:
        self._features = self.model.features(embedding[None])
        self._embedding = embedding
    if not (box is not None and self.model.backbone.box_prompts and (positive or negative)):
        return self._decode(geometry, box, positive, negative), box
    pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
    widened = clicks_as_box(box, positive, (), pad)
    x0, y0, x1, y1 = widened
    inside = any(x0 < x < x1 and y0 < y < y1 for x, y in negative)
    box = clicks_as_box(widened, (), negative, pad, self._decode(geometry, widened) if inside else None)
    mask = self._decode(geometry, box)
    for x, y in positive:
        row, column = min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)
        if mask[row, column]:
            continue
        part = part_box(box, x, y)
        mask |= self._decode(geometry, part)
        if mask[row, column]:
            continue
        if "shrink" in VARIANT:
            for share in (CLICK_PART_SHARE / 2, CLICK_PART_SHARE / 4):
                mask |= (extra := self._decode(geometry, part_box(box, x, y, share)))
                if extra[row, column]:
                    break
        if "point" in VARIANT and not mask[row, column]:
            mask |= self._decode(geometry, part, [(x, y)], ())
    return inference.cut_outside(mask, box, positive, negative), box
inference.Predictor.redraw = redraw
sys.exit(effort.main())
