"""The workspace store: schema and migrations, versioned masks, tags, models, predictions, rounds, events, backup."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from annotation import PredictionRecord, SaveRefused, Store, WorkspaceError, next_task, schema
from annotation.records import ImageRecord
from annotation_fixtures import seed_images


def test_new_workspace_is_wal_with_foreign_keys_and_latest_schema(store):
    conn = store.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.LATEST_VERSION
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"images", "masks", "tags", "predictions", "models", "training_rounds", "events", "leases", "settings",
            "volumes", "image_sources", "skips"} <= tables
    assert store.integrity_check() == "ok"


def test_migrations_run_once_and_a_newer_workspace_is_refused(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, lambda conn: calls.append(1)])
    monkeypatch.setattr(schema, "LATEST_VERSION", len(schema.MIGRATIONS))
    Store(tmp_path / "ws").close()
    Store(tmp_path / "ws").close()
    assert calls == [1]
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
    monkeypatch.setattr(schema, "LATEST_VERSION", 1)
    with pytest.raises(WorkspaceError, match="newer than this program"):
        Store(tmp_path / "ws")


def test_opening_a_missing_workspace_without_create_is_a_clear_error(tmp_path):
    with pytest.raises(WorkspaceError, match="no workspace"):
        Store(tmp_path / "nothing", create=False)


def test_register_images_returns_ids_and_recognises_duplicates(store):
    ids = seed_images(store, 5)
    assert len(set(ids)) == 5
    again = store.register_images([ImageRecord(sha256=store.image(ids[0]).sha256, file="x", name="x",
                                               original_path="x", width=1, height=1)])
    assert again == [(ids[0], False)]
    assert len(store.images()) == 5


def test_a_failing_write_changes_nothing(store):
    good = ImageRecord(sha256="a" * 64, file="f", name="a", original_path="a", width=1, height=1)
    bad = ImageRecord(sha256="b" * 64, file="f", name="b", original_path="b", width=1, height=1, split="train")
    with pytest.raises(WorkspaceError, match="split"):
        store.register_images([good, bad])
    assert store.images() == []
    assert store.events() == []


def test_mask_versions_parent_no_finding_and_undo(store):
    image_id = seed_images(store, 1)[0]
    mask = np.zeros((4, 5), dtype=bool)
    mask[1:3, 1:4] = True
    first = store.save_mask(image_id, mask, "alice")
    second = store.save_mask(image_id, ~mask, "bob")
    assert (first.version, first.parent_version) == (1, None)
    assert (second.version, second.parent_version) == (2, 1)
    assert np.array_equal(store.load_mask(image_id), ~mask)
    assert store.image(image_id).state == "masked"

    nothing = store.mark_no_finding(image_id, "alice")
    assert (nothing.version, nothing.parent_version, nothing.file) == (3, 2, None)
    assert store.image(image_id).state == "no_finding"
    assert not store.load_mask(image_id).any()

    undone = store.undo_last("alice")  # alice's last save is the no-finding mark
    assert undone.version == 3 and undone.undone_at is not None
    assert store.latest_mask(image_id).version == 2
    assert store.undo_last("bob").version == 2
    assert store.undo_last("alice").version == 1
    assert store.image(image_id).state == "unlabeled"
    assert store.load_mask(image_id) is None
    assert next_task(store, "alice").image.id == image_id  # the undone image is leased back to alice
    assert store.undo_last("alice") is None
    assert [m.version for m in store.mask_history(image_id)] == [1, 2, 3]
    again = store.save_mask(image_id, mask, "alice")
    assert (again.version, again.parent_version) == (4, None)


def test_undo_with_the_expected_save_withdraws_that_save_only_once(store):
    first_id, second_id = seed_images(store, 2)
    mask = np.ones((4, 5), dtype=bool)
    store.save_mask(first_id, mask, "alice")
    shown = store.save_mask(second_id, mask, "alice")
    assert store.last_save("alice").id == shown.id and store.last_save("bob") is None
    assert store.undo_last("alice", expected=shown.id).id == shown.id
    with pytest.raises(SaveRefused, match="no longer your last"):  # the same request again: the first save stays
        store.undo_last("alice", expected=shown.id)
    assert store.image(first_id).state == "masked" and store.image(second_id).state == "unlabeled"
    assert store.last_save("alice").image_id == first_id
    store.undo_last("alice")
    with pytest.raises(SaveRefused):
        store.undo_last("alice", expected=shown.id)  # nothing left to undo is refused too, not taken as done


def test_masks_must_match_the_image_size(store):
    image_id = seed_images(store, 1)[0]
    with pytest.raises(WorkspaceError, match="mask is"):
        store.save_mask(image_id, np.zeros((5, 4), dtype=bool), "alice")
    with pytest.raises(WorkspaceError, match="no image"):
        store.save_mask(999, np.zeros((4, 5), dtype=bool), "alice")


def test_identical_masks_share_one_file(store):
    ids = seed_images(store, 2)
    a = store.save_mask(ids[0], np.ones((4, 5), dtype=bool), "alice")
    b = store.save_mask(ids[1], np.ones((4, 5), dtype=bool), "alice")
    assert a.file == b.file and store.files.path(a.file).exists()


def test_tags_models_predictions_and_rounds(store):
    ids = seed_images(store, 3)
    store.set_tag(ids[0], "lesion", True, "alice")
    store.set_tag(ids[0], "lesion", False, "alice")
    store.set_tag(ids[0], "lesion", True, "bob")
    assert {(t["annotator"], t["present"]) for t in store.tags(ids[0])} == {("alice", False), ("bob", True)}

    round_id = store.start_round(labels_used=2)
    assert store.latest_round().status == "running"
    store.register_model("v1", "runs/v1.pt", {"val_dice": 0.61}, round_id=round_id)
    finished = store.finish_round(round_id, "done", val_dice=0.61, model_version="v1")
    assert (finished.status, finished.val_dice, finished.model_version) == ("done", 0.61, "v1")
    failed = store.finish_round(store.start_round(labels_used=3), "failed", error="out of memory")
    assert failed.error == "out of memory" and [r.id for r in store.rounds()] == [round_id, failed.id]

    mask = np.zeros((4, 5), dtype=bool)
    mask[0, 0] = True
    assert store.queue_model() is None
    store.record_predictions("v1", [PredictionRecord(ids[0], 0.9, 0.8, (0, 0, 1, 1), mask),
                                    PredictionRecord(ids[1], 0.1)])
    assert store.queue_model() == "v1"
    prediction = store.prediction(ids[0])
    assert prediction["box"] == [0, 0, 1, 1] and prediction["probability"] == 0.8
    accepted = store.accept_prediction(ids[0], "alice")
    assert (accepted.origin, accepted.model_version) == ("accepted_prediction", "v1")
    assert np.array_equal(store.load_mask(ids[0]), mask)
    with pytest.raises(WorkspaceError, match="no predicted mask"):
        store.accept_prediction(ids[1], "alice")
    with pytest.raises(WorkspaceError, match="no model"):
        store.record_predictions("v9", [PredictionRecord(ids[0], 0.5)])
    assert store.latest_model().metrics == {"val_dice": 0.61}
    store.register_model("v2", "runs/v2.pt")  # serving at once; the queue follows once it has scored the pool
    assert (store.latest_model().version, store.queue_model()) == ("v2", "v1")
    store.record_predictions("v2", [PredictionRecord(ids[1], 0.3)])
    assert store.queue_model() == "v2" and store.prediction(ids[1])["uncertainty"] == 0.3
    store.record_predictions("v1", [PredictionRecord(ids[1], 0.7)])  # an older model's late scores take nothing over
    assert store.queue_model() == "v2" and store.prediction(ids[1])["uncertainty"] == 0.3


def test_every_write_is_logged_and_the_log_is_append_only(store):
    image_id = seed_images(store, 1)[0]
    store.mark_no_finding(image_id, "alice")
    store.log_event("alice", "opened", {"why": "test"})
    events = store.events()
    assert [e["what"] for e in events][:3] == ["opened", "save_mask", "register_images"]
    assert events[1]["who"] == "alice" and events[1]["image_id"] == image_id
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        with store.transaction() as conn:
            conn.execute("DELETE FROM events")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        with store.transaction() as conn:
            conn.execute("UPDATE events SET who = 'mallory'")


def test_settings_hold_json_values(store):
    assert store.get_setting("val_images", []) == []
    store.set_setting("val_images", [3, 1, 2], who="lead")
    assert store.get_setting("val_images") == [3, 1, 2]


def test_counts_backup_and_integrity(store, tmp_path):
    ids = seed_images(store, 6, split_every=3)
    store.save_mask(ids[1], np.ones((4, 5), dtype=bool), "alice")
    store.mark_no_finding(ids[2], "alice")
    store.set_tag(ids[4], "lesion", True, "alice")
    next_task(store, "bob")
    counts = store.counts()
    assert (counts.images, counts.masked, counts.no_finding, counts.tagged, counts.unlabeled, counts.leased) == \
        (6, 1, 1, 1, 4, 1)
    assert counts.by_split == {"pool": 4, "val": 2}
    backup = store.backup(tmp_path / "copy" / "ws.db")
    copy = sqlite3.connect(backup)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT COUNT(*) FROM masks").fetchone()[0] == 2
    copy.close()


def test_a_backup_never_lands_on_the_live_database_or_where_it_cannot_be_written(store):
    """Replacing the live file would leave the server writing to an unlinked one: every later label lost."""
    seed_images(store, 2)
    for live in (store.db_path, Path(f"{store.db_path}-wal")):
        with pytest.raises(WorkspaceError, match="live database"):
            store.backup(live)
    assert store.counts().images == 2
    with pytest.raises(WorkspaceError, match="cannot write a backup"):
        store.backup("/proc/adasam-backup.db")  # a folder no file can be made in, even by root


def test_collect_garbage_removes_only_old_unreferenced_files(store):
    image_id = seed_images(store, 1)[0]
    _, orphan = store.files.put(np.zeros((2, 2), dtype=np.uint8), "images")
    _, fresh = store.files.put(np.ones((2, 2), dtype=np.uint8), "images")
    old = time.time() - 7200
    os.utime(store.files.path(orphan), (old, old))
    os.utime(store.files.path(store.image(image_id).file), (old, old))
    assert store.collect_garbage() == 1
    assert not store.files.path(orphan).exists()
    assert store.files.path(fresh).exists() and store.files.path(store.image(image_id).file).exists()


def test_display_applies_the_recorded_window(store):
    pixels = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    sha, relpath = store.files.put(pixels, "images")
    [(image_id, _)] = store.register_images([ImageRecord(
        sha256=sha, file=relpath, name="w", original_path="w", width=2, height=2, bit_depth=16, dtype="uint16",
        window_center=1000.0, window_width=2000.0)])
    assert np.array_equal(store.load_image(image_id), pixels)
    assert store.load_display(image_id).tolist() == [[0, 128], [255, 255]]


def test_threads_share_a_store(store):
    import threading

    ids = seed_images(store, 20)
    errors = []

    def work(offset: int) -> None:
        try:
            for image_id in ids[offset::4]:
                store.mark_no_finding(image_id, f"t{offset}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and store.counts().no_finding == 20

def test_connections_of_ended_threads_are_closed(store):
    """A web server's worker threads come and go; each kept connection holds file descriptors until none is left."""
    import threading

    seed_images(store, 2)
    opened = []

    def read() -> None:
        opened.append(store.conn)
        store.image_ids()

    for _ in range(30):
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    assert len(store._connections) <= 2  # this thread's and the last worker's
    with pytest.raises(sqlite3.ProgrammingError):  # an ended thread's connection is closed
        opened[0].execute("SELECT 1")
    assert len(store.image_ids()) == 2  # this thread's connection still works



def test_the_reads_the_trainer_needs(store):
    ids = seed_images(store, 8, split_every=4)  # ids[0] and ids[4] are val
    pool = [i for k, i in enumerate(ids) if k % 4]
    assert store.image_ids(split="pool") == pool and store.image_ids(split="val") == [ids[0], ids[4]]
    assert store.image_ids_after(ids[2]) == [i for i in pool if i > ids[2]] + [ids[4]]  # pool first
    store.mark_no_finding(ids[1], "ann")
    store.save_mask(ids[2], np.ones((4, 5), bool), "ann")
    store.set_tag(ids[3], "finding", True, "ann")
    store.set_tag(ids[3], "finding", False, "bob")  # a later tag of the same image wins
    store.set_tag(ids[0], "finding", True, "ann")  # val: not a pool label
    assert store.image_ids(split="pool", labeled=True) == [ids[1], ids[2]]
    assert store.image_ids(split="pool", state="masked") == [ids[2]]
    assert store.image_ids(split="pool", labeled=False) == [ids[3], ids[5], ids[6], ids[7]]
    assert store.label_count("pool") == 3 and store.label_count("val") == 1
    assert store.latest_tags("finding") == {ids[3]: False} and store.latest_tags("finding", "val") == {ids[0]: True}
    store.register_model("v1", "v1.pt")
    store.record_predictions("v1", [PredictionRecord(ids[5], 0.5), PredictionRecord(ids[1], 0.5)])
    assert store.unscored_ids("v1") == [ids[3], ids[6], ids[7]]  # unlabeled pool images only
    assert store.unscored_ids("v1", with_masks=True) == [ids[3], ids[5], ids[6], ids[7]]  # ids[5]: no mask figure
    store.record_predictions("v1", [PredictionRecord(ids[6], 0.4, segmentation_uncertainty=0.3)])
    assert store.unscored_ids("v1", with_masks=True) == [ids[3], ids[5], ids[7]]


def test_the_reads_the_dashboard_needs(store):
    ids = seed_images(store, 6, split_every=3)  # ids[0] and ids[3] are val
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:4] = True
    store.save_mask(ids[1], mask, "ann")
    store.save_mask(ids[1], mask[::-1].copy(), "bob")  # the latest version counts, for bob
    store.mark_no_finding(ids[2], "ann")
    store.set_tag(ids[4], "finding", True, "carol")
    store.set_tag(ids[0], "finding", True, "carol")
    assert store.split_states("pool") == {"masked": 1, "no_finding": 1, "unlabeled": 2}
    assert store.tagged_count("pool") == 1 and store.tagged_count("val") == 1
    counts = store.annotator_counts()
    assert {row["annotator"]: row for row in counts} == {
        "ann": {"annotator": "ann", "drawn": 0, "accepted": 0, "no_finding": 1, "total": 1, "tags": 0},
        "bob": {"annotator": "bob", "drawn": 1, "accepted": 0, "no_finding": 0, "total": 1, "tags": 0},
        "carol": {"annotator": "carol", "drawn": 0, "accepted": 0, "no_finding": 0, "total": 0, "tags": 2}}
    assert counts[-1]["annotator"] == "carol"  # tags only: after everyone with masks
    store.log_event("bob", "review", {"dice_shown_saved": 0.75, "mask_version": 2}, ids[1])
    store.log_event("ann", "review", {"dice_shown_saved": 0.5, "mask_version": 1}, ids[1])
    assert sorted(store.review_dice()) == [0.5, 0.75]
    store.undo_last("bob")  # an undone save no longer counts
    assert store.review_dice() == [0.5]
    assert store.ranked_count() == 0
    store.register_model("v1", "v1.pt")
    store.record_predictions("v1", [PredictionRecord(ids[4], 0.5), PredictionRecord(ids[2], 0.5)])
    assert store.ranked_count() == 1  # unlabeled pool images with a priority
