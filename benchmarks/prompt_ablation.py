"""Re-score one trained model on `val` with different automatic-prompt settings (how the defaults were chosen).

    python benchmarks/prompt_ablation.py --data ../shared/datasets/busi --model RUN [--json FILE]

Varies the CAM threshold, the CAM region boxed (the peak's connected component or every pixel above threshold),
the cascade steps and the number of CAM-peak point prompts; prints lesion Dice and prompt-box IoU per setting.
Only the `val` split is read: these choices must not be made on `test`.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--cache", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from model.adasam import load_checkpoint
    from model.cache import DEFAULT_CACHE_DIR, EmbeddingCache
    from model.dataset import SPLIT_SEED, load_data_folder, load_items
    from model.evaluate import evaluate

    model, _ = load_checkpoint(args.model)
    folder = load_data_folder(args.data, seed=SPLIT_SEED)
    cache = EmbeddingCache(args.cache or DEFAULT_CACHE_DIR, model.backbone)
    val = load_items([s for s in folder.split("val") if s.mask_path], cache)
    settings = [dict(cam_threshold=t, cam_component=c, cascade=k, cam_points=0)
                for t, c, k in itertools.product([0.3, 0.4, 0.5, 0.6], ["peak", "all"], [0, 1, 2])]
    settings += [dict(cam_threshold=0.4, cam_component="peak", cascade=k, cam_points=p)
                 for p, k in itertools.product([1, 2], [0, 1])]
    rows = []
    for setting in settings:
        for key, value in setting.items():
            setattr(model.config, key, value)
        summary, _ = evaluate(model, val, with_hd95=False)
        rows.append({**setting, "dice_lesion": summary["dice_lesion"],
                     "prompt_box_iou_lesion": summary["prompt_box_iou_lesion"]})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
