"""Issues 10 and 12: what one of the app's training rounds costs, phase by phase.

A workspace of the data folder with a seeded 10% of the pool's true masks saved (as if annotated), the app's own
`BackgroundTrainer`: round 1 from no model, then the oracle labels `--more` images in the queue's order and round 2
warm-starts from round 1's model, as in the app, with the threads `adasam trainer` computes with beside the server
(every core, niced). Each phase is timed by wrapping the code that does it: training
steps, the validation passes inside training (student and EMA teacher), threshold calibration, the publish check
(the new model's validation Dice, and the serving model's unless its figure from when it was published still
holds) and re-scoring the pool; with `--image-view`, training the classifier's image view too, and the check that
keeps it only if it beats the CAM alone on val (view self-training is timed where a round runs it; rounds do not).

    python benchmarks/round_cost.py --data ../shared/datasets/busi --json benchmarks/results/round_cost.json
    python benchmarks/round_cost.py --data ../shared/datasets/busi --image-view --json FILE
    python benchmarks/round_cost.py --quick     # micro backbone, generated data: checks the script, not figures
"""
from __future__ import annotations

import importlib
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

PHASES = {  # phase name -> (module, owner, attribute) whose calls it is
    "image_view": ("model.train", "Trainer", "train_image_view"),
    "view_self_training": ("model.train", "Trainer", "self_train_image_view"),
    "image_view_check": ("model.train", "Trainer", "check_image_view"),
    "train_steps": ("model.train", "Trainer", "train_step"),
    "val_in_training": ("model.train", "Trainer", "validate"),
    "calibration": ("model.train", "Trainer", "calibrate_best"),
    "publish_check": ("app.rounds", None, "val_summary"),
    "rescore": ("app.trainer", "BackgroundTrainer", "rescore"),
}


def time_phases(log: dict) -> Callable[[], None]:
    """Wrap each phase's function so its calls add their seconds to `log[phase]`; returns what unwraps them."""
    originals = []
    for phase, (module_name, owner_name, attribute) in PHASES.items():
        owner = importlib.import_module(module_name)
        if owner_name:
            owner = getattr(owner, owner_name)
        real = getattr(owner, attribute)
        originals.append((owner, attribute, real))

        def wrapper(*args, _real=real, _phase=phase, **kwargs):
            started = time.perf_counter()
            try:
                return _real(*args, **kwargs)
            finally:
                log[_phase]["seconds"] += time.perf_counter() - started
                log[_phase]["calls"] += 1

        setattr(owner, attribute, wrapper)
    return lambda: [setattr(owner, attribute, real) for owner, attribute, real in originals]


def main() -> int:
    from active_learning import (annotate, benchmark_parser, oracle_workspace, quick_setup, quick_view_budgets,
                                 run_config)

    parser = benchmark_parser(__doc__, "round_cost.json")
    parser.add_argument("--masks", type=float, default=0.1)
    parser.add_argument("--more", type=int, default=10, help="labels added before round 2 (the app's round_every)")
    parser.add_argument("--steps", type=int, default=60, help="steps per round (the app's default)")
    parser.add_argument("--image-view", action="store_true", help="the workspace's rounds train the image view "
                                                                  "(adasam serve --image-view)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: those `adasam trainer` computes with: trainer_threads)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="adasam-round-cost-"))
    if args.quick:
        quick_setup(args, parser, scratch, steps=4, masks=0.3, more=2)
        quick_view_budgets()

    import torch

    from app.trainer import BackgroundTrainer, trainer_threads
    from model.preprocess import read_mask

    torch.set_num_threads(args.threads or trainer_threads())  # as `adasam trainer` runs beside the server

    store, folder, chosen = oracle_workspace(args.data, scratch, args.masks, image_view=args.image_view)
    truth = {s.id: (read_mask(s.mask_path) if s.mask_path else None) for s in folder.split("pool")}
    bt = BackgroundTrainer(scratch / "workspace", args.backbone, args.cache, round_every=1, steps=args.steps)
    started = time.perf_counter()
    bt.embed_new()
    embed_s = time.perf_counter() - started
    rounds = []
    for number in (1, 2):
        if number == 2:
            annotate(store, truth, args.more)
        log: dict = defaultdict(lambda: {"seconds": 0.0, "calls": 0})
        unwrap = time_phases(log)
        started = time.perf_counter()
        try:
            bt.train_round()
        finally:
            unwrap()
        total = time.perf_counter() - started
        latest = store.latest_round()
        if latest.status != "done":
            raise RuntimeError(f"round {number} failed: {latest.error}")
        phases = {k: {"seconds": round(v["seconds"], 2), "calls": v["calls"]} for k, v in log.items()}
        rounds.append({"round": number, "labels": bt.labels(), "total_s": round(total, 1), "phases": phases,
                       "other_s": round(total - sum(v["seconds"] for v in log.values()), 1),
                       "val_dice": latest.val_dice, "pool_images": len(store.image_ids(split="pool")),
                       **{key: store.latest_model().metrics.get(key)
                          for key in ("image_view", "view_self_training", "image_view_check")}})
        print(json.dumps(rounds[-1]), flush=True)
    results = {"config": run_config(args, masks_saved=len(chosen), torch_threads=torch.get_num_threads()),
               "embed_workspace_s": embed_s, "rounds": rounds}
    bt.store.close()
    store.close()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
