"""Load and fault suite: N simulated annotators for T minutes against a real `adasam serve`, through the page's own
server functions (the same HTTP calls the canvas makes: POST /gradio_api/component_server).

Each annotator has its own HTTP client (its own cookies, so without --auth its own anonymous identity) and loops:
task -> think -> one action (accept unchanged, accept a drawn mask, refine then accept, no finding, skip, tag), with
the background trainer publishing new models meanwhile. Optional faults: `--kill-every S` kills the server with
SIGKILL every S seconds and restarts it (acknowledged saves must survive; annotators reload their task). At the end
the workspace is checked against what the clients saw:

- requests, errors (by kind) and p50/p95 latency per action;
- acknowledged saves vs mask rows: every save the server acknowledged must be a row by that annotator for that image,
  with the exact mask the client sent or was shown (unchanged accepts are compared pixel for pixel);
- overlapping holds: two annotators shown the same unlabeled image at the same time;
- PRAGMA integrity_check.

    python benchmarks/load.py --annotators 20 --minutes 10 --json benchmarks/results/load.json
    python benchmarks/load.py --annotators 20 --minutes 3 --kill-every 60 --json benchmarks/results/load_kill.json
    python benchmarks/load.py --quick          # 3 annotators, 20 s, phantoms: a CI smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ACTIONS = [("accept", 0.45), ("draw", 0.2), ("refine", 0.15), ("no_finding", 0.1), ("skip", 0.05), ("tag", 0.05)]


@dataclass
class Ack:
    """A save the server acknowledged, and the mask the client expects to find for it."""

    annotator: str
    image_id: int
    kind: str
    mask: np.ndarray | None  # None: no finding


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    acks: list[Ack] = field(default_factory=list)
    refused: int = 0  # saves the server refused with a clear message (stale view, someone else's image)
    overlaps: int = 0
    names: set[str] = field(default_factory=set)  # annotator identities the server gave the clients
    lock: threading.Lock = field(default_factory=threading.Lock)


class Page:
    """One annotator's browser tab: its own cookies and Gradio session, calling the canvas's server functions."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(timeout=120)
        self.session = secrets.token_hex(8)
        self.connect()

    def connect(self) -> None:
        self.http.get(self.url + "/")  # the page load: the anonymous identity cookie is set here
        config = self.http.get(self.url + "/config").json()
        self.component = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "annotator")

    def call(self, name: str, data: dict) -> dict:
        response = self.http.post(self.url + "/gradio_api/component_server", json={
            "data": data, "component_id": self.component, "fn_name": name, "session_hash": self.session})
        response.raise_for_status()
        return response.json()


class Holds:
    """Which annotator is shown which unlabeled image now: two at once is an overlapping hold."""

    def __init__(self) -> None:
        self.shown: dict[str, int | None] = {}
        self.lock = threading.Lock()

    def forget_all(self) -> None:
        with self.lock:
            self.shown.clear()

    def show(self, annotator: str, image_id: int | None) -> bool:
        with self.lock:
            clash = image_id is not None and any(v == image_id for k, v in self.shown.items() if k != annotator)
            self.shown[annotator] = image_id
            return clash


def annotator_loop(url: str, until: float, think: float, seed: int, tally: Tally, holds: Holds) -> None:
    from app.pictures import decode_mask
    from app.testing import mask_png

    rng = random.Random(seed)
    page = Page(url)
    name = None

    def timed(action: str, fn_name: str, data: dict) -> dict | None:
        started = time.perf_counter()
        try:
            result = page.call(fn_name, data)
        except Exception as exc:  # noqa: BLE001 - counted: the server was down or answered badly
            with tally.lock:
                tally.errors[f"{action}: {type(exc).__name__}"] += 1
            time.sleep(1.0)
            return None
        with tally.lock:
            tally.latencies[action].append(1000 * (time.perf_counter() - started))
            if result.get("error"):
                kind = "refused" if any(w in result["error"] for w in ("being labeled", "saved by", "no longer")) \
                    else "error"
                if kind == "refused":
                    tally.refused += 1
                else:
                    tally.errors[f"{action}: {result['error'][:60]}"] += 1
        return None if result.get("error") else result

    task = None
    while time.time() < until:
        if task is None:
            task = timed("task", "task", {})
            if task is None:
                continue
        name = task.get("annotator", name)
        tally.names.add(name)
        if holds.show(name, task["image_id"]):
            with tally.lock:
                tally.overlaps += 1
        if task["image_id"] is None:
            time.sleep(think)
            task = None
            continue
        time.sleep(rng.uniform(0.5, 1.5) * think)
        action = rng.choices([a for a, _ in ACTIONS], [w for _, w in ACTIONS])[0]
        holds.show(name, None)  # the action may release the image before its answer arrives
        h, w = task["height"], task["width"]
        shown = decode_mask(task["mask"], (h, w))
        view = task["view"]
        if action == "accept":
            result, ack = timed("accept", "accept", {"view": view, "mask": None}), shown
        elif action == "draw":
            drawn = shown.copy()
            y, x = rng.randrange(h // 2), rng.randrange(w // 2)
            drawn[y:y + h // 4, x:x + w // 4] = ~drawn[y:y + h // 4, x:x + w // 4]
            result, ack = timed("accept drawn", "accept", {"view": view, "mask": mask_png(drawn)}), drawn
        elif action == "refine":
            points = [[rng.uniform(0, w), rng.uniform(0, h)] for _ in range(rng.randint(1, 3))]
            refined = timed("refine", "refine", {"view": view, "positive": points, "negative": [], "box": None})
            if refined is None:
                task = None
                continue
            mask = decode_mask(refined["mask"], (h, w))
            result, ack = timed("accept drawn", "accept", {"view": view, "mask": mask_png(mask)}), mask
        elif action == "no_finding":
            result, ack = timed("no_finding", "no_finding", {"view": view}), None
        else:
            result, ack = timed(action, action, {"view": view}), "none"
        if result is not None and action not in ("skip", "tag"):
            with tally.lock:
                tally.acks.append(Ack(name, task["image_id"], action, ack))
        task = result  # every action answers with the next task; None: ask again


def check(workspace: Path, tally: Tally) -> dict:
    """Every acknowledged save is a row by its annotator with the mask the client expected; and integrity_check."""
    from annotation import Store

    missing, wrong = 0, 0
    with Store(workspace, create=False) as store:
        for ack in tally.acks:
            rows = [m for m in store.mask_history(ack.image_id) if m.annotator == ack.annotator and m.undone_at is None]
            if not rows:
                missing += 1
                continue
            info = store.image(ack.image_id)
            found = any((m.file is None) if ack.mask is None else
                        (m.file is not None and np.array_equal(store.read_mask(info, m), ack.mask)) for m in rows)
            wrong += not found
        rows = store.conn.execute("SELECT COUNT(*) FROM masks WHERE origin != 'imported'").fetchone()[0]
        return {"acknowledged_saves": len(tally.acks), "mask_rows": rows, "acknowledged_missing": missing,
                "acknowledged_with_other_mask": wrong, "conflicts_kept": len(store.conflicts()),
                "integrity_check": store.integrity_check()}


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "p50_ms": round(statistics.median(ordered), 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1)}


def prepare(folder: Path, quick: bool, images: int) -> Path:
    """Generated phantoms (224 x 288, like the demo's): enough that 20 annotators do not empty the queue."""
    from app.testing import make_workspace

    if quick:
        return make_workspace(folder, n=40, n_val=4)
    return make_workspace(folder, n=images + 20, n_val=20, size=(224, 288))


def run(args: argparse.Namespace) -> dict:
    import app.studio  # noqa: F401 - imported once here, not by every client thread at its start
    from app.testing import Server

    if args.quick:
        args.think = 0.5
    annotators = 3 if args.quick else args.annotators
    seconds = 20 if args.quick else 60 * args.minutes
    with tempfile.TemporaryDirectory(prefix="adasam-load-") as tmp:
        folder = Path(tmp)
        workspace = prepare(folder, args.quick, args.images)
        extra = ["--round-every", str(args.round_every), "--train-steps", str(args.train_steps)]
        server = Server(workspace, folder / "serve.log", *extra, backbone=args.backbone, cache=str(folder / "cache"))
        tally, holds = Tally(), Holds()
        started = time.time()
        until = started + seconds
        threads = [threading.Thread(target=annotator_loop, args=(server.url, until, args.think, k, tally, holds))
                   for k in range(annotators)]
        for thread in threads:
            thread.start()
        kills = 0
        try:
            while any(t.is_alive() for t in threads):
                time.sleep(1.0)
                due = time.time() - started > args.kill_every * (kills + 1)
                if args.kill_every and due and time.time() < until - 5:
                    os.kill(server.process.pid, signal.SIGKILL)  # its trainer notices the parent is gone and stops
                    server.process.wait()
                    kills += 1
                    holds.forget_all()  # the restart releases every lease: old showings are stale, not holds
                    server = Server(workspace, folder / f"serve-{kills}.log", *extra, backbone=args.backbone,
                                    cache=str(folder / "cache"), port=server.port)
        finally:
            for thread in threads:
                thread.join()
            status = server.stop()
        with open(folder / "serve.log") as log:
            tracebacks = log.read().count("Traceback")
        result = {
            "annotators": annotators, "seconds": seconds, "backbone": args.backbone, "think_s": args.think,
            "kills": kills, "server_exit": status, "server_tracebacks": tracebacks,
            "images": args.images if not args.quick else 36, "round_every": args.round_every,
            "requests": sum(len(v) for v in tally.latencies.values()) + sum(tally.errors.values()),
            "errors": dict(tally.errors), "refused_saves": tally.refused, "overlapping_holds": tally.overlaps,
            "identities": len(tally.names),
            "actions": {k: summary(v) for k, v in sorted(tally.latencies.items())},
            **check(workspace, tally),
            "models_published": _models(workspace),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d %H:%M"),
        }
    return result


def _models(workspace: Path) -> int:
    from annotation import Store

    with Store(workspace, create=False) as store:
        return len(store.models())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--backbone", default="micro_random", help="micro_random (default: the server's own cost) "
                                                                  "or litemedsam")
    parser.add_argument("--images", type=int, default=4000, help="generated pool images")
    parser.add_argument("--think", type=float, default=3.0, help="mean seconds an annotator looks before acting")
    parser.add_argument("--round-every", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--kill-every", type=float, default=0.0, help="SIGKILL and restart the server every S s")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    bad = result["acknowledged_missing"] or result["acknowledged_with_other_mask"] or result["overlapping_holds"] \
        or result["integrity_check"] != "ok"
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
