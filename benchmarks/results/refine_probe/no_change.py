"""Which interactions change nothing (val, one start, the shipped refine); prints counts by the click's sign,
whether it lies in the box the app sent and in the mask before it, and whether the mask changed ("first": the
image's first click, whose mask before is the proposal, not seen here).

Run from the repository root: python benchmarks/results/refine_probe/no_change.py RUN START"""
import sys, argparse, pathlib, collections
import numpy as np
sys.path.insert(0, "benchmarks")
import effort
from model.inference import Predictor
orig = Predictor.refine
state = {"prev": None, "n": (0, 0)}
log = collections.Counter()

def refine(self, embedding, geometry, positive=(), negative=(), box=None):
    mask = orig(self, embedding, geometry, positive, negative, box)
    n = (len(positive), len(negative))
    if n == (0, 0) or box is None:
        state["prev"], state["n"] = mask, n
        return mask
    prev = state["prev"] if (state["n"][0] + state["n"][1]) == n[0] + n[1] - 1 else None
    sign = ("+" if n[0] == 1 else "-") if prev is None else ("+" if n[0] > state["n"][0] else "-")
    x, y = (positive[-1] if sign == "+" else negative[-1])
    inbox = box[0] <= x <= box[2] and box[1] <= y <= box[3]
    inmask = bool((prev if prev is not None else mask)[min(int(y), mask.shape[0]-1), min(int(x), mask.shape[1]-1)])
    same = prev is not None and np.array_equal(prev, mask)
    change = "first" if prev is None else ("same" if same else "changed")
    log[(sign, "in box" if inbox else "out of box", "in prev mask" if inmask else "not in prev mask", change)] += 1
    state["prev"], state["n"] = mask, n
    return mask

Predictor.refine = refine
args = argparse.Namespace(data="../shared/datasets/busi", model=sys.argv[1], backbone="litemedsam",
                          cache=str(pathlib.Path.home() / ".cache/adasam/embeddings"),
                          split="val", limit=0, starts=[sys.argv[2]], json=None)
effort.run(args)
for k, v in sorted(log.items()): print(k, v)
