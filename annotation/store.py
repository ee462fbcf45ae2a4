"""The workspace store: one folder holding workspace.db (SQLite, WAL) and the pixel files it manages.

Durability rules, relied on by the kill test: pixel files are written completely (temp + fsync + rename) before any
row points at them, and every write to the database is one `BEGIN IMMEDIATE` transaction, so a process killed at
any moment leaves either the whole change or none of it. Each thread gets its own connection.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import sqlite_utils

from annotation import schema
from annotation.files import FileStore
from annotation.records import (
    ORIGINS,
    SPLITS,
    ImageInfo,
    ImageRecord,
    MaskInfo,
    ModelInfo,
    PredictionRecord,
    RoundInfo,
    WorkspaceCounts,
    from_row,
)

DB_NAME = "workspace.db"
DEFAULT_LEASE_SECONDS = 600.0
QUEUE_MODEL = "queue_model"  # setting: the model version whose predictions order the queue
LABEL_NAME = "label_name"  # setting: the target's name in exports (COCO category; default "lesion")
LOCAL_TRAINER = "trainer"  # owner of the rounds the workspace's own trainer process runs
ROUND_LEASE_SECONDS = 600.0  # a remote trainer silent this long loses its running round to the next one to ask
TOKEN_PREFIX = "adasam-trainer-"
QUEUE_SEED = "queue_seed"  # setting: seeds the queue's random order (before a model, and between equal priorities)


class WorkspaceError(Exception):
    """A problem the user can fix (missing workspace, bad argument, nothing to export): shown as one line."""


class RoundTaken(WorkspaceError):
    """Another trainer owns the running round (or this trainer no longer does)."""


class SaveRefused(WorkspaceError):
    """A save that would overwrite someone else's work unseen (they hold the image, or saved it meanwhile)."""


_LAST_SAVE = ("SELECT * FROM masks WHERE annotator = ? AND undone_at IS NULL AND origin != 'imported'"
              " ORDER BY id DESC LIMIT 1")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Store:
    """A workspace folder. Safe to share between threads; separate processes may open the same folder at once."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True) -> None:
        self.root = Path(root)
        self.db_path = self.root / DB_NAME
        if not self.db_path.exists():
            if not create:
                raise WorkspaceError(f"no workspace at {self.root} (missing {DB_NAME})")
            self.root.mkdir(parents=True, exist_ok=True)
        self.files = FileStore(self.root / "files")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        try:
            with self.transaction() as conn:
                schema.migrate(conn)
        except schema.SchemaTooNew as exc:
            self.close()
            raise WorkspaceError(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            self.close()
            raise WorkspaceError(f"{self.db_path} is not a usable workspace database: {exc}") from None
        self._seed = int(self.get_setting(QUEUE_SEED, 0))

    # -- connections and transactions -------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; writes go through `transaction`). Opening one closes those of
        threads that have ended: the web server runs requests on worker threads that come and go, and each kept
        connection holds two file descriptors (300 short-lived threads held 600 until the process ran out)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self._close_orphans()
            conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn, self._local.depth = conn, 0
            self._local.db = sqlite_utils.Database(conn, execute_plugins=False)
            with self._lock:
                self._connections.append((threading.current_thread(), conn))
        return conn

    def _close_orphans(self) -> None:
        with self._lock:
            ended = [conn for thread, conn in self._connections if not thread.is_alive()]
            self._connections = [(thread, conn) for thread, conn in self._connections if thread.is_alive()]
        for conn in ended:
            conn.close()

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection wrapped by sqlite-utils (bulk inserts, introspection)."""
        self.conn  # noqa: B018 - opens the connection on first use
        return self._local.db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` write transaction; nested blocks join the outermost one.

        IMMEDIATE takes the write lock at the start, so two processes reading-then-writing (like two annotators
        asking for the next image) are serialised instead of both reading the same free image.
        """
        conn = self.conn
        if self._local.depth:
            self._local.depth += 1
            try:
                yield conn
            finally:
                self._local.depth -= 1
            return
        conn.execute("BEGIN IMMEDIATE")
        self._local.depth = 1
        try:
            yield conn
        except BaseException:
            self._local.depth = 0
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._local.depth = 0
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for _, conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- settings and the event log ----------------------------------------------------------------------------

    def get_setting(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_setting(self, key: str, value: Any, who: str = "system") -> None:
        """Store a JSON value (e.g. the fixed validation set) and log who changed it."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )
            self._log(conn, who, "set_setting", {"key": key})

    def log_event(self, who: str, what: str, details: dict[str, Any] | None = None,
                  image_id: int | None = None) -> None:
        with self.transaction() as conn:
            self._log(conn, who, what, details, image_id)

    def events(self, limit: int = 100, image_id: int | None = None) -> list[dict[str, Any]]:
        """Most recent events first."""
        where = " WHERE image_id = ?" if image_id is not None else ""
        sql = f"SELECT * FROM events{where} ORDER BY id DESC LIMIT ?"
        params = (image_id, limit) if image_id is not None else (limit,)
        return [{**dict(row), "details": json.loads(row["details"])} for row in self.conn.execute(sql, params)]

    @staticmethod
    def _log(conn: sqlite3.Connection, who: str, what: str, details: dict[str, Any] | None = None,
             image_id: int | None = None) -> None:
        conn.execute(
            "INSERT INTO events (at, who, what, image_id, details) VALUES (?, ?, ?, ?, ?)",
            (utc_now(), who, what, image_id, json.dumps(details or {}, default=str)),
        )

    # -- registering images ------------------------------------------------------------------------------------

    def register_volume(self, path: str, axis: int, shape: Sequence[int], affine: Sequence[Sequence[float]]) -> int:
        """Record a sliced volume (once per path and axis) and return its id. The same path with another shape or
        affine is refused: the file changed since it was imported, and its slices' masks could no longer be stacked
        back into it (a volume that grew from 3 to 5 slices broke every NIfTI export)."""
        shape, affine = [int(v) for v in shape], [[float(v) for v in row] for row in affine]
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO volumes (path, axis, shape, affine, imported_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(path, axis) DO NOTHING",
                (path, axis, json.dumps(shape), json.dumps(affine), utc_now()),
            )
            row = conn.execute("SELECT id, shape, affine FROM volumes WHERE path = ? AND axis = ?",
                               (path, axis)).fetchone()
            known_shape, known_affine = json.loads(row["shape"]), json.loads(row["affine"])
            if known_shape != shape or not np.allclose(known_affine, affine):
                what = f"shape {known_shape} then, {shape} now" if known_shape != shape else "its affine differs"
                raise WorkspaceError(f"{path} changed since it was imported ({what}): its masks could no longer be "
                                     "stacked into one volume; import the new file under another name")
            return row["id"]

    def volume(self, volume_id: int) -> dict[str, Any]:
        row = self.conn.execute("SELECT * FROM volumes WHERE id = ?", (volume_id,)).fetchone()
        if row is None:
            raise WorkspaceError(f"no volume {volume_id}")
        return {**dict(row), "shape": json.loads(row["shape"]), "affine": json.loads(row["affine"])}

    def register_images(self, records: Iterable[ImageRecord], who: str = "import") -> list[tuple[int, bool]]:
        """Add image rows in one transaction; returns (id, newly added) per record, duplicates keeping their old id.

        The files must already be stored. This is the bulk path: 100,000 records take a few seconds.
        """
        results: list[tuple[int, bool]] = []
        now = utc_now()
        with self.transaction() as conn:
            for record in records:
                if record.split not in SPLITS:
                    raise WorkspaceError(f"split must be one of {', '.join(SPLITS)}, not {record.split!r}")
                values = record.__dict__ | {
                    "has_lesion": None if record.has_lesion is None else int(bool(record.has_lesion)),
                    "invert": int(record.invert),
                    "shuffle_key": self._shuffle_key(record.sha256),
                    "imported_at": now,
                }
                row = conn.execute(_INSERT_IMAGE, values).fetchone()
                if row is not None:
                    results.append((row[0], True))
                else:
                    existing = conn.execute("SELECT id FROM images WHERE sha256 = ?", (record.sha256,)).fetchone()
                    results.append((existing[0], False))
            added = sum(new for _, new in results)
            if added:
                self._log(conn, who, "register_images", {"added": added, "duplicates": len(results) - added})
        return results

    def _shuffle_key(self, sha256: str) -> int:
        """Seeded, reproducible random rank: the queue's order before any model has made predictions."""
        return int(hashlib.sha256(f"{self._seed}:{sha256}".encode()).hexdigest()[:15], 16)

    def add_source(self, image_id: int, source_key: str, path: str, volume_id: int | None = None,
                   position: int | None = None) -> None:
        """Remember where an image was found (a duplicate adds a source, not an image)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO image_sources (image_id, source_key, path, volume_id, position) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(source_key) DO NOTHING",
                (image_id, source_key, path, volume_id, position),
            )

    def add_imported_mask(self, image_id: int, mask_file: str, annotator: str = "import") -> bool:
        """Attach a mask that came with the data, only if the image has never had one (keeps re-imports idempotent)."""
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM masks WHERE image_id = ? LIMIT 1", (image_id,)).fetchone():
                return False
            self._add_mask(conn, image_id, mask_file, "imported", annotator, None)
            return True

    # -- reading images ---------------------------------------------------------------------------------------

    def image(self, image_id: int) -> ImageInfo:
        row = self.conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise WorkspaceError(f"no image {image_id} in {self.root}")
        return _image_info(row)

    def find_image(self, sha256: str) -> ImageInfo | None:
        row = self.conn.execute("SELECT * FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else _image_info(row)

    def images(self, split: str | None = None, state: str | None = None) -> list[ImageInfo]:
        """All images, optionally of one split and/or state, in id order."""
        clauses, params = [], []
        for column, value in (("split", split), ("state", state)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return [_image_info(row) for row in self.conn.execute(f"SELECT * FROM images{where} ORDER BY id", params)]

    def neighbour_slice(self, image_id: int, step: int, free_for: str | None = None) -> int | None:
        """The nearest unlabeled pool slice of the same volume after (`step` > 0) or before this image's slice, or
        None (not a slice, or none left that way): where paging through a volume goes. `free_for`: passing over the
        slices someone else holds now, so two annotators can page through one volume."""
        info = self.image(image_id)
        if info.volume_id is None or info.slice_index is None or step == 0:
            return None
        comparison, order = (">", "ASC") if step > 0 else ("<", "DESC")
        held = ("" if free_for is None else " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.image_id = images.id"
                " AND l.annotator != ? AND l.expires_at > ?)")
        row = self.conn.execute(
            f"SELECT id FROM images WHERE volume_id = ? AND slice_index {comparison} ? AND split = 'pool'"
            f" AND state = 'unlabeled'{held} ORDER BY slice_index {order} LIMIT 1",
            (info.volume_id, info.slice_index) + (() if free_for is None else (free_for, time.time())),
        ).fetchone()
        return None if row is None else row[0]

    def image_ids(self, split: str | None = None, state: str | None = None, labeled: bool | None = None) -> list[int]:
        """Ids of the images of one split and/or state (`labeled`: masked or no finding, or neither), in id order."""
        clauses, params = [], []
        for column, value in (("split", split), ("state", state)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if labeled is not None:
            clauses.append("state != 'unlabeled'" if labeled else "state = 'unlabeled'")
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return [row[0] for row in self.conn.execute(f"SELECT id FROM images{where} ORDER BY id", params)]

    def image_ids_after(self, image_id: int) -> list[int]:
        """Images added after `image_id` (ids only grow), pool images first: what the trainer has not embedded."""
        return [row[0] for row in self.conn.execute(
            "SELECT id FROM images WHERE id > ? ORDER BY split = 'pool' DESC, id", (image_id,))]

    def label_count(self, split: str = "pool") -> int:
        """Images of `split` with a label of any kind: a mask, a no-finding mark or an image-level tag."""
        return self.conn.execute(
            "SELECT COUNT(*) FROM images i WHERE i.split = ? AND (i.state != 'unlabeled'"
            " OR EXISTS (SELECT 1 FROM tags t WHERE t.image_id = i.id))", (split,)).fetchone()[0]

    def latest_tags(self, tag: str, split: str = "pool") -> dict[int, bool]:
        """image id -> present, the latest `tag` of every image of `split` that has one (whoever gave it)."""
        return {image_id: bool(present) for image_id, present in self.conn.execute(
            "SELECT t.image_id, t.present FROM tags t JOIN images i ON i.id = t.image_id"
            " WHERE t.tag = ? AND i.split = ? ORDER BY t.created_at, t.rowid", (tag, split))}

    def split_states(self, split: str = "pool") -> dict[str, int]:
        """state -> number of images of `split` (states with no image left out)."""
        return dict(self.conn.execute("SELECT state, COUNT(*) FROM images WHERE split = ? GROUP BY state",
                                      (split,)).fetchall())

    def tagged_count(self, split: str = "pool") -> int:
        """Images of `split` with at least one image-level tag."""
        return self.conn.execute("SELECT COUNT(DISTINCT t.image_id) FROM tags t JOIN images i ON i.id = t.image_id"
                                 " WHERE i.split = ?", (split,)).fetchone()[0]

    def ranked_count(self) -> int:
        """Unlabeled pool images the current model has ranked (a queue priority; the rest follow in seeded order)."""
        return self.conn.execute("SELECT COUNT(*) FROM images WHERE split = 'pool' AND state = 'unlabeled'"
                                 " AND priority IS NOT NULL").fetchone()[0]

    def annotator_counts(self) -> list[dict[str, Any]]:
        """Per annotator, over every image's latest live mask (imports excluded): drawn, accepted, no finding,
        total, and tags given; the busiest first, then those who only tagged."""
        rows = [dict(row) for row in self.conn.execute(
            """WITH latest AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY image_id ORDER BY version DESC) AS rank
                               FROM masks WHERE undone_at IS NULL)
               SELECT annotator, SUM(origin = 'human') AS drawn, SUM(origin = 'accepted_prediction') AS accepted,
                      SUM(origin = 'no_finding') AS no_finding, COUNT(*) AS total
               FROM latest WHERE rank = 1 AND origin != 'imported' GROUP BY annotator ORDER BY total DESC""")]
        tag_counts = dict(self.conn.execute("SELECT annotator, COUNT(*) FROM tags GROUP BY annotator").fetchall())
        for row in rows:
            row["tags"] = tag_counts.pop(row["annotator"], 0)
        return rows + [{"annotator": name, "drawn": 0, "accepted": 0, "no_finding": 0, "total": 0, "tags": n}
                       for name, n in tag_counts.items()]

    def review_dice(self) -> list[float | None]:
        """Dice between the mask an annotator was shown and the one they saved, for every save still live (the
        'review' events the app logs)."""
        return [row[0] for row in self.conn.execute(
            """SELECT json_extract(e.details, '$.dice_shown_saved') FROM events e JOIN masks m
               ON m.image_id = e.image_id AND m.version = json_extract(e.details, '$.mask_version')
               WHERE e.what = 'review' AND m.undone_at IS NULL""")]

    def load_image(self, image_id: int) -> np.ndarray:
        """The stored pixels at their original bit depth (rescaled values for DICOM/NIfTI)."""
        return self.files.read(self.image(image_id).file)

    def load_display(self, image_id: int, window: tuple[float, float] | None = None,
                     pixels: np.ndarray | None = None) -> np.ndarray:
        """8-bit pixels for showing on screen through `window` (center, width), default the image's own
        (`display_window`); plain 8-bit images without a recorded window are shown as they are. `pixels`: the stored
        values when the caller has read them already."""
        info = self.image(image_id)
        pixels = self.files.read(info.file) if pixels is None else pixels
        if window is None and info.window_width is None and pixels.dtype == np.uint8:
            out = pixels
        else:
            center, width = window or self.display_window(image_id, pixels)
            out = _rescale(pixels, center - width / 2, center + width / 2)
        return 255 - out if info.invert else out

    def display_window(self, image_id: int, pixels: np.ndarray | None = None) -> tuple[float, float]:
        """The image's own window (center, width): the one recorded at import (DICOM's, or a percentile one), else
        its whole value range."""
        info = self.image(image_id)
        if info.window_width is not None and info.window_center is not None:
            return float(info.window_center), float(info.window_width)
        low, high = self.value_range(image_id, pixels)
        return (low + high) / 2, max(high - low, 1e-6)

    def value_range(self, image_id: int, pixels: np.ndarray | None = None) -> tuple[float, float]:
        """(lowest, highest) stored value of an image: the span a window can usefully cover."""
        pixels = self.files.read(self.image(image_id).file) if pixels is None else pixels
        return float(pixels.min()), float(pixels.max())

    # -- masks -------------------------------------------------------------------------------------------------

    def save_mask(self, image_id: int, mask: np.ndarray, annotator: str, origin: str = "human",
                  model_version: str | None = None, shown_version: int | None = None,
                  unchanged: bool = False) -> MaskInfo:
        """Save a new mask version (parent = the current one), label the image and release its lease.

        `shown_version` (the image's live mask version when the annotator was shown it, 0 for none) makes the save
        answer to what they saw: see `_claim`. None (imports, scripts) skips that check. `unchanged`: what was shown,
        saved without an edit (an accepted prediction always is): refused, not kept beside, if someone saved since.
        """
        if origin not in ORIGINS or origin == "no_finding":
            raise WorkspaceError(f"origin must be human, accepted_prediction or imported, not {origin!r}")
        info = self.image(image_id)
        mask = np.asarray(mask)
        if mask.shape != (info.height, info.width):
            raise WorkspaceError(f"mask is {mask.shape[::-1]} (w, h) but image {image_id} is "
                                 f"{info.width}x{info.height}")
        relpath = self.files.put_mask(mask > 0)
        with self.transaction() as conn:
            return self._add_mask(conn, image_id, relpath, origin, annotator, model_version, shown_version,
                                  unchanged or origin == "accepted_prediction")

    def mark_no_finding(self, image_id: int, annotator: str, shown_version: int | None = None) -> MaskInfo:
        """Record that the image was looked at and shows nothing to segment (exported as an empty mask)."""
        self.image(image_id)
        with self.transaction() as conn:
            return self._add_mask(conn, image_id, None, "no_finding", annotator, None, shown_version)

    def live_version(self, image_id: int) -> int:
        """The version number of the image's latest live mask, 0 when it has none: what an annotator is shown."""
        latest = self.latest_mask(image_id)
        return 0 if latest is None else latest.version

    def conflicts(self) -> list[MaskInfo]:
        """Live masks saved over a version their annotator never saw, newest first (shown on the dashboard)."""
        rows = self.conn.execute(
            "SELECT * FROM masks WHERE conflict_with IS NOT NULL AND undone_at IS NULL ORDER BY id DESC")
        return [from_row(MaskInfo, row) for row in rows]

    def accept_prediction(self, image_id: int, annotator: str, model_version: str | None = None) -> MaskInfo:
        """Take a model's predicted mask as is (origin accepted_prediction; the model version is kept)."""
        model_version = model_version or self.queue_model()
        row = self.conn.execute(
            "SELECT mask_file FROM predictions WHERE image_id = ? AND model_version = ?", (image_id, model_version)
        ).fetchone()
        if row is None or row["mask_file"] is None:
            raise WorkspaceError(f"no predicted mask for image {image_id} from model {model_version}")
        with self.transaction() as conn:
            return self._add_mask(conn, image_id, row["mask_file"], "accepted_prediction", annotator, model_version)

    def last_save(self, annotator: str) -> MaskInfo | None:
        """The save `undo_last` would withdraw now."""
        row = self.conn.execute(_LAST_SAVE, (annotator,)).fetchone()
        return None if row is None else from_row(MaskInfo, row)

    def undo_last(self, annotator: str, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                  expected: int | None = None) -> MaskInfo | None:
        """Withdraw the annotator's most recent save; the image falls back to its previous version (or unlabeled)
        and, if that leaves it unlabeled and free, is leased back to them so the queue returns it next. With
        `expected` (the mask id the annotator was shown as their last save) anything else is refused, so a repeated
        request cannot withdraw a second save."""
        with self.transaction() as conn:
            row = conn.execute(_LAST_SAVE, (annotator,)).fetchone()
            if expected is not None and (row is None or row["id"] != expected):
                raise SaveRefused(f"save {expected} is no longer your last one (undone already, or you saved since): "
                                  "nothing undone")
            if row is None:
                return None
            row = conn.execute(
                "UPDATE masks SET undone_at = ? WHERE id = ? RETURNING *", (utc_now(), row["id"])
            ).fetchone()
            state = self._refresh_state(conn, row["image_id"])
            if state == "unlabeled":
                conn.execute(
                    "INSERT INTO leases (image_id, annotator, expires_at, taken_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(image_id) DO UPDATE SET annotator = excluded.annotator,"
                    " expires_at = excluded.expires_at, taken_at = excluded.taken_at WHERE leases.expires_at <= ?",
                    (row["image_id"], annotator, time.time() + lease_seconds, utc_now(), time.time()),
                )
            self._log(conn, annotator, "undo", {"version": row["version"], "origin": row["origin"]}, row["image_id"])
        return from_row(MaskInfo, row)

    def latest_mask(self, image_id: int) -> MaskInfo | None:
        row = self.conn.execute(
            "SELECT * FROM masks WHERE image_id = ? AND undone_at IS NULL ORDER BY version DESC LIMIT 1", (image_id,)
        ).fetchone()
        return None if row is None else from_row(MaskInfo, row)

    def mask_history(self, image_id: int) -> list[MaskInfo]:
        """Every version, undone ones included, oldest first."""
        rows = self.conn.execute("SELECT * FROM masks WHERE image_id = ? ORDER BY version", (image_id,))
        return [from_row(MaskInfo, row) for row in rows]

    def read_mask(self, info: ImageInfo, mask: MaskInfo) -> np.ndarray:
        """The boolean mask of one version (all False for a no-finding mark)."""
        if mask.file is None:
            return np.zeros((info.height, info.width), dtype=bool)
        return self.files.read_mask(mask.file)

    def load_mask(self, image_id: int) -> np.ndarray | None:
        """The latest mask as booleans; None while the image is unlabeled."""
        mask = self.latest_mask(image_id)
        return None if mask is None else self.read_mask(self.image(image_id), mask)

    def labeled(self, split: str | None = None, origins: Sequence[str] = ORIGINS) -> list[tuple[ImageInfo, MaskInfo]]:
        """Each labeled image with its latest live mask: the trainer's training (or validation) set."""
        marks = ",".join("?" * len(origins))
        sql = f"""
            WITH latest AS (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY image_id ORDER BY version DESC) AS rank
                FROM masks WHERE undone_at IS NULL)
            SELECT i.*, {", ".join(f"l.{c} AS mask_{c}" for c in _MASK_COLUMNS)}
            FROM latest l JOIN images i ON i.id = l.image_id
            WHERE l.rank = 1 AND l.origin IN ({marks}) {"AND i.split = ?" if split else ""} ORDER BY i.id"""
        rows = self.conn.execute(sql, [*origins, *([split] if split else [])])
        return [(_image_info(row), MaskInfo(**{c: row[f"mask_{c}"] for c in _MASK_COLUMNS})) for row in rows]

    def _add_mask(self, conn: sqlite3.Connection, image_id: int, relpath: str | None, origin: str, annotator: str,
                  model_version: str | None, shown_version: int | None = None, unchanged: bool = False) -> MaskInfo:
        last = conn.execute("SELECT COALESCE(MAX(version), 0) FROM masks WHERE image_id = ?", (image_id,)).fetchone()[0]
        current = self.latest_mask(image_id)  # this thread's connection: inside the transaction
        parent = None if current is None else current.version
        conflict = None if shown_version is None else self._claim(conn, image_id, annotator, unchanged, shown_version,
                                                                  current)
        row = conn.execute(
            "INSERT INTO masks (image_id, version, parent_version, origin, annotator, model_version, file, created_at,"
            " conflict_with) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (image_id, last + 1, parent, origin, annotator, model_version, relpath, utc_now(), conflict),
        ).fetchone()
        self._refresh_state(conn, image_id)
        conn.execute("DELETE FROM leases WHERE image_id = ?", (image_id,))
        details = {"version": last + 1, "origin": origin, "model": model_version}
        if conflict is not None:
            details["conflict_with"] = conflict
        self._log(conn, annotator, "save_mask", details, image_id)
        return from_row(MaskInfo, row)

    @staticmethod
    def _claim(conn: sqlite3.Connection, image_id: int, annotator: str, unchanged: bool, shown_version: int,
               current: MaskInfo | None) -> int | None:
        """May `annotator`, shown version `shown_version` of the image, save it now? Returns the version this save
        conflicts with (None: none), or raises SaveRefused and nothing changes.

        Only the lease holder, or anyone while the image is free, may save. If someone saved the image after it was
        shown, an unchanged save (a proposal accepted as is, or an empty canvas accepted before the first round) is
        refused (it would replace work unseen); a human decision (a drawn mask, no finding) is kept as a new version
        that names the one it did not see, so both stay and the conflict shows.
        Their own earlier save (in another tab) is no conflict.
        """
        lease = conn.execute("SELECT annotator, expires_at FROM leases WHERE image_id = ?", (image_id,)).fetchone()
        if lease is not None and lease["annotator"] != annotator and lease["expires_at"] > time.time():
            raise SaveRefused(f"image {image_id} is being labeled by {lease['annotator']} now: nothing was saved")
        if current is None or current.version == shown_version or current.annotator == annotator:
            return None  # nothing saved since, or only by themselves (another tab): their latest word stands
        if unchanged:
            raise SaveRefused(f"image {image_id} was saved by {current.annotator} (version {current.version})"
                              f" after it was shown to you: what you accepted unchanged was not saved")
        return current.version

    @staticmethod
    def _refresh_state(conn: sqlite3.Connection, image_id: int) -> str:
        """Keep images.state (what the queue filters on) equal to what the latest live mask says."""
        row = conn.execute(
            "SELECT origin FROM masks WHERE image_id = ? AND undone_at IS NULL ORDER BY version DESC LIMIT 1",
            (image_id,),
        ).fetchone()
        state = "unlabeled" if row is None else ("no_finding" if row[0] == "no_finding" else "masked")
        conn.execute("UPDATE images SET state = ? WHERE id = ?", (state, image_id))
        return state

    # -- tags --------------------------------------------------------------------------------------------------

    def set_tag(self, image_id: int, tag: str, present: bool, annotator: str) -> None:
        """Image-level label (e.g. 'lesion' present/absent) by one annotator; a later call replaces theirs."""
        self.image(image_id)
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO tags (image_id, tag, present, annotator, created_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(image_id, tag, annotator) DO UPDATE SET present = excluded.present,"
                " created_at = excluded.created_at",
                (image_id, tag, int(bool(present)), annotator, utc_now()),
            )
            self._log(conn, annotator, "set_tag", {"tag": tag, "present": bool(present)}, image_id)

    def tags(self, image_id: int) -> list[dict[str, Any]]:
        rows = self.conn.execute("SELECT * FROM tags WHERE image_id = ? ORDER BY created_at", (image_id,))
        return [{**dict(row), "present": bool(row["present"])} for row in rows]

    # -- models, predictions, training rounds ------------------------------------------------------------------

    def register_model(self, version: str, checkpoint_path: str | os.PathLike[str],
                       metrics: dict[str, Any] | None = None, round_id: int | None = None,
                       who: str = "trainer", published: bool = True) -> ModelInfo:
        """Record a trained model. Only a published one is ever served (`latest_model`) or orders the queue; an
        unpublished one is kept for the record (and its checkpoint for inspection)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO models (version, created_at, checkpoint_path, metrics, round_id, published)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (version, utc_now(), str(checkpoint_path), json.dumps(metrics or {}), round_id, int(published)),
            )
            self._log(conn, who, "register_model", {"version": version, "metrics": metrics or {},
                                                    "published": published})
        return self.model(version)

    def model(self, version: str) -> ModelInfo:
        row = self.conn.execute("SELECT * FROM models WHERE version = ?", (version,)).fetchone()
        if row is None:
            raise WorkspaceError(f"no model {version!r}")
        return _model_info(row)

    def models(self) -> list[ModelInfo]:
        """Oldest first, published or not."""
        rows = self.conn.execute("SELECT * FROM models ORDER BY rowid")
        return [_model_info(row) for row in rows]

    def latest_model(self) -> ModelInfo | None:
        """The serving model: the newest published one (its predictions order the queue once recorded:
        `queue_model`)."""
        row = self.conn.execute("SELECT version FROM models WHERE published ORDER BY rowid DESC LIMIT 1").fetchone()
        return None if row is None else self.model(row[0])

    def queue_model(self) -> str | None:
        """The model whose predictions order the queue (and are shown as proposals): the newest published model that
        has scored the pool. `latest_model` may be newer while its predictions are still being recorded."""
        return self.get_setting(QUEUE_MODEL)

    def _newest_scored_model(self) -> str | None:
        """The newest published model with predictions: the one that should order the queue."""
        row = self.conn.execute(
            "SELECT m.version FROM models m"
            " WHERE m.published AND EXISTS (SELECT 1 FROM predictions p WHERE p.model_version = m.version)"
            " ORDER BY m.rowid DESC LIMIT 1"
        ).fetchone()
        return None if row is None else row[0]

    def record_predictions(self, model_version: str, predictions: Iterable[PredictionRecord],
                           who: str = "trainer") -> int:
        """Store (or replace) a model's predictions in bulk, masks included, in one transaction."""
        now = utc_now()
        rows = []
        for p in predictions:
            rows.append({
                "model_version": model_version,
                "image_id": int(p.image_id),
                "probability": None if p.probability is None else float(p.probability),
                "uncertainty": float(p.uncertainty),
                "classifier_uncertainty": _optional_float(p.classifier_uncertainty),
                "segmentation_uncertainty": _optional_float(p.segmentation_uncertainty),
                "box": None if p.box is None else json.dumps([float(v) for v in p.box]),
                "mask_file": None if p.mask is None else self.files.put_mask(p.mask),
                "created_at": now,
            })
        with self.transaction() as conn:
            self.model(model_version)
            self.db.table("predictions").insert_all(rows, replace=True, batch_size=5000)
            self._refresh_priorities(conn, model_version, rows)
            self._log(conn, who, "record_predictions", {"model": model_version, "count": len(rows)})
        return len(rows)

    def _refresh_priorities(self, conn: sqlite3.Connection, model_version: str, rows: list[dict[str, Any]]) -> None:
        """Copy the current model's uncertainties into images.priority, the column the queue's index is sorted by.

        When a newer model takes over, every old priority is cleared first, so images it has not scored yet
        fall back to the seeded order instead of keeping a stale model's ranking.
        """
        if self._newest_scored_model() != model_version:
            return  # predictions of an older model: kept, but they do not order the queue
        if self.queue_model() != model_version:
            conn.execute("UPDATE images SET priority = NULL WHERE priority IS NOT NULL")
            conn.execute(
                "UPDATE images SET priority = p.uncertainty FROM predictions p"
                " WHERE p.image_id = images.id AND p.model_version = ?",
                (model_version,),
            )
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (QUEUE_MODEL, json.dumps(model_version)),
            )
        else:
            conn.executemany("UPDATE images SET priority = ? WHERE id = ?",
                             [(row["uncertainty"], row["image_id"]) for row in rows])

    def unscored_ids(self, model_version: str, with_masks: bool = False) -> list[int]:
        """Unlabeled pool images `model_version` has no prediction for yet, in id order; `with_masks`: also those
        whose prediction lacks the segmentation uncertainty (scored by the classifier alone)."""
        lacking = " AND segmentation_uncertainty IS NOT NULL" if with_masks else ""
        return [row[0] for row in self.conn.execute(
            "SELECT id FROM images WHERE split = 'pool' AND state = 'unlabeled' AND id NOT IN"
            f" (SELECT image_id FROM predictions WHERE model_version = ?{lacking}) ORDER BY id", (model_version,))]

    def pool_predictions(self, model_version: str) -> list[PredictionRecord]:
        """A model's predictions for every unlabeled pool image it has scored (what a strategy ranks), by image id."""
        rows = self.conn.execute(
            "SELECT p.* FROM predictions p JOIN images i ON i.id = p.image_id"
            " WHERE p.model_version = ? AND i.split = 'pool' AND i.state = 'unlabeled' ORDER BY p.image_id",
            (model_version,))
        return [PredictionRecord(row["image_id"], row["uncertainty"], row["probability"],
                                 None if row["box"] is None else tuple(json.loads(row["box"])), None,
                                 row["classifier_uncertainty"], row["segmentation_uncertainty"]) for row in rows]

    def set_priorities(self, model_version: str | None, priorities: dict[int, float]) -> bool:
        """Order the queue by `priorities` (image id -> priority, higher asked first; images left out keep theirs),
        as a strategy ranked the pool for `model_version` (None: before any model orders the queue). False, and
        nothing changes, if that model does not order the queue (a newer one took over meanwhile)."""
        with self.transaction() as conn:
            if self.queue_model() != model_version:
                return False
            conn.executemany("UPDATE images SET priority = ? WHERE id = ? AND split = 'pool' AND state = 'unlabeled'",
                             [(float(p), int(i)) for i, p in priorities.items()])
        return True

    def prediction(self, image_id: int, model_version: str | None = None) -> dict[str, Any] | None:
        """A model's prediction for one image (default: the queue model's), with the box decoded."""
        model_version = model_version or self.queue_model()
        row = self.conn.execute(
            "SELECT * FROM predictions WHERE image_id = ? AND model_version = ?", (image_id, model_version)
        ).fetchone()
        if row is None:
            return None
        return {**dict(row), "box": None if row["box"] is None else json.loads(row["box"])}

    def start_round(self, labels_used: int, who: str = LOCAL_TRAINER) -> int:
        """A round of the workspace's own trainer (one per workspace: its lock file sees to that)."""
        with self.transaction() as conn:
            round_id = conn.execute(
                "INSERT INTO training_rounds (started_at, labels_used, status) VALUES (?, ?, 'running')",
                (utc_now(), labels_used),
            ).lastrowid
            self._log(conn, who, "start_round", {"round": round_id, "labels_used": labels_used})
        return int(round_id)

    def claim_round(self, labels_used: int, owner: str, lease_seconds: float = ROUND_LEASE_SECONDS) -> int:
        """Start a round owned by remote trainer `owner`. Refused (RoundTaken) while another trainer's round is
        running and its owner reported within `lease_seconds` (the local trainer's always counts as alive). A round
        whose owner fell silent is cancelled and taken over; so is `owner`'s own earlier one (it restarted)."""
        now = time.time()
        with self.transaction() as conn:
            for row in conn.execute("SELECT id, owner, alive_at FROM training_rounds WHERE status = 'running'"
                                    ).fetchall():
                silent = row["alive_at"] is not None and now - row["alive_at"] >= lease_seconds
                if row["owner"] != owner and not silent:
                    raise RoundTaken(f"round {row['id']} is being trained by {row['owner']!r}")
                why = (f"{owner!r} started another round" if row["owner"] == owner
                       else f"{row['owner']!r} stopped reporting; {owner!r} took over")
                conn.execute("UPDATE training_rounds SET status = 'cancelled', ended_at = ?, error = ? WHERE id = ?",
                             (utc_now(), why, row["id"]))
                self._log(conn, owner, "finish_round", {"round": row["id"], "status": "cancelled", "error": why})
            round_id = conn.execute(
                "INSERT INTO training_rounds (started_at, labels_used, status, owner, alive_at)"
                " VALUES (?, ?, 'running', ?, ?)", (utc_now(), labels_used, owner, now)).lastrowid
            self._log(conn, owner, "start_round", {"round": round_id, "labels_used": labels_used})
        return int(round_id)

    def touch_round(self, round_id: int, owner: str) -> RoundInfo:
        """`owner` is alive and still training `round_id`: renew its lease; RoundTaken if the round is no longer
        running or belongs to another trainer (then the owner should stop: its model would not be taken)."""
        with self.transaction() as conn:
            updated = conn.execute("UPDATE training_rounds SET alive_at = ? WHERE id = ? AND owner = ?"
                                   " AND status = 'running'", (time.time(), round_id, owner)).rowcount
        if not updated:
            found = self.rounds(round_id)
            state = (f"was {found[0].status}" if found and found[0].owner == owner
                     else f"belongs to {found[0].owner!r}" if found else "does not exist")
            raise RoundTaken(f"round {round_id} {state}")
        return self.rounds(round_id)[0]

    def finish_round(self, round_id: int, status: str = "done", val_dice: float | None = None,
                     error: str | None = None, model_version: str | None = None, who: str = "trainer",
                     note: str | None = None, owner: str | None = None) -> RoundInfo:
        """`note`: what a person should know about a finished round (e.g. why its model was not published).
        `owner`: only if the round is still running and that trainer's (else RoundTaken, and nothing changes)."""
        if status not in ("done", "failed", "cancelled"):
            raise WorkspaceError(f"a round finishes as done, failed or cancelled, not {status!r}")
        with self.transaction() as conn:
            mine = "" if owner is None else " AND owner = ? AND status = 'running'"
            updated = conn.execute(
                "UPDATE training_rounds SET ended_at = ?, status = ?, val_dice = ?, error = ?, model_version = ?,"
                " note = ? WHERE id = ?" + mine,
                (utc_now(), status, val_dice, error, model_version, note, round_id, *([owner] if owner else [])),
            ).rowcount
            if not updated and owner is not None:
                raise RoundTaken(f"round {round_id} is no longer {owner!r}'s to finish")
            if not updated:
                raise WorkspaceError(f"no training round {round_id}")
            self._log(conn, who, "finish_round", {"round": round_id, "status": status, "val_dice": val_dice,
                                                  "error": error, "note": note})
        return self.rounds(round_id)[0]

    def rounds(self, round_id: int | None = None) -> list[RoundInfo]:
        """Training rounds oldest first (the Dice curve), or just the one asked for."""
        if round_id is None:
            rows = self.conn.execute("SELECT * FROM training_rounds ORDER BY id")
        else:
            rows = self.conn.execute("SELECT * FROM training_rounds WHERE id = ?", (round_id,))
        return [from_row(RoundInfo, row) for row in rows]

    def latest_round(self) -> RoundInfo | None:
        row = self.conn.execute("SELECT * FROM training_rounds ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else from_row(RoundInfo, row)

    # -- remote trainers' tokens ---------------------------------------------------------------------------------

    def add_trainer_token(self, name: str, who: str = "admin") -> str:
        """A new token for trainer `name`, replacing any earlier one. Only its SHA-256 is stored: this is the one
        time the token can be read."""
        if not name or name == LOCAL_TRAINER:
            raise WorkspaceError(f"a trainer needs a name other than {LOCAL_TRAINER!r} (the workspace's own)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.transaction() as conn:
            conn.execute("INSERT INTO trainer_tokens (name, token_sha256, created_at) VALUES (?, ?, ?)"
                         " ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256,"
                         " created_at = excluded.created_at, revoked_at = NULL", (name, _token_hash(token), utc_now()))
            self._log(conn, who, "add_trainer_token", {"name": name})
        return token

    def revoke_trainer_token(self, name: str, who: str = "admin") -> None:
        """From now on `name`'s token is refused; a round it is training is cancelled (it could not upload it any
        more), so another trainer may take it at once."""
        with self.transaction() as conn:
            if not conn.execute("UPDATE trainer_tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
                                (utc_now(), name)).rowcount:
                raise WorkspaceError(f"no trainer token named {name!r} to revoke")
            conn.execute("UPDATE training_rounds SET status = 'cancelled', ended_at = ?, error = ? WHERE owner = ?"
                         " AND status = 'running'", (utc_now(), f"{name!r}'s token was revoked", name))
            self._log(conn, who, "revoke_trainer_token", {"name": name})

    def trainer_tokens(self) -> list[dict[str, Any]]:
        """name, created_at, revoked_at (None while valid) of every trainer token, by name."""
        rows = self.conn.execute("SELECT name, created_at, revoked_at FROM trainer_tokens ORDER BY name")
        return [dict(row) for row in rows]

    def trainer_for_token(self, token: str) -> str | None:
        """The name of the trainer `token` belongs to, None if it is unknown or revoked."""
        row = self.conn.execute("SELECT name FROM trainer_tokens WHERE token_sha256 = ? AND revoked_at IS NULL",
                                (_token_hash(token),)).fetchone()
        return None if row is None else row[0]

    # -- status, backup, housekeeping --------------------------------------------------------------------------

    def counts(self) -> WorkspaceCounts:
        """One consistent snapshot of what `adasam status` prints."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            row = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(state = 'masked'), 0), COALESCE(SUM(state = 'no_finding'), 0),"
                " COALESCE(SUM(state = 'unlabeled'), 0) FROM images"
            ).fetchone()
            tagged = conn.execute("SELECT COUNT(DISTINCT image_id) FROM tags").fetchone()[0]
            leased = conn.execute("SELECT COUNT(*) FROM leases WHERE expires_at > ?", (time.time(),)).fetchone()[0]
            by_split = dict(conn.execute("SELECT split, COUNT(*) FROM images GROUP BY split").fetchall())
        finally:
            conn.execute("COMMIT")
        return WorkspaceCounts(images=row[0], masked=row[1], no_finding=row[2], tagged=tagged, unlabeled=row[3],
                               leased=leased, latest_model=self.latest_model(), latest_round=self.latest_round(),
                               by_split=by_split)

    def integrity_check(self) -> str:
        """SQLite's own check: 'ok' when the database file is sound."""
        return "; ".join(row[0] for row in self.conn.execute("PRAGMA integrity_check"))

    def backup(self, destination: str | os.PathLike[str]) -> Path:
        """Copy the database with SQLite's online backup API (safe while others write), then check the copy.

        Pixel files are not copied: they are immutable and content-addressed, so copying files/ at any time
        alongside (e.g. with rsync) gives a consistent pair.
        """
        dest = Path(destination)
        if dest.resolve() in {Path(f"{self.db_path}{end}").resolve() for end in ("", "-wal", "-shm")}:
            raise WorkspaceError(f"{dest} is the workspace's live database: back it up to another file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            target = sqlite3.connect(tmp)
        except sqlite3.Error as exc:
            raise WorkspaceError(f"cannot write a backup beside {dest}: {exc}") from None
        try:
            self.conn.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")
            result = target.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            target.close()
        if result != "ok":
            tmp.unlink(missing_ok=True)
            raise WorkspaceError(f"backup failed its integrity check: {result}")
        os.replace(tmp, dest)
        return dest

    def referenced_files(self) -> set[str]:
        rows = self.conn.execute(
            "SELECT file FROM images UNION SELECT file FROM masks WHERE file IS NOT NULL"
            " UNION SELECT mask_file FROM predictions WHERE mask_file IS NOT NULL"
        )
        return {row[0] for row in rows}

    def collect_garbage(self, grace_seconds: float = 3600.0) -> int:
        """Remove pixel files no row references (left by a crash between writing a file and committing its row).

        Holds no lock while it walks the folder: files younger than `grace_seconds` are spared, and a writer
        refreshes the mtime of an existing file before pointing a new row at it.
        """
        return self.files.collect_garbage(self.referenced_files(), grace_seconds)


_INSERT_IMAGE = """
INSERT INTO images (sha256, file, name, original_path, width, height, channels, bit_depth, dtype, modality, split,
                    has_lesion, volume_id, slice_index, frame_index, window_center, window_width, invert,
                    shuffle_key, imported_at)
VALUES (:sha256, :file, :name, :original_path, :width, :height, :channels, :bit_depth, :dtype, :modality, :split,
        :has_lesion, :volume_id, :slice_index, :frame_index, :window_center, :window_width, :invert,
        :shuffle_key, :imported_at)
ON CONFLICT(sha256) DO NOTHING RETURNING id
"""


_MASK_COLUMNS = [f.name for f in dataclasses.fields(MaskInfo)]


def _token_hash(token: str) -> str:
    """Tokens are 256 random bits: a plain SHA-256 is enough (no salt or stretching, unlike passwords)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _model_info(row: sqlite3.Row) -> ModelInfo:
    return from_row(ModelInfo, row, metrics=json.loads(row["metrics"]), published=bool(row["published"]))


def _image_info(row: sqlite3.Row) -> ImageInfo:
    has_lesion = row["has_lesion"]
    return from_row(ImageInfo, row, has_lesion=None if has_lesion is None else bool(has_lesion),
                    invert=bool(row["invert"]))


def _rescale(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    span = max(high - low, 1e-12)
    return (np.clip((pixels.astype(np.float32) - low) / span, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


__all__ = ["DEFAULT_LEASE_SECONDS", "SaveRefused", "Store", "WorkspaceError", "utc_now"]
