"""The classifier's image view: a per-location classifier on the image itself (MONAI's U-Net at 128 px), trained on
the masked images with augmentation of image and mask together, which the map head cannot have (it reads cached
embeddings, so its inputs cannot be warped). Its probability map, averaged with the map head's, is the CAM whose box
prompts SAM (`AdaSam.prompt_maps`).

Why: the map head on the frozen embedding is flat in the number of masks (BUSI test lesion Dice 0.61-0.65 from 5% to
100%, seed 0), while this U-Net rises with them; on the same runs the averaged map's box gave +0.022 to +0.035 test
lesion Dice at every fraction (benchmarks/README.md, "Thirteenth session"). The same network, trained the same
way, is the U-Net reference of the label-efficiency benchmark (benchmarks/unet_baseline.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from model.metrics import dice
from model.preprocess import Geometry, normalise_intensity

SIZE = 128  # the side the image view reads (images stretched to a square: flips stay in distribution)
CHANNELS = (16, 32, 64, 128, 256)


@dataclass
class ImageViewTraining:
    """The budget rule every method has: val every `eval_every` steps, stop after `patience` evaluations without a
    better score (the later of equals wins), counted only after `min_steps` (a from-scratch U-Net can predict nothing
    for a while: at 256 px and 10% BUSI masks val was 0 from step 300 to 1300); `steps` is only a cap."""

    steps: int = 30000  # a cap (a step of 4 at 128 px: ~0.06 s on 2 cores)
    batch: int = 4
    lr: float = 1e-3
    eval_every: int = 100
    patience: int = 4
    min_steps: int = 1500
    augment: bool = True
    ema_decay: float = 0.99  # what is scored and kept is an exponential moving average of the weights (about the
    # last 100 steps, as the EMA teacher of model.train); 0: the weights of the step itself

    def capped(self, steps: int) -> "ImageViewTraining":
        """This rule with at most `steps` steps (`adasam train --steps` caps every loop of a run)."""
        return replace(self, steps=min(self.steps, steps), min_steps=min(self.min_steps, steps))


def build_unet(channels: tuple[int, ...] = CHANNELS) -> torch.nn.Module:
    """A library U-Net (not hand written): 1 grey channel in, one logit per pixel out."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=channels,
                strides=(2,) * (len(channels) - 1), num_res_units=2)


def image_input(image: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """H x W (x C) pixels -> 1 x size x size grey in [0, 1], stretched to the square (no padding)."""
    grey = torch.from_numpy(normalise_intensity(image)[:1])[None]
    return F.interpolate(grey, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def mask_target(mask: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """A bool H x W mask -> 1 x size x size float target, stretched as `image_input` stretches the image."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="nearest-exact")[0]  # "nearest" shifts half a pixel


@torch.no_grad()
def probabilities(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """B x 1 x S x S images -> B x S x S P(target here), in eval mode."""
    net.eval()
    device = next(net.parameters()).device
    out = [torch.sigmoid(net(images[i:i + batch_size].to(device)))[:, 0].cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else images.new_zeros((0, *images.shape[-2:]))


def to_original(probability: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """An S x S map back to the image's H x W."""
    return F.interpolate(probability[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]


def on_grid(probability: torch.Tensor, geometries: list[Geometry], grid: int) -> torch.Tensor:
    """B x S x S maps of stretched images -> B x grid x grid over the embedding's frame: each image resized to its
    longest side and padded bottom/right, as the encoder saw it (padding reads 0)."""
    out = torch.zeros(len(geometries), grid, grid)
    for i, (p, g) in enumerate(zip(probability, geometries)):
        h, w = g.resized
        resized = F.interpolate(p[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        framed = F.pad(resized, (0, g.size - w, 0, g.size - h))
        out[i] = F.adaptive_avg_pool2d(framed, grid)[0, 0]
    return out


def lesion_dice(net: torch.nn.Module, images: torch.Tensor, masks: list[np.ndarray]) -> float:
    """Mean Dice of the view's own mask (> 0.5, at each image's size) over the images that contain the target (over
    all when none does): the score that picks its checkpoint."""
    scores, lesion = [], []
    for p, truth in zip(probabilities(net, images), masks):
        scores.append(dice((to_original(p, truth.shape) > 0.5).numpy(), truth))
        lesion.append(bool(truth.any()))
    chosen = [s for s, present in zip(scores, lesion) if present] or scores
    return float(np.mean(chosen)) if chosen else math.nan


def augmentation(seed: int, size: int):
    """Random affine (rotation up to 15 degrees, scale +-15%, shift up to 10% of the side), horizontal flip, contrast
    and noise: MONAI's transforms, applied to one C x S x S image and its mask together, seeded."""
    from monai.transforms import Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised

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


def fit(net: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, val_score: Callable[[], float],
        config: ImageViewTraining, seed: int, log: Callable[[dict], None] = lambda record: None,
        after_step: Callable[[], None] = lambda: None, dtype: torch.dtype = torch.float32) -> dict:
    """Train `net` on N x 1 x S x S images and targets (Dice + cross-entropy, Adam) until `val_score` (higher is
    better; called in eval mode every `eval_every` steps, on the averaged weights while `net` holds them) stops
    improving; `net` ends with the best weights. `after_step` is called after every step; what it raises ends the
    fit there (a stop request: the fit may take minutes). Returns {"best_step", "score", "stopped_at", "history"}.
    `dtype` bfloat16: each step computes in it (autocast; the trainer's choice, model.device.training_dtype);
    weights, loss and validation stay float32.

    The averaged weights (`config.ema_decay`): 55 BUSI masks give a noisy val curve step to step, and the average
    scored higher on val at most evaluations and on held-out pool lesions (benchmarks/README.md, "Twenty-second
    session")."""
    from monai.losses import DiceCELoss

    if not len(images):
        raise ValueError("no masked image to train the image view on")
    rng = np.random.default_rng(seed)
    device = next(net.parameters()).device
    loss_fn = DiceCELoss(sigmoid=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    transform = augmentation(seed, images.shape[-1]) if config.augment else None
    average = averaged(net, config.ema_decay)
    best = {"score": -math.inf, "step": 0, "state": None}
    history: list[dict] = []
    step = 0
    while step < config.steps and not stalled(history, max(best["step"], config.min_steps), config.patience):
        step += 1
        net.train()
        index = torch.as_tensor(rng.choice(len(images), size=min(config.batch, len(images)), replace=False))
        x, y = images[index], targets[index]
        if transform is not None:
            x, y = augmented(transform, x, y)
        else:
            flip = torch.as_tensor(rng.random(len(index)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None, None], y.flip(-1), y)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = net(x.to(device))
        loss = loss_fn(logits.float(), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(net)
        if step % config.eval_every == 0 or step == config.steps:
            trained = _copy(net.state_dict())
            if average is not None:
                net.load_state_dict(average.module.state_dict())
            net.eval()
            value = val_score()
            value = float(step) if math.isnan(value) else value  # nothing to score on: the latest wins
            history.append({"step": step, "score": value})
            log({"image_view_step": step, "score": value, "loss": float(loss.detach())})
            if value >= best["score"]:  # the later of equals, as model.train
                best = {"score": value, "step": step, "state": _copy(net.state_dict())}
            net.load_state_dict(trained)
        after_step()
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    net.eval()
    return {"best_step": best["step"], "score": best["score"], "stopped_at": step, "history": history}


def averaged(net: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of `net`'s weights (torch's AveragedModel), None for `decay` 0. The decay
    ramps up as (1 + n) / (10 + n) over the first updates, so a short fit is not averaged with its first steps."""
    if not decay:
        return None

    def ema(average: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        rate = min(decay, (1 + float(updates)) / (10 + float(updates)))
        return average * rate + current * (1 - rate)

    return torch.optim.swa_utils.AveragedModel(net, avg_fn=ema, use_buffers=True)


def _copy(state: dict) -> dict:
    return {k: v.detach().clone() for k, v in state.items()}


def stalled(history: list[dict], since: int, patience: int) -> bool:
    """`patience` evaluations in a row after step `since` (the best one's, or the floor `min_steps` while the best
    came before it): the stopping rule of model.train.Trainer.stalled."""
    return bool(patience) and sum(r["step"] > since for r in history) >= patience
