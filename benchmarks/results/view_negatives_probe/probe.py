"""Should the image view also learn from the images tagged target-free? (one-off, thirty-second session). With
`--tags all` every pool image without the target is known to have an empty mask, but the view trains on the masked
images only (at 10% of BUSI: 55, of which 9 normal, while 92 pool images are tagged normal). This trains the view of
a finished run again from scratch, by the same rule and seed, on the masked images plus every unmasked image tagged
absent (empty targets), puts it in the run's model, chooses the CAM threshold on val again, and scores val and test
(lesion Dice before and after gating, dice_all) against the run's own view.

VARIANTS (default `absent`): `absent` as above; `batch` the masked images only, with the Dice term of the loss
computed over the whole batch (MONAI's `DiceCELoss(batch=True)`) instead of image by image, where an empty target
scores a loss near 1 for any pixel predicted; `absent+batch` both.

    python benchmarks/results/view_negatives_probe/probe.py RUN SEED OUT.json [VARIANT...]
"""
import json
import sys
import time
from pathlib import Path

import monai.losses
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from app.model_commands import load_model  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.calibrate import calibrate  # noqa: E402
from model.dataset import SPLIT_SEED, load_data_folder, load_items, masked_ids  # noqa: E402
from model.evaluate import evaluate  # noqa: E402
from model.image_view import ImageViewTraining, build_unet, fit, lesion_dice, mask_target  # noqa: E402

torch.set_num_threads(1)
run, seed, out_path = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
model = load_model(str(run)).eval()
summary = json.loads((run / "summary.json").read_text())
rule = ImageViewTraining(**summary["train_config"]["image_view"])
folder = load_data_folder(ROOT.parent / "shared" / "datasets" / "busi", seed=SPLIT_SEED)
pool = folder.split("pool")
masked = masked_ids(pool, summary["masks"], seed)
inputs = model_inputs(model.backbone, 0, DEFAULT_CACHE_DIR)
masked_items = load_items([s for s in pool if s.id in masked], inputs, with_images=True)
absent = load_items([s for s in pool if s.id not in masked and s.mask_path is not None], inputs, with_images=True)
absent = [i for i in absent if not i.mask.any()]  # the tag, not the mask, is what a user gives: absent => empty
val = load_items(folder.split("val"), inputs, with_images=True)
test = load_items(folder.split("test"), inputs, with_images=True)
val_lesion = [i for i in val if i.mask.any()]
val_images = torch.stack([i.image for i in val_lesion])
print(f"masked {len(masked_items)}, absent-tagged unmasked {len(absent)}", flush=True)


def score(label):
    kept = model.config.cam_threshold
    report = calibrate(model, val)
    row = {"cam_threshold": model.config.cam_threshold, "calibration": report}
    for name, items in (("val", val), ("test", test)):
        summary_, _ = evaluate(model, items, with_hd95=False)
        row[name] = {k: summary_[k] for k in ("dice_lesion", "dice_lesion_ungated", "dice_all")}
    model.config.cam_threshold = kept
    print(label, json.dumps(row), flush=True)
    return row


results = {"masked": len(masked_items), "absent": len(absent), "rule": vars(rule)}
results["run_view"] = score("run_view")
ORIGINAL_LOSS = monai.losses.DiceCELoss
for variant in sys.argv[4:] or ["absent"]:
    train_items = masked_items + (absent if "absent" in variant else [])
    monai.losses.DiceCELoss = ((lambda **kw: ORIGINAL_LOSS(batch=True, **kw)) if "batch" in variant
                               else ORIGINAL_LOSS)
    view = build_unet()
    started = time.time()
    fit_report = fit(view, torch.stack([i.image for i in train_items]),
                     torch.stack([mask_target(i.mask) for i in train_items]),
                     lambda: lesion_dice(view, val_images, [i.mask for i in val_lesion]), rule, seed)
    view.requires_grad_(False)
    results[f"{variant}_fit"] = {k: fit_report[k] for k in ("best_step", "score", "stopped_at")}
    results[f"{variant}_fit"]["seconds"] = round(time.time() - started, 1)
    model.image_view = view.eval()
    results[variant] = score(variant)
    out_path.write_text(json.dumps(results, indent=1))
