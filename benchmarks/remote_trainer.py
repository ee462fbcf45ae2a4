"""Issue 14: what a round costs when a trainer on another machine runs it, against the server's own trainer.

A workspace of the data folder with a seeded 10% of the pool's true masks saved (as if annotated). The server's own
trainer runs one round in-process (`BackgroundTrainer.train_round`, re-scoring left out); then a real `adasam serve
--remote-trainers --no-trainer` serves the same workspace state and a `RemoteTrainer` in this process, talking HTTP
over loopback, runs two rounds: the first with an empty image mirror (every image of its plan downloaded: masked,
tagged, validation and the round's sample of unlabeled images) from no model, the second from the first round's
model, downloading only the images the first did not have (another unlabeled sample). Each phase is timed by
wrapping the client's calls: claim (the plan), image downloads (count, MB), the start model's download, training,
and the upload with the server's check (validation Dice of the new model and, from the second round on, the
serving one's).

Both trainers read one warm embedding cache, so the figures are the protocol's overhead, not a second machine's
encoder time (on a trainer without the embeddings add the encoder's seconds per image: benchmarks/speed.py).

    python benchmarks/remote_trainer.py --data ../shared/datasets/busi
    python benchmarks/remote_trainer.py --quick     # micro backbone, generated data: checks the script, not figures
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_calls(client, log: dict) -> None:
    """Wrap the client's calls so each adds its seconds (and bytes) to `log`."""
    for name in ("claim", "image", "model", "upload"):
        real = getattr(type(client), name).__get__(client)  # the class's method: earlier wrappers left out

        def wrapper(*args, _real=real, _name=name, **kwargs):
            started = time.perf_counter()
            value = _real(*args, **kwargs)
            entry = log.setdefault(_name, {"calls": 0, "seconds": 0.0, "bytes": 0})
            entry["calls"] += 1
            entry["seconds"] += time.perf_counter() - started
            if _name == "image":
                entry["bytes"] += value.nbytes
            elif _name == "upload":
                entry["bytes"] += Path(args[1]).stat().st_size
            return value

        setattr(client, name, wrapper)


def remote_round(trainer, store) -> dict:
    log: dict = {}
    timed_calls(trainer.client, log)
    started = time.perf_counter()
    if trainer.run(rounds=1, poll_s=1.0) != 1:
        raise RuntimeError(f"remote round failed: {store.latest_round()}")
    wall = time.perf_counter() - started
    rnd = store.latest_round()
    metrics = store.model(rnd.model_version).metrics
    return {"round_s": wall, "train_s": metrics["train_seconds"], "calls": log, "val_dice": rnd.val_dice,
            "published": store.model(rnd.model_version).published}


def main() -> int:
    from active_learning import benchmark_parser, oracle_workspace, quick_setup, run_config

    parser = benchmark_parser(__doc__, "remote_trainer.json")
    parser.add_argument("--masks", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=60, help="steps per round (the app's default)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="adasam-remote-"))
    if args.quick:
        quick_setup(args, parser, scratch, steps=6, masks=0.3)

    from annotation import Store
    from app.remote_trainer import RemoteTrainer, TrainerClient
    from app.status import RETRAIN_REQUESTED
    from app.testing import Server
    from app.trainer import BackgroundTrainer

    store, _, chosen = oracle_workspace(args.data, scratch, args.masks)
    workspace = scratch / "workspace"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "app.cli", "embed", str(workspace), "--backbone", args.backbone, "--cache",
                    args.cache], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    embed_s = time.perf_counter() - started
    snapshot = scratch / "snapshot"
    store.backup(snapshot / "workspace.db")  # the labeled state, to start the remote rounds from the same place
    shutil.copytree(workspace / "files", snapshot / "files")  # pixel files: immutable, safe to copy alongside

    bt = BackgroundTrainer(workspace, args.backbone, args.cache, round_every=1, steps=args.steps)
    bt.rescore = lambda *a, **k: None  # the round alone: re-scoring runs on the server either way
    started = time.perf_counter()
    bt.train_round()
    local = {"round_s": time.perf_counter() - started, "val_dice": store.latest_round().val_dice,
             "train_s": store.latest_model().metrics["train_seconds"]}
    bt.store.close()
    store.close()

    remote_ws = scratch / "remote-workspace"
    shutil.copytree(snapshot, remote_ws)
    with Store(remote_ws) as remote_store:
        token = remote_store.add_trainer_token("bench")
    server = Server(remote_ws, scratch / "serve.log", "--remote-trainers", "--no-trainer", "--round-every", "1",
                    "--train-steps", str(args.steps), "--no-image-view",  # as the local round above trains
                    backbone=args.backbone, cache=args.cache)
    try:
        remote_store = Store(remote_ws)
        trainer = RemoteTrainer(TrainerClient(server.url, token), args.backbone, args.cache, scratch / "mirror",
                                say=lambda *a: None)
        first = remote_round(trainer, remote_store)
        remote_store.set_setting(RETRAIN_REQUESTED, True)  # a second round without new labels
        second = remote_round(trainer, remote_store)
        images = len(remote_store.image_ids(split="pool")) + len(remote_store.image_ids(split="val"))  # plans' source
    finally:
        server.stop()
    results = {"config": run_config(args, images=images, masks=len(chosen)),
               "embed_workspace_s": embed_s, "local_round": local, "remote_round_cold_mirror": first,
               "remote_round_warm_mirror": second}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"local round {local['round_s']:.1f} s; remote, cold mirror {first['round_s']:.1f} s "
          f"({first['calls']['image']['calls']} images, {first['calls']['image']['bytes'] / 2**20:.1f} MB in "
          f"{first['calls']['image']['seconds']:.1f} s), warm mirror {second['round_s']:.1f} s")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
