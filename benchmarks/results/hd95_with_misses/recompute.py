"""HD95 of the 2026-12-07 grid's runs with a missed lesion scored as the image's diagonal (model.metrics.hd95 since
the thirty-fourth session), from the per-image rows `adasam evaluate` wrote (misses there are NaN and were left out
of the mean). Run from the repository root: python benchmarks/results/hd95_with_misses/recompute.py"""
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

RUNS = Path("benchmarks/results/label_efficiency_2026-12-07/runs")
IMAGES = Path("../shared/datasets/busi/images")

sizes = {}
table = defaultdict(lambda: defaultdict(list))
for run in sorted(RUNS.glob("ada_sam_*")):
    rows = json.loads((run / "eval_auto.json").read_text())["images"]
    before, after, missed = [], [], 0
    for row in rows:
        if not row["lesion"]:
            continue
        value = row["hd95"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if row["id"] not in sizes:
                path = next(IMAGES.glob(row["id"] + ".*"))
                with Image.open(path) as image:
                    sizes[row["id"]] = math.hypot(*image.size)
            value, missed = sizes[row["id"]], missed + 1
        else:
            before.append(value)
        after.append(value)
    fraction = run.name.split("_")[-2]
    table[fraction]["before"].append(np.mean(before))
    table[fraction]["after"].append(np.mean(after))
    table[fraction]["missed"].append(missed)
print("| masks | HD95 as reported (misses left out) | HD95, a miss = the image's diagonal | lesions missed a run |")
print("|---|---|---|---|")
for fraction in sorted(table, key=float):
    t = table[fraction]
    print(f"| {float(fraction):.0%} | {np.mean(t['before']):.1f} | {np.mean(t['after']):.1f} | "
          f"{' / '.join(str(m) for m in t['missed'])} |")
