"""What the background trainer tells the server: a small JSON file it rewrites atomically (progress, ETA, heartbeat),
plus the names of the workspace settings both processes share. A file, not a setting, so progress updates every
second do not fill the workspace's event log."""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

RETRAIN_REQUESTED = "retrain_requested"  # setting: set by "Retrain now", cleared by the trainer when it starts
LABELS_AT_LAST_ROUND = "labels_at_last_round"  # setting: the label count the last round (or failure) saw
VALIDATION_IDS = "validation_image_ids"  # setting: the fixed validation set, chosen once
VALIDATION_SOURCE = "validation_source"  # setting: how it was chosen (shown on the dashboard)
WORKSPACE_NOTE = "workspace_note"  # setting: what the images are (written by the first-run seeding)
QUEUE_STRATEGY = "queue_strategy"  # setting: the active-learning strategy ordering the queue (model.strategies)
IMAGE_VIEW = "image_view"  # setting: rounds train the classifier's image view too (adasam serve: at first on)
REMOTE_DOWNLOADS = "remote_round_downloads"  # setting: the images and model a remote round's trainer may download
TARGET_DICE = "target_dice"  # setting: the val Dice the project lead wants; the dashboard projects masks to reach it
DEFAULT_TARGET_DICE = 0.8
TAG = "finding"  # the image-level tag: the target (lesion, organ...) is present in the image


def status_path(workspace: str | os.PathLike[str]) -> Path:
    return Path(workspace) / "trainer" / "status.json"


def write_status(workspace: str | os.PathLike[str], **status: Any) -> None:
    path = status_path(workspace)
    _write_best_effort(path, path.with_name(f".status-{os.getpid()}.tmp"),
                       json.dumps({**status, "updated": time.time(), "pid": os.getpid()}, default=str))


def _write_best_effort(path: Path, tmp: Path, text: str) -> None:
    """Progress only: a full or read-only disk must not stop the trainer or the server (it did both, the server's
    loop writing the trainer's status), so a failed write is warned about once per file and skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if str(path) not in _UNWRITABLE:
            _UNWRITABLE.add(str(path))
            warnings.warn(f"cannot write {path} ({exc.strerror or exc}): progress is not shown until it can",
                          RuntimeWarning, stacklevel=3)


_UNWRITABLE: set[str] = set()  # status files a write failed for (warned once)


def remote_status_path(workspace: str | os.PathLike[str]) -> Path:
    return Path(workspace) / "trainer" / "remote.json"


def write_remote_status(workspace: str | os.PathLike[str], **status: Any) -> None:
    """The progress a trainer on another machine last reported (nothing: no remote round running). A file of its
    own: the workspace's trainer process keeps writing status.json while it embeds and re-scores."""
    path = remote_status_path(workspace)
    _write_best_effort(path, path.with_name(f".remote-{os.getpid()}-{threading.get_ident()}.tmp"),  # one per thread
                       json.dumps({**status, "updated": time.time()}))


def read_remote_status(workspace: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return json.loads(remote_status_path(workspace).read_text())
    except (OSError, ValueError):
        return {}


def read_status(workspace: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return json.loads(status_path(workspace).read_text())
    except (OSError, ValueError):
        return {}
