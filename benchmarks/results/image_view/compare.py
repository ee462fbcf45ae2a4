"""Image view against the shipped ADA-SAM at 10% masks on BUSI test, per seed and paired per image.

    python benchmarks/results/image_view/compare.py     # from the repository root
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
SHIPPED = HERE.parent / "label_efficiency_ablations" / "runs"
KEYS = ("dice_lesion", "dice_lesion_ungated", "dice_all", "presence_auc", "prompt_box_iou_lesion",
        "prompt_fallback_rate", "hd95_lesion")


def lesion_dice(run: dict) -> dict[str, float]:
    return {r["id"]: r["dice"] for r in run["images"] if r["lesion"]}


def paired(new: dict[str, float], old: dict[str, float], seed: int = 0, draws: int = 10000) -> dict:
    ids = sorted(new)
    diff = np.array([new[i] - old[i] for i in ids])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    return {"mean": float(diff.mean()), "ci95": [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))],
            "better_by_0.1": int((diff > 0.1).sum()), "worse_by_0.1": int((diff < -0.1).sum()), "n": len(ids)}


def main() -> None:
    rows, pairs = {}, {}
    for seed in (0, 1, 2):
        view_file = HERE / f"adasam_iv_0.1_seed{seed}" / "eval_auto.json"
        if not view_file.is_file():
            continue
        view = json.loads(view_file.read_text())
        shipped = json.loads((SHIPPED / f"ada_sam_tags_all_0.1_seed{seed}" / "eval_auto.json").read_text())
        rows[seed] = {"image_view": {k: view[k] for k in KEYS}, "shipped": {k: shipped[k] for k in KEYS}}
        pairs[seed] = paired(lesion_dice(view), lesion_dice(shipped))
    for arm in ("shipped", "image_view"):
        values = np.array([rows[s][arm]["dice_lesion"] for s in rows])
        print(f"{arm}: lesion Dice {values.mean():.3f} +- {values.std(ddof=1) if len(values) > 1 else 0:.3f} "
              f"over seeds {sorted(rows)}")
    print(json.dumps({"per_seed": rows, "paired_image_view_minus_shipped": pairs}, indent=1))


if __name__ == "__main__":
    main()
