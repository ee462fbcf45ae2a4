"""A + click is near the box when beyond it by at most FAR_CLICK_SHARE of the box's side along that axis (thirtieth
session; one-off probe over c636543, val only; shipped in the next commit)."""

import os, sys
from pathlib import Path

ROOT = Path(os.environ.get("PROBE_ROOT", Path(__file__).resolve().parents[3]))
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference


def near_box(box, positive):
    if box is None:
        return False
    x0, y0, x1, y1 = (float(v) for v in box)
    s = inference.FAR_CLICK_SHARE
    rx, ry = s * (x1 - x0), s * (y1 - y0)
    return any(x0 - rx <= x <= x1 + rx and y0 - ry <= y <= y1 + ry for x, y in positive)


inference.near_box = near_box
sys.exit(effort.main())
