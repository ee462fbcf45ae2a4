"""The from-scratch baseline of the label-efficiency benchmark: MONAI's U-Net trained on exactly the masks that
`adasam train --masks F --seed S` uses, the checkpoint picked on val, scored on test with model.metrics.

A library U-Net (not hand written) so nobody can say the baseline was weakened. Images are stretched to a square
(no padding, so horizontal flips stay in distribution) and predictions resized back to each original size. Presence
is the maximum pixel probability (AUC) and the mask is empty when nothing passes 0.5, i.e. presence = mask non-empty.

Trained to convergence by the budget rule every method has (model.train): evaluate on val every `eval_every` steps
and stop after `patience` evaluations without a better score (the later of equals wins), `steps` being only a cap
and `min_steps` a floor; with MONAI's random affine, flip, contrast and noise augmentation of each training image and
its mask.

    python benchmarks/unet_baseline.py --data ../shared/datasets/busi --masks 0.1 --seed 0 --out DIR [--size 128]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model import image_view
from model.dataset import SPLIT_SEED, Sample, load_data_folder, masked_ids
from model.device import default_device
from model.image_view import (ImageViewTraining, fit, image_input, lesion_dice, mask_target, probabilities,
                              to_original)
from model.metrics import dice, hd95, summarise
from model.preprocess import read_image, read_mask
from model.train import TrainConfig


@dataclass
class UNetConfig:
    size: int = 256
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    steps: int = 30000  # a cap: training stops when val stops improving (a step of 4: ~0.13 s at 256 px on 2 cores)
    batch: int = 4
    lr: float = 1e-3
    eval_every: int = 100
    patience: int = TrainConfig.patience  # evaluations without a better val score before stopping: every method's rule
    min_steps: int = 1500  # patience counts evaluations after this step only: a from-scratch U-Net can predict nothing
    # for a while (256 px, 10% masks: val 0 from step 300, stopped at 600); every 128 px BUSI run's best came later
    augment: bool = True
    ema_decay: float = 0.0  # > 0: score and keep an average of the weights, as the image view does; the committed
    # reference line (benchmarks/README.md) was measured with the step's own weights


@dataclass
class Split:
    images: torch.Tensor  # N x 1 x S x S in [0, 1]
    targets: torch.Tensor  # N x 1 x S x S in {0, 1}
    masks: list[np.ndarray]  # original-size bool masks (what the metrics compare against)
    ids: list[str]


def load_split(samples: list[Sample], size: int) -> Split:
    images, targets, masks = [], [], []
    for s in samples:
        image = read_image(s.image_path)
        mask = read_mask(s.mask_path, image.shape[:2])
        images.append(image_input(image, size))
        targets.append(mask_target(mask, size))
        masks.append(mask)
    return Split(torch.stack(images), torch.stack(targets), masks, [s.id for s in samples])


def build_unet(config: UNetConfig) -> torch.nn.Module:
    return image_view.build_unet(config.channels)


def score(net: torch.nn.Module, split: Split, with_hd95: bool) -> dict:
    """The same figures `adasam evaluate` reports (prompt-related ones do not apply to a U-Net)."""
    rows = []
    for prob, truth in zip(probabilities(net, split.images), split.masks):
        prediction = (to_original(prob, truth.shape) > 0.5).numpy()
        lesion = bool(truth.any())
        rows.append({"lesion": lesion, "probability": float(prob.max()), "dice": dice(prediction, truth),
                     "hd95": hd95(prediction, truth) if (with_hd95 and lesion) else math.nan})
    return summarise(rows)


def train_unet(data: str, fraction: float, seed: int, out: Path, config: UNetConfig) -> dict:
    """Train, pick the step with the best val lesion Dice, score test; writes and returns out/eval_auto.json."""
    result_path = out / "eval_auto.json"
    settings = {**config.__dict__, "channels": list(config.channels)}
    if not config.ema_decay:
        del settings["ema_decay"]  # as runs recorded it before the field existed: they stay done
    if result_path.exists():
        done = json.loads(result_path.read_text())
        if done.get("unet") == settings:
            return done
        print(f"{out}: trained with other settings ({done.get('unet')}); training again", flush=True)
    started = time.time()
    torch.manual_seed(seed)
    folder = load_data_folder(data, seed=SPLIT_SEED)
    chosen = masked_ids(folder.split("pool"), fraction, seed)
    train = load_split([s for s in folder.split("pool") if s.id in chosen], config.size)
    val = load_split([s for s in folder.split("val") if s.mask_path], config.size)
    test = load_split([s for s in folder.split("test") if s.mask_path], config.size)
    net = build_unet(config).to(default_device())
    training = ImageViewTraining(steps=config.steps, batch=config.batch, lr=config.lr, eval_every=config.eval_every,
                                 patience=config.patience, min_steps=config.min_steps, augment=config.augment,
                                 ema_decay=config.ema_decay)
    fitted = fit(net, train.images, train.targets, lambda: lesion_dice(net, val.images, val.masks), training, seed)
    result = score(net, test, with_hd95=True)
    result.update({"split": "test", "method": "unet", "masks": fraction, "seed": seed, "n_masked": len(train.ids),
                   "best_step": fitted["best_step"], "stopped_at": fitted["stopped_at"],
                   "val_history": fitted["history"], "train_seconds": time.time() - started,
                   "unet": settings})
    out.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2, default=float))
    torch.save(net.state_dict(), out / "unet.pt")  # the val-picked weights, for probes that reuse the U-Net's maps
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="run folder: eval_auto.json is written there")
    parser.add_argument("--masks", type=float, default=0.1, help="fraction of the pool's masks (as adasam train)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=UNetConfig.size)
    parser.add_argument("--steps", type=int, default=UNetConfig.steps, help="cap; val decides when to stop")
    parser.add_argument("--no-augment", action="store_true", help="flips only (the baseline before issue 10)")
    parser.add_argument("--ema-decay", type=float, default=UNetConfig.ema_decay,
                        help="keep an average of the weights (0.99: as the image view); default: the step's own")
    args = parser.parse_args()
    config = UNetConfig(size=args.size, steps=args.steps, augment=not args.no_augment, ema_decay=args.ema_decay)
    result = train_unet(args.data, args.masks, args.seed, Path(args.out), config)
    print(json.dumps({k: v for k, v in result.items() if k != "val_history"}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
