"""Does the image view gain from the frozen embedding as extra input channels? (one-off probe, twenty-second session)

The view (model.image_view: MONAI's U-Net at 128 px, trained from scratch on the masked images with affine, flip,
contrast and noise augmentation) reads only the grey image. Here it also reads the LiteMedSAM embedding, reduced by
PCA (fitted on pool embeddings) to K channels, cropped to the image, stretched to the view's square and warped with
the image by the same affine: pretrained features that the augmentation can still move. K=0 is the shipped view,
trained by the same code. Scored by the view's own lesion Dice (its mask > 0.5) on val (picks the checkpoint, as
shipped) and on the pool's lesion images whose masks training did not use (read for this diagnosis only).

    PYTHONPATH=. python benchmarks/results/view_features_probe/probe.py K SEED [FRACTION] [THREADS]
appends a JSON line to benchmarks/results/view_features_probe/results.jsonl. Never reads `test`.
"""
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.backbones import build_backbone
from model.cache import DEFAULT_CACHE_DIR, model_inputs
from model.dataset import load_data_folder, load_items, masked_ids
from model.image_view import SIZE, CHANNELS, ImageViewTraining, mask_target, to_original
from model.metrics import dice

K, SEED = int(sys.argv[1]), int(sys.argv[2])
FRACTION = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
MASK_SEED = int(sys.argv[5]) if len(sys.argv) > 5 else SEED  # which masks; SEED then only seeds the training
SAVE = sys.argv[6] if len(sys.argv) > 6 and sys.argv[6] != "-" else None  # .npz of val / held-out probabilities
EMA = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0  # > 0: also an EMA of the weights, scored beside them
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

base = build_backbone("litemedsam")
data = load_data_folder(ROOT.parent / "shared" / "datasets" / "busi")
pool, val_samples = data.split("pool"), data.split("val")
chosen = masked_ids(pool, FRACTION, MASK_SEED)
cache = model_inputs(base, 0, DEFAULT_CACHE_DIR)
pool_items = load_items(pool, cache, with_images=True)
val = load_items(val_samples, cache, with_images=True)
masked = [i for i in pool_items if i.id in chosen]
held_out = [i for i in pool_items if i.id not in chosen and i.mask is not None and i.mask.any()]


def valid_tokens(item) -> torch.Tensor:
    """The embedding's C x h x w tokens that cover the image (the rest is padding)."""
    h, w = item.geometry.resized
    grid = item.embedding.shape[-1]
    th, tw = math.ceil(h * grid / item.geometry.size), math.ceil(w * grid / item.geometry.size)
    return item.embedding[:, :th, :tw].float()


def fit_pca(items, k: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = []
    for item in rng.choice(len(items), size=min(150, len(items)), replace=False):
        tokens = valid_tokens(items[item]).flatten(1).T
        rows.append(tokens[torch.as_tensor(rng.choice(len(tokens), size=min(400, len(tokens)), replace=False))])
    x = torch.cat(rows)
    mean = x.mean(0)
    u, s, v = torch.linalg.svd(x - mean, full_matrices=False)
    scale = s[:k] / math.sqrt(len(x) - 1)
    return mean, v[:k].T / scale  # 256 -> k, each component with unit variance


def features(item, pca) -> torch.Tensor:
    """K x SIZE x SIZE: the image's tokens, projected, stretched to the view's square as image_input stretches."""
    mean, proj = pca
    tokens = valid_tokens(item)
    c, h, w = tokens.shape
    reduced = ((tokens.flatten(1).T - mean) @ proj).T.reshape(-1, h, w)
    return F.interpolate(reduced[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[0]


def inputs(items, pca) -> torch.Tensor:
    if K == 0:
        return torch.stack([i.image for i in items])
    return torch.stack([torch.cat([i.image, features(i, pca)]) for i in items])


def augmentation(seed: int, size: int):
    from monai.transforms import Compose, RandAdjustContrastd, RandAffined, RandFlipd, RandGaussianNoised

    keys = ["image", "features", "mask"]
    return Compose([
        RandAffined(keys, prob=0.8, rotate_range=math.radians(15), scale_range=(0.15, 0.15),
                    translate_range=(0.1 * size, 0.1 * size), mode=("bilinear", "bilinear", "nearest"),
                    padding_mode="zeros"),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        RandGaussianNoised("image", prob=0.2, std=0.03),
    ]).set_random_state(seed=seed)


def augmented(transform, x, y):
    out = []
    for xi, yi in zip(x, y):
        o = transform({"image": xi[:1], "features": xi[1:] if K else xi[:1] * 0, "mask": yi})
        parts = [torch.as_tensor(o[k]).as_subclass(torch.Tensor).float() for k in ("image", "features", "mask")]
        out.append((torch.cat([parts[0].clamp(0, 1)] + ([parts[1]] if K else [])), (parts[2] > 0.5).float()))
    return torch.stack([a for a, _ in out]), torch.stack([b for _, b in out])


@torch.no_grad()
def probabilities(net, x) -> torch.Tensor:
    net.eval()
    return torch.cat([torch.sigmoid(net(x[i:i + 16]))[:, 0] for i in range(0, len(x), 16)])


def lesion_dice(net, x, items, probs=None) -> float:
    probs = probabilities(net, x) if probs is None else probs
    scores = [dice((to_original(p, it.mask.shape) > 0.5).numpy(), it.mask) for p, it in zip(probs, items)
              if it.mask is not None and it.mask.any()]
    return float(np.mean(scores))


def main():
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    started = time.time()
    torch.manual_seed(SEED)
    pca = fit_pca(pool_items, K, SEED) if K else None
    x_train = inputs(masked, pca)
    y_train = torch.stack([mask_target(i.mask) for i in masked])
    val_lesion = [i for i in val if i.mask is not None and i.mask.any()]
    x_val, x_held = inputs(val_lesion, pca), inputs(held_out, pca)
    net = UNet(spatial_dims=2, in_channels=1 + K, out_channels=1, channels=CHANNELS,
               strides=(2,) * (len(CHANNELS) - 1), num_res_units=2)
    rule = ImageViewTraining()
    rng = np.random.default_rng(SEED)
    transform = augmentation(SEED, SIZE)
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.Adam(net.parameters(), lr=rule.lr)
    best = {"score": -1.0, "step": 0, "state": None}
    ema_net = copy.deepcopy(net) if EMA else None
    best_any = {"score": -1.0, "step": 0, "state": None, "ema": False}  # raw or EMA weights, whichever scores
    history = []
    step = 0
    while step < rule.steps:
        since = max(best["step"], rule.min_steps)
        if sum(r["step"] > since for r in history) >= rule.patience:
            break
        step += 1
        net.train()
        index = torch.as_tensor(rng.choice(len(x_train), size=min(rule.batch, len(x_train)), replace=False))
        x, y = augmented(transform, x_train[index], y_train[index])
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema_net is not None:
            with torch.no_grad():
                for e, v in zip(ema_net.state_dict().values(), net.state_dict().values()):
                    e.copy_(v) if not e.dtype.is_floating_point else e.mul_(EMA).add_(v, alpha=1 - EMA)
        if step % rule.eval_every == 0:
            score = lesion_dice(net, x_val, val_lesion)
            history.append({"step": step, "val": round(score, 4)})
            if score >= best["score"]:
                best = {"score": score, "step": step, "state": {k: v.clone() for k, v in net.state_dict().items()}}
            if ema_net is not None:
                ema_score = lesion_dice(ema_net, x_val, val_lesion)
                history[-1]["ema"] = round(ema_score, 4)
                for weights, value, is_ema in ((net, score, False), (ema_net, ema_score, True)):
                    if value >= best_any["score"]:
                        best_any = {"score": value, "step": step, "ema": is_ema,
                                    "state": {k: v.clone() for k, v in weights.state_dict().items()}}
    extra = {}
    if ema_net is not None:
        net.load_state_dict(best_any["state"])
        extra = {"ema": EMA, "any_val_best": round(best_any["score"], 4), "any_best_step": best_any["step"],
                 "any_is_ema": best_any["ema"], "any_held_out": round(lesion_dice(net, x_held, held_out), 4)}
    net.load_state_dict(best["state"])
    if SAVE:
        np.savez_compressed(SAVE, val=probabilities(net, x_val).half().numpy(),
                            held=probabilities(net, x_held).half().numpy())
    result = {"k": K, "seed": SEED, "mask_seed": MASK_SEED, "fraction": FRACTION, "masked": len(masked),
              "val_best": round(best["score"], 4),
              "best_step": best["step"], "stopped_at": step,
              "held_out_pool_lesions": round(lesion_dice(net, x_held, held_out), 4), "n_held_out": len(held_out),
              "seconds": round(time.time() - started, 1), "threads": torch.get_num_threads(), **extra,
              "history": history}
    with open(HERE / "results.jsonl", "a") as handle:
        handle.write(json.dumps(result) + "\n")
    print({k: v for k, v in result.items() if k != "history"}, flush=True)


if __name__ == "__main__":
    main()
