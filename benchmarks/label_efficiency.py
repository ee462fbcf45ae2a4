"""Issue 5, label efficiency: how much Dice each method buys per mask, against baselines, with ablations at 10%.

Methods x mask fractions x seeds, every figure on the test split with fully automatic prompts:
- pretrained zero-shot (`adasam evaluate --model pretrained`, whole-image box; no training, so one row),
- supervised (`adasam train --method supervised`: decoder only, whole-image box, same backbone, same masks),
- mean teacher (`--method meanteacher`: supervised + EMA-teacher consistency on unlabeled images, no classifier/CAM),
- U-Net from scratch (MONAI, benchmarks/unet_baseline.py) on exactly the same masks,
- ADA-SAM with `--tags all` and `--tags masked`.
Ablations at 10% (ADA-SAM, tags all; `--ablations` picks some): `--freeze-adapter`, `--no-unlabeled`, `--prompt
whole`, `--cam-threshold`.

The adasam runs go through the `adasam` command line (a subprocess each, or in-process with --quick); `val` picks
every checkpoint, `test` is only read by the evaluation. Resumable: a run whose eval_auto.json exists is skipped.

    python benchmarks/label_efficiency.py --data ../shared/datasets/busi --out benchmarks/results/label_efficiency
    python benchmarks/label_efficiency.py --quick     # ~1 min on generated data: checks the script, not figures
    python benchmarks/label_efficiency.py --out DIR --methods --ablations   # table DIR's finished runs, train none
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = {  # label -> extra `adasam train` arguments (None: the MONAI U-Net)
    "supervised": ["--method", "supervised"],
    "mean teacher": ["--method", "meanteacher"],
    "U-Net (MONAI, from scratch)": None,
    "ADA-SAM tags all": ["--method", "adasam", "--tags", "all"],
    "ADA-SAM tags masked": ["--method", "adasam", "--tags", "masked"],
}
ABLATIONS = {  # --ablations NAME -> (label, extra arguments on top of "ADA-SAM tags all")
    "no-feedback": ("no gradient feedback (--freeze-adapter)", ["--freeze-adapter"]),
    "no-unlabeled": ("no unlabeled images (--no-unlabeled)", ["--no-unlabeled"]),
    "no-cam-prompt": ("no CAM prompts (--prompt whole)", ["--prompt", "whole"]),
    "cam-threshold-0.3": ("CAM threshold fixed at 0.3", ["--cam-threshold", "0.3"]),
    "cam-threshold-0.4": ("CAM threshold fixed at 0.4", ["--cam-threshold", "0.4"]),
    "cam-threshold-0.5": ("CAM threshold fixed at 0.5", ["--cam-threshold", "0.5"]),
}
METHOD_NAMES = {"supervised": "supervised", "meanteacher": "mean teacher", "unet": "U-Net (MONAI, from scratch)",
                "adasam": "ADA-SAM tags all", "adasam-masked": "ADA-SAM tags masked"}  # --methods NAME -> label
REFERENCE = "ADA-SAM tags all"  # the ablations' reference (its CAM threshold is picked on val)
PRETRAINED = "pretrained zero-shot (whole-image box)"
KEYS = ["dice_lesion", "dice_all", "presence_auc", "hd95_lesion", "train_seconds"]


@dataclass
class Setup:
    data: str
    out: Path
    cache: str
    backbone: str
    steps: int | None
    inprocess: bool
    unet: object = None
    results: dict = field(default_factory=dict)


def adasam(setup: Setup, *args: str) -> None:
    print("$ adasam", " ".join(args), flush=True)
    if setup.inprocess:
        from app.cli import main as cli

        if cli(list(args)) != 0:
            raise RuntimeError(f"adasam {args[0]} failed")
    else:
        subprocess.run([sys.executable, "-m", "app.cli", *args], check=True, cwd=ROOT)


def evaluate(setup: Setup, model: str, out: Path) -> dict:
    """Test-split summary of one model (read back from out/eval_auto.json when it exists and scored this model)."""
    path = out / "eval_auto.json"
    if path.exists() and model.startswith("pretrained:") and json.loads(path.read_text()).get("model") != model:
        path.unlink()  # another backbone's pretrained figure: seconds to redo
    if not path.exists():
        adasam(setup, "evaluate", "--data", setup.data, "--model", model, "--split", "test", "--json", str(path),
               "--cache", setup.cache)
    result = json.loads(path.read_text())
    result.pop("images", None)
    return result


def check_settings(run_dir: Path, settings: dict) -> None:
    """A finished run is tabled only if it was trained as asked: by its recorded settings, or for runs from before
    they were recorded (2026-12-07) by the backbone and step cap its summary holds. Else refused, not retrained:
    a run can take an hour."""
    recorded = run_dir / "benchmark_settings.json"
    if recorded.exists():
        saved = json.loads(recorded.read_text())
    elif (run_dir / "summary.json").exists():
        from model.train import TrainConfig

        summary = json.loads((run_dir / "summary.json").read_text())
        saved = {**settings, "backbone": summary.get("backbone"),
                 "steps": summary.get("train_config", {}).get("steps")}
        settings = {**settings, "steps": settings["steps"] or TrainConfig.steps}
    else:
        return  # evaluated, never trained here (a run folder holding only eval_auto.json): nothing to compare
    if saved != settings:
        differ = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        raise ValueError(f"{run_dir} was trained with other settings (saved, asked): {differ}; "
                         "choose another --out or move it")


def run_folder(setup: Setup, name: str, fraction: float, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
    return setup.out / "runs" / f"{slug}_{fraction:g}_seed{seed}"


def run(setup: Setup, name: str, fraction: float, seed: int, extra: list[str] | None) -> dict:
    """Train (unless done) and evaluate one method at one mask fraction and seed."""
    run_dir = run_folder(setup, name, fraction, seed)
    if extra is None:
        from unet_baseline import train_unet

        print(f"# U-Net masks {fraction:g} seed {seed}", flush=True)
        return train_unet(setup.data, fraction, seed, run_dir, setup.unet)
    settings = {"backbone": setup.backbone, "steps": setup.steps, "extra": list(extra)}
    if not (run_dir / "eval_auto.json").exists() and not (run_dir / "summary.json").exists():
        args = ["train", "--data", setup.data, "--out", str(run_dir), "--masks", f"{fraction:g}", "--seed", str(seed),
                "--backbone", setup.backbone, "--cache", setup.cache, *extra]
        adasam(setup, *args, *(["--steps", str(setup.steps)] if setup.steps else []))
        (run_dir / "benchmark_settings.json").write_text(json.dumps(settings))
    check_settings(run_dir, settings)
    result = evaluate(setup, str(run_dir), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    # a resumed run's summary times its last part only: not tabled as the run's
    result["train_seconds"] = math.nan if summary.get("resumed_from_step") is not None else summary["train_seconds"]
    return result


def record(setup: Setup, group: str, label: str, fraction: float, result: dict) -> None:
    rows = setup.results[group].setdefault(label, {}).setdefault(f"{fraction:g}", [])
    rows.append({k: result.get(k) for k in ["seed", *KEYS, "n_images", "n_lesion", "dice_lesion_ungated"]})
    rows.sort(key=lambda r: r["seed"])
    setup.results[group][label] = dict(sorted(setup.results[group][label].items(), key=lambda kv: float(kv[0])))
    write_outputs(setup)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "label_efficiency"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="*", choices=list(METHOD_NAMES), default=list(METHOD_NAMES),
                        help="a subset of the methods (the ablations run with adasam); none, with --ablations and "
                             "none: train nothing, table every finished run on disk")
    parser.add_argument("--ablations", nargs="*", choices=list(ABLATIONS), default=list(ABLATIONS),
                        help="the ablations run with adasam (a subset; none: no ablation)")
    parser.add_argument("--ablation-fraction", type=float, default=0.1)
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "adasam" / "embeddings"))
    parser.add_argument("--steps", type=int, default=None, help="adasam training steps (default: the CLI's)")
    parser.add_argument("--unet-size", type=int, default=256)
    parser.add_argument("--unet-steps", type=int, default=None,
                        help="cap on U-Net steps (default: UNetConfig's; val stops it earlier)")
    parser.add_argument("--unet-batch", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (e.g. several on one GPU)")
    parser.add_argument("--report-only", action="store_true", help="redo table and plot from --out's JSON")
    parser.add_argument("--quick", action="store_true", help="generated data, micro backbone, a few steps")
    args = parser.parse_args()

    from unet_baseline import UNetConfig

    unet = UNetConfig(size=args.unet_size, steps=args.unet_steps or UNetConfig.steps, batch=args.unet_batch)
    inprocess = False
    if args.quick:  # every code path in about a minute: in-process CLI calls skip ~6 s of imports each
        from model.testing import write_blob_dataset

        given = args.out != parser.get_default("out")  # generated inputs go beside the outputs, or to /tmp
        scratch = Path(args.out) / "quick-input" if given else Path(tempfile.mkdtemp(prefix="adasam-label-eff-"))
        args.data = str(write_blob_dataset(scratch / "data", n=18, negatives=4))
        if not given:
            args.out = str(scratch / "out")
        args.cache, args.backbone, args.steps, inprocess = str(scratch / "cache"), "micro_random", 3, True
        args.fractions, args.seeds, args.ablation_fraction = [0.5, 1.0], [0], 0.5
        unet = UNetConfig(size=32, channels=(4, 8, 16), steps=4, batch=4, eval_every=2)
    setup = Setup(args.data, Path(args.out), args.cache, args.backbone, args.steps, inprocess, unet)
    setup.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        setup.results = json.loads((setup.out / "label_efficiency.json").read_text())
        write_outputs(setup, figure=True)
        print(setup.results["table"])
        return 0
    setup.results = {"config": {"data": args.data, "fractions": args.fractions, "seeds": args.seeds,
                                "ablation_fraction": args.ablation_fraction, "backbone": args.backbone,
                                "methods": args.methods, "ablations": args.ablations,
                                "steps": args.steps or "CLI default", "unet": unet.__dict__, "quick": args.quick,
                                "split": "test", "prompt": "auto"},
                     "pretrained": {}, "runs": {label: {} for label in METHODS},
                     "ablations": {label: {} for label, _ in ABLATIONS.values()}, "failures": []}
    setup.results["pretrained"] = evaluate(setup, f"pretrained:{args.backbone}", setup.out / "runs" / "pretrained")
    tasks = []  # seed-major: an interrupted benchmark still holds complete comparisons
    chosen = {METHOD_NAMES[name] for name in args.methods}
    chosen_ablations = {ABLATIONS[name][0] for name in args.ablations} if REFERENCE in chosen else set()

    def wanted(label: str, fraction: float, seed: int) -> bool:
        """Chosen methods and ablations run; the others' trained runs are read back (and evaluated if they were not
        yet), so the table holds every run on disk."""
        folder = run_folder(setup, label, fraction, seed)
        return (label in chosen or label in chosen_ablations or (folder / "eval_auto.json").exists()
                or (folder / "summary.json").exists())

    for seed in args.seeds:
        tasks += [("runs", label, fraction, seed, extra) for fraction in args.fractions
                  for label, extra in METHODS.items() if wanted(label, fraction, seed)]
        tasks += [("ablations", label, args.ablation_fraction, seed, METHODS[REFERENCE] + extra)
                  for label, extra in ABLATIONS.values() if wanted(label, args.ablation_fraction, seed)]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as workers:  # each run is a subprocess
        futures = {workers.submit(run, setup, label, fraction, seed, extra): (group, label, fraction, seed)
                   for group, label, fraction, seed, extra in tasks}
        for future in concurrent.futures.as_completed(futures):
            group, label, fraction, seed = futures[future]
            try:
                record(setup, group, label, fraction, {"seed": seed, **future.result()})
            except Exception as exc:  # one failed run is reported; the others still count
                setup.results["failures"].append({"run": f"{label} {fraction:g} seed {seed}", "error": repr(exc)})
                print(f"FAILED {label} {fraction:g} seed {seed}: {exc!r}", flush=True)
                write_outputs(setup)
    write_outputs(setup, figure=True)
    print(setup.results["table"])
    return 0


def stats(values: list[float]) -> tuple[float, float, int]:
    finite = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not finite:
        return math.nan, math.nan, 0
    return float(np.mean(finite)), float(np.std(finite)), len(finite)


def cell(values: list[float], fmt: str = ".3f") -> str:
    mean, sd, n = stats(values)
    if n == 0:
        return "n/a"
    return f"{mean:{fmt}}" if n == 1 else f"{mean:{fmt}} ± {sd:{fmt}}"


def table(results: dict) -> str:
    """Markdown: lesion Dice, dice_all and presence AUC (mean ± sd over seeds) per method and fraction."""
    head = ("| method | masks | seeds | lesion Dice | lesion Dice before presence gating | dice_all | presence AUC | "
            "HD95 (px) | train s |\n" + "|---" * 9 + "|")
    lines = ["## Label efficiency (test split, automatic prompts)", "", head]
    p = results["pretrained"]
    if p:
        lines.append(f"| {PRETRAINED} | 0 | - | {cell([p['dice_lesion']])} | {cell([p['dice_lesion_ungated']])} | "
                     f"{cell([p['dice_all']])} | "
                     f"{cell([p['presence_auc']])} | {cell([p['hd95_lesion']], '.1f')} | 0 |")
    for group, title in (("runs", None), ("ablations", "Ablations (ADA-SAM, tags all)")):
        if title:
            ref = results["runs"].get(REFERENCE, {}).get(f"{results['config']['ablation_fraction']:g}", [])
            lines += ["", f"## {title}", "", head]
            if ref:
                lines.append(_row(f"reference: {REFERENCE} (CAM threshold picked on val)",
                                  f"{results['config']['ablation_fraction']:g}", ref))
        for label, by_fraction in results[group].items():
            for fraction, rows in by_fraction.items():
                lines.append(_row(label, fraction, rows))
    return "\n".join(lines)


def _row(label: str, fraction: str, rows: list[dict]) -> str:
    col = {k: [r.get(k) for r in rows] for k in [*KEYS, "dice_lesion_ungated"]}
    return (f"| {label} | {fraction} | {len(rows)} | {cell(col['dice_lesion'])} | {cell(col['dice_lesion_ungated'])} | "
            f"{cell(col['dice_all'])} | "
            f"{cell(col['presence_auc'])} | {cell(col['hd95_lesion'], '.1f')} | {cell(col['train_seconds'], '.0f')} |")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, by_fraction in results["runs"].items():
        if not by_fraction:
            continue
        xs = sorted(by_fraction, key=float)
        means = [stats([r["dice_lesion"] for r in by_fraction[x]]) for x in xs]
        ax.errorbar([100 * float(x) for x in xs], [m for m, _, _ in means], yerr=[s for _, s, _ in means],
                    marker="o", capsize=3, label=label)
    p = results["pretrained"].get("dice_lesion")
    if p is not None and not math.isnan(p):
        ax.axhline(p, color="grey", linestyle="--", label=PRETRAINED)
    ax.set_xscale("log")
    ticks = sorted({100 * float(x) for by_fraction in results["runs"].values() for x in by_fraction})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("pool images with a mask (%)")
    ax.set_ylabel("lesion Dice, test (mean ± sd over seeds)")
    ax.set_title("Label efficiency, automatic prompts")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(setup: Setup, figure: bool = False) -> None:
    """JSON and table after every run (an interrupted benchmark keeps what it measured); the plot at the end."""
    setup.results["table"] = table(setup.results)
    (setup.out / "label_efficiency.json").write_text(json.dumps(setup.results, indent=2, default=float))
    (setup.out / "label_efficiency.md").write_text(setup.results["table"] + "\n")
    if figure:
        plot(setup.results, setup.out / "label_efficiency.png")


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"finished in {time.time() - started:.0f} s")
    sys.exit(code)
