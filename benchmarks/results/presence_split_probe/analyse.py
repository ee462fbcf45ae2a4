"""Table of probe.py's outputs: BUSI test (and val) with presence from model.pt against presence from the last
weights (the EMA teacher where the run kept one, else the student), mean ± sd over seeds.

    python benchmarks/results/presence_split_probe/analyse.py
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
GROUPS = [("BUSI 5%", "busi_0.05"), ("BUSI 10%", "busi_0.1"), ("BUSI 20%", "busi_0.2"), ("BUSI 50%", "busi_0.5"),
          ("BUSI 100%", "busi_1"), ("two thirds target-free, 10%", "mostly_negative_0.1")]


def figures(models: dict) -> dict:
    out = {}
    last = models.get("last teacher", models["last student"])
    for label, model in (("model.pt", models["model.pt"]), ("last", last)):
        out[label] = [model["test_served"][0], model["test_served"][1], model["test_auc"], model["val_auc"]]
    return out


print("| runs | seeds | test lesion Dice | test dice_all | test presence AUC | val presence AUC |")
print("|---|---|---|---|---|---|")
for label, prefix in GROUPS:
    runs = [figures(json.loads(p.read_text())["models"]) for p in sorted(HERE.glob(f"{prefix}_seed*.json"))]
    cells = []
    for column in range(4):
        old, new = (np.array([r[which][column] for r in runs]) for which in ("model.pt", "last"))
        sd = (lambda a: f" ± {a.std(ddof=1):.3f}" if len(a) > 1 else "")
        up = f"({int((new > old).sum())} of {len(new)} up)"
        cells.append(f"{old.mean():.3f}{sd(old)} -> **{new.mean():.3f}**{sd(new)} {up}")
    print(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
