"""start_box variant (thirty-first session; one-off probe, val only): the smallest of the 1/2/4-pad boxes whose
decoded mask stays off the box's sides (a mask that reaches a side of its box was cut by it), else the one the
decoder's IoU estimate rates best (the shipped rule). python fit_start_probe.py (effort.py's arguments)"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort  # noqa: E402
from model import inference  # noqa: E402
from model.inference import CLICK_BOX_PAD, START_BOX_PADS, clicks_as_box  # noqa: E402


def reaches_side(mask, box, width, height):
    """Whether the mask has pixels in the outermost pixel row/column inside a side of the box not on the image's
    border."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    ring = []
    if x0 > 0:
        ring.append(mask[y0:y1, x0:x0 + 2])
    if y0 > 0:
        ring.append(mask[y0:y0 + 2, x0:x1])
    if x1 < width:
        ring.append(mask[y0:y1, x1 - 2:x1])
    if y1 < height:
        ring.append(mask[y1 - 2:y1, x0:x1])
    return any(r.any() for r in ring)


def start_box(self, geometry, positive):
    pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
    x, y = positive[0]
    boxes = [clicks_as_box((x, y, x, y), positive, (), k * pad) for k in START_BOX_PADS]
    boxes = [(max(0.0, x0), max(0.0, y0), min(float(geometry.width), x1), min(float(geometry.height), y1))
             for x0, y0, x1, y1 in boxes]
    decoded = [self._kept_decode(geometry, b) for b in boxes]
    for b, (mask, _) in zip(boxes, decoded):
        if mask.any() and not reaches_side(mask, b, geometry.width, geometry.height):
            return b
    return max(zip(boxes, decoded), key=lambda bd: bd[1][1])[0]


inference.Predictor.start_box = start_box
sys.exit(effort.main())
