"""Issue 14: what torchrun buys, on this machine. `adasam embed` images/s and `adasam train` seconds per step at 1 and
N processes (gloo on the CPU, NCCL where there are GPUs), each run as a user would start it.

Seconds per step come from two runs per process count (`--steps` SHORT and LONG, same seed): the difference of
their wall times over the difference of steps, so start-up, loading, the final validation and the calibration
cancel out. Embedding: a fresh cache folder, every image of the data folder (or `--images` of them) encoded.

    python benchmarks/distributed.py --data ../shared/datasets/busi --ranks 1 2
    python benchmarks/distributed.py --quick      # micro backbone, generated data: checks the script, not figures
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def launch(ranks: int, *command: str, threads: int) -> float:
    """Wall seconds of one `adasam` command in `ranks` processes of `threads` threads each."""
    launcher = [str(TORCHRUN), "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("WORLD_SIZE", None)
    started = time.perf_counter()
    result = subprocess.run([*launcher, "-m", "app.cli", *command], cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def subset(data: Path, folder: Path, images: int) -> Path:
    """The first `images` images of a data folder (all splits as they come), as a data folder of links."""
    (folder / "images").mkdir(parents=True)
    for path in sorted((data / "images").iterdir())[:images]:
        (folder / "images" / path.name).symlink_to(path.resolve())
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"))
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "adasam" / "embeddings"),
                        help="the warm cache training reads (embedding is measured on a fresh one)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=48, help="images to embed per process count")
    parser.add_argument("--steps", type=int, nargs=2, default=[10, 40], metavar=("SHORT", "LONG"))
    parser.add_argument("--masks", type=float, default=0.1)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="adasam-distributed-"))
    if args.quick:
        from model.testing import write_blob_dataset

        args.data = str(write_blob_dataset(scratch / "data", n=24, negatives=4, size=(48, 56)))
        args.backbone, args.cache, args.images, args.steps = "micro_random", str(scratch / "cache"), 8, [4, 8]
        if args.json == parser.get_default("json"):
            args.json = str(scratch / "distributed.json")
    cores = os.cpu_count() or 1
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "cache")}  # no paths of this machine
    results: dict = {"config": {**settings, "data": os.path.relpath(args.data, ROOT), "cpu_count": cores,
                                "machine": platform.processor() or platform.machine()}, "runs": []}
    images = subset(Path(args.data), scratch / "subset", args.images)
    short, long = args.steps
    for ranks in args.ranks:
        threads = max(1, cores // ranks)  # the cores shared out, as one would on a real machine
        embed_s = launch(ranks, "embed", str(images), "--backbone", args.backbone,
                         "--cache", str(scratch / f"fresh-{ranks}"), threads=threads)
        walls = []
        for steps in (short, long):
            out = scratch / f"run-{ranks}-{steps}"
            walls.append(launch(ranks, "train", "--data", args.data, "--out", str(out), "--backbone", args.backbone,
                                "--cache", args.cache, "--masks", str(args.masks), "--steps", str(steps),
                                "--cam-threshold", "0.4", threads=threads))
            shutil.rmtree(out)
        step_s = (walls[1] - walls[0]) / (long - short)
        run = {"ranks": ranks, "threads_per_rank": threads, "embed_images": args.images, "embed_s": embed_s,
               "embed_images_per_s": args.images / embed_s, "train_walls_s": walls, "train_step_s": step_s,
               "train_steps_per_s": 1 / step_s if step_s > 0 else None}
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
    base = results["runs"][0]
    for run in results["runs"]:
        run["embed_speedup"] = run["embed_images_per_s"] / base["embed_images_per_s"]
        run["train_speedup"] = base["train_step_s"] / run["train_step_s"] if run["train_step_s"] > 0 else None
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    for run in results["runs"]:
        speedup = "n/a" if run["train_speedup"] is None else f"{run['train_speedup']:.2f}x"
        print(f"{run['ranks']} rank(s) x {run['threads_per_rank']} thread(s): "
              f"embed {run['embed_images_per_s']:.2f} img/s ({run['embed_speedup']:.2f}x), "
              f"train {run['train_step_s']:.2f} s/step ({speedup})")
    print(f"wrote {args.json}")
    if not Path(args.json).resolve().is_relative_to(scratch.resolve()):
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
