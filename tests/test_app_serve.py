"""`adasam serve` itself: leases of a crashed server released at start, the Guard middleware really in front of the
Gradio app (body limit, browser cookie, login throttling), and a trainer that dies restarted."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import urllib.error
import urllib.parse
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path

import gradio_client
import pytest

import annotation
from annotation import Store
from app.auth import NAME_FAILURES
from app.guard import ADDRESS_FAILURES, BROWSER_COOKIE
from app.serve_commands import keep_workspace_choices
from app.status import IMAGE_VIEW, QUEUE_STRATEGY, read_status
from app_fixtures import Server, auth_server, make_workspace, wait_for


@pytest.fixture(scope="module")
def leased(tmp_path_factory):
    """A workspace where a crashed server left alice holding an image, served with a 1 MB request limit."""
    root = tmp_path_factory.mktemp("serve")
    workspace = make_workspace(root, n=8, n_val=2)
    with Store(workspace) as store:
        task = annotation.next_task(store, "alice")
    srv = Server(workspace, root / "serve.log", "--no-trainer", "--max-request-mb", "1", "--strategy", "coreset",
                 "--image-view")
    yield srv, task.image.id
    assert srv.stop() == 0


def test_leases_of_a_crashed_server_are_released_at_start(leased):
    srv, image_id = leased
    with Store(srv.workspace, create=False) as store:
        assert store.conn.execute("SELECT COUNT(*) FROM leases").fetchone()[0] == 0
        bob = annotation.next_task(store, "bob")
        assert bob.image.id == image_id  # first in the queue again, not held for a gone alice
        annotation.release_lease(store, "bob", image_id)
    assert "released 1 image lease" in srv.log.read_text()


def test_the_strategy_and_image_view_given_at_start_stay_with_the_workspace(leased):
    srv, _ = leased
    with Store(srv.workspace, create=False) as store:
        assert store.get_setting(QUEUE_STRATEGY) == "coreset"  # the trainer ranks by it, the dashboard names it
        assert store.get_setting(IMAGE_VIEW) is True  # rounds train the image view from now on


def test_rounds_train_the_image_view_from_the_first_serve_until_told_otherwise(tmp_path):
    with Store(tmp_path / "ws") as store:
        for flag, expected in ((None, True), (None, True), (False, False), (None, False), (True, True)):
            keep_workspace_choices(store, argparse.Namespace(strategy=None, image_view=flag, annotator="lead"))
            assert store.get_setting(IMAGE_VIEW) is expected, (flag, expected)
        whom = [e["who"] for e in reversed(store.events()) if e["what"] == "set_setting"]
        assert whom == ["system", "lead", "lead"]  # the default is nobody's choice; each change is the lead's


def _raw_request(srv: Server, head: str) -> str:
    """Send only a request head (no body) and return the whole answer (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.decode("latin-1")


def test_large_request_bodies_are_refused_unread(leased):
    srv, _ = leased
    answer = _raw_request(srv, f"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                               f"\r\nContent-Length: {100 * 2**20}\r\n\r\n")
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert "limit is 1 MB" in answer
    client = gradio_client.Client(srv.url, verbose=False)  # ordinary requests still pass
    assert client.predict(api_name="/task")["image_id"] is not None


def test_page_load_sets_the_browser_cookie(leased):
    srv, _ = leased
    with urllib.request.urlopen(srv.url + "/") as page:
        cookies = page.headers.get_all("set-cookie")
    browser = [c for c in cookies if c.startswith(BROWSER_COOKIE + "=")]
    assert len(browser) == 1 and "HttpOnly" in browser[0] and "SameSite=Lax" in browser[0]
    value = SimpleCookie(browser[0])[BROWSER_COOKIE].value
    request = urllib.request.Request(srv.url + "/", headers={"Cookie": f"{BROWSER_COOKIE}={value}"})
    with urllib.request.urlopen(request) as page:
        assert not [c for c in page.headers.get_all("set-cookie") or [] if c.startswith(BROWSER_COOKIE)]


def _login(srv: Server, name: str, password: str) -> tuple[int, str, str | None]:
    data = urllib.parse.urlencode({"username": name, "password": password}).encode()
    try:
        with urllib.request.urlopen(srv.url + "/login", data=data, timeout=60) as answer:
            return answer.status, answer.read().decode(), None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers.get("Retry-After")


def test_failed_logins_make_the_name_then_the_address_wait(tmp_path):
    srv = auth_server(tmp_path)
    try:
        assert _login(srv, "bob", "hunter22")[0] == 200
        for i in range(NAME_FAILURES):
            assert _login(srv, "alice", f"guess{i}")[0] == 400
        status, body, retry = _login(srv, "alice", "s3cret")  # locked: even the right password waits
        assert status == 429 and "for 'alice'" in body and int(retry) > 0
        assert _login(srv, "bob", "hunter22")[0] == 200  # other names are not locked
        for _ in range(ADDRESS_FAILURES - NAME_FAILURES - 1):  # refusals count against the address too
            assert _login(srv, "alice", "again")[0] == 429
        status, body, retry = _login(srv, "bob", "hunter22")
        assert status == 429 and "from this address" in body and int(retry) > 0
    finally:
        assert srv.stop() == 0


def _trainers(srv: Server) -> list[int]:
    """The server's trainer child processes (from /proc: each thread lists the children it started)."""
    pids = []
    for task in Path(f"/proc/{srv.process.pid}/task").iterdir():
        try:
            pids += [int(pid) for pid in (task / "children").read_text().split()]
        except OSError:
            continue
    trainers = []
    for pid in pids:
        try:
            if b"trainer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                trainers.append(pid)
        except OSError:  # it has just exited
            continue
    return trainers


def test_a_trainer_that_dies_is_restarted(tmp_path):
    srv = Server(make_workspace(tmp_path, n=4, n_val=2), tmp_path / "serve.log")
    try:
        [first] = wait_for(lambda: _trainers(srv), timeout=30, what="the trainer process")
        os.kill(first, signal.SIGKILL)
        status = wait_for(lambda: (s := read_status(srv.workspace)).get("state") == "restarting" and s, timeout=30,
                          what="the restarting status")
        assert status["message"] == "trainer exited with status -9; restart 1 in 5 s" and status["restarts"] == 1
        [second] = wait_for(lambda: _trainers(srv), timeout=30, what="a new trainer process")
        assert second != first and "trainer exited with status -9" in srv.log.read_text()
    finally:
        assert srv.stop() == 0
    assert not Path(f"/proc/{second}").exists()  # stopping the server stopped its trainer
