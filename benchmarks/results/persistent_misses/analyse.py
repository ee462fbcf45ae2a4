"""Which BUSI test lesion images ADA-SAM misses whatever the number of masks (one-off analysis, thirty-third
session): per-image rows of the label-efficiency runs (`eval_auto.json`, automatic prompts) and of the pretrained
decoder given the true box (`adasam evaluate --model pretrained --prompt oracle --split test --json FILE`), and the
candidate boxes of the thirty-second session's probe (`view_weight_probe/cands_s31_seed0.json.gz`: every map component
at thresholds 0.2-0.6 of the CAM, the view and their average, decoded; 10% masks, seed 0).

    python benchmarks/results/persistent_misses/analyse.py [--out FILE]

A miss is lesion Dice before gating < 0.3; a persistent miss is one in at least three quarters of the ADA-SAM runs.
The set is picked on test by the runs it is then scored with: a diagnosis of where the lost Dice sits, not a figure
to tune on.
"""
from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
MISS = 0.3


def lesion_rows(path: Path) -> dict[str, dict]:
    return {row["id"]: row for row in json.loads(path.read_text())["images"] if row["lesion"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "persistent_misses.json")
    args = parser.parse_args()
    adasam = {p.parent.name: lesion_rows(p)
              for p in sorted((RESULTS / "label_efficiency_2026-12-07" / "runs").glob("ada_sam_*/eval_auto.json"))}
    oracle = lesion_rows(HERE / "pretrained_oracle_test.json")
    missed = Counter(name for rows in adasam.values() for name, row in rows.items() if row["dice_ungated"] < MISS)
    persistent = sorted(name for name, n in missed.items() if n >= 0.75 * len(adasam))
    others = sorted(set(oracle) - set(persistent))

    def mean(rows: dict[str, dict], names: list[str], key: str) -> float:
        return float(np.mean([rows[n][key] for n in names]))

    out = {"miss_below": MISS, "adasam_runs": len(adasam), "persistent": persistent,
           "missed_in_how_many_runs": dict(sorted(missed.items())),
           "oracle_box": {"all": mean(oracle, sorted(oracle), "dice"), "persistent": mean(oracle, persistent, "dice"),
                          "others": mean(oracle, others, "dice")},
           "adasam": {}}
    print(f"{len(persistent)} of {len(oracle)} test lesion images missed by >= 3/4 of {len(adasam)} ADA-SAM runs")
    box = out["oracle_box"]
    print(f"true box, pretrained decoder: all {box['all']:.3f}, those {box['persistent']:.3f}, "
          f"others {box['others']:.3f}")
    candidates = {row["id"]: max([c["dice"] for c in row["cands"]], default=0.0) for row in
                  json.loads(gzip.open(RESULTS / "view_weight_probe" / "cands_s31_seed0.json.gz").read())["test"]}
    out["best_candidate_dice"] = {name: candidates[name] for name in persistent}
    touched = sum(candidates[name] >= MISS for name in persistent)
    print(f"a candidate box of the maps reaches Dice >= {MISS} on {touched} of them (10% masks, seed 0)")
    for run, rows in adasam.items():  # served (gated) lesion Dice, as the tables quote
        row = {"all": mean(rows, sorted(rows), "dice"), "persistent": mean(rows, persistent, "dice"),
               "others": mean(rows, others, "dice")}
        out["adasam"][run] = row
        print(f"{run:30s} all {row['all']:.3f}  persistent {row['persistent']:.3f}  others {row['others']:.3f}")
    on_them = float(np.mean([row["persistent"] for row in out["adasam"].values()]))
    bound = (len(others) * out["oracle_box"]["others"] + len(persistent) * on_them) / len(oracle)
    need = (0.82 * len(oracle) - len(persistent) * on_them) / len(others)
    out["bound"] = {"mean_on_persistent": on_them, "true_box_on_the_others": bound, "others_needed_for_0.82": need}
    print(f"with the true box on every other lesion image and today's {on_them:.3f} on these: {bound:.3f} in all; "
          f"0.82 would need {need:.3f} on the others (the true box gives {out['oracle_box']['others']:.3f})")
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
