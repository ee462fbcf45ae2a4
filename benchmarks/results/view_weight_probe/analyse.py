"""Table of probe.py's files: per view share, the threshold val picks and the val / test lesion Dice (before
gating), and what a joint pick of (share, threshold) on val would give on test.

    python benchmarks/results/view_weight_probe/analyse.py FILE.json...
"""
import json
import sys

import numpy as np

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
THRS = (0.2, 0.3, 0.4, 0.5)
for path in sys.argv[1:]:
    data = json.load(open(path))
    def mean(split, key):
        return float(np.mean([r[key] for r in data[split]]))
    print(path, "model threshold", data["model_threshold"])
    best = None
    for w in SHARES:
        val = {t: mean("val", f"{w}@{t}") for t in THRS}
        t = max(THRS, key=lambda t: (val[t], t))
        has_test = "test" in data
        test = mean("test", f"{w}@{t}") if has_test else float("nan")
        test_all = " ".join(f"{mean('test', f'{w}@{u}'):.3f}" for u in THRS) if has_test else ""
        print(f"  share {w:.2f}: val picks {t} -> val {val[t]:.3f}, test {test:.3f}   (test at 0.2-0.5: {test_all})")
        if best is None or val[t] > best[0]:
            best = (val[t], w, t, test)
    print(f"  joint val pick: share {best[1]}, threshold {best[2]}: val {best[0]:.3f}, test {best[3]:.3f}")
