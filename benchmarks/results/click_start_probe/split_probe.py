"""A - click on a spill piece a + click also lies on removes the part nearer the - click (thirtieth session; one-off
probe over the per-axis commit, val only; shipped)."""

import os, sys, math
from pathlib import Path
import numpy as np
from scipy import ndimage

ROOT = Path(os.environ.get("PROBE_ROOT", Path(__file__).resolve().parents[3]))
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference


def cut_outside(mask, box, positive, negative):
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = mask.shape
    outside = mask.copy()
    rows = slice(max(0, math.floor(y0 + 0.5)), max(0, math.ceil(y1 - 0.5)))
    outside[rows, max(0, math.floor(x0 + 0.5)) : max(0, math.ceil(x1 - 0.5))] = False
    pieces, _ = ndimage.label(outside)

    def at(x, y):
        return int(pieces[min(max(int(y), 0), height - 1), min(max(int(x), 0), width - 1)])

    out = mask.copy()
    for piece in {at(x, y) for x, y in negative} - {0}:
        negs = [(x, y) for x, y in negative if at(x, y) == piece]
        poss = [(x, y) for x, y in positive if at(x, y) == piece]
        ys, xs = np.nonzero(pieces == piece)
        if not poss:
            out[ys, xs] = False
            continue
        dn = np.min([(xs + 0.5 - x) ** 2 + (ys + 0.5 - y) ** 2 for x, y in negs], axis=0)
        dp = np.min([(xs + 0.5 - x) ** 2 + (ys + 0.5 - y) ** 2 for x, y in poss], axis=0)
        out[ys[dn < dp], xs[dn < dp]] = False
    return out


inference.cut_outside = cut_outside
sys.exit(effort.main())
