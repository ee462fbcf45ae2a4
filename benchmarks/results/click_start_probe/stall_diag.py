"""Replay effort.py with the code checked out; log every redraw (clicks, box, mask hash) to classify clicks that
changed nothing (thirtieth session; one-off). python stall_diag.py --data DATA --model RUN --split val --starts proposal
--json F; then python stall_seq.py F"""

import sys, json
from pathlib import Path
import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference

log = []
orig = inference.Predictor.redraw


def redraw(self, embedding, geometry, positive=(), negative=(), box=None):
    m, used = orig(self, embedding, geometry, positive=positive, negative=negative, box=box)
    log.append(
        {
            "box": None if box is None else [round(float(v), 1) for v in box],
            "pos": [list(p) for p in positive],
            "neg": [list(p) for p in negative],
            "used": None if used is None else [round(float(v), 1) for v in used],
            "hash": hash(np.packbits(m).tobytes()),
            "pixels": int(m.sum()),
        }
    )
    return m, used


inference.Predictor.redraw = redraw
rc = effort.main()
Path(sys.argv[-1] + ".clicks.json").write_text(json.dumps(log))
