"""The active-learning queue: which image an annotator should label next, and leases so no two get the same one.

Order: the image the annotator already holds; else the unlabeled pool image the current model is least sure about
(images.priority, copied from the newest model's predictions); images that model has not scored, and every image
before any model exists, follow in a seeded random order; images this annotator skipped come last, oldest skip
first. Each step is one query that reads an index in that order and stops at the first free image (CROSS JOIN pins
the join order, so a handful of leases or skips never makes SQLite scan all images), all inside one
`BEGIN IMMEDIATE` transaction, so two annotators (threads or processes) asking at once are served one after the other.
"""
from __future__ import annotations

import sqlite3
import time

from annotation.records import Task
from annotation.store import DEFAULT_LEASE_SECONDS, Store, utc_now

_UNLEASED = "NOT EXISTS (SELECT 1 FROM leases l WHERE l.image_id = i.id)"

_HELD = """SELECT l.image_id FROM leases l INDEXED BY leases_annotator CROSS JOIN images i ON i.id = l.image_id
    WHERE l.annotator = :me AND i.state = 'unlabeled' ORDER BY l.taken_at DESC LIMIT 1"""
_NEXT = f"""SELECT i.id FROM images i INDEXED BY images_queue
    WHERE i.state = 'unlabeled' AND i.split = 'pool' AND {_UNLEASED}
    AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.annotator = :me AND s.image_id = i.id)
    ORDER BY i.priority DESC, i.shuffle_key LIMIT 1"""
_SKIPPED = f"""SELECT s.image_id FROM skips s INDEXED BY skips_order CROSS JOIN images i ON i.id = s.image_id
    WHERE s.annotator = :me AND i.state = 'unlabeled' AND i.split = 'pool' AND {_UNLEASED}
    ORDER BY s.skipped_at LIMIT 1"""


def next_task(store: Store, annotator: str, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Task | None:
    """Lease the next image for `annotator` (None when nothing is left to label)."""
    if not annotator:
        raise ValueError("an annotator name is required")
    with store.transaction() as conn:
        now = time.time()
        conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
        params = {"me": annotator}
        image_id = _first(conn, _HELD, params)
        skipped = False
        if image_id is None:
            image_id = _first(conn, _NEXT, params)
            if image_id is None:
                image_id = _first(conn, _SKIPPED, params)
                skipped = image_id is not None
        if image_id is None:
            return None
        conn.execute("DELETE FROM leases WHERE annotator = ? AND image_id != ?", (annotator, image_id))
        expires = now + lease_seconds
        conn.execute(
            "INSERT INTO leases (image_id, annotator, expires_at, taken_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(image_id) DO UPDATE SET expires_at = excluded.expires_at",
            (image_id, annotator, expires, utc_now()),
        )
        info = store.image(image_id)
        prediction = conn.execute(
            "SELECT probability, uncertainty FROM predictions WHERE image_id = ? AND model_version = ?",
            (image_id, store.queue_model()),
        ).fetchone()
    return Task(
        image=info,
        uncertainty=None if prediction is None else prediction["uncertainty"],
        probability=None if prediction is None else prediction["probability"],
        lease_expires_at=expires,
        skipped_before=skipped,
    )


def renew_lease(store: Store, annotator: str, image_id: int, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
    """Extend the annotator's hold on an image while they work on it; False if someone else holds it now."""
    with store.transaction() as conn:
        now = time.time()
        row = conn.execute("SELECT annotator, expires_at FROM leases WHERE image_id = ?", (image_id,)).fetchone()
        if row is not None and row["annotator"] != annotator and row["expires_at"] > now:
            return False
        conn.execute(
            "INSERT INTO leases (image_id, annotator, expires_at, taken_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(image_id) DO UPDATE SET annotator = excluded.annotator, expires_at = excluded.expires_at",
            (image_id, annotator, now + lease_seconds, utc_now()),
        )
    return True


def take(store: Store, annotator: str, image_id: int, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
    """Lease this image for `annotator` out of queue order (a neighbouring slice they paged to), giving up the one
    they held; `next_task` then hands it out. False, and nothing changes, if it is labeled, not in the pool, or held
    by someone else."""
    with store.transaction() as conn:
        now = time.time()
        conn.execute("DELETE FROM leases WHERE expires_at <= ?", (now,))
        row = conn.execute("SELECT state, split FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None or row["state"] != "unlabeled" or row["split"] != "pool":
            return False
        holder = conn.execute("SELECT annotator FROM leases WHERE image_id = ?", (image_id,)).fetchone()
        if holder is not None and holder["annotator"] != annotator:
            return False
        conn.execute("DELETE FROM leases WHERE annotator = ? AND image_id != ?", (annotator, image_id))
        conn.execute(
            "INSERT INTO leases (image_id, annotator, expires_at, taken_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(image_id) DO UPDATE SET expires_at = excluded.expires_at, taken_at = excluded.taken_at",
            (image_id, annotator, now + lease_seconds, utc_now()),
        )
    return True


def release_lease(store: Store, annotator: str, image_id: int) -> None:
    """Give an image back without labeling it (e.g. the annotator logs out)."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM leases WHERE image_id = ? AND annotator = ?", (image_id, annotator))


def release_all_leases(store: Store, who: str = "server") -> int:
    """Free every lease (the server starts: whoever held images before a crash is gone); returns how many."""
    with store.transaction() as conn:
        released = conn.execute("DELETE FROM leases").rowcount
        if released:
            store.log_event(who, "release_all_leases", {"released": released})
    return released


def skip(store: Store, annotator: str, image_id: int) -> None:
    """Release the image and send it to the back of this annotator's queue (others still get it in order)."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM leases WHERE image_id = ? AND annotator = ?", (image_id, annotator))
        conn.execute(
            "INSERT INTO skips (annotator, image_id, skipped_at) VALUES (?, ?, ?)"
            " ON CONFLICT(annotator, image_id) DO UPDATE SET skipped_at = excluded.skipped_at",
            (annotator, image_id, time.time()),
        )
        store.log_event(annotator, "skip", None, image_id)


def peek_next(store: Store, annotator: str) -> int | None:
    """The image `next_task` would hand `annotator` once their current one is labeled, without leasing it
    (lets the UI prepare the next prediction ahead of time; another annotator may still take it first)."""
    params = {"me": annotator}
    return _first(store.conn, _NEXT, params) or _first(store.conn, _SKIPPED, params)


def _first(conn: sqlite3.Connection, sql: str, params: dict[str, object]) -> int | None:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]
