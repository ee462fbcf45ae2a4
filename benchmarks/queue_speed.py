"""Workspace queue speed at scale: registering image records and the median `next_task` time.

    python benchmarks/queue_speed.py            # 100,000 images (goals: register <= 2 min, next_task <= 20 ms)
    python benchmarks/queue_speed.py --quick    # 5,000 images, a smoke run of a few seconds

Records are synthetic (no pixel files are written: this measures the database, which is what grows with the
workspace). Splits follow the datasets (70% pool, 10% val, 20% test). `next_task` is timed while 10 annotators
each hold a lease and every task handed out is then labeled, in four states: before any model (seeded random
order), with predictions from a model for every image, after 1,000 of the most uncertain pool images were labeled
(the index scan must step over them), and for an annotator who has skipped 1,000 images (200 with --quick).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from annotation import ImageRecord, PredictionRecord, Store, next_task, skip



def records(count: int) -> list[ImageRecord]:
    splits = ["pool"] * 7 + ["val"] + ["test"] * 2
    return [ImageRecord(sha256=f"{index:064x}", file=f"images/synthetic/{index}.png", name=f"img{index:06d}",
                        original_path=f"/data/synthetic/img{index:06d}.png", width=512, height=512,
                        split=splits[index % 10]) for index in range(count)]


def time_tasks(store: Store, tasks: int, annotators: int = 10) -> list[float]:
    """Seconds per next_task call, annotators taking turns; each keeps its lease until it labels the image."""
    times = []
    for call in range(tasks):
        who = f"annotator{call % annotators}"
        held = store.conn.execute("SELECT image_id FROM leases WHERE annotator = ?", (who,)).fetchone()
        if held is not None:
            store.mark_no_finding(held[0], who)
        started = time.perf_counter()
        task = next_task(store, who)
        times.append(time.perf_counter() - started)
        assert task is not None
    return times


def summary(name: str, times: list[float]) -> dict[str, float | str]:
    ordered = sorted(times)
    return {"case": name, "calls": len(times), "median_ms": statistics.median(times) * 1000,
            "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 images, 100 calls per case, 200 skips")
    parser.add_argument("--images", type=int, default=None, help="number of image records (default 100,000)")
    parser.add_argument("--tasks", type=int, default=None, help="next_task calls per case (default 300)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    count = args.images or (5_000 if args.quick else 100_000)
    tasks = args.tasks or (100 if args.quick else 300)
    chooser = random.Random(0)
    results: dict[str, object] = {"images": count}

    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "ws") as store:
        batch = records(count)
        started = time.perf_counter()
        store.register_images(batch, who="benchmark")
        results["register_s"] = time.perf_counter() - started
        print(f"register {count:,} image records: {results['register_s']:.1f} s (goal <= 120 s)")

        cases = [summary("no model yet (seeded random order)", time_tasks(store, tasks))]

        store.register_model("bench-v1", "none.pt")
        ids = [row[0] for row in store.conn.execute("SELECT id FROM images")]
        started = time.perf_counter()
        store.record_predictions("bench-v1", [PredictionRecord(i, chooser.random(), chooser.random()) for i in ids])
        results["record_predictions_s"] = time.perf_counter() - started
        print(f"record {len(ids):,} predictions: {results['record_predictions_s']:.1f} s")
        cases.append(summary("by uncertainty (model v1)", time_tasks(store, tasks)))

        top = [row[0] for row in store.conn.execute(
            "SELECT p.image_id FROM predictions p JOIN images i ON i.id = p.image_id WHERE i.split = 'pool'"
            " AND i.state = 'unlabeled' ORDER BY p.uncertainty DESC LIMIT 1000")]
        with store.transaction():
            for image_id in top:
                store.mark_no_finding(image_id, "lead")
        cases.append(summary("by uncertainty, top 1,000 just labeled", time_tasks(store, tasks)))

        skips = 200 if args.quick else 1000
        for _ in range(skips):
            task = next_task(store, "skipper")
            skip(store, "skipper", task.image.id)
        cases.append(summary(f"annotator who skipped {skips:,} (and skips on)", skipping(store, tasks)))

    results["next_task"] = cases
    print(f"\nnext_task at {count:,} images (goal: median <= 20 ms)")
    print(f"{'case':42} {'calls':>6} {'median ms':>10} {'p95 ms':>8}")
    for case in cases:
        print(f"{case['case']:42} {case['calls']:>6} {case['median_ms']:>10.2f} {case['p95_ms']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def skipping(store: Store, tasks: int) -> list[float]:
    """next_task for an annotator who skips every image: each call steps over all their earlier skips."""
    times = []
    for _ in range(tasks):
        started = time.perf_counter()
        task = next_task(store, "skipper")
        times.append(time.perf_counter() - started)
        skip(store, "skipper", task.image.id)
    return times


if __name__ == "__main__":
    sys.exit(main())
