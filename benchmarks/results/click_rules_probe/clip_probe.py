"""Like cut_probe.py: VARIANT=clip cuts the refined mask to the edited box; clip_poslast also applies - clicks first."""
import os, sys
from pathlib import Path
import numpy as np
ROOT = Path(os.environ["PROBE_ROOT"])  # a worktree of 8fa8404, as for cut_probe.py
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference

VARIANT = os.environ.get("VARIANT", "clip")
orig_refine = inference.Predictor.refine

def box_region(shape, box):
    x0, y0, x1, y1 = box
    keep = np.zeros(shape, bool)
    keep[max(0, int(np.floor(y0))):max(0, int(np.ceil(y1))), max(0, int(np.floor(x0))):max(0, int(np.ceil(x1)))] = True
    return keep

def refine(self, embedding, geometry, positive=(), negative=(), box=None):
    mask = orig_refine(self, embedding, geometry, positive=positive, negative=negative, box=box)
    if box is not None and self.model.backbone.box_prompts and "clip" in VARIANT:
        mask &= box_region(mask.shape, self.edited_box(geometry, box, positive, negative))
    return mask
inference.Predictor.refine = refine

if "poslast" in VARIANT:
    def clicks_as_box(box, positive, negative, pad):
        edges = [float(v) for v in box]
        for x, y in negative:
            x0, y0, x1, y1 = edges
            if x0 < x < x1 and y0 < y < y1:
                nearest = int(np.argmin([x - x0, y - y0, x1 - x, y1 - y]))
                edges[nearest] = (x + 1, y + 1, x - 1, y - 1)[nearest]
        for x, y in positive:
            edges = [min(edges[0], x - pad), min(edges[1], y - pad), max(edges[2], x + pad), max(edges[3], y + pad)]
        x0, y0, x1, y1 = edges
        return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)
    inference.clicks_as_box = clicks_as_box
sys.exit(effort.main())
