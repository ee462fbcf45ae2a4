"""The image view's own fit on a data folder, with the Dice term per image (shipped) or over the batch (one-off,
thirty-second session): the view alone, trained by the shipped rule on the masked pool images of `train --masks
FRACTION --seed SEED`, scored by its own val lesion Dice (the score that picks its checkpoint). On the
two-thirds-target-free stand-in the shipped fit once stopped at val 0.32 (best step 200): an empty target scores a
per-image Dice loss near 1 for any pixel predicted, so a batch of mostly empty targets teaches "predict nothing".

    python benchmarks/results/view_negatives_probe/view_fit.py DATA FRACTION SEED OUT.json
"""
import json
import sys
import time
from pathlib import Path

import monai.losses
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from model.dataset import SPLIT_SEED, load_data_folder, masked_ids  # noqa: E402
from model.image_view import ImageViewTraining, build_unet, fit, image_input, lesion_dice, mask_target  # noqa: E402
from model.preprocess import read_image, read_mask  # noqa: E402

torch.set_num_threads(1)
data, fraction, seed, out_path = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
folder = load_data_folder(data, seed=SPLIT_SEED)
pool = folder.split("pool")
masked = [s for s in pool if s.id in masked_ids(pool, fraction, seed)]
val = [s for s in folder.split("val") if s.mask_path is not None]


def arrays(samples):
    masks = [read_mask(s.mask_path) for s in samples]
    return torch.stack([image_input(read_image(s.image_path)) for s in samples]), masks


images, masks = arrays(masked)
targets = torch.stack([mask_target(m) for m in masks])
val_images, val_masks = arrays([s for s in val if read_mask(s.mask_path).any()])
results = {"masked": len(masked), "masked_with_target": int(sum(bool(m.any()) for m in masks))}
ORIGINAL = monai.losses.DiceCELoss
for variant, batch in (("per_image", False), ("batch", True)):
    monai.losses.DiceCELoss = lambda **kw: ORIGINAL(batch=batch, **kw)
    view = build_unet()
    started = time.time()
    report = fit(view, images, targets, lambda: lesion_dice(view, val_images, val_masks), ImageViewTraining(), seed)
    results[variant] = {"val_dice_lesion": report["score"], "best_step": report["best_step"],
                        "stopped_at": report["stopped_at"], "seconds": round(time.time() - started, 1)}
    print(variant, results[variant], flush=True)
    out_path.write_text(json.dumps(results, indent=1))
