"""Model sub-commands: `adasam train`, `adasam evaluate`, `adasam predict` (a contract other tools rely on)."""
from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import tempfile
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
                       "4 validations in a row, 50 steps apart, bring no better val Dice); caps the image view's "
                       "own training too")
    train.add_argument("--encoder-lora", type=int, default=0, metavar="RANK",
                       help="LoRA rank on the encoder's attention: the encoder trains, so every step encodes its "
                            "images (a GPU's work: 0.37 s a step on an H200 with TF32, minutes on 2 CPU cores)")
    train.add_argument("--image-view", action=argparse.BooleanOptionalAction, default=None,
                       help="the classifier also reads the image: a U-Net at 128 px, trained first on the masked "
                            "images with augmentation, last again on the model's own proposals for the unlabeled "
                            "ones; its map is averaged with the CAM that prompts SAM, and the model keeps it only if "
                            "that beats the CAM alone on val. Default: on for ADA-SAM with the CAM prompt and the "
                            "frozen encoder (minutes more on 2 CPU cores; +0.02 test lesion Dice on BUSI at 10%% "
                            "masks, seeds 0-2); --no-image-view: the CAM alone")
    train.add_argument("--cam-threshold", type=float, default=None,
                       help="fix the CAM threshold (default: the best of 0.2-0.5 on val, 0.4 without val images)")
    train.add_argument("--no-unlabeled", action="store_true", help="ablation: ignore the unlabeled images")
    train.add_argument("--freeze-adapter", action="store_true", help="ablation: no gradient feedback")
    train.add_argument("--prompt", choices=["cam", "whole"], default="cam",
                       help="ablation: 'whole' prompts with the whole image instead of the CAM box")
    train.add_argument("--init", default=None, help="start from this model's weights (run folder or .pt)")
    train.set_defaults(func=cmd_train)

    em = sub.add_parser("embed", help="fill the embedding cache for a data folder or a workspace (all splits)",
                        description="Encode every image SOURCE holds that the cache lacks, so that training, scoring "
                                    "and the web page start without waiting for the encoder. Started by torchrun "
                                    "(torchrun --nproc-per-node N -m app.cli embed ...), the images are split across "
                                    "the N processes, each writing to the same cache.")
    em.add_argument("source", help="data folder (images/ ...) or workspace folder (with workspace.db)")
    em.add_argument("--backbone", default="litemedsam", help="NAME or NAME:CHECKPOINT")
    em.add_argument("--cache", default=None, help="embedding cache folder (default ~/.cache/adasam/embeddings)")
    em.set_defaults(func=cmd_embed)

    sc = sub.add_parser("score", help="score a workspace's unlabeled pool with its latest model and order the queue",
                        description="What the background trainer does after each round, as a command: every "
                                    "unlabeled pool image the workspace's latest published model has not scored yet "
                                    "is scored (probability, uncertainty, prompt box; the mask's uncertainty only "
                                    "for a strategy that reads it) and the queue is ordered by the workspace's "
                                    "strategy. Started by torchrun, the images are split across the "
                                    "processes; process 0 orders the queue once all are done.")
    sc.add_argument("workspace")
    sc.add_argument("--backbone", default="litemedsam", help="the backbone the workspace's models were trained on")
    sc.add_argument("--cache", default=None, help="embedding cache folder (default ~/.cache/adasam/embeddings)")
    sc.set_defaults(func=cmd_score)

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
    pr.add_argument("--out", required=True, help="a new or empty folder: NAME_mask.png and NAME_cam.png per image "
                    "(NAME_2 ... where names repeat) and predictions.json, which lists them")
    pr.add_argument("--cache", default=None)
    pr.set_defaults(func=cmd_predict)


def cmd_train(args: argparse.Namespace) -> int:
    """`adasam train`, in one process or, started by torchrun, in each of several (see model.distributed)."""
    from model.backbones import build_backbone
    from model.dataset import SPLIT_SEED, load_data_folder
    from model.device import default_device
    from model.distributed import join, leave
    from model.train import check_init

    if not 0 < args.masks <= 1:
        raise CommandError(f"--masks must be in (0, 1], got {args.masks}")
    if args.seed < 0:
        raise CommandError(f"--seed must be 0 or more, got {args.seed}")
    if args.cam_threshold is not None and not 0 < args.cam_threshold < 1:  # NaN fails too
        raise CommandError(f"--cam-threshold is a probability in (0, 1), got {args.cam_threshold} (at 1 or more "
                           "no map reaches it and every prompt is the fallback box)")
    if args.steps is not None and args.steps < 1:
        raise CommandError(f"--steps must be at least 1, got {args.steps}")
    folder = load_data_folder(args.data, seed=SPLIT_SEED)
    pool, val = folder.split("pool"), folder.split("val")
    maskable = [s for s in pool if s.mask_path is not None]
    if not maskable:
        raise CommandError(f"{args.data}: no pool image has a mask in masks/")
    if args.encoder_lora < 0:
        raise CommandError(f"--encoder-lora must be a rank >= 1 (0: frozen encoder), got {args.encoder_lora}")
    if args.encoder_lora and args.method != "adasam":
        raise CommandError("--encoder-lora trains ADA-SAM's encoder; the decoder-only baselines keep it frozen")
    view_fits = args.method == "adasam" and not args.encoder_lora and args.prompt == "cam"
    if args.image_view and not view_fits:
        raise CommandError("--image-view adds to ADA-SAM's CAM prompt: not with --method other than adasam, "
                           "--encoder-lora or --prompt whole")
    args.image_view = view_fits if args.image_view is None else args.image_view
    ranks = join(default_device())  # one process, or one of torchrun's: rank 0 validates, writes and prints
    try:
        backbone = build_backbone(args.backbone)  # after join: on this rank's GPU
        if args.init:  # refused now, not after the data is embedded
            check_init(args.init, args.encoder_lora, backbone)
        return _train(args, folder, pool, val, backbone, ranks)
    finally:
        leave(ranks)


def _train(args: argparse.Namespace, folder, pool: list, val: list, backbone, ranks) -> int:
    from model.atomic import write_json
    from model.cache import DEFAULT_CACHE_DIR, model_inputs
    from model.dataset import load_items, masked_ids
    from model.image_view import ImageViewTraining
    from model.train import (TrainConfig, Trainer, TrainingData, build_training_model, model_config,
                             written_val_dice)

    say = print if ranks.main else _silent
    out = Path(args.out)
    chosen = masked_ids(pool, args.masks, args.seed)
    say(f"data: {len(pool)} pool ({len(chosen)} masked, seed {args.seed}), {len(val)} val; split from "
          f"{folder.split_source}; test split untouched" + (f"; {ranks.world} ranks" if ranks.joined else ""))
    cache = model_inputs(backbone, args.encoder_lora, args.cache or DEFAULT_CACHE_DIR)
    pool_items = load_items(pool, cache, ranks=ranks, with_images=args.image_view)
    val_items = load_items(val, cache, ranks=ranks, with_images=args.image_view)
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
    if args.encoder_lora:
        settings["encoder_lora"] = args.encoder_lora
    if args.image_view:
        settings["image_view"] = True
    config = model_config(args.method, args.backbone, data, **settings,
                          **({"prompt": "whole"} if args.prompt == "whole" else {}))
    if args.method == "adasam" and not config.has_negatives:
        say("note: no image is tagged target-absent: every image is taken to contain the target, and the "
              "classifier's map learns where it lies from the masks alone")
    train_config = TrainConfig(seed=args.seed, use_unlabeled=not args.no_unlabeled,
                               calibrate=args.cam_threshold is None,
                               freeze_adapter=args.freeze_adapter,
                               **({"steps": args.steps, "image_view": ImageViewTraining().capped(args.steps)}
                                  if args.steps is not None else {}))
    model = build_training_model(config, args.seed, backbone, args.init)
    try:  # before anything is written: a data set the trainer refuses leaves no half-made run folder
        trainer = Trainer(model, train_config, data, out, log=say, ranks=ranks)
    except ValueError as exc:  # e.g. none of the masked pool images contains the target
        raise CommandError(f"{args.data}: {exc} (use a larger --masks or another --seed)") from None
    resume = ranks.from_main((out / "last.pt").exists())  # every rank resumes from the same file, or none does
    resumed_from = None
    if resume:  # refused before anything is written when it was started on other data or settings
        trainer.load_resume_state(out / "last.pt")
        resumed_from = trainer.step
        say(f"resuming {out} from step {trainer.step}")
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        folder.write_split(out / "split.csv")
    precision = str(trainer.dtype).removeprefix("torch.")
    if precision != "float32":
        say(f"training steps compute in {precision} (ADASAM_PRECISION)")
    started = time.time()
    best = trainer.run()
    elapsed = time.time() - started
    if not ranks.main:
        return 0
    write_json(out / "summary.json", {
        "method": args.method, "masks": args.masks, "tags": args.tags, "seed": args.seed, "backbone": args.backbone,
        "n_pool": len(pool), "n_masked": len(masked), "n_tagged": len(tagged), "n_unlabeled": len(unlabeled),
        "n_val": len(val), "model_config": asdict(trainer.model.config), "train_config": asdict(train_config),
        "best": best, "train_seconds": elapsed, "embeddings_computed": cache.encoded, "ranks": ranks.world,
        "precision": precision,
        "resumed_from_step": resumed_from})  # train_seconds counts this process only: a resumed run's are partial
    written = written_val_dice(best)
    print(f"trained in {elapsed:.0f} s; best val step {best['step']} (score {best['score']:.3f}); wrote {out}/model.pt"
          + (f" (val lesion Dice before gating {written:.3f})" if written is not None else ""))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """`adasam embed`: this rank's share of the images, read and encoded a chunk at a time (memory stays flat on a
    large pool); a progress bar on rank 0 counts its own share."""
    from tqdm import tqdm

    from model.backbones import build_backbone
    from model.cache import DEFAULT_CACHE_DIR, EmbeddingCache
    from model.device import default_device
    from model.distributed import join, leave

    readers = _image_readers(Path(args.source))
    ranks = join(default_device())
    try:
        cache = EmbeddingCache(args.cache or DEFAULT_CACHE_DIR, build_backbone(args.backbone))
        mine = ranks.share(readers)
        cache.expect(len(mine))
        started = time.time()
        with tqdm(total=len(mine), desc=f"embedding (rank 0 of {ranks.world})" if ranks.joined else "embedding",
                  unit="img", disable=not ranks.main) as bar:
            for start in range(0, len(mine), EMBED_CHUNK):
                chunk = mine[start:start + EMBED_CHUNK]
                cache.get_many([read() for read in chunk], progress=False)
                bar.update(len(chunk))
        ranks.barrier()
        if ranks.main:
            print(f"{len(readers)} images in {args.source}: rank 0 encoded {cache.encoded} of its {len(mine)} "
                  f"({len(mine) - cache.encoded} were cached) in {time.time() - started:.0f} s"
                  + (f"; {ranks.world} ranks" if ranks.joined else ""))
        return 0
    finally:
        leave(ranks)


def cmd_score(args: argparse.Namespace) -> int:
    """`adasam score`: the background trainer's re-scoring, each torchrun rank scoring its share of the images."""
    from annotation.store import Store, WorkspaceError
    from app.trainer import BackgroundTrainer
    from model.cache import DEFAULT_CACHE_DIR
    from model.device import default_device
    from model.distributed import join, leave

    try:
        with Store(args.workspace, create=False) as store:
            latest = store.latest_model()
    except WorkspaceError as exc:
        raise CommandError(str(exc)) from None
    if latest is None:
        raise CommandError(f"{args.workspace}: no published model yet, nothing to score with")
    ranks = join(default_device())
    try:
        scorer = BackgroundTrainer(args.workspace, args.backbone, args.cache or DEFAULT_CACHE_DIR)
        ids = ranks.from_main(scorer.unscored_ids(latest.version))  # one list, shared out
        started = time.time()
        scorer.rescore(latest.version, ranks.share(ids), rank=False)
        ranks.barrier()
        if ranks.main:
            scorer.rank_queue(latest.version)
            print(f"{latest.version} scored {len(ids)} pool images in {time.time() - started:.0f} s"
                  + (f" ({ranks.world} ranks)" if ranks.joined else "") + "; queue ordered")
        scorer.store.close()
        return 0
    finally:
        leave(ranks)


EMBED_CHUNK = 64  # images read and encoded per call: keeps memory flat on a pool of any size


def _image_readers(source: Path) -> list:
    """One callable per image of a workspace or data folder, returning the pixels exactly as training and the
    background trainer read them (so the cache keys match)."""
    from annotation.store import DB_NAME, Store
    from app.trainer import workspace_pixels
    from model.dataset import SPLIT_SEED, load_data_folder
    from model.preprocess import read_image

    if (source / DB_NAME).is_file():
        store = Store(source, create=False)
        return [functools.partial(workspace_pixels, store, image_id) for image_id in store.image_ids()]
    folder = load_data_folder(source, seed=SPLIT_SEED)  # DataError (one line) for anything else
    return [functools.partial(read_image, sample.image_path) for sample in folder.samples]


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model.atomic import write_json
    from model.cache import DEFAULT_CACHE_DIR, model_inputs
    from model.dataset import SPLIT_SEED, load_data_folder, load_items
    from model.evaluate import evaluate

    if args.json and Path(args.json).is_dir():  # found out before the evaluation, not after it
        raise CommandError(f"--json {args.json} is a folder: give the file to write")
    folder = load_data_folder(args.data, seed=SPLIT_SEED)
    samples = [s for s in folder.split(args.split) if s.mask_path is not None]
    if not samples:
        raise CommandError(f"{args.data}: no image with a mask in split {args.split!r}")
    run = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent
    trained = not (args.model == "pretrained" or args.model.startswith("pretrained:"))  # no run, no split of its own
    generated = folder.split_source != "manifest"  # a manifest's split is the user's own, even on other data
    moved = folder.moved_since(run / "split.csv") if generated and trained else []
    if moved:
        image_id, then, now = moved[0]
        raise CommandError(f"{args.data}: {len(moved)} image(s) are in another split than when {args.model} was "
                           f"trained ({image_id}: {then} then, {now} now; see its split.csv): the folder changed, "
                           "and the scores could count images it trained on. Give the folder a manifest.csv split")
    model = load_model(args.model)
    items = load_items(samples, model_inputs(model.backbone, model.config.encoder_lora,
                                             args.cache or DEFAULT_CACHE_DIR), with_images=model.config.image_view)
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

    from model.cache import DEFAULT_CACHE_DIR, model_inputs
    from model.image_view import image_input
    from model.inference import Predictor
    from model.overlay import cam_overlay
    from model.preprocess import read_image

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CommandError(f"{out} already exists and is not an empty folder: name a new one (predictions.json must "
                           f"list every file in it)")
    model = load_model(args.model)
    images = [read_image(p) for p in args.images]  # every file is checked before anything is written
    cache = model_inputs(model.backbone, model.config.encoder_lora, args.cache or DEFAULT_CACHE_DIR)
    predictor = Predictor(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))  # its own: no folder of the user's reused
    rows, stems = [], set()
    try:
        for path, image, (embedding, geometry) in zip(args.images, images, cache.get_many(images)):
            p = predictor.predict(embedding, geometry, image_input(image) if model.config.image_view else None)
            stem = unique_stem(Path(path).stem, stems)
            Image.fromarray((p.mask * 255).astype(np.uint8)).save(tmp / f"{stem}_mask.png")
            Image.fromarray(cam_overlay(image, p.cam, p.mask, p.box)).save(tmp / f"{stem}_cam.png")
            rows.append({"image": str(path), "mask": f"{stem}_mask.png", "cam": f"{stem}_cam.png",
                         "probability": p.probability, "box": [float(v) for v in p.box],
                         "uncertainty": asdict(p.uncertainty), "mask_pixels": int(p.mask.sum())})
        (tmp / "predictions.json").write_text(json.dumps(rows, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written left behind
        raise
    out.mkdir(parents=True, exist_ok=True)
    for file in tmp.iterdir():
        file.replace(out / file.name)
    tmp.rmdir()
    print(f"wrote {len(rows)} masks and CAM overlays to {out}")
    return 0


def unique_stem(stem: str, taken: set[str]) -> str:
    """`stem`, or `stem_2`, `stem_3` ... when images from two folders share a name; added to `taken`."""
    name, k = stem, 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.add(name)
    return name


def _silent(*args, **kwargs) -> None:
    """`print` on ranks other than 0."""
