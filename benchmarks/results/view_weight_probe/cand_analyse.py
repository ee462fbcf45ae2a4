"""Pick rules over candidates.py's files: mean Dice of the candidate each rule picks, per split.

    python benchmarks/results/view_weight_probe/cand_analyse.py FILE.json[.gz]...
"""
import gzip
import json
import sys

import numpy as np


def shipped(c, thr):
    return any(source == "avg" and t == thr and peak for source, t, peak in c["aliases"])


RULES = {
    "dec_iou": lambda c: c["dec_iou"],
    "stability": lambda c: c["stability"],
    "avg_in_mask": lambda c: c["avg_in_mask"],
    "avg_captured": lambda c: c["avg_captured"],
    "in_x_captured": lambda c: c["avg_in_mask"] * c["avg_captured"],
    "comp_mass": lambda c: c["comp_mass"],
    "iou_x_in": lambda c: c["dec_iou"] * c["avg_in_mask"],
    "iou_x_stab_x_in": lambda c: c["dec_iou"] * c["stability"] * c["avg_in_mask"],
    "cam_x_view_in": lambda c: c["cam_in_mask"] * c["view_in_mask"],
    "view_in_mask": lambda c: c["view_in_mask"],
}
POOLS = {"all": lambda c, thr: True, "avg": lambda c, thr: any(a[0] == "avg" for a in c["aliases"]),
         "avg@thr": lambda c, thr: any(a[0] == "avg" and a[1] == thr for a in c["aliases"])}

for path in sys.argv[1:]:
    data = json.load(gzip.open(path, "rt") if path.endswith(".gz") else open(path))
    thr = data["threshold"]
    print(path, "threshold", thr)
    for split in ("val", "heldout", "test"):
        rows = [r for r in data[split] if r["cands"]]
        line = {}
        ship = [max([c["dice"] for c in r["cands"] if shipped(c, thr)] or [0.0]) for r in rows]
        line["shipped"] = np.mean(ship)
        line["oracle"] = np.mean([max(c["dice"] for c in r["cands"]) for r in rows])
        line["n_cands"] = np.mean([len(r["cands"]) for r in rows])
        print(f"  {split} ({len(rows)}): " + ", ".join(f"{k} {v:.3f}" for k, v in line.items()))
        for pool, keep in POOLS.items():
            parts = []
            for name, score in RULES.items():
                picks = []
                for r in rows:
                    cands = [c for c in r["cands"] if keep(c, thr)] or r["cands"]
                    picks.append(max(cands, key=score)["dice"])
                parts.append(f"{name} {np.mean(picks):.3f}")
            print(f"    {pool}: " + ", ".join(parts))
