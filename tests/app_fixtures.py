"""App-test helpers. The server, workspace and browser harness lives in `app.testing` (the UI and load benchmarks use
it too) and is re-exported here; the tests run it with the micro_random backbone: every code path, milliseconds per
model call."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from annotation import Store
from app.testing import Server, launch_chromium, make_workspace, mask_png  # noqa: F401 (re-exported)


def label(store: Store, count: int, annotator: str = "ann") -> list[int]:
    """Give `count` pool images a lesion mask (every third one 'no finding')."""
    ids = [info.id for info in store.images(split="pool", state="unlabeled")][:count]
    for k, image_id in enumerate(ids):
        info = store.image(image_id)
        if k % 3 == 2:
            store.mark_no_finding(image_id, annotator)
        else:
            mask = np.zeros((info.height, info.width), bool)
            mask[10:40, 20:60] = True
            store.save_mask(image_id, mask, annotator)
    return ids


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.25, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def auth_server(tmp_path: Path) -> Server:
    """`adasam serve --auth` (no trainer) with users alice (s3cret) and bob (hunter22)."""
    from app.auth import write_user

    users = tmp_path / "users.txt"
    write_user(users, "alice", "s3cret")
    write_user(users, "bob", "hunter22")
    return Server(make_workspace(tmp_path, n=8, n_val=2), tmp_path / "serve.log", "--no-trainer", "--auth", str(users))
