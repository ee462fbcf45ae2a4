"""Presence-threshold criteria and presence signals, simulated from per-image rows (twenty-third session; one-off).

`rows.json`: for the six 10%-mask BUSI runs of `../view_ema/` (base_s*: raw view weights, ema_s*: the averaged view),
each val and test image's presence probability and its Dice before gating (`adasam evaluate --split val|test
--json`), and for ema_s* the other candidate signals (`collect.py`). A criterion picks the threshold from val alone;
served lesion Dice and dice_all follow from the rows, with no model run.

    python benchmarks/results/presence_probe/analyse.py
"""
import json
from pathlib import Path

import numpy as np

ROWS = json.loads((Path(__file__).parent / "rows.json").read_text())
CRITERIA = ["none", "fixed0.5", "ba_capped", "ba", "ba_plateau_middle", "balanced_dice", "dice_all", "prior"]


def arrays(rows):
    return (np.array([r["probability"] for r in rows]), np.array([r["lesion"] for r in rows]),
            np.array([r["dice_ungated"] for r in rows]))


def served(p, lesion, d, t):
    """(lesion Dice, dice_all, share of target-free images served empty) with presence threshold t."""
    on = p >= t
    lesion_dice = np.where(on[lesion], d[lesion], 0.0)
    negative = np.where(on[~lesion], d[~lesion], 1.0)  # a target-free image: right when gated off or raw mask empty
    return lesion_dice.mean(), np.concatenate([lesion_dice, negative]).mean(), negative.mean()


def balanced_accuracy(p, lesion, t):
    return ((p[lesion] >= t).mean() + (p[~lesion] < t).mean()) / 2


def choose(p, lesion, d, criterion):
    u = np.unique(p)
    candidates = np.concatenate([[0.0], (u[1:] + u[:-1]) / 2, [u[-1] + 1e-6]])
    if criterion == "none":
        return 0.0
    if criterion == "fixed0.5":
        return 0.5
    if criterion == "ba_capped":  # shipped: model.calibrate.calibrate_presence (<= 0.5, the higher of equals)
        capped = [0.5] + [t for t in candidates if t < 0.5]
        return max(capped, key=lambda t: (round(balanced_accuracy(p, lesion, t), 6), t))
    if criterion == "ba":  # the same, not capped at 0.5
        return max(candidates, key=lambda t: (round(balanced_accuracy(p, lesion, t), 6), t))
    if criterion == "ba_plateau_middle":  # the median of every threshold within 0.01 of the best balanced accuracy
        scores = np.array([balanced_accuracy(p, lesion, t) for t in candidates])
        return float(np.median(candidates[scores >= scores.max() - 0.01]))
    if criterion == "balanced_dice":  # (served lesion Dice + target-free served empty) / 2
        return max(candidates, key=lambda t: (round(sum(served(p, lesion, d, t)[::2]) / 2, 6), -t))
    if criterion == "dice_all":
        return max(candidates, key=lambda t: (round(served(p, lesion, d, t)[1], 6), -t))
    if criterion == "prior":  # the share called present on val equals val's share of target images
        return float(np.quantile(p, 1 - lesion.mean()))
    raise ValueError(criterion)


def auc(score, lesion):
    pos, neg = score[lesion], score[~lesion]
    return float((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())


def main() -> None:
    rng = np.random.default_rng(0)
    test_figures = {c: [] for c in CRITERIA}
    cv_figures = {c: [] for c in CRITERIA}
    print("BUSI test, threshold picked on all of val: criterion:threshold:lesion Dice/dice_all")
    for run, rows in ROWS.items():
        val, test = arrays(rows["val"]), arrays(rows["test"])
        line = [run]
        for criterion in CRITERIA:
            t = choose(*val, criterion)
            figures = served(*test, t)
            test_figures[criterion].append(figures)
            line.append(f"{criterion}:{t:.2f}:{figures[0]:.3f}/{figures[1]:.3f}")
            p, lesion, d = val  # val alone: pick on a stratified half, score the other half, 200 splits
            halves = []
            for _ in range(200):
                first = np.zeros(len(p), bool)
                for kind in (True, False):
                    members = rng.permutation(np.where(lesion == kind)[0])
                    first[members[: len(members) // 2]] = True
                t = choose(p[first], lesion[first], d[first], criterion)
                halves.append(served(p[~first], lesion[~first], d[~first], t))
            cv_figures[criterion].append(np.mean(halves, axis=0))
        print("  ".join(line))
    print("\nmean over the 6 runs | test: lesion Dice (sd) / dice_all / target-free served empty"
          " | val halves: the same three")
    for criterion in CRITERIA:
        a, b = np.array(test_figures[criterion]), np.array(cv_figures[criterion])
        print(f"{criterion:18s} test {a[:, 0].mean():.3f} ({a[:, 0].std(ddof=1):.3f}) / {a[:, 1].mean():.3f} / "
              f"{a[:, 2].mean():.3f} | val halves {b[:, 0].mean():.3f} / {b[:, 1].mean():.3f} / {b[:, 2].mean():.3f}")
    print("\npresence AUC of other signals (ema_s* runs): classifier p, CAM peak, view-map peak, prompt-map peak, "
          "decoder IoU score, mean(p, view peak), mean(p, prompt-map peak)")
    for run, rows in ROWS.items():
        if "view_max" not in rows["val"][0]:
            continue
        for split in ("val", "test"):
            r = rows[split]
            lesion = np.array([x["lesion"] for x in r])
            s = {k: np.array([x[k] for x in r]) for k in ("probability", "cam_max", "view_max", "map_max", "iou")}
            s["mean(p,view)"] = (s["probability"] + s["view_max"]) / 2
            s["mean(p,map)"] = (s["probability"] + s["map_max"]) / 2
            print(run, split, "  ".join(f"{k} {auc(v, lesion):.3f}" for k, v in s.items()))


if __name__ == "__main__":
    main()
