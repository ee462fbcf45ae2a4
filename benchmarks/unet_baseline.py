"""The from-scratch baseline of the label-efficiency benchmark: MONAI's U-Net trained on exactly the masks that
`adasam train --masks F --seed S` uses, the checkpoint picked on val, scored on test with model.metrics.

A library U-Net (not hand written) so nobody can say the baseline was weakened. Images are stretched to a square
(no padding, so horizontal flips stay in distribution) and predictions resized back to each original size. Presence
is the maximum pixel probability (AUC) and the mask is empty when nothing passes 0.5, i.e. presence = mask non-empty.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.dataset import SPLIT_SEED, Sample, load_data_folder, masked_ids
from model.device import default_device, module_device
from model.metrics import dice, hd95, nanmean, presence_auc
from model.preprocess import normalise_intensity, read_image, read_mask


@dataclass
class UNetConfig:
    size: int = 256
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    steps: int = 1000  # ~1.3 s per step of 4 at 256 px on 2 idle cores (8 s per step of 8 on the busy machine)
    batch: int = 4
    lr: float = 1e-3
    eval_every: int = 100


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
    lesion_rows = [r for r in rows if r["lesion"]]
    dice_lesion = nanmean([r["dice"] for r in lesion_rows])
    return {"n_images": len(rows), "n_lesion": len(lesion_rows), "dice_lesion": dice_lesion,
            "dice_lesion_ungated": dice_lesion, "dice_all": float(np.mean([r["dice"] for r in rows])),
            "presence_auc": presence_auc([r["probability"] for r in rows], [r["lesion"] for r in rows]),
            "hd95_lesion": nanmean([r["hd95"] for r in lesion_rows])}


def train_unet(data: str, fraction: float, seed: int, out: Path, config: UNetConfig) -> dict:
    """Train, pick the step with the best val lesion Dice, score test; writes and returns out/eval_auto.json."""
    result_path = out / "eval_auto.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
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
    best = {"score": -math.inf, "step": 0, "state": None}
    for step in range(1, config.steps + 1):
        net.train()
        index = torch.as_tensor(rng.choice(len(train.ids), size=min(config.batch, len(train.ids)), replace=False))
        x, y = train.images[index].to(device), train.targets[index].to(device)
        flip = torch.as_tensor(rng.random(len(index)) < 0.5, device=x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None, None], y.flip(-1), y)
        loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % config.eval_every == 0 or step == config.steps:
            summary = score(net, val, with_hd95=False) if val.ids else {}
            value = summary.get("dice_lesion", float(step)) if summary.get("n_lesion") else summary.get(
                "dice_all", float(step))
            if value > best["score"]:
                state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                best = {"score": value, "step": step, "state": state}
    net.load_state_dict(best["state"])
    result = score(net, test, with_hd95=True)
    result.update({"split": "test", "method": "unet", "masks": fraction, "seed": seed, "n_masked": len(train.ids),
                   "best_step": best["step"], "train_seconds": time.time() - started,
                   "unet": {**config.__dict__, "channels": list(config.channels)}})
    out.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2, default=float))
    return result
