"""The image view's averaged weights (ema) against the shipped view (base), ADA-SAM at 10% masks + every tag, run
side by side on one machine (twenty-second session): val figures from each run's summary.json (what decides), BUSI
test per seed and paired per image (reported).

    python benchmarks/results/view_ema/compare.py     # from the repository root
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
KEYS = ("dice_lesion", "dice_lesion_ungated", "dice_all", "presence_auc", "prompt_box_iou_lesion")


def paired(new: dict[str, float], old: dict[str, float], seed: int = 0, draws: int = 10000) -> dict:
    diff = np.array([new[i] - old[i] for i in sorted(new)])
    means = diff[np.random.default_rng(seed).integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    return {"mean": round(float(diff.mean()), 4),
            "ci95": [round(float(np.quantile(means, q)), 4) for q in (0.025, 0.975)],
            "better_by_0.1": int((diff > 0.1).sum()), "worse_by_0.1": int((diff < -0.1).sum()), "n": len(diff)}


def val(summary: dict) -> dict:
    best = summary["best"]
    check = best.get("image_view_check") or {}
    self_training = best.get("view_self_training") or {}
    view = best["image_view"]
    return {"view_val": round(view["val_dice_lesion"], 4), "view_best_step": view["best_step"],
            "main_best": round(best["score"], 4), "main_best_step": best["step"],
            "self_training_kept": self_training.get("kept"),
            "final_val": round(check.get("val_dice_lesion_with_view", best["score"]), 4),
            "train_s": round(summary["train_seconds"])}


def main() -> None:
    runs = {arm: {seed: (json.loads((HERE / f"{arm}_0.1_seed{seed}" / "summary.json").read_text()),
                         json.loads((HERE / f"{arm}_0.1_seed{seed}" / "eval_auto.json").read_text()))
                  for seed in (0, 1, 2) if (HERE / f"{arm}_0.1_seed{seed}" / "eval_auto.json").is_file()}
            for arm in ("base", "ema")}
    table = {arm: {seed: {**val(s), **{k: round(e[k], 4) for k in KEYS}} for seed, (s, e) in by_seed.items()}
             for arm, by_seed in runs.items()}
    lesion = {arm: {seed: {r["id"]: r["dice"] for r in e["images"] if r["lesion"]} for seed, (_, e) in by_seed.items()}
              for arm, by_seed in runs.items()}
    pairs = {seed: paired(lesion["ema"][seed], lesion["base"][seed])
             for seed in lesion["ema"] if seed in lesion["base"]}
    for arm, by_seed in table.items():
        for key in ("final_val", "dice_lesion", "dice_all", "presence_auc", "prompt_box_iou_lesion"):
            values = np.array([r[key] for r in by_seed.values()])
            print(f"{arm} {key}: {' / '.join(f'{v:.3f}' for v in values)}  mean {values.mean():.3f} "
                  f"+- {values.std(ddof=1) if len(values) > 1 else 0:.3f}")
    print(json.dumps({"per_seed": table, "paired_test_lesion_dice_ema_minus_base": pairs}, indent=1))


if __name__ == "__main__":
    main()
