"""`adasam passwd` and `adasam trainer` do what their help says, and refuse bad input with one clear line (exit 2)
that leaves nothing behind. In-process, except one run of the trainer as the command a user types (it owns its
process: signal handlers, priority)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from annotation import Store
from app.auth import read_users, verify_password
from app.cli import main
from app.status import read_status
from app_fixtures import make_workspace, wait_for

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}


def passwd(monkeypatch, capsys, *args: str, stdin: str | None = None, typed: list[str] | None = None):
    """Run `adasam passwd ARGS` -> (exit status, stdout, stderr); `stdin` for --password-stdin, `typed` for prompts."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        args = (*args, "--password-stdin")
    answers = iter(typed or [])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code = main(["passwd", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_passwd_adds_and_changes_users_storing_only_hashes(tmp_path, monkeypatch, capsys):
    users = tmp_path / "users.txt"
    assert passwd(monkeypatch, capsys, str(users), "alice", stdin="s3cret\n")[:2] == (0, f"saved alice in {users}\n")
    assert passwd(monkeypatch, capsys, str(users), "bob", typed=["hunter22", "hunter22"])[0] == 0  # asked twice
    first = read_users(users)
    assert passwd(monkeypatch, capsys, str(users), "alice", stdin="changed1\n")[0] == 0
    after = read_users(users)
    assert list(after) == ["bob", "alice"] and after["bob"] == first["bob"]  # the others are kept as they were
    assert verify_password("changed1", after["alice"]) and not verify_password("s3cret", after["alice"])
    text = users.read_text()
    assert "changed1" not in text and "hunter22" not in text  # salted hashes only
    assert users.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name, stdin, typed, where, error", [
    ("alice", "abc\n", None, "users", "at least 4 characters"),
    ("alice", "", None, "users", "at least 4 characters"),  # nothing on stdin
    ("alice", None, ["s3cret", "s3cr3t"], "users", "the passwords differ"),
    ("eve:x", None, [], "users", "not allowed"),  # refused before a password is asked for
    ("alice", "s3cret\n", None, "missing folder", "cannot write"),
    ("alice", "s3cret\n", None, "a folder", "cannot write"),
])
def test_passwd_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys, name, stdin, typed, where, error):
    users = tmp_path / "users.txt"
    assert passwd(monkeypatch, capsys, str(users), "carol", stdin="keep-me\n")[0] == 0
    before = users.read_text()
    target = {"users": users, "missing folder": tmp_path / "nowhere" / "users.txt", "a folder": tmp_path}[where]
    code, out, err = passwd(monkeypatch, capsys, str(target), name, stdin=stdin, typed=typed)
    assert code == 2 and out == "" and error in err
    assert err.startswith("adasam passwd: error:") and len(err.splitlines()) == 1
    assert users.read_text() == before and not (tmp_path / "nowhere").exists()


@pytest.fixture
def in_process(monkeypatch):
    """What `adasam trainer` changes in its own process (signal handlers, priority, torch threads): no-ops here."""
    import torch

    monkeypatch.setattr(signal, "signal", lambda *args: None)
    monkeypatch.setattr(os, "nice", lambda increment: 0)
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)


@pytest.mark.parametrize("case", ["missing workspace", "unknown backbone", "round-every 0", "train-steps 0"])
def test_trainer_refuses_bad_input_in_one_line(tmp_path, capsys, in_process, case):
    workspace = tmp_path / "ws"
    if case != "missing workspace":
        workspace = make_workspace(tmp_path, n=2, n_val=0, size=(16, 16))
    extra = {"unknown backbone": ["--backbone", "nonsense"], "round-every 0": ["--round-every", "0"],
             "train-steps 0": ["--train-steps", "0"]}.get(case, ["--backbone", "micro_random"])
    # --parent-pid of a process that is not our parent: a trainer that got past the checks stops at once
    code = main(["trainer", str(workspace), "--cache", str(tmp_path / "cache"), "--parent-pid", str(os.getpid()),
                 *extra])
    err = capsys.readouterr().err
    expected = {"missing workspace": "no workspace at", "unknown backbone": "unknown backbone 'nonsense'",
                "round-every 0": "--round-every must be at least 1",
                "train-steps 0": "--train-steps must be at least 1"}
    assert code == 2 and err.startswith("adasam trainer: error:") and expected[case] in err, err
    assert len(err.splitlines()) == 1, err
    if case == "missing workspace":
        assert not workspace.exists()  # nothing written where there was no workspace
    else:
        assert not (workspace / "trainer" / "status.json").exists()  # refused before it started


def test_trainer_computes_with_every_core_it_may_use_at_a_lower_priority(tmp_path, monkeypatch, in_process):
    """The server keeps its say through the priority, not through a core left idle between rounds' requests."""
    import torch

    calls = []
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: calls.append(("threads", threads)))
    monkeypatch.setattr(os, "nice", lambda increment: calls.append(("nice", increment)) or 0)
    workspace = make_workspace(tmp_path, n=2, n_val=0, size=(16, 16))
    code = main(["trainer", str(workspace), "--cache", str(tmp_path / "cache"), "--parent-pid", str(os.getpid()),
                 "--backbone", "micro_random"])
    assert code == 0 and calls == [("threads", 3), ("nice", 5)], calls


def test_trainer_embeds_the_workspace_then_stops_on_sigterm(tmp_path):
    """`adasam trainer WORKSPACE`: the background trainer of that workspace, on its own; SIGTERM ends it cleanly."""
    workspace = make_workspace(tmp_path, n=4, n_val=2, size=(32, 40))
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "trainer", str(workspace), "--backbone",
                                "micro_random", "--cache", str(tmp_path / "cache"), "--parent-pid", str(os.getpid())],
                               cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status = wait_for(lambda: (s := read_status(workspace)).get("state") == "idle" and s.get("embedded")
                          and s["embedded"]["done"] == s["embedded"]["total"] and s, timeout=120,
                          what="the embedded workspace")
        with Store(workspace, create=False) as store:
            images = store.counts().images
        assert status["embedded"]["total"] == images and status["pid"] == process.pid
        assert "next round after 5 more labels" in status["message"]  # the first round comes early
        assert len(list((tmp_path / "cache").rglob("*.pt"))) == images  # one cached embedding per image
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert read_status(workspace)["state"] == "stopped"
    assert "Traceback" not in process.stdout.read()
