"""Every redraw (click, box given, box used, Dice, the truth's box) of effort.py for the named images (thirty-first
session; one-off diagnosis on pool images).
python trace.py NAME,NAME --data DATA --model RUN --split val --starts proposal"""
import sys, json
from pathlib import Path
import numpy as np
ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference
from model.metrics import dice
names = sys.argv.pop(1).split(",")
effort.split_ids = lambda data, split: names
state, log = {}, []
nc = effort.next_click
def remember(mask, truth):
    state["truth"] = truth
    p, pos = nc(mask, truth)
    state["click"] = (p, pos)
    return p, pos
effort.next_click = remember
orig = inference.Predictor.redraw
def redraw(self, embedding, geometry, positive=(), negative=(), box=None):
    m, used = orig(self, embedding, geometry, positive=positive, negative=negative, box=box)
    t = state["truth"]
    ys, xs = np.nonzero(t)
    log.append({"click": state["click"], "box_in": None if box is None else [round(float(v)) for v in box],
                "used": None if used is None else [round(float(v)) for v in used],
                "dice": round(dice(m, t), 3),
                "truth_box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                "shape": list(t.shape)})
    return m, used
inference.Predictor.redraw = redraw
effort.main()
for e in log: print(json.dumps(e))
