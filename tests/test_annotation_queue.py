"""The queue: uncertainty order, seeded fallback, leases, skips, and no double hand-out across threads or processes."""
from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest

from annotation import PredictionRecord, Store, next_task, release_lease, renew_lease, skip
from annotation_fixtures import label_until_empty, process_worker, seed_images


def drain(store: Store, annotator: str = "alice") -> list[int]:
    order = []
    while (task := next_task(store, annotator)) is not None:
        order.append(task.image.id)
        store.mark_no_finding(task.image.id, annotator)
    return order


def test_before_any_model_the_order_is_seeded_random_and_pool_only(tmp_path):
    orders = []
    for run in range(2):
        with Store(tmp_path / f"ws{run}") as store:
            ids = seed_images(store, 30, split_every=5)
            store.mark_no_finding(ids[1], "lead")
            orders.append(drain(store))
    assert orders[0] == orders[1]  # reproducible
    pool = [i for k, i in enumerate(ids) if k % 5 and i != ids[1]]
    assert sorted(orders[0]) == sorted(pool)  # no val/test, nothing already labeled
    assert orders[0] != sorted(orders[0])  # shuffled, not insertion order


def test_the_most_uncertain_image_of_the_current_model_comes_first(store):
    ids = seed_images(store, 10)
    store.register_model("v1", "v1.pt")
    store.record_predictions("v1", [PredictionRecord(i, u) for i, u in zip(ids[:6], [0.1, 0.9, 0.5, 0.7, 0.2, 0.3])])
    task = next_task(store, "alice")
    assert (task.image.id, task.uncertainty) == (ids[1], 0.9)
    order = [task.image.id] + drain(store)[1:]
    assert order[:6] == [ids[1], ids[3], ids[2], ids[5], ids[4], ids[0]]
    assert sorted(order[6:]) == sorted(ids[6:])  # unpredicted images follow


def test_a_newer_model_reorders_the_queue(store):
    ids = seed_images(store, 4)
    store.register_model("v1", "v1.pt")
    store.record_predictions("v1", [PredictionRecord(i, u) for i, u in zip(ids, [0.9, 0.1, 0.1, 0.1])])
    store.register_model("v2", "v2.pt")
    assert next_task(store, "a").image.id == ids[0]  # v2 has no predictions yet: v1 still orders
    store.record_predictions("v2", [PredictionRecord(i, u) for i, u in zip(ids, [0.1, 0.1, 0.1, 0.8])])
    assert next_task(store, "b").image.id == ids[3]


def test_leases_keep_annotators_apart_and_expire(store):
    ids = seed_images(store, 3)
    alice = next_task(store, "alice")
    assert next_task(store, "alice").image.id == alice.image.id  # asking again returns the image held
    bob = next_task(store, "bob")
    assert bob.image.id != alice.image.id
    assert not renew_lease(store, "bob", alice.image.id)
    assert renew_lease(store, "alice", alice.image.id)

    short = next_task(store, "carol", lease_seconds=0.05)
    assert short.image.id not in (alice.image.id, bob.image.id)
    assert next_task(store, "dave") is None  # all three are held
    time.sleep(0.1)
    assert next_task(store, "dave").image.id == short.image.id  # carol's lease ran out

    store.mark_no_finding(alice.image.id, "alice")  # saving releases the lease
    assert store.counts().leased == 2
    release_lease(store, "bob", bob.image.id)
    assert next_task(store, "erin").image.id == bob.image.id
    assert sorted(ids) == sorted([alice.image.id, bob.image.id, short.image.id])


def test_skipped_images_go_to_the_back_for_that_annotator_only(store):
    ids = seed_images(store, 3)
    store.register_model("v1", "v1.pt")
    store.record_predictions("v1", [PredictionRecord(i, u) for i, u in zip(ids, [0.9, 0.5, 0.1])])
    first = next_task(store, "alice")
    assert first.image.id == ids[0]
    skip(store, "alice", ids[0])
    assert next_task(store, "alice").image.id == ids[1]
    assert next_task(store, "bob").image.id == ids[0]  # bob still gets it first
    release_lease(store, "bob", ids[0])
    skip(store, "alice", ids[1])
    assert next_task(store, "alice").image.id == ids[2]
    skip(store, "alice", ids[2])
    again = next_task(store, "alice")
    assert (again.image.id, again.skipped_before) == (ids[0], True)  # oldest skip comes back first


def test_threads_asking_at_once_never_get_the_same_image(store):
    seed_images(store, 120)
    start = threading.Barrier(6)
    results: dict[str, list[int]] = {}

    def work(name: str) -> None:
        results[name] = label_until_empty(str(store.root), name, start)

    threads = [threading.Thread(target=work, args=(f"t{k}",)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    given = [image_id for ids in results.values() for image_id in ids]
    assert len(given) == len(set(given)) == 120
    assert store.counts().no_finding == 120


def test_processes_asking_at_once_never_get_the_same_image(store):
    seed_images(store, 80)
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    workers = [context.Process(target=process_worker, args=(str(store.root), f"p{k}", start, results))
               for k in range(4)]
    for worker in workers:
        worker.start()
    given = {}
    for _ in workers:
        name, ids = results.get(timeout=120)
        given[name] = ids
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    handed_out = [image_id for ids in given.values() for image_id in ids]
    assert len(handed_out) == len(set(handed_out)) == 80
    # At least two processes got work, so they really did ask side by side. Not all four: SQLite's lock is not fair,
    # and on a loaded machine one process can finish the 80 images while another waits for the lock.
    assert sum(1 for ids in given.values() if ids) >= 2
    assert store.integrity_check() == "ok"


def test_next_task_uses_the_indexes(store):
    seed_images(store, 5)
    store.register_model("v1", "v1.pt")
    store.record_predictions("v1", [PredictionRecord(1, 0.5)])
    from annotation import queue

    for sql in (queue._HELD, queue._NEXT, queue._SKIPPED):
        plan = " ".join(row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}", {"me": "a"}))
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
        if sql is not queue._HELD:  # that one sorts only the annotator's own leases
            assert "TEMP B-TREE" not in plan, plan  # read in index order, no sort of the whole table


def test_the_annotator_name_is_required(store):
    with pytest.raises(ValueError):
        next_task(store, "")


def test_saving_a_mask_from_the_queue_labels_the_image(store):
    seed_images(store, 2)
    task = next_task(store, "alice")
    store.save_mask(task.image.id, np.ones((4, 5), dtype=bool), "alice")
    assert store.counts().leased == 0
    assert next_task(store, "alice").image.id != task.image.id


def test_a_strategy_reorders_the_current_models_queue(store):
    ids = seed_images(store, 4)
    store.register_model("v1", "v1.pt")
    store.record_predictions("v1", [PredictionRecord(i, u, classifier_uncertainty=c, segmentation_uncertainty=s)
                                    for i, u, c, s in zip(ids, [0.9, 0.1, 0.2, 0.3], [0.1, 0.8, 0.2, 0.3],
                                                          [0.5, 0.5, 0.5, None])])
    store.mark_no_finding(ids[2], "lead")
    parts = {p.image_id: (p.classifier_uncertainty, p.segmentation_uncertainty) for p in store.pool_predictions("v1")}
    assert parts == {ids[0]: (0.1, 0.5), ids[1]: (0.8, 0.5), ids[3]: (0.3, None)}  # unlabeled pool images only
    assert next_task(store, "a").image.id == ids[0]  # the combined uncertainty orders at first
    release_lease(store, "a", ids[0])
    assert store.set_priorities("v1", {ids[0]: 0.1, ids[1]: 0.8, ids[3]: 0.3})
    assert next_task(store, "a").image.id == ids[1]
    assert not store.set_priorities("v0", {ids[3]: 9.0})  # not the model ordering the queue: nothing changes
    release_lease(store, "a", ids[1])
    assert next_task(store, "a").image.id == ids[1]
