"""Lesion Dice of the shipped box against an oracle pick and a pick by the decoder's IoU score, per probe output.

    python benchmarks/results/candidate_boxes_probe/analyse.py benchmarks/results/candidate_boxes_probe/ema_s*.json
"""
import json
import sys
from pathlib import Path

import numpy as np

THREE = ("avg", "view", "cam")


def main() -> None:
    for path in sys.argv[1:]:
        runs = json.loads(Path(path).read_text())
        for split, rows in runs.items():
            def of(name):
                return np.array([r[name]["dice"] for r in rows])

            def best(names, key):
                return np.array([max((r[n][key], r[n]["dice"]) for n in names if n in r)[1] for r in rows])

            shipped = of("avg")
            every = [n for n in ("avg", "view", "cam", "avg2")]
            oracle = best(every, "dice")
            print(f"{Path(path).stem} {split}: shipped (averaged map) {shipped.mean():.3f}, view alone "
                  f"{of('view').mean():.3f}, CAM alone {of('cam').mean():.3f} | best of 3 "
                  f"{best(THREE, 'dice').mean():.3f}, of 4 {oracle.mean():.3f} | by IoU score of 3 "
                  f"{best(THREE, 'iou').mean():.3f}, of 4 {best(every, 'iou').mean():.3f} | with a 2nd component "
                  f"{np.mean(['avg2' in r for r in rows]):.2f} | Dice < 0.3: shipped {np.mean(shipped < 0.3):.2f}, "
                  f"best of 4 {np.mean(oracle < 0.3):.2f}")


if __name__ == "__main__":
    main()
