"""Kill -9 at random moments of saves, imports and exports: nothing committed is lost, the database stays sound."""
from __future__ import annotations

import csv
import multiprocessing
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from annotation import Store, export_workspace, import_sources
from annotation.files import pixel_hash
from annotation_fixtures import make_dataset

KILLS = 8
fork = multiprocessing.get_context("fork")  # starts at once, so the kill lands inside the work


def mask_for(seed: int, k: int) -> np.ndarray:
    return np.random.default_rng([seed, k]).random((32, 32)) > 0.5


def save_forever(workspace: Path, log: Path, seed: int) -> None:
    """Child: save masks and no-finding marks as fast as possible, logging each one after it is committed."""
    store = Store(workspace)
    ids = [image.id for image in store.images()]
    choose = random.Random(seed)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    for k in range(10**9):
        image_id = choose.choice(ids)
        if k % 5 == 4:
            saved = store.mark_no_finding(image_id, f"w{seed}")
        else:
            saved = store.save_mask(image_id, mask_for(seed, k), f"w{seed}")
        os.write(fd, f"{saved.id} {image_id} {seed} {k}\n".encode())


def import_folder(workspace: Path, source: Path) -> None:
    import_sources(Store(workspace), [source], progress=False)


def export_folder(workspace: Path, out: Path) -> None:
    export_workspace(Store(workspace), out, "png")


def run_and_kill(target, args, low: float, high: float) -> bool:
    """Start the child, SIGKILL it after a random delay; True if it was killed (not already finished)."""
    child = fork.Process(target=target, args=args)
    child.start()
    time.sleep(random.uniform(low, high))
    child.kill()
    child.join()
    return child.exitcode == -9


def duration(target, args) -> float:
    """How long the work takes when left alone, so kills can be spread over all of it."""
    child = fork.Process(target=target, args=args)
    started = time.perf_counter()
    child.start()
    child.join()
    assert child.exitcode == 0
    return time.perf_counter() - started


def assert_sound(workspace: Path) -> Store:
    """integrity_check ok, every row's file present and whole (its content hash matches its name)."""
    store = Store(workspace)
    assert store.integrity_check() == "ok"
    for relpath in store.referenced_files():
        path = store.files.path(relpath)
        pixels = store.files.read(relpath)
        assert pixel_hash(pixels) == path.name.split(".")[0], relpath
    for image in store.images():
        assert pixel_hash(store.load_image(image.id)) == image.sha256
    return store


@pytest.fixture(autouse=True)
def seeded():
    random.seed(1234)


def test_kill_during_saves_loses_no_committed_annotation(tmp_path):
    source = tmp_path / "set"
    make_dataset(source, n=6, size=(32, 32))
    with Store(tmp_path / "ws") as store:
        import_sources(store, [source], with_masks=False, progress=False)
    log = tmp_path / "committed.log"
    for seed in range(KILLS):
        assert run_and_kill(save_forever, (tmp_path / "ws", log, seed), 0.05, 0.4)
        with assert_sound(tmp_path / "ws") as store:
            lines = log.read_text().splitlines()
            for line in lines:
                mask_id, image_id, child_seed, k = map(int, line.split())
                [saved] = [m for m in store.mask_history(image_id) if m.id == mask_id]
                mask = store.read_mask(store.image(image_id), saved)
                if k % 5 == 4:
                    assert saved.origin == "no_finding" and not mask.any()
                else:
                    assert np.array_equal(mask, mask_for(child_seed, k))
    assert len(lines) > KILLS  # the children did commit work between kills
    with Store(tmp_path / "ws") as store:
        store.collect_garbage(grace_seconds=0)
    assert_sound(tmp_path / "ws").close()


def test_kill_during_import_leaves_whole_images_and_a_rerun_completes(tmp_path):
    source = tmp_path / "set"
    cases = make_dataset(source, n=20, size=(96, 96))
    full = duration(import_folder, (tmp_path / "calibration", source))
    kills = partial = attempt = 0
    while attempt < KILLS or (partial == 0 and attempt < 4 * KILLS):  # timing varies: retry until one lands mid-way
        attempt += 1
        workspace = tmp_path / f"ws{attempt}"
        kills += run_and_kill(import_folder, (workspace, source), 0.0, 0.8 * full)
        if not (workspace / "workspace.db").exists():
            continue  # killed before the database was created
        with assert_sound(workspace) as store:
            partial += 0 < len(store.images()) < 20
            for image in store.images():  # an image is never there without the mask that came with it
                assert np.array_equal(store.load_mask(image.id), cases[image.name][1])
            summary = import_sources(store, [source], progress=False)
            assert summary.skipped == [] and summary.added + summary.duplicates == 20
            assert len(store.images()) == 20 and store.counts().masked == 20
            again = import_sources(store, [source], progress=False)
            assert (again.added, again.duplicates, again.masks_added) == (0, 20, 0)
        assert_sound(workspace).close()
    assert kills >= KILLS // 4  # most runs are cut short; a few may finish first on a busy machine
    assert partial >= 1  # some kills landed half-way through the import


def test_kill_during_export_leaves_no_partial_output(tmp_path):
    source = tmp_path / "set"
    make_dataset(source, n=40, size=(64, 64))
    with Store(tmp_path / "ws") as store:
        import_sources(store, [source], progress=False)
    full = duration(export_folder, (tmp_path / "ws", tmp_path / "calibration"))
    kills = 0
    for attempt in range(KILLS):
        out = tmp_path / f"out{attempt}"
        kills += run_and_kill(export_folder, (tmp_path / "ws", out), 0.0, 0.8 * full)
        if out.exists():  # renamed into place, so it must be whole
            with open(out / "manifest.csv", newline="") as handle:
                assert len(list(csv.DictReader(handle))) == 40
            assert len(list((out / "masks").iterdir())) == 40
        else:
            with Store(tmp_path / "ws") as store:
                export_workspace(store, out, "png")  # and clears the dead child's temporary folder
        assert [p for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.tmp-")] == []
        assert_sound(tmp_path / "ws").close()
    assert kills >= KILLS // 4  # most runs are cut short; a few may finish first on a busy machine
