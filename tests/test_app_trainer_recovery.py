"""`BackgroundTrainer.run` after a crash and under errors (micro_random, in-process): a round a dead trainer left
"running" is closed at the next start and its work resumed, and failures wait before the next try instead of
spinning. The loop is driven by a stop event that counts its waits (nothing sleeps)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from annotation import Store
from app import trainer as trainer_module
from app.status import RETRAIN_REQUESTED, read_status
from app.trainer import BackgroundTrainer
from app_fixtures import make_workspace
from model_fixtures import one_torch_thread  # noqa: F401 (autouse)


class CountedStop(threading.Event):
    """The trainer's stop event: records each wait's timeout instead of sleeping, and is set at the `limit`-th."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.waits = limit, []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        if len(self.waits) >= self.limit:
            self.set()
        return self.is_set()


class Killed(BaseException):
    """Stands for kill -9 in the middle of a round: nothing in the trainer gets to handle it."""


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path, n=8, n_val=2, size=(48, 56))


def make_trainer(workspace, stop: threading.Event | None = None, steps: int = 4) -> BackgroundTrainer:
    trainer = BackgroundTrainer(workspace, "micro_random", workspace.parent / "cache", round_every=3, steps=steps,
                                poll_s=0.0)
    trainer.stop = stop or CountedStop(1)
    return trainer


def label(store: Store, count: int = 3) -> None:
    for info in store.images(split="pool", state="unlabeled")[:count]:
        mask = np.zeros((info.height, info.width), bool)
        mask[10:30, 15:40] = True
        store.save_mask(info.id, mask, "ann")


def test_a_round_left_running_is_cancelled_at_start(workspace):
    with Store(workspace) as store:
        left = store.start_round(3)  # the trainer died mid-round: nobody finished it
    trainer = make_trainer(workspace, CountedStop(1))
    trainer.stop.set()  # start, tidy up, stop
    trainer.run()
    [rnd] = trainer.store.rounds()
    assert rnd.id == left and rnd.status == "cancelled" and rnd.error
    assert read_status(workspace)["state"] == "stopped"


def test_a_killed_round_is_closed_and_its_training_resumed(workspace):
    trainer = make_trainer(workspace)
    label(trainer.store)

    def killed_at_step_3() -> None:
        if trainer._status.get("step") == 3:
            raise Killed()

    trainer.check = killed_at_step_3
    with pytest.raises(Killed):
        trainer.train_round()
    assert trainer.store.rounds()[-1].status == "running"  # as a kill -9 leaves it
    assert (workspace / "models" / "training" / "last.pt").exists()
    trainer.store.close()

    again = make_trainer(workspace, CountedStop(1))  # one pass of the loop: a round is due
    again.run()
    killed, redone = again.store.rounds()
    assert killed.status == "cancelled" and redone.status == "done"
    assert again.resumed_from == 2  # the dead round's last checkpoint (every 2 of 4 steps), not step 0
    assert again.store.latest_model().version == f"r{redone.id:04d}"


def test_errors_wait_before_the_next_try(workspace, monkeypatch):
    tries = []

    def broken(self) -> None:
        tries.append(1)
        raise OSError("disk on fire")

    monkeypatch.setattr(BackgroundTrainer, "embed_new", broken)
    stop = CountedStop(12)
    trainer = make_trainer(workspace, stop)
    trainer.run()
    assert len(tries) >= 2  # it kept trying ...
    assert sum(stop.waits) >= 10 * len(tries)  # ... but waited at least 10 s after each failure, never spinning
    status = read_status(workspace)
    assert "OSError: disk on fire" in status["message"]
    errors = [e for e in trainer.store.events(limit=100) if e["what"] == "trainer_error"]
    assert len(errors) == len(tries) and "disk on fire" in errors[0]["details"]["traceback"]


def test_a_failing_round_is_not_retried_until_new_labels(workspace, monkeypatch):
    attempts = []

    def broken(self, progress=None, stop_check=None):
        attempts.append(1)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(trainer_module.Trainer, "run", broken)
    trainer = make_trainer(workspace, CountedStop(6))  # six passes of the loop
    label(trainer.store)
    trainer.run()
    assert len(attempts) == 1 and [r.status for r in trainer.store.rounds()] == ["failed"]
    assert "out of memory" in trainer.store.rounds()[0].error

    label(trainer.store)  # new labels: one more try
    trainer.stop = CountedStop(6)
    trainer.run()
    assert len(attempts) == 2 and [r.status for r in trainer.store.rounds()] == ["failed", "failed"]


def test_a_status_file_that_cannot_be_written_stops_neither_trainer_nor_server(tmp_path):
    """A full or read-only disk: the status write raised, ending the trainer's loop and the server's (which writes
    the trainer's status as it supervises it). Progress is skipped instead, with one warning per file."""
    import warnings

    from app.status import write_remote_status, write_status

    (tmp_path / "trainer").write_text("not a folder")  # every write under trainer/ fails with an OSError
    with pytest.warns(RuntimeWarning, match="cannot write .*status.json"):
        write_status(tmp_path, state="training", step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not at every progress update
        write_status(tmp_path, state="training", step=2)
    with pytest.warns(RuntimeWarning, match="cannot write .*remote.json"):
        write_remote_status(tmp_path, step=1)
    assert read_status(tmp_path) == {} and (tmp_path / "trainer").read_text() == "not a folder"


def test_an_unreadable_image_is_left_out_and_rounds_go_on(tmp_path):
    workspace = make_workspace(tmp_path, n=12, n_val=2, size=(48, 56))
    trainer = make_trainer(workspace)
    label(trainer.store)
    trainer.train_round()  # r0001 serves
    label(trainer.store)
    bad = trainer.store.images(split="pool", state="unlabeled")[-1]
    trainer.store.files.path(bad.file).write_bytes(b"not an image any more")  # damaged since the import
    trainer.store.close()

    again = make_trainer(workspace, CountedStop(1))  # a restart: every image is looked at again
    again.run()
    assert [r.status for r in again.store.rounds()] == ["done", "done"]
    assert again.unreadable == {bad.id}
    said = [e for e in again.store.events(limit=100) if e["what"] == "image_unreadable"]
    assert [e["image_id"] for e in said] == [bad.id]  # once, however often it is asked for
    scored = {p.image_id for p in again.store.pool_predictions(again.store.latest_model().version)}
    assert bad.id not in scored and scored  # the pool was re-scored without it


def test_a_stopped_round_asked_for_by_retrain_now_is_due_again(workspace):
    trainer = make_trainer(workspace)
    label(trainer.store)
    trainer.train_round()
    label(trainer.store, 1)  # one new label of the three a round needs ...
    assert not trainer.due()
    trainer.store.set_setting(RETRAIN_REQUESTED, 1.0, who="lead")  # ... and "Retrain now"
    assert trainer.due()

    def stopped_at_step_2() -> None:
        if trainer._status.get("step") == 2:
            raise trainer_module.Stopped()

    trainer.check = stopped_at_step_2
    with pytest.raises(trainer_module.Stopped):
        trainer.train_round()
    assert trainer.store.rounds()[-1].status == "cancelled"
    trainer.store.close()
    again = make_trainer(workspace)
    assert again.due()  # the request was not lost with the round


def test_a_kill_while_ending_a_round_leaves_no_model_beside_a_cancelled_round(workspace):
    trainer = make_trainer(workspace)
    label(trainer.store)
    real = trainer.store.finish_round

    def killed_when_done(round_id, status="done", **kwargs):
        if status == "done":
            raise Killed()  # kill -9 as the round is recorded done: its model must not serve without it
        return real(round_id, status, **kwargs)

    trainer.store.finish_round = killed_when_done
    with pytest.raises(Killed):
        trainer.train_round()
    assert trainer.store.latest_model() is None and trainer.store.rounds()[-1].status == "running"
    trainer.store.close()

    again = make_trainer(workspace, CountedStop(1))
    again.run()
    rounds = again.store.rounds()
    assert [r.status for r in rounds] == ["cancelled", "done"]
    assert [m.version for m in again.store.models()] == [f"r{rounds[-1].id:04d}"] == [rounds[-1].model_version]
    assert not again.due()  # the done round counted its labels in the same transaction
