"""Workspace database schema as an ordered list of migrations; PRAGMA user_version counts how many have run.

A workspace made by an older program is brought up to date on open; one made by a newer program is refused
rather than misread. Add a migration by appending a function to MIGRATIONS, never by editing an old one.
"""
from __future__ import annotations

import sqlite3
from typing import Callable

V1 = """
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL                               -- JSON
);
CREATE TABLE volumes (                                -- a NIfTI file sliced along one axis
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    axis INTEGER NOT NULL,
    shape TEXT NOT NULL,                              -- JSON list, the 3-D shape of the source data
    affine TEXT NOT NULL,                             -- JSON 4x4, so masks can be put back in scanner space
    imported_at TEXT NOT NULL,
    UNIQUE (path, axis)
);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,                      -- of the decoded pixels: duplicates are found by content
    file TEXT NOT NULL,                               -- relative to the workspace's files/ folder
    name TEXT NOT NULL,                               -- file stem (+ _f/_s index for frames and slices)
    original_path TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    bit_depth INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    modality TEXT NOT NULL,
    split TEXT NOT NULL DEFAULT 'pool' CHECK (split IN ('pool', 'val', 'test')),
    has_lesion INTEGER CHECK (has_lesion IN (0, 1)),  -- image-level label from a manifest, if any
    volume_id INTEGER REFERENCES volumes(id),
    slice_index INTEGER,
    frame_index INTEGER,
    window_center REAL,
    window_width REAL,
    invert INTEGER NOT NULL DEFAULT 0,                -- DICOM MONOCHROME1: high values display dark
    state TEXT NOT NULL DEFAULT 'unlabeled' CHECK (state IN ('unlabeled', 'masked', 'no_finding')),
    priority REAL,                                    -- the current model's uncertainty or strategy rank (NULL: none)
    shuffle_key INTEGER NOT NULL,                     -- seeded random order: before any model, and for ties
    imported_at TEXT NOT NULL
);
CREATE INDEX images_queue ON images (state, split, priority DESC, shuffle_key);  -- next_task reads it in order
CREATE INDEX images_volume ON images (volume_id, slice_index);
CREATE TABLE image_sources (                          -- every place an image was found, duplicates included
    image_id INTEGER NOT NULL REFERENCES images(id),
    source_key TEXT NOT NULL UNIQUE,                  -- path, plus '#frame N' or '#axis A slice N'
    path TEXT NOT NULL,
    volume_id INTEGER REFERENCES volumes(id),
    position INTEGER
);
CREATE INDEX image_sources_image ON image_sources (image_id);
CREATE INDEX image_sources_volume ON image_sources (volume_id);
CREATE TABLE models (
    version TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    checkpoint_path TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',               -- JSON
    round_id INTEGER REFERENCES training_rounds(id)
);
CREATE TABLE masks (
    id INTEGER PRIMARY KEY,
    image_id INTEGER NOT NULL REFERENCES images(id),
    version INTEGER NOT NULL,
    parent_version INTEGER,
    origin TEXT NOT NULL CHECK (origin IN ('human', 'accepted_prediction', 'no_finding', 'imported')),
    annotator TEXT NOT NULL,
    model_version TEXT REFERENCES models(version),
    file TEXT,                                        -- NULL for a no-finding mark (an empty mask)
    created_at TEXT NOT NULL,
    undone_at TEXT,                                   -- set by undo; the row is kept for the record
    UNIQUE (image_id, version)
);
CREATE INDEX masks_annotator ON masks (annotator, id);
CREATE TABLE tags (
    image_id INTEGER NOT NULL REFERENCES images(id),
    tag TEXT NOT NULL,
    present INTEGER NOT NULL CHECK (present IN (0, 1)),
    annotator TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (image_id, tag, annotator)
);
CREATE TABLE predictions (
    model_version TEXT NOT NULL REFERENCES models(version),
    image_id INTEGER NOT NULL REFERENCES images(id),
    probability REAL,
    uncertainty REAL NOT NULL,
    box TEXT,                                         -- JSON [x0, y0, x1, y1] in pixels
    mask_file TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (model_version, image_id)
);
CREATE INDEX predictions_queue ON predictions (model_version, uncertainty DESC, image_id);
CREATE INDEX predictions_image ON predictions (image_id);
CREATE TABLE training_rounds (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    labels_used INTEGER NOT NULL,
    val_dice REAL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'cancelled')),
    error TEXT,
    model_version TEXT
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    who TEXT NOT NULL,
    what TEXT NOT NULL,
    image_id INTEGER,
    details TEXT NOT NULL DEFAULT '{}'                -- JSON
);
CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the event log is append-only'); END;
CREATE TABLE leases (
    image_id INTEGER PRIMARY KEY REFERENCES images(id),
    annotator TEXT NOT NULL,
    expires_at REAL NOT NULL,                         -- unix time
    taken_at TEXT NOT NULL
);
CREATE INDEX leases_annotator ON leases (annotator);
CREATE TABLE skips (
    annotator TEXT NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id),
    skipped_at REAL NOT NULL,
    PRIMARY KEY (annotator, image_id)
);
CREATE INDEX skips_order ON skips (annotator, skipped_at);
INSERT INTO settings (key, value) VALUES ('queue_seed', '0');
"""


def _v1_initial(conn: sqlite3.Connection) -> None:
    for statement in _statements(V1):
        conn.execute(statement)


def _statements(script: str) -> list[str]:
    """Split a DDL script into statements (executescript would commit the surrounding transaction)."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]


def _v2_conflicts(conn: sqlite3.Connection) -> None:
    """A save made over a version its annotator never saw records that version: both kept, the conflict visible."""
    conn.execute("ALTER TABLE masks ADD COLUMN conflict_with INTEGER")


def _v3_publish_gate(conn: sqlite3.Connection) -> None:
    """A round's model is served only if validation does not show it worse than the serving one: whether it was
    published is kept with the model, and the reason with the round."""
    conn.execute("ALTER TABLE models ADD COLUMN published INTEGER NOT NULL DEFAULT 1")
    conn.execute("ALTER TABLE training_rounds ADD COLUMN note TEXT")


def _v4_uncertainty_parts(conn: sqlite3.Connection) -> None:
    """Active-learning strategies rank by either part of a prediction's uncertainty, not only the combined one."""
    conn.execute("ALTER TABLE predictions ADD COLUMN classifier_uncertainty REAL")
    conn.execute("ALTER TABLE predictions ADD COLUMN segmentation_uncertainty REAL")


def _v5_remote_trainers(conn: sqlite3.Connection) -> None:
    """Trainers on other machines: their tokens (only a SHA-256 of each is kept), and which trainer owns a running
    round, with when it last said it was alive (a silent owner's round can be taken over)."""
    conn.execute("""CREATE TABLE trainer_tokens (
        name TEXT PRIMARY KEY,
        token_sha256 TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    )""")
    conn.execute("ALTER TABLE training_rounds ADD COLUMN owner TEXT NOT NULL DEFAULT 'trainer'")
    conn.execute("ALTER TABLE training_rounds ADD COLUMN alive_at REAL")  # unix time of the owner's last word


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v1_initial, _v2_conflicts, _v3_publish_gate,
                                                          _v4_uncertainty_parts, _v5_remote_trainers]
LATEST_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    """The workspace was written by a newer program than this one."""


def migrate(conn: sqlite3.Connection) -> int:
    """Run the migrations the database has not had yet, inside the caller's transaction; return the new version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LATEST_VERSION:
        raise SchemaTooNew(f"workspace schema version {version} is newer than this program's ({LATEST_VERSION})")
    for number in range(version, LATEST_VERSION):
        MIGRATIONS[number](conn)
        conn.execute(f"PRAGMA user_version = {number + 1}")
    return LATEST_VERSION
