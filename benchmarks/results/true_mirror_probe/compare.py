"""Paired per-image comparison of the probe's final models with the shipped ones (`../retrain_2026-12-07c/`, the
same seeds and code but for the mirrored inputs), on val (the decision) and test (the report). Run from here:

    python compare.py
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SHIPPED_TEST = HERE.parent / "retrain_2026-12-07c" / "eval_test_seed{}.json"


def lesion_rows(path) -> dict:
    return {r["id"]: r for r in json.loads(Path(path).read_text())["images"] if r["lesion"]}


for split, probe, shipped in (("val", HERE / "eval_val_seed{}.json", HERE / "eval_val_shipped_seed{}.json"),
                              ("test", HERE / "eval_test_seed{}.json", SHIPPED_TEST)):
    for key in ("dice", "dice_ungated"):
        pooled = []
        for seed in (0, 1, 2):
            a, b = lesion_rows(str(probe).format(seed)), lesion_rows(str(shipped).format(seed))
            diff = np.array([a[i][key] - b[i][key] for i in a])
            pooled.append(diff)
            print(f"{split} {key:12s} seed {seed}: true mirrors {np.mean([a[i][key] for i in a]):.3f}, shipped "
                  f"{np.mean([b[i][key] for i in a]):.3f}, paired difference {diff.mean():+.4f} "
                  f"(se {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}, {len(diff)} lesion images)")
        means = [d.mean() for d in pooled]
        print(f"{split} {key:12s} mean over seeds {np.mean(means):+.4f} (sd {np.std(means):.4f})")
