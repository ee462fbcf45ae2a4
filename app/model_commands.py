"""Model sub-commands: `adasam train`, `adasam evaluate`, `adasam predict` (a contract other tools rely on)."""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from app.errors import CommandError


def register(sub) -> None:
    train = sub.add_parser("train", help="train ADA-SAM (or the supervised baseline) on a data folder")
    train.add_argument("--data", required=True, help="folder with images/, masks/ and optionally manifest.csv")
    train.add_argument("--out", required=True, help="run folder to write (model.pt, last.pt, summary.json)")
    train.add_argument("--method", choices=["adasam", "supervised", "meanteacher"], default="adasam",
                       help="meanteacher: supervised + EMA-teacher consistency on unlabeled images (no classifier/CAM)")
    train.add_argument("--masks", type=float, default=0.1, help="fraction of the pool whose masks are used")
    train.add_argument("--tags", choices=["all", "masked"], default="all",
                       help="present/absent tags for every pool image, or only for the masked ones")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--backbone", default="litemedsam", help="NAME or NAME:CHECKPOINT (sam_vit_b:/path.pth)")
    train.add_argument("--cache", default=None, help="embedding cache folder (default ~/.cache/adasam/embeddings)")
    train.add_argument("--steps", type=int, default=None, help="most training steps (default 3000; training stops once "
                       "4 validations in a row, 50 steps apart, bring no better val Dice)")
    train.add_argument("--encoder-lora", type=int, default=0, metavar="RANK",
                       help="LoRA rank on the encoder attention (needs a GPU to be practical)")
    train.add_argument("--cam-threshold", type=float, default=None,
                       help="fix the CAM threshold (default: the best of 0.2-0.5 on val, 0.4 without val images)")
    train.add_argument("--no-unlabeled", action="store_true", help="ablation: ignore the unlabeled images")
    train.add_argument("--freeze-adapter", action="store_true", help="ablation: no gradient feedback")
    train.add_argument("--prompt", choices=["cam", "whole"], default="cam",
                       help="ablation: 'whole' prompts with the whole image instead of the CAM box")
    train.add_argument("--init", default=None, help="start from this model's weights (run folder or .pt)")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="score a trained model on a split of a data folder")
    ev.add_argument("--data", required=True)
    ev.add_argument("--model", required=True,
                    help="run folder or model .pt; 'pretrained[:BACKBONE]' scores the untrained backbone prompted "
                         "by the whole image (or, with --prompt oracle, by the ground-truth box)")
    ev.add_argument("--split", default="test", choices=["pool", "val", "test"])
    ev.add_argument("--json", default=None, help="write the summary and per-image rows here")
    ev.add_argument("--prompt", choices=["auto", "oracle"], default="auto")
    ev.add_argument("--cache", default=None)
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="write automatic masks and CAM overlays for images")
    pr.add_argument("--model", required=True)
    pr.add_argument("images", nargs="+")
    pr.add_argument("--out", required=True)
    pr.add_argument("--cache", default=None)
    pr.set_defaults(func=cmd_predict)


def cmd_train(args: argparse.Namespace) -> int:
    from model.atomic import write_json
    from model.backbones import build_backbone
    from model.cache import DEFAULT_CACHE_DIR, EmbeddingCache
    from model.dataset import SPLIT_SEED, load_data_folder, load_items, masked_ids
    from model.train import TrainConfig, Trainer, TrainingData, build_training_model, model_config

    if not 0 < args.masks <= 1:
        raise CommandError(f"--masks must be in (0, 1], got {args.masks}")
    out = Path(args.out)
    folder = load_data_folder(args.data, seed=SPLIT_SEED)
    pool, val = folder.split("pool"), folder.split("val")
    maskable = [s for s in pool if s.mask_path is not None]
    if not maskable:
        raise CommandError(f"{args.data}: no pool image has a mask in masks/")
    backbone = build_backbone(args.backbone)
    if args.encoder_lora:
        raise CommandError("--encoder-lora trains the encoder, so it cannot use cached embeddings; this command "
                           "trains on cached embeddings only (see model.lora and tests for the LoRA path)")
    chosen = masked_ids(pool, args.masks, args.seed)
    print(f"data: {len(pool)} pool ({len(chosen)} masked, seed {args.seed}), {len(val)} val; split from "
          f"{folder.split_source}; test split untouched")
    cache = EmbeddingCache(args.cache or DEFAULT_CACHE_DIR, backbone)
    pool_items = load_items(pool, cache)
    val_items = load_items(val, cache)
    masked, unlabeled, tagged = [], [], []
    for item in pool_items:
        if item.id in chosen:
            masked.append(item)
        else:
            item.mask = None  # the mask of an unchosen image must not leak into training
            if args.tags == "masked":
                item.tag = None
            unlabeled.append(item)
        if item.tag is not None:
            tagged.append(item)
    data = TrainingData(masked=masked, tagged=tagged, unlabeled=unlabeled, val=val_items)
    settings = {"cam_threshold": args.cam_threshold} if args.cam_threshold is not None else {}
    config = model_config(args.method, args.backbone, data, **settings,
                          **({"prompt": "whole"} if args.prompt == "whole" else {}))
    if args.method == "adasam" and not config.has_negatives:
        print("note: no image is tagged target-absent: every image is taken to contain the target, and the "
              "classifier's map learns where it lies from the masks alone")
    train_config = TrainConfig(seed=args.seed, use_unlabeled=not args.no_unlabeled,
                               calibrate=args.cam_threshold is None,
                               freeze_adapter=args.freeze_adapter, **({"steps": args.steps} if args.steps else {}))
    model = build_training_model(config, args.seed, backbone, args.init)
    try:  # before anything is written: a data set the trainer refuses leaves no half-made run folder
        trainer = Trainer(model, train_config, data, out)
    except ValueError as exc:  # e.g. none of the masked pool images contains the target
        raise CommandError(f"{args.data}: {exc} (use a larger --masks or another --seed)") from None
    out.mkdir(parents=True, exist_ok=True)
    folder.write_split(out / "split.csv")
    if (out / "last.pt").exists():
        trainer.load_resume_state(out / "last.pt")
        print(f"resuming {out} from step {trainer.step}")
    started = time.time()
    best = trainer.run()
    elapsed = time.time() - started
    write_json(out / "summary.json", {
        "method": args.method, "masks": args.masks, "tags": args.tags, "seed": args.seed, "backbone": args.backbone,
        "n_pool": len(pool), "n_masked": len(masked), "n_tagged": len(tagged), "n_unlabeled": len(unlabeled),
        "n_val": len(val), "model_config": asdict(config), "train_config": asdict(train_config),
        "best": best, "train_seconds": elapsed, "embeddings_computed": cache.encoded})
    print(f"trained in {elapsed:.0f} s; best val step {best['step']} (score {best['score']:.3f}); wrote {out}/model.pt")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.atomic import write_json
    from model.cache import DEFAULT_CACHE_DIR, EmbeddingCache
    from model.dataset import SPLIT_SEED, load_data_folder, load_items
    from model.evaluate import evaluate

    folder = load_data_folder(args.data, seed=SPLIT_SEED)
    samples = [s for s in folder.split(args.split) if s.mask_path is not None]
    if not samples:
        raise CommandError(f"{args.data}: no image with a mask in split {args.split!r}")
    model = load_model(args.model)
    items = load_items(samples, EmbeddingCache(args.cache or DEFAULT_CACHE_DIR, model.backbone))
    started = time.time()
    summary, rows = evaluate(model, items, prompt=args.prompt)
    summary.update({"split": args.split, "model": str(args.model), "method": model.config.method,
                    "seconds": time.time() - started})
    print(format_table(summary))
    if args.json:
        write_json(Path(args.json), {**summary, "images": rows})
    return 0


def load_model(spec: str):
    """A trained model from a run folder / .pt, or `pretrained[:BACKBONE]`: the shipped weights, untrained heads,
    prompted by the whole image (the zero-shot baseline)."""
    from model.adasam import AdaSamConfig, build_adasam, load_checkpoint

    if spec == "pretrained" or spec.startswith("pretrained:"):
        backbone = spec.partition(":")[2] or "litemedsam"
        return build_adasam(AdaSamConfig(backbone=backbone, method="supervised", cascade=0)).eval()
    return load_checkpoint(spec)[0]


def format_table(summary: dict) -> str:
    keys = ["n_images", "n_lesion", "dice_lesion", "dice_lesion_ungated", "dice_all", "presence_auc", "hd95_lesion",
            "prompt_box_iou_lesion", "prompt_fallback_rate", "prompt"]
    width = max(map(len, keys))
    lines = []
    for key in keys:
        value = summary.get(key)
        text = "n/a" if isinstance(value, float) and math.isnan(value) else (
            f"{value:.4f}" if isinstance(value, float) else str(value))
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from model.cache import DEFAULT_CACHE_DIR, EmbeddingCache
    from model.inference import Predictor
    from model.overlay import cam_overlay
    from model.preprocess import read_image

    model = load_model(args.model)
    images = [read_image(p) for p in args.images]  # every file is checked before anything is written
    cache = EmbeddingCache(args.cache or DEFAULT_CACHE_DIR, model.backbone)
    predictor = Predictor(model)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    for path, image, (embedding, geometry) in zip(args.images, images, cache.get_many(images)):
        p = predictor.predict(embedding, geometry)
        stem = Path(path).stem
        Image.fromarray((p.mask * 255).astype(np.uint8)).save(tmp / f"{stem}_mask.png")
        Image.fromarray(cam_overlay(image, p.cam, p.mask, p.box)).save(tmp / f"{stem}_cam.png")
        rows.append({"image": str(path), "probability": p.probability, "box": [float(v) for v in p.box],
                     "uncertainty": asdict(p.uncertainty), "mask_pixels": int(p.mask.sum())})
    (tmp / "predictions.json").write_text(json.dumps(rows, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    for file in tmp.iterdir():
        file.replace(out / file.name)
    tmp.rmdir()
    print(f"wrote {len(rows)} masks and CAM overlays to {out}")
    return 0
