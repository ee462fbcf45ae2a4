"""Image view against the shipped ADA-SAM at 10% masks on BUSI test, per seed and paired per image; and the image
view with self-training and the keep-or-drop check (fifteenth session: `self_trained_0.1_seed*`) against both.

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
    files = {"shipped": lambda seed: SHIPPED / f"ada_sam_tags_all_0.1_seed{seed}" / "eval_auto.json",
             "image_view": lambda seed: HERE / f"adasam_iv_0.1_seed{seed}" / "eval_auto.json",
             "self_trained": lambda seed: HERE / f"self_trained_0.1_seed{seed}" / "eval_auto.json"}
    runs = {arm: {seed: json.loads(where(seed).read_text()) for seed in (0, 1, 2) if where(seed).is_file()}
            for arm, where in files.items()}
    rows = {arm: {seed: {k: run[k] for k in KEYS} for seed, run in by_seed.items()} for arm, by_seed in runs.items()}
    pairs = {f"{new}_minus_{old}": {seed: paired(lesion_dice(runs[new][seed]), lesion_dice(runs[old][seed]))
                                    for seed in runs[new] if seed in runs[old]}
             for new, old in (("image_view", "shipped"), ("self_trained", "shipped"), ("self_trained", "image_view"))}
    for arm, by_seed in rows.items():
        values = np.array([r["dice_lesion"] for r in by_seed.values()])
        print(f"{arm}: lesion Dice {values.mean():.3f} +- {values.std(ddof=1) if len(values) > 1 else 0:.3f} "
              f"over seeds {sorted(by_seed)}")
    print(json.dumps({"per_seed": rows, "paired": pairs}, indent=1))


if __name__ == "__main__":
    main()
