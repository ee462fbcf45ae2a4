"""Per-evaluation val figures of the averaged-view grid runs, read from their training logs: why presence falls at
100% masks (benchmarks/README.md, twenty-fifth session). The logs themselves are not committed; their extract is
`val_history.json` (run -> picked step, and per evaluation: step, score, classifier loss, val presence AUC).

    python benchmarks/results/checkpoint_score_probe/val_history.py LOG [LOG ...] > val_history.json
    python benchmarks/results/checkpoint_score_probe/val_history.py --table val_history.json
"""
from __future__ import annotations

import json
import re
import sys


def extract(logs: list[str]) -> dict:
    runs: dict[str, dict] = {}
    current = None
    for log in logs:
        for line in open(log):
            started = re.search(r"^\$ adasam train .*--out \S+/runs/(ada_sam_tags_all_\S+)", line)
            if started:
                current = started.group(1)
                runs[current] = {"evaluations": []}
            elif current and line.startswith('{"step"'):
                r = json.loads(line.replace("NaN", "null"))
                runs[current]["evaluations"].append({"step": r["step"], "score": r["score"],
                                                     "cls_loss": r["losses"].get("cls"),
                                                     "val_presence_auc": r["val"]["presence_auc"]})
            elif current and (picked := re.match(r"trained in \d+ s; best val step (\d+)", line)):
                runs[current]["picked_step"] = int(picked.group(1))
    return {k: v for k, v in sorted(runs.items()) if "picked_step" in v}


def table(runs: dict) -> None:
    print("| run | picked step (of) | val AUC there | classifier loss there | best val AUC (step, its score) |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        history = run["evaluations"]
        picked = next(e for e in history if e["step"] == run["picked_step"])
        top = max(history, key=lambda e: e["val_presence_auc"])
        print(f"| {name} | {picked['step']} ({history[-1]['step']}) | {picked['val_presence_auc']:.3f} | "
              f"{picked['cls_loss']:.2f} | {top['val_presence_auc']:.3f} ({top['step']}, {top['score']:.3f}) |")


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        table(json.load(open(sys.argv[2])))
    else:
        print(json.dumps(extract(sys.argv[1:]), indent=1))
