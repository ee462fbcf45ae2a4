"""Issue 5, simulated active learning: does labelling what the model is unsure about save masks?

An oracle annotator works a real workspace exactly as a person would through the app: `annotation.next_task` hands
out the next pool image in the queue's order, the oracle saves its ground-truth mask (or marks "no finding"), and
the app's own background trainer (`app.trainer.BackgroundTrainer`, in-process) decides when a round is due, trains
it (warm-started, on every mask and a sample of unlabeled images, val picking the checkpoint; the classifier's image
view too, as `adasam serve` does by default, unless `--no-image-view`), publishes the model and re-scores the pool,
whose uncertainties order the queue. Nothing here re-implements training or ranking.

Start: the queue's seeded random order labels 2% of the pool (`--cold-start coreset`: k-center on the embeddings
instead, `BackgroundTrainer.rank_cold_start`); then each round adds 2% more, up to 30%. Before any model the order
does not depend on the strategy, so each seed's first round (the dearest: the image view starts from scratch) is
trained once and copied to its strategies' workspaces. A run cut short resumes from its workspaces. Strategies
(model.strategies, chosen by name) differ only in how the trainer orders the queue after scoring the pool: the
benchmark sets the workspace's strategy, as `adasam serve --strategy NAME` does.
After every round the published model is scored on the test split with automatic prompts (and a round's model the
publish check held back, too, as `held_back_dice_lesion`).

The full-label reference: the same trainer, the whole pool labelled, for as many rounds as a curve has (the same
training compute), run once (for the first seed: it does not depend on the queue's seed). Reported per strategy:
the Dice-vs-labels curve, its area (mean test Dice over the label range) beside the serving model's val AUC (what a
default is chosen by), and the labels needed to reach 95% of the full-label Dice (goal: <= 0.6 x random).

    python benchmarks/active_learning.py --data ../shared/datasets/busi --out benchmarks/results/active_learning
    python benchmarks/active_learning.py --quick    # a minute on generated data: checks the script, not figures
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from annotation import Store, import_sources, next_task, skip
from annotation.store import QUEUE_SEED
from app import trainer as trainer_module
from app.rounds import PUBLISH_TOLERANCE, round_score
from app.serve_commands import ROUND_STEPS
from app.status import IMAGE_VIEW, QUEUE_STRATEGY
from model.adasam import load_checkpoint
from model.backbones import backbone_view
from model.dataset import SPLIT_SEED, DataFolder, load_data_folder, load_items
from model.evaluate import evaluate
from model.preprocess import read_mask
from model.learning_curve import fit_learning_curve
from model.strategies import DEFAULT_STRATEGY, STRATEGIES

ROOT = Path(__file__).resolve().parents[1]

ORACLE = "oracle"
FULL = "full"  # the full-label reference's name among the curves
STEM = "stem"  # a seed's first round, shared by its strategies' curves (branch_from_stem)
FIT_UPTO = 0.10  # the dashboard's projection is checked as made at 10% labelled against what 20% and 30% measured


def stage_source(folder: DataFolder, root: Path) -> Path:
    """images/ (hard links where possible), masks/ of the val split only, and a manifest with the split used:
    importing it gives a workspace whose pool is unlabelled and whose fixed validation set is the val split."""
    source = root / "source"
    if (source / "manifest.csv").exists():
        return source
    for sub in ("images", "masks"):
        (source / sub).mkdir(parents=True, exist_ok=True)
    for sample in folder.samples:
        pairs = [(sample.image_path, source / "images" / sample.image_path.name)]
        if sample.split == "val" and sample.mask_path is not None:
            pairs.append((sample.mask_path, source / "masks" / sample.mask_path.name))
        for src, dst in pairs:
            if not dst.exists():
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
    with (source / "manifest.csv.tmp").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "split", "has_lesion"])
        for s in folder.samples:
            writer.writerow([s.id, s.split, "" if s.has_lesion is None else int(s.has_lesion)])
    (source / "manifest.csv.tmp").rename(source / "manifest.csv")
    return source


def new_workspace(source: Path, path: Path, seed: int, strategy: str = DEFAULT_STRATEGY,
                  image_view: bool = False) -> Store:
    """A workspace of the staged source, as `adasam serve` would keep it: its queue seed, strategy and whether its
    rounds train the image view (`adasam serve` turns that on; off here unless asked, as for any `Store`)."""
    shutil.rmtree(path, ignore_errors=True)
    with Store(path) as store:
        store.set_setting(QUEUE_SEED, seed)  # the seeded random order: the start set and the random strategy
        store.set_setting(QUEUE_STRATEGY, strategy)
        store.set_setting(IMAGE_VIEW, image_view)
    store = Store(path)  # re-opened: the queue seed is read when a store opens
    summary = import_sources(store, [source], with_masks=True, progress=False)
    if summary.skipped:
        print(f"import skipped {len(summary.skipped)} files, e.g. {summary.skipped[0]}")
    return store


def benchmark_parser(doc: str, json_name: str) -> argparse.ArgumentParser:
    """The options every workspace benchmark takes: --data, --backbone, --cache, --json, --quick."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"))
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "adasam" / "embeddings"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / json_name))
    parser.add_argument("--quick", action="store_true", help="micro backbone, generated data: checks the script")
    return parser


def quick_setup(args: argparse.Namespace, parser: argparse.ArgumentParser, scratch: Path, **overrides) -> None:
    """--quick: generated blob data, the micro backbone, a scratch cache (and JSON, unless one was named), plus the
    script's own smaller settings."""
    from model.testing import write_blob_dataset

    args.data = str(write_blob_dataset(scratch / "data", n=24, negatives=4, size=(48, 56)))
    args.backbone, args.cache = "micro_random", str(scratch / "cache")
    for name, value in overrides.items():
        setattr(args, name, value)
    if args.json == parser.get_default("json"):
        args.json = str(scratch / Path(args.json).name)


def quick_view_budgets() -> None:
    """--quick: the image view's rounds a few steps long (the app's budget rule would train it for minutes)."""
    from app import rounds
    from model.image_view import ImageViewTraining

    rounds.FRESH_IMAGE_VIEW = ImageViewTraining(steps=6, eval_every=2, min_steps=0)
    rounds.WARM_IMAGE_VIEW = ImageViewTraining(steps=4, eval_every=2, min_steps=0)


def run_config(args: argparse.Namespace, **extra) -> dict:
    """A run's settings for its JSON, with the data folder relative to the repository and no other path of this
    machine, and the machine's kind."""
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "cache")}
    return {**settings, "data": os.path.relpath(args.data, ROOT), "cpu_count": os.cpu_count(),
            "machine": platform.processor() or platform.machine(), **extra}


def oracle_workspace(data: str | Path, out: Path, fraction: float, seed: int = 0,
                     image_view: bool = False) -> tuple[Store, DataFolder, set]:
    """A workspace of a data folder whose pool has the true masks of a seeded `fraction` of its images saved (the
    same images `adasam train --masks FRACTION --seed SEED` uses), as if annotated: (store, folder, chosen names)."""
    from model.dataset import masked_ids

    folder = load_data_folder(data, seed=SPLIT_SEED)
    store = new_workspace(stage_source(folder, out), out / "workspace", seed=seed, image_view=image_view)
    chosen = masked_ids(folder.split("pool"), fraction, seed)
    by_name = {s.id: s for s in folder.split("pool")}
    for info in store.images(split="pool"):
        if info.name in chosen:
            mask = read_mask(by_name[info.name].mask_path)
            if mask.any():
                store.save_mask(info.id, mask, ORACLE)
            else:
                store.mark_no_finding(info.id, ORACLE)
    return store, folder, chosen


def annotate(store: Store, truth: dict[str, np.ndarray | None], count: int) -> int:
    """The oracle labels the next `count` images the queue hands it; returns how many it labelled."""
    done = 0
    while done < count:
        task = next_task(store, ORACLE)
        if task is None or task.skipped_before:
            break  # nothing left (or only images the oracle cannot label)
        mask = truth.get(task.image.name)
        if mask is None:
            skip(store, ORACLE, task.image.id)  # no ground truth: the oracle cannot label it
            continue
        if mask.any():
            store.save_mask(task.image.id, mask, ORACLE, origin="human")
        else:
            store.mark_no_finding(task.image.id, ORACLE)
        done += 1
    return done


def score_latest(bt: trainer_module.BackgroundTrainer, test_items: list, round_s: float | None) -> dict:
    rnd = bt.store.latest_round()
    if rnd is None or rnd.status != "done":
        raise RuntimeError(f"training round failed: {rnd.error if rnd else 'none ran'}")
    model, _ = load_checkpoint(bt.store.latest_model().checkpoint_path, backbone_view(bt.base))
    summary, _ = evaluate(model, test_items, with_hd95=False)
    metrics = bt.store.latest_model().metrics
    own = bt.store.model(rnd.model_version)  # a done round registered its model, published or not
    held_back = {}  # a round the publish check turned down: its own test figure too, so the check can be judged
    if not own.published:
        own_model, _ = load_checkpoint(own.checkpoint_path, backbone_view(bt.base))
        held_back = {"held_back_dice_lesion": evaluate(own_model, test_items, with_hd95=False)[0]["dice_lesion"]}
    return {**held_back, "round": rnd.id, "published": own.published, "val_dice": rnd.val_dice,
            "masks": metrics.get("n_masks"), "best_step": metrics.get("best_step"),
            "round_s": None if round_s is None else round(round_s, 1),
            "image_view": model.image_view is not None,  # a round's check may drop the view
            "serving_val_dice": round_score(metrics) if "dice_all" in metrics else None,  # none without val
            "dice_lesion": summary["dice_lesion"],
            "dice_all": summary["dice_all"], "presence_auc": summary["presence_auc"]}


def end_with(parent: int) -> None:
    """A curve worker's initializer: the worker dies with the benchmark (Linux's parent-death signal). Ctrl-C reaches
    every worker anyway, but a kill of the benchmark's pid alone left its workers training, and a rerun's workers
    then trained the same curves' workspaces beside them."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the benchmark died before the line above
        os._exit(1)


def simulate(args, folder: DataFolder, source: Path, strategy: str, seed: int, out: Path) -> dict:
    """One strategy and seed (or the full-label reference): the curve of test Dice against labels."""
    path = out / "runs" / f"{strategy}_seed{seed}.json"
    pool = folder.split("pool")
    n_pool = len(pool)
    step = max(1, round(args.step * n_pool))
    start, stop = max(1, round(args.start * n_pool)), round(args.stop * n_pool)
    curve_config = {"step": step, "start": start, "stop": stop, "steps": args.steps, "image_view": args.image_view,
                    "cold_start": args.cold_start, "backbone": args.backbone}
    if path.exists():
        return finished_curve(path, curve_config)
    started = time.time()
    torch.set_num_threads(args.threads)
    if args.quick:
        quick_view_budgets()  # in this process: curves run in spawned workers
    truth = {s.id: (read_mask(s.mask_path) if s.mask_path else None) for s in pool}
    workspace = out / "workspaces" / f"{strategy}_seed{seed}"
    partial = partial_path(path)  # the curve so far, for a run cut short
    if strategy not in (FULL, STEM):
        branch_from_stem(out, strategy, seed, curve_config)
    curve = resumable_curve(partial, workspace, curve_config)
    if curve is None:
        curve = []
        store = new_workspace(source, workspace, seed, strategy if strategy in STRATEGIES else DEFAULT_STRATEGY,
                              image_view=args.image_view)
    else:
        store = Store(workspace, create=False)
        print(f"{strategy} seed {seed}: resuming after round {len(curve)}", flush=True)
    bt = trainer_module.BackgroundTrainer(workspace, args.backbone, args.cache, round_every=step, steps=args.steps)
    bt.embed_new()
    if args.cold_start == "coreset" and not curve:
        bt.rank_cold_start()
    test_items = load_items([s for s in folder.split("test") if s.mask_path], bt.cache, with_images=args.image_view)

    def train_and_score() -> None:
        """A round of the app's trainer (train, publish, re-score the pool), then its model scored on test."""
        round_started = time.time()
        bt.train_round()
        record(time.time() - round_started)

    def record(round_s: float | None) -> None:
        scores = score_latest(bt, test_items, round_s)
        curve.append({"labels": bt.labels(), "fraction": bt.labels() / n_pool, **scores})
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps({"strategy": strategy, "seed": seed, "n_pool": n_pool, "step": step,
                                       "config": curve_config, "curve": curve, "partial": True}, default=float))

    if curve and catch_up(bt, curve):
        record(None)  # its time is unknown: the run was cut before the row was saved
    if strategy == FULL:
        annotate(store, truth, n_pool - bt.labels())
        for _ in range(args.reference_rounds - len(curve)):
            train_and_score()
    else:
        labelled = bt.labels() + annotate(store, truth, max(0, on_grid(bt.labels(), start, step, stop) - bt.labels()))
        while True:
            if bt.due():  # the app's rule: enough new labels and at least one mask showing the target
                train_and_score()
            if labelled >= stop or (strategy == STEM and curve):
                break
            added = annotate(store, truth, min(step, stop - labelled))
            if added == 0:
                break
            labelled += added
    result = {"strategy": strategy, "seed": seed, "n_pool": n_pool, "step": step, "config": curve_config,
              "curve": curve, "seconds": time.time() - started}
    store.close()
    if not args.keep_workspaces and strategy != STEM:  # a stem's workspace is removed once its branches are done
        shutil.rmtree(workspace, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float))
    partial.unlink(missing_ok=True)
    return result


def finished_curve(path: Path, config: dict) -> dict:
    """A curve run before, read back; refused when it ran with other settings (hours of rounds are not redone
    silently, nor tabled as if they were these). Curves from before 2026-12-05 recorded none: read as they are."""
    saved = json.loads(path.read_text())
    if "config" in saved and saved["config"] != config:
        differ = {k: (saved["config"].get(k), v) for k, v in config.items() if saved["config"].get(k) != v}
        raise ValueError(f"{path} ran with other settings (saved, asked): {differ}; choose another --out or move it")
    return saved


def on_grid(labels: int, start: int, step: int, stop: int) -> int:
    """The label count the next round is due at: the first at `start`, then every `step`; a curve resumed in the
    middle of annotating finishes the step instead of training off the grid of the other curves."""
    if labels <= start:
        return start
    return min(stop, start + math.ceil((labels - start) / step) * step)


def partial_path(path: Path) -> Path:
    return path.with_name(path.stem + ".partial.json")


def branch_from_stem(out: Path, strategy: str, seed: int, config: dict) -> None:
    """Start a strategy's curve from its seed's stem: the first round depends on the seed alone (the queue's
    seeded shuffle picks the first labels, and rounds are seeded by their number), so it is trained once per seed
    and copied to each strategy's workspace, which then re-ranks the pool by its own strategy (catch_up). The copy
    is a curve cut after its first round; a curve already begun is left alone."""
    stem = out / "runs" / f"{STEM}_seed{seed}.json"
    workspace = out / "workspaces" / f"{strategy}_seed{seed}"
    partial = partial_path(out / "runs" / f"{strategy}_seed{seed}.json")
    if not stem.exists() or partial.exists() or not (out / "workspaces" / f"{STEM}_seed{seed}").exists():
        return
    saved = json.loads(stem.read_text())
    if saved.get("config") != config:
        print(f"{stem.name}: other settings; {strategy} seed {seed} starts on its own", flush=True)
        return
    shutil.rmtree(workspace, ignore_errors=True)
    shutil.copytree(out / "workspaces" / f"{STEM}_seed{seed}", workspace)
    with Store(workspace, create=False) as store:
        store.set_setting(QUEUE_STRATEGY, strategy)
    partial.write_text(json.dumps({**saved, "strategy": strategy, "config": config, "partial": True,
                                   "from_stem": True}, default=float))


def resumable_curve(partial: Path, workspace: Path, config: dict) -> list[dict] | None:
    """The curve of a run cut short, when its workspace survived and it ran with the same settings; else None
    (start again). The workspace holds the labels, models and any interrupted round's steps, so the run goes on
    where it stopped instead of repeating hours of rounds."""
    if not partial.exists() or not (workspace / "workspace.db").exists():
        return None
    saved = json.loads(partial.read_text())
    if saved.get("config") != config or not saved.get("curve"):
        print(f"{partial.name}: settings differ or no round finished; starting again", flush=True)
        return None
    return saved["curve"]


def catch_up(bt: trainer_module.BackgroundTrainer, curve: list[dict]) -> bool:
    """Bring a resumed workspace to where an uninterrupted run would be: a round killed while training is
    cancelled (its steps resume from the trainer's work folder when the next round starts), and the pool is
    re-scored for the serving model (a kill during re-scoring left the queue's order stale). True when a round
    finished after the curve's last row was saved: it still needs its row."""
    for rnd in bt.store.rounds():
        if rnd.status == "running":
            bt.store.finish_round(rnd.id, "cancelled", error="benchmark stopped before the round finished")
    latest = bt.store.latest_model()
    if latest is not None:
        bt.rescore(latest.version)
    last = bt.store.latest_round()
    return last is not None and last.status == "done" and last.id != curve[-1]["round"]


def curves_of(results: dict, strategy: str) -> list[dict]:
    """Where a strategy's curves go in the results ("full" is the full-label reference)."""
    return results["reference"] if strategy == FULL else results["strategies"][strategy]


def report_only(results: dict, out: Path) -> None:
    """Tables and plot from the curves already on disk; a curve cut short (`.partial.json`) counts as far as it
    got and is listed under `partial`."""
    for strategy in [FULL, *results["strategies"]]:
        runs = curves_of(results, strategy)
        for seed in results["config"]["seeds"]:
            done = out / "runs" / f"{strategy}_seed{seed}.json"
            cut = partial_path(done)
            if done.exists():
                runs.append(json.loads(done.read_text()))
            elif cut.exists():
                runs.append(json.loads(cut.read_text()))
                results.setdefault("partial", []).append(f"{strategy} seed {seed}: {len(runs[-1]['curve'])} rounds")


def labels_to_reach(curve: list[dict], target: float) -> int | None:
    for point in curve:
        if not math.isnan(point["dice_lesion"]) and point["dice_lesion"] >= target:
            return point["labels"]
    return None


def serving_val(curve: list[dict]) -> list[float]:
    """Val Dice of the model serving after each round: recorded since 2026-12-04; for older runs rebuilt by the
    publish rule (`val_dice` is the round's own model, kept only if within PUBLISH_TOLERANCE of the serving one;
    the validation set is fixed in this benchmark)."""
    serving: list[float] = []
    for p in curve:
        last = serving[-1] if serving else math.nan
        if p.get("serving_val_dice") is not None:
            serving.append(p["serving_val_dice"])
        elif p.get("val_dice") is None:  # no val figure: the round published (publish_round), unmeasured
            serving.append(math.nan)
        elif math.isnan(last) or p["val_dice"] >= last - PUBLISH_TOLERANCE:
            serving.append(p["val_dice"])
        else:
            serving.append(last)
    return serving


def area(curve: list[dict], key: str = "dice_lesion") -> float:
    """Mean Dice over the label range (trapezoids over the fraction of the pool labelled): test lesion Dice, or
    with key="val" the serving model's val Dice (the figure a default may be chosen by; test only reports)."""
    x = np.array([p["fraction"] for p in curve])
    y = np.array(serving_val(curve) if key == "val" else [p[key] for p in curve])
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean()) if len(y) else math.nan
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def summarise(results: dict) -> dict:
    """Per strategy: AUC and labels to 95% of the full-label Dice (the same seed's reference, else the mean of those
    run: see main; mean over seeds; None = not reached within the range, counted as missing)."""
    summary = {}
    full = {r["seed"]: r["curve"][-1]["dice_lesion"] for r in results["reference"] if r["curve"]}
    reference = float(np.mean(list(full.values()))) if full else None  # the same for every seed (see main)
    for strategy, runs in results["strategies"].items():
        aucs = [area(r["curve"]) for r in runs if r["curve"]]
        val_aucs = [area(r["curve"], "val") for r in runs if r["curve"]]
        reach = [labels_to_reach(r["curve"], 0.95 * full.get(r["seed"], reference)) for r in runs] if full else []
        reached = [n for n in reach if n is not None]
        summary[strategy] = {
            "auc_mean": float(np.mean(aucs)) if aucs else math.nan, "auc_sd": float(np.std(aucs)) if aucs else math.nan,
            "auc_per_seed": aucs, "val_auc_mean": float(np.mean(val_aucs)) if val_aucs else math.nan,
            "val_auc_per_seed": val_aucs,
            "labels_to_95_per_seed": reach,
            "labels_to_95_mean": float(np.mean(reached)) if reached and len(reached) == len(reach) else None,
            "final_dice_mean": float(np.mean([r["curve"][-1]["dice_lesion"] for r in runs if r["curve"]]))
            if runs else math.nan}
    random = summary.get("random", {}).get("labels_to_95_mean")
    for values in summary.values():
        mine = values["labels_to_95_mean"]
        values["labels_vs_random"] = mine / random if (mine is not None and random) else None
    summary["full_label_dice"] = {str(k): v for k, v in full.items()}
    return summary


def projection_check(results: dict, fit_upto: float) -> dict:
    """How far off the dashboard's learning curve was: fitted to a curve's val Dice up to `fit_upto` of the pool
    labelled (the dashboard's own fit, model.learning_curve), what it predicted at each later round against what
    that round then measured. Published rounds only, as the dashboard fits them (a held-back round's val Dice is
    of a model nobody served, and its row's mask count is the serving model's). Per strategy: every (fraction,
    predicted - measured) pair over seeds, and the mean absolute error."""
    check: dict = {}
    for strategy, runs in results["strategies"].items():
        errors = []
        for run in runs:
            points = [p for p, serving in zip(run["curve"], serving_val(run["curve"]))
                      if p.get("val_dice") is not None and (p["published"] if p.get("published") is not None
                                                            else serving == p["val_dice"])]  # older runs: rebuilt
            x = [p.get("masks") or p["labels"] for p in points]  # masks, as the dashboard fits (older runs: labels)
            early = [k for k, p in enumerate(points) if p["fraction"] <= fit_upto + 1e-9]
            fit = fit_learning_curve([x[k] for k in early], [points[k]["val_dice"] for k in early])
            if fit is None:
                continue
            errors += [{"seed": run["seed"], "fraction": p["fraction"],
                        "error": float(fit.dice_at(x[k])) - p["val_dice"]}
                       for k, p in enumerate(points) if k not in early]
        check[strategy] = {"pairs": errors, "mean_abs_error":
                           float(np.mean([abs(e["error"]) for e in errors])) if errors else None}
    return {"fit_upto": fit_upto, "strategies": check}


def fmt(value, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}}"


def table(results: dict) -> str:
    s = results["summary"]
    full = list(s["full_label_dice"].values())
    lines = ["## Simulated active learning (test split, automatic prompts)", "",
             f"Full-label lesion Dice (same trainer, same rounds): {fmt(float(np.mean(full)) if full else None)}; "
             "target 95% of it.", "",
             "| strategy | AUC (mean Dice over labels) | val AUC (chooses) | labels to 95% (per seed) | mean "
             "| x random | final Dice |",
             "|---|---|---|---|---|---|---|"]
    for strategy in results["strategies"]:
        v = s[strategy]
        per_seed = ", ".join("> range" if n is None else str(n) for n in v["labels_to_95_per_seed"])
        lines.append(f"| {strategy} | {fmt(v['auc_mean'])} ± {fmt(v['auc_sd'])} | {fmt(v['val_auc_mean'])} | "
                     f"{per_seed or 'n/a'} | "
                     f"{fmt(v['labels_to_95_mean'], '.1f')} | {fmt(v['labels_vs_random'], '.2f')} | "
                     f"{fmt(v['final_dice_mean'])} |")
    check = results.get("projection_check")
    if check:
        lines += ["", f"Dashboard projection check: a learning curve fitted to val Dice up to "
                      f"{check['fit_upto']:.0%} labelled, against the val Dice later rounds measured:", "",
                  "| strategy | later rounds | mean abs error | mean error (predicted - measured) |",
                  "|---|---|---|---|"]
        for strategy, v in check["strategies"].items():
            pairs = v["pairs"]
            bias = float(np.mean([p["error"] for p in pairs])) if pairs else None
            lines.append(f"| {strategy} | {len(pairs)} | {fmt(v['mean_abs_error'])} | {fmt(bias, '+.3f')} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, runs in results["strategies"].items():
        if not runs:
            continue
        by_labels: dict[int, list[float]] = {}
        for r in runs:
            for p in r["curve"]:
                by_labels.setdefault(p["labels"], []).append(p["dice_lesion"])
        xs = sorted(by_labels)
        mean = np.array([np.nanmean(by_labels[x]) for x in xs])
        sd = np.array([np.nanstd(by_labels[x]) for x in xs])
        n_pool = runs[0]["n_pool"]
        pct = [100 * x / n_pool for x in xs]
        ax.plot(pct, mean, marker="o", label=strategy)
        ax.fill_between(pct, mean - sd, mean + sd, alpha=0.15)
    full = list(results["summary"]["full_label_dice"].values())
    if full:
        ax.axhline(np.mean(full), color="black", linestyle="--", label="every pool mask")
        ax.axhline(0.95 * np.mean(full), color="grey", linestyle=":", label="95% of it")
    ax.set_xlabel("pool images labelled (%)")
    ax.set_ylabel("lesion Dice, test (mean ± sd over seeds)")
    ax.set_title("Simulated active learning through the app's queue and trainer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(results: dict, out: Path, figure: bool = False) -> None:
    results["summary"] = summarise(results)
    results["projection_check"] = projection_check(results, results["config"].get("fit_upto", FIT_UPTO))
    results["table"] = table(results)
    (out / "active_learning.json").write_text(json.dumps(results, indent=2, default=float))
    (out / "active_learning.md").write_text(results["table"] + "\n")
    if figure:
        plot(results, out / "active_learning.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "active_learning"))
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--start", type=float, default=0.02, help="fraction labelled at random before round 1")
    parser.add_argument("--step", type=float, default=0.02, help="fraction labelled per round")
    parser.add_argument("--stop", type=float, default=0.30)
    parser.add_argument("--fit-upto", type=float, default=FIT_UPTO,
                        help="check the dashboard's learning-curve projection as made at this fraction labelled")
    parser.add_argument("--steps", type=int, default=ROUND_STEPS, help="training steps per round (the app's default)")
    parser.add_argument("--cold-start", choices=["shuffle", "coreset"], default="shuffle",
                        help="the first labels before any model: the queue's seeded shuffle, or k-center on embeddings")
    parser.add_argument("--reference-rounds", type=int, default=None,
                        help="rounds of the full-label reference (default: as many as a curve has)")
    parser.add_argument("--image-view", action=argparse.BooleanOptionalAction, default=True,
                        help="rounds train the classifier's image view, as `adasam serve` does by default (the "
                             "curves before 2026-12-05 ran without it: --no-image-view)")
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "adasam" / "embeddings"))
    parser.add_argument("--keep-workspaces", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="curves at a time, each in its own process")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per curve (default: cores / jobs; on 2 cores two 1-thread curves train "
                             "1.5x the steps per second of one 2-thread curve)")
    parser.add_argument("--report-only", action="store_true", help="write tables and plot from the runs on disk")
    parser.add_argument("--quick", action="store_true", help="generated data, micro backbone, 3 rounds, one seed")
    args = parser.parse_args()
    if args.quick:
        from model.testing import write_blob_dataset

        given = args.out != parser.get_default("out")  # generated inputs go beside the outputs, or to /tmp
        scratch = Path(args.out) / "quick-input" if given else Path(tempfile.mkdtemp(prefix="adasam-al-"))
        args.data = str(write_blob_dataset(scratch / "data", n=30, negatives=6))
        if not given:
            args.out = str(scratch / "out")
        args.cache, args.backbone, args.steps, args.seeds = str(scratch / "cache"), "micro_random", 3, [0]
        args.start, args.step, args.stop = 0.1, 0.1, 0.3
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    if args.reference_rounds is None:
        args.reference_rounds = max(1, math.floor((args.stop - args.start) / args.step + 1e-9) + 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in run_config(args).items() if k != "out"}  # no path of this machine
    results: dict = {"config": {**config, "split": "test", "prompt": "auto"},
                     "strategies": {s: [] for s in args.strategies}, "reference": [], "failures": []}
    if args.report_only:
        report_only(results, out)
        write_outputs(results, out, figure=True)
        print(results["table"])
        return 0
    folder = load_data_folder(args.data, seed=SPLIT_SEED)
    source = stage_source(folder, out)
    # seed-major: an interrupted benchmark still holds complete comparisons
    # the full-label reference once: with every image labelled the queue's seed orders nothing, and rounds are
    # seeded by their number, so each seed's reference is the same curve (seeds 0 and 1 measured identical on
    # BUSI; data without a val split would differ, as its validation images are taken from the first labels)
    reference = [(FULL, args.seeds[0])] if args.reference_rounds > 0 else []
    # each seed's first round once, shared by its strategies (branch_from_stem), when there are several
    unfinished = {seed: [s for s in args.strategies if not (out / "runs" / f"{s}_seed{seed}.json").exists()]
                  for seed in args.seeds}
    stems = [(STEM, seed) for seed in args.seeds if len(unfinished[seed]) > 1]
    waiting = {seed: [(strategy, seed) for strategy in args.strategies] for seed in args.seeds}
    context = multiprocessing.get_context("spawn")  # no fork after torch (or CUDA) has started
    with concurrent.futures.ProcessPoolExecutor(max(1, args.jobs), mp_context=context, initializer=end_with,
                                                initargs=(os.getpid(),)) as workers:
        def submit(tasks: list[tuple[str, int]]) -> None:
            for strategy, seed in tasks:
                pending[workers.submit(simulate, args, folder, source, strategy, seed, out)] = (strategy, seed)

        pending: dict = {}
        submit(stems + reference)
        submit([task for seed in args.seeds if (STEM, seed) not in stems for task in waiting[seed]])
        while pending:
            finished, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                strategy, seed = pending.pop(future)
                try:
                    curve = future.result()
                except Exception as exc:  # a failed curve is reported; the others still count
                    results["failures"].append({"run": f"{strategy} seed {seed}", "error": repr(exc)})
                    print(f"FAILED {strategy} seed {seed}: {exc!r}", flush=True)
                    curve = None
                if strategy == STEM:  # its strategies now (on their own if it failed)
                    submit(waiting[seed])
                    continue
                if curve is None:
                    continue
                runs = curves_of(results, strategy)
                runs.append(curve)
                runs.sort(key=lambda r: r["seed"])
                write_outputs(results, out)
    if not args.keep_workspaces:
        for _, seed in stems:
            shutil.rmtree(out / "workspaces" / f"{STEM}_seed{seed}", ignore_errors=True)
    write_outputs(results, out, figure=True)
    print(results["table"])
    return 0


if __name__ == "__main__":
    started = time.time()
    code = main()
    print(f"finished in {time.time() - started:.0f} s")
    sys.exit(code)
