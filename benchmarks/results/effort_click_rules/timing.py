"""Time every Studio.refine of effort.py's proposal start: the ms it returns (twenty-ninth session; one-off probe).
    PROBE_ROOT=CHECKOUT OUT=FILE python timing.py --data DATA --model RUN --split val --starts proposal"""
import json
import os
import sys
from pathlib import Path
ROOT = Path(os.environ["PROBE_ROOT"])
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort  # noqa: E402
import numpy as np  # noqa: E402
from app import studio as studio_module  # noqa: E402
times = []
orig = studio_module.Studio.refine
def refine(self, *a, **k):
    out = orig(self, *a, **k)
    times.append(out["ms"])
    return out
studio_module.Studio.refine = refine
rc = effort.main()
t = np.array(times)
res = {"root": str(ROOT), "redraws": len(t), "median_ms": float(np.median(t)), "p95_ms": float(np.percentile(t, 95)),
       "max_ms": float(t.max()), "mean_ms": float(t.mean())}
print("TIMING", json.dumps(res))
Path(os.environ["OUT"]).write_text(json.dumps(res))
