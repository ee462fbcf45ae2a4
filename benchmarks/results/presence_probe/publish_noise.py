"""How noisy is a round's val figure, against the publish check's fixed tolerance (app/rounds.py,
PUBLISH_TOLERANCE = 0.02)? For each pair of the six 10%-mask runs: the per-image difference of gated val lesion Dice
(each run's own presence threshold, from its summary.json), its standard error over the 61 val lesion images, and
the chance that two equally good models land more than 0.02 apart the wrong way (normal approximation).
One-off, twenty-third session.

    python benchmarks/results/presence_probe/publish_noise.py
"""
import itertools
import json
import math
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROWS = json.loads((HERE / "rows.json").read_text())
TOLERANCE = 0.02


def threshold(run: str) -> float:
    arm, seed = run.split("_s")
    summary = HERE.parent / "view_ema" / f"{arm}_0.1_seed{seed}" / "summary.json"
    return json.loads(summary.read_text())["model_config"]["presence_threshold"]


def gated(run: str, split: str = "val") -> np.ndarray:
    t = threshold(run)
    return np.array([r["dice_ungated"] if r["probability"] >= t else 0.0 for r in ROWS[run][split] if r["lesion"]])


def main() -> None:
    for a, b in itertools.combinations(ROWS, 2):
        d = gated(b) - gated(a)
        se = d.std(ddof=1) / math.sqrt(len(d))
        wrong_way = math.erfc(TOLERANCE / se / math.sqrt(2)) / 2
        print(f"{a} vs {b}: mean {d.mean():+.3f}, sd {d.std(ddof=1):.3f}, se {se:.3f}, "
              f"P(equal models > {TOLERANCE} apart one way) {wrong_way:.2f}")


if __name__ == "__main__":
    main()
