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
import torch.nn.functional as F

from model.dataset import SPLIT_SEED, Sample, load_data_folder, masked_ids
from model.device import default_device, module_device
from model.metrics import dice, hd95, summarise
from model.preprocess import normalise_intensity, read_image, read_mask
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
        grey = torch.from_numpy(normalise_intensity(image)[:1])[None]
        images.append(F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0])
        target = torch.from_numpy(mask.astype(np.float32))[None, None]
        targets.append(F.interpolate(target, size=(size, size), mode="nearest")[0])
        masks.append(mask)
    return Split(torch.stack(images), torch.stack(targets), masks, [s.id for s in samples])


def augmentation(seed: int, size: int):
    """Random affine (rotation up to 15 degrees, scale +-15%, shift up to 10% of the side), horizontal flip, contrast
    and noise: MONAI's transforms, applied to one C x S x S image and its mask together, seeded."""
    from monai.transforms import (Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised)

    keys = ["image", "mask"]
    return Compose([
        RandAffined(keys, prob=0.8, rotate_range=math.radians(15), scale_range=(0.15, 0.15),
                    translate_range=(0.1 * size, 0.1 * size), mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        RandGaussianNoised("image", prob=0.2, std=0.03),  # std drawn from U(0, 0.03)
    ]).set_random_state(seed=seed)


def augmented(transform, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch through `transform`, image by image (each gets its own draw)."""
    out = [transform({"image": x, "mask": y}) for x, y in zip(images, targets)]
    plain = [tuple(torch.as_tensor(o[key]).as_subclass(torch.Tensor) for key in ("image", "mask"))
             for o in out]  # MONAI returns MetaTensors
    images = torch.stack([x.float().clamp(0, 1) for x, _ in plain])
    return images, torch.stack([(y > 0.5).float() for _, y in plain])


def build_unet(config: UNetConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=config.channels,
                strides=(2,) * (len(config.channels) - 1), num_res_units=2)


@torch.no_grad()
def score(net: torch.nn.Module, split: Split, with_hd95: bool) -> dict:
    """The same figures `adasam evaluate` reports (prompt-related ones do not apply to a U-Net)."""
    net.eval()
    rows = []
    device = module_device(net)
    for start in range(0, len(split.ids), 16):
        probs = torch.sigmoid(net(split.images[start:start + 16].to(device))).cpu()
        for k, prob in enumerate(probs):
            truth = split.masks[start + k]
            full = F.interpolate(prob[None], size=truth.shape, mode="bilinear", align_corners=False)[0, 0]
            prediction = (full > 0.5).numpy()
            lesion = bool(truth.any())
            rows.append({"lesion": lesion, "probability": float(prob.max()), "dice": dice(prediction, truth),
                         "hd95": hd95(prediction, truth) if (with_hd95 and lesion) else math.nan})
    return summarise(rows)


def train_unet(data: str, fraction: float, seed: int, out: Path, config: UNetConfig) -> dict:
    """Train, pick the step with the best val lesion Dice, score test; writes and returns out/eval_auto.json."""
    result_path = out / "eval_auto.json"
    settings = {**config.__dict__, "channels": list(config.channels)}
    if result_path.exists():
        done = json.loads(result_path.read_text())
        if done.get("unet") == settings:
            return done
        print(f"{out}: trained with other settings ({done.get('unet')}); training again", flush=True)
    started = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    folder = load_data_folder(data, seed=SPLIT_SEED)
    chosen = masked_ids(folder.split("pool"), fraction, seed)
    train = load_split([s for s in folder.split("pool") if s.id in chosen], config.size)
    val = load_split([s for s in folder.split("val") if s.mask_path], config.size)
    test = load_split([s for s in folder.split("test") if s.mask_path], config.size)
    from monai.losses import DiceCELoss

    device = default_device()
    net = build_unet(config).to(device)
    loss_fn = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    transform = augmentation(seed, config.size) if config.augment else None
    best = {"score": -math.inf, "step": 0, "state": None}
    history = []
    step = 0
    while step < config.steps and not stalled(history, max(best["step"], config.min_steps), config.patience):
        step += 1
        net.train()
        index = torch.as_tensor(rng.choice(len(train.ids), size=min(config.batch, len(train.ids)), replace=False))
        x, y = train.images[index], train.targets[index]
        if transform is not None:
            x, y = augmented(transform, x, y)
        else:
            flip = torch.as_tensor(rng.random(len(index)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None, None], y.flip(-1), y)
        loss = loss_fn(net(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config.eval_every == 0 or step == config.steps:
            summary = score(net, val, with_hd95=False) if val.ids else {}
            value = summary.get("dice_lesion", float(step)) if summary.get("n_lesion") else summary.get(
                "dice_all", float(step))
            history.append({"step": step, "score": value})
            if value >= best["score"]:  # the later of equals, as model.train
                state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                best = {"score": value, "step": step, "state": state}
    net.load_state_dict(best["state"])
    result = score(net, test, with_hd95=True)
    result.update({"split": "test", "method": "unet", "masks": fraction, "seed": seed, "n_masked": len(train.ids),
                   "best_step": best["step"], "stopped_at": step, "val_history": history,
                   "train_seconds": time.time() - started,
                   "unet": settings})
    out.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2, default=float))
    torch.save(best["state"], out / "unet.pt")  # the val-picked weights, for probes that reuse the U-Net's maps
    return result


def stalled(history: list[dict], since: int, patience: int) -> bool:
    """`patience` evaluations in a row after step `since` (the best one's, or the floor `min_steps` while the best
    came before it): the stopping rule of model.train.Trainer.stalled."""
    return bool(patience) and sum(r["step"] > since for r in history) >= patience


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="run folder: eval_auto.json is written there")
    parser.add_argument("--masks", type=float, default=0.1, help="fraction of the pool's masks (as adasam train)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=UNetConfig.size)
    parser.add_argument("--steps", type=int, default=UNetConfig.steps, help="cap; val decides when to stop")
    parser.add_argument("--no-augment", action="store_true", help="flips only (the baseline before issue 10)")
    args = parser.parse_args()
    config = UNetConfig(size=args.size, steps=args.steps, augment=not args.no_augment)
    result = train_unet(args.data, args.masks, args.seed, Path(args.out), config)
    print(json.dumps({k: v for k, v in result.items() if k != "val_history"}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
