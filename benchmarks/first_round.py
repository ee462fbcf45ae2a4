"""Issue 10, item 8: how many labels the first round needs, measured rather than guessed.

A fresh workspace per (labels, seed): the oracle labels the first K images the queue hands it before any model
exists (the seeded shuffle, so about one in six BUSI images is "no finding"), then the app's own
`BackgroundTrainer` trains the first round from no model (60 steps, re-scoring left out) and the figures are the
round's own: validation Dice as served (lesion images, presence-gated), Dice over every val image, presence AUC.
The first round should start once more labels stop changing what it learns much.

    python benchmarks/first_round.py --data ../shared/datasets/busi --json benchmarks/results/first_round.json
    python benchmarks/first_round.py --quick     # micro backbone, generated data: checks the script, not figures
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path



def first_round(args, source: Path, truth: dict, labels: int, seed: int, scratch: Path) -> dict:
    from active_learning import annotate, new_workspace

    from app.trainer import BackgroundTrainer

    workspace = scratch / f"ws_{labels}_{seed}"
    store = new_workspace(source, workspace, seed)
    labelled = annotate(store, truth, labels)
    bt = BackgroundTrainer(workspace, args.backbone, args.cache, round_every=1, steps=args.steps)
    bt.rescore = lambda *a, **k: None  # the round alone
    bt.embed_new()
    started = time.perf_counter()
    bt.train_round()
    seconds = time.perf_counter() - started
    latest, model = store.latest_round(), store.latest_model()
    if latest is None or latest.status != "done":
        raise RuntimeError(f"first round at {labels} labels failed: {latest.error if latest else 'none ran'}")
    metrics = model.metrics
    result = {"labels": labelled, "seed": seed, "masks": metrics.get("n_masks"), "no_finding": metrics.get("n_empty"),
              "val_dice": latest.val_dice, "val_dice_all": metrics.get("dice_all"),
              "presence_auc": metrics.get("presence_auc"), "round_s": round(seconds, 1)}
    bt.store.close()
    store.close()
    shutil.rmtree(workspace, ignore_errors=True)
    return result


def main() -> int:
    from active_learning import benchmark_parser, quick_setup, run_config, stage_source

    parser = benchmark_parser(__doc__, "first_round.json")
    parser.add_argument("--labels", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=60, help="steps of the first round (the app's default)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="adasam-first-round-"))
    if args.quick:
        quick_setup(args, parser, scratch, steps=4, labels=[3, 6], seeds=[0])

    from model.dataset import SPLIT_SEED, load_data_folder
    from model.preprocess import read_mask

    folder = load_data_folder(args.data, seed=SPLIT_SEED)
    source = stage_source(folder, scratch)
    truth = {s.id: (read_mask(s.mask_path) if s.mask_path else None) for s in folder.split("pool")}
    runs = []
    for seed in args.seeds:
        for labels in args.labels:
            runs.append(first_round(args, source, truth, labels, seed, scratch))
            print(json.dumps(runs[-1]), flush=True)
    results = {"config": run_config(args), "runs": runs}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
