"""The server's defences, in-process and fast: login throttling (per name in app/auth.py, per address in
app/guard.py), the request body limit and the browser cookie (app/guard.py), user names `adasam passwd` accepts,
--host without --auth, and the trainer supervisor's restarts. tests/test_app_serve.py checks them on a real server."""
from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import threading
from argparse import Namespace
from pathlib import Path

import pytest
from fastapi import HTTPException
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import app.auth as auth
from app.auth import AuthFileError, Throttle, checker, hash_password, name_throttle, read_users, write_user
from app.cli import main
from app.errors import CommandError
from app.guard import ADDRESS_COOLDOWN_S, ADDRESS_FAILURES, BROWSER_COOKIE, Guard, address_throttle
from app.serve_commands import TrainerSupervisor, check_exposure
from app.status import read_status

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- throttling --------------------------------------------------------------------------------------------------

def test_throttle_waits_after_limit_doubles_and_caps():
    clock = Clock()
    throttle = Throttle(limit=3, window_s=900, cooldown_s=30, max_cooldown_s=100, clock=clock)
    for _ in range(2):
        throttle.fail("x")
    assert throttle.wait("x") == 0
    throttle.fail("x")
    assert throttle.wait("x") == 30 and throttle.wait("y") == 0
    clock.now += 30
    assert throttle.wait("x") == 0
    throttle.fail("x")
    assert throttle.wait("x") == 60
    clock.now += 60
    throttle.fail("x")
    assert throttle.wait("x") == 100  # 120, capped
    throttle.reset("x")
    assert throttle.wait("x") == 0


def test_throttle_forgets_failures_past_the_window():
    clock = Clock()
    throttle = Throttle(limit=2, window_s=60, cooldown_s=10, max_cooldown_s=100, clock=clock)
    throttle.fail("x")
    clock.now += 61
    throttle.fail("x")
    assert throttle.wait("x") == 0


def _users() -> dict[str, str]:
    return {"alice": hash_password("s3cret", iterations=1000)}


def test_checker_is_a_coroutine_that_verifies_off_the_event_loop(monkeypatch):
    check = checker(_users())
    assert inspect.iscoroutinefunction(check)  # Gradio awaits it instead of calling it on its event loop
    threads = []
    verify = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda *a: threads.append(threading.get_ident()) or verify(*a))

    async def run() -> tuple[bool, bool, int]:
        return await check("alice", "s3cret"), await check("alice", "nope"), threading.get_ident()

    good, bad, loop_thread = asyncio.run(run())
    assert (good, bad) == (True, False)
    assert len(threads) == 2 and loop_thread not in threads


def test_checker_locks_a_name_without_checking_its_password(monkeypatch):
    clock = Clock()
    check = checker(_users(), name_throttle(clock))
    calls = []
    verify = auth.verify_password
    monkeypatch.setattr(auth, "verify_password", lambda *a: calls.append(a) or verify(*a))

    async def attempts():
        results = [await check("alice", f"guess{i}") for i in range(auth.NAME_FAILURES)]
        with pytest.raises(HTTPException) as refused:
            await check("alice", "s3cret")  # even the right password waits: the name is locked
        assert await check("bob", "x") is False  # other names (unknown ones too) are checked as usual
        return results, refused.value

    results, refused = asyncio.run(attempts())
    assert results == [False] * auth.NAME_FAILURES
    assert refused.status_code == 429 and refused.headers["Retry-After"] == str(int(auth.NAME_COOLDOWN_S))
    assert "alice" in refused.detail and "try again" in refused.detail
    assert len(calls) == auth.NAME_FAILURES + 1

    clock.now += auth.NAME_COOLDOWN_S

    async def after_cooldown():
        assert await check("alice", "wrong again") is False  # one more failure: now a doubled wait
        with pytest.raises(HTTPException) as refused:
            await check("alice", "s3cret")
        return refused.value

    assert float(asyncio.run(after_cooldown()).headers["Retry-After"]) == 2 * auth.NAME_COOLDOWN_S


def test_checker_locks_a_name_for_the_address_that_failed_not_for_its_owner_elsewhere():
    """Keyed by name alone, five wrong passwords every five minutes from anywhere kept a colleague locked out. Now
    each address gets its own count for a name, and only ten times as many failures lock the name everywhere."""
    clock = Clock()
    check = checker(_users(), name_throttle(clock))

    async def from_address(address: str, password: str) -> bool:
        auth.CLIENT_ADDRESS.set(address)  # what app.guard.Guard sets for each request
        return await check("alice", password)

    async def attempts():
        for _ in range(auth.NAME_FAILURES):
            assert await from_address("10.0.0.66", "guess") is False
        with pytest.raises(HTTPException):
            await from_address("10.0.0.66", "s3cret")  # the guessing address waits, even with the password
        assert await from_address("10.0.0.7", "s3cret") is True  # alice at her own desk does not
        for k in range(auth.NAME_WIDE_FAILURES - auth.NAME_FAILURES):  # many addresses guessing together ...
            assert await from_address(f"10.1.{k // 4}.{k % 4}", "guess") is False
        with pytest.raises(HTTPException):
            await from_address("10.0.0.7", "s3cret")  # ... lock the name everywhere

    asyncio.run(attempts())


def test_checker_success_resets_the_count():
    check = checker(_users(), name_throttle(Clock()))

    async def attempts():
        for _ in range(3):
            for _ in range(auth.NAME_FAILURES - 1):
                assert await check("alice", "typo") is False
            assert await check("alice", "s3cret") is True

    asyncio.run(attempts())


# --- the middleware ----------------------------------------------------------------------------------------------

async def _echo(request: Request):
    body = await request.body()
    return JSONResponse({"bytes": len(body), "browser": request.cookies.get(BROWSER_COOKIE)})


async def _login(request: Request):
    form = await request.form()
    if form.get("password") == "right":
        return JSONResponse({"success": True})
    return JSONResponse({"detail": "Incorrect credentials."}, status_code=400)


def _client(**guard) -> TestClient:
    app = Starlette(routes=[Route("/", _echo, methods=["GET", "POST"]), Route("/login", _login, methods=["POST"]),
                            Route("/login/", _login, methods=["POST"])],
                    middleware=[Middleware(Guard, **guard)])
    return TestClient(app)


def test_guard_refuses_a_declared_large_body_without_reading_it():
    client = _client(max_body_bytes=1000)
    assert client.post("/", content=b"x" * 1000).json()["bytes"] == 1000
    refused = client.post("/", content=b"x" * 1001)
    assert refused.status_code == 413 and "limit is" in refused.json()["detail"]


def test_model_uploads_have_their_own_limit_and_nothing_else_does():
    from app.trainer_api import UPLOAD_PATH

    app = Starlette(routes=[Route("/api/trainer/rounds/{n}/model", _echo, methods=["POST"]),
                            Route("/api/trainer/rounds/{n}/progress", _echo, methods=["POST"])],
                    middleware=[Middleware(Guard, max_body_bytes=1000, uploads=(UPLOAD_PATH, 5000))])
    client = TestClient(app)
    assert client.post("/api/trainer/rounds/7/model", content=b"x" * 5000).json()["bytes"] == 5000
    refused = client.post("/api/trainer/rounds/7/model", content=b"x" * 5001)
    assert refused.status_code == 413 and "--max-model-mb" in refused.json()["detail"]
    assert client.post("/api/trainer/rounds/7/progress", content=b"x" * 1001).status_code == 413
    assert client.post("/api/trainer/rounds/7/model/x", content=b"x" * 1001).status_code == 413  # not the path


def _call(app, scope: dict, chunks, chunk_count: list[int]) -> list[dict]:
    """Drive an ASGI app by hand: the body arrives in `chunks` (a generator), counting how many were pulled."""
    sent: list[dict] = []

    async def receive():
        try:
            chunk = next(chunks)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk_count[0] += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"", "headers": headers,
            "client": ("10.0.0.9", 5000), "server": ("testserver", 80)}


def test_guard_stops_a_streamed_100mb_body_at_the_limit():
    mb = 2**20
    app = Guard(Starlette(routes=[Route("/", _echo, methods=["POST"])]), max_body_bytes=16 * mb)
    pulled = [0]
    chunks = (b"{" * mb for _ in range(100))  # 100 MB of "JSON", chunked: no Content-Length
    sent = _call(app, _scope("POST", "/", [(b"content-type", b"application/json")]), chunks, pulled)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert pulled[0] == 17  # read up to the limit and one chunk past it, then no more
    assert b"limit is 16 MB" in b"".join(m.get("body", b"") for m in sent)
    assert len([m for m in sent if m["type"] == "http.response.start"]) == 1  # the app's own answer is dropped

    pulled = [0]
    sent = _call(app, _scope("POST", "/", [(b"content-length", str(100 * mb).encode())]),
                 (b"{" * mb for _ in range(100)), pulled)
    assert sent[0]["status"] == 413 and pulled[0] == 0  # declared too large: not a byte read


def test_guard_throttles_failed_logins_per_address():
    clock = Clock()
    client = _client(logins=address_throttle(clock))
    for _ in range(ADDRESS_FAILURES - 1):
        assert client.post("/login/", data={"username": "u", "password": "wrong"}).status_code == 400
    assert client.post("/login", data={"username": "u", "password": "right"}).status_code == 200  # not counted
    assert client.post("/login", data={"username": "u", "password": "wrong"}).status_code == 400
    refused = client.post("/login", data={"username": "u", "password": "right"})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == str(int(ADDRESS_COOLDOWN_S))
    assert "from this address" in refused.json()["detail"]
    assert client.get("/").status_code == 200  # only logins wait
    clock.now += ADDRESS_COOLDOWN_S
    assert client.post("/login", data={"username": "u", "password": "right"}).status_code == 200


def test_guard_gives_each_browser_an_id_cookie():
    client = _client()
    first = client.get("/")
    cookie = first.cookies.get(BROWSER_COOKIE)
    assert cookie and len(cookie) >= 16
    assert first.json()["browser"] is None  # a client that drops cookies keeps falling back to its session
    header = first.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=Lax" in header and "Path=/" in header and "Max-Age=" in header
    again = client.get("/")  # the client sends the cookie back: no new one
    assert "set-cookie" not in again.headers and again.json()["browser"] == cookie
    assert TestClient(client.app).get("/").cookies.get(BROWSER_COOKIE) != cookie  # another browser, another id


def test_guard_refuses_requests_from_a_page_of_another_site():
    """Gradio's CORS answers any origin with credentials once the server is reached by a name other than localhost:
    a hostile page an annotator visited could read images and save masks as them."""
    client = TestClient(_client().app, base_url="http://annot.lan:7860")
    assert client.post("/", content=b"x").status_code == 200  # a script: no Origin
    assert client.post("/", content=b"x", headers={"Origin": "http://annot.lan:7860"}).status_code == 200  # the page
    for origin in ("http://evil.example", "http://annot.lan:9999", "null"):
        refused = client.post("/", content=b"x", headers={"Origin": origin})
        assert refused.status_code == 403 and "Cross-site" in refused.json()["detail"]
    assert client.options("/", headers={"Origin": "http://evil.example",  # the preflight too
                                        "Access-Control-Request-Method": "POST"}).status_code == 403
    proxied = {"Origin": "https://annot.example.org:8443", "X-Forwarded-Host": "annot.example.org"}  # a TLS proxy
    assert client.post("/", content=b"x", headers=proxied).status_code == 200  # ($host: the name, not the port)
    rewritten = TestClient(_client(allowed_origins=("https://Annot.example.org/",)).app, base_url="http://127.0.0.1")
    assert rewritten.post("/", content=b"x", headers={"Origin": "https://annot.example.org"}).status_code == 200
    refused = rewritten.post("/", content=b"x", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert "https://evil.example is not this server's address (127.0.0.1)" in refused.json()["detail"]


def test_a_loopback_server_refuses_hosts_a_rebound_name_brings():
    """DNS rebinding: a hostile page points its own name at 127.0.0.1; its requests then carry Origin and Host both
    that name (same-site to the browser, so the Origin check passes) and it reads the answers. A loopback server
    answers loopback names only; one that listens on the network keeps answering any name (as before)."""
    rebound = {"Origin": "http://rebind.example:7860"}
    for url in ("http://127.0.0.1:7860", "http://localhost:7860", "http://[::1]:7860", "http://127.0.0.2",
                "http://localhost.:7860", "http://[::ffff:7f00:1]:7860"):
        client = TestClient(_client(loopback=True).app, base_url=url)
        assert client.post("/", content=b"x", headers={"Origin": url}).status_code == 200
    hostile = TestClient(_client(loopback=True).app, base_url="http://rebind.example:7860")
    for call in (lambda: hostile.get("/"), lambda: hostile.post("/", content=b"x", headers=rebound)):
        refused = call()
        assert refused.status_code == 403 and "not a loopback name" in refused.json()["detail"]
    assert TestClient(_client().app, base_url="http://rebind.example:7860").post(  # a server on the network
        "/", content=b"x", headers=rebound).status_code == 200
    proxied = TestClient(_client(loopback=True, allowed_origins=("https://studio.example.org",)).app,
                         base_url="http://studio.example.org")  # a proxy on this machine keeping its Host
    assert proxied.get("/").status_code == 200
    assert proxied.get("/", headers={"Host": "studio.example.org."}).status_code == 200  # fully qualified
    bad_port = TestClient(_client(loopback=True).app, base_url="http://127.0.0.1:7860")
    assert bad_port.get("/", headers={"Host": "[::1"}).status_code == 403  # unparsable: not a loopback name


# --- user names --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a:b", "x\ny", "tab\there", "cr\r", "#root", " alice", "alice ", "a  b",
                                  "x" * 65, "nul\0"])
def test_write_user_refuses_names_the_file_cannot_hold(tmp_path, name):
    users = tmp_path / "users.txt"
    write_user(users, "alice", "s3cret")
    before = users.read_text()
    with pytest.raises(AuthFileError, match="not allowed"):
        write_user(users, name, "s3cret")
    assert users.read_text() == before


@pytest.mark.parametrize("name", ["alice", "Dr. Ada Lovelace", "j.doe@example.org", "José_2", "x" * 64])
def test_write_user_keeps_ordinary_names(tmp_path, name):
    users = tmp_path / "users.txt"
    write_user(users, name, "s3cret")
    assert list(read_users(users)) == [name]


def test_write_user_refuses_a_file_that_is_not_an_auth_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my shopping list\n")
    with pytest.raises(AuthFileError, match="expected name:pbkdf2_sha256"):
        write_user(notes, "alice", "s3cret")
    assert notes.read_text() == "my shopping list\n"


def test_passwd_command_refuses_a_newline_in_the_name(tmp_path):
    users = tmp_path / "users.txt"
    result = subprocess.run([sys.executable, "-m", "app.cli", "passwd", str(users), "eve\nmallory:x",
                             "--password-stdin"], input="s3cret\n", capture_output=True, text=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}, timeout=120)
    assert result.returncode == 2 and "not allowed" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not users.exists()


# --- --host without --auth ---------------------------------------------------------------------------------------

def _serve_args(**kw) -> Namespace:
    return Namespace(**{"host": "127.0.0.1", "auth": None, "no_auth": False, "max_request_mb": 16.0,
                        "max_model_mb": 1024.0, "annotator": "tester", **kw})


def test_serving_other_machines_needs_auth_or_no_auth(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "ws"), "--host", "0.0.0.0"]) == 2
    assert "--no-auth" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "ws"), "--auth", "users.txt", "--no-auth"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()  # refused before anything was opened
    with pytest.raises(CommandError):
        check_exposure(_serve_args(host="192.168.1.20"))
    assert "anyone" in check_exposure(_serve_args(host="0.0.0.0", no_auth=True))
    for host in ("127.0.0.1", "localhost", "::1", "127.0.1.1"):
        assert check_exposure(_serve_args(host=host)) is None
    assert check_exposure(_serve_args(host="0.0.0.0", auth="users.txt")) is None


# --- the trainer supervisor --------------------------------------------------------------------------------------

def test_supervisor_restarts_a_dead_trainer_with_backoff(tmp_path):
    clock = Clock()
    supervisor = TrainerSupervisor([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path, clock=clock)
    supervisor.start()
    for restart, delay in [(1, 5), (2, 10), (3, 20)]:
        supervisor.process.wait(60)
        supervisor.poll()
        status = read_status(tmp_path)
        assert status["state"] == "restarting" and status["restarts"] == restart
        assert status["message"] == f"trainer exited with status 3; restart {restart} in {delay} s"
        assert supervisor.process is None
        clock.now += delay - 1
        supervisor.poll()
        assert supervisor.process is None  # still waiting
        clock.now += 1
        supervisor.poll()
        assert supervisor.process is not None  # started again
    clock.now += 600  # this run lasted 10 minutes: the backoff starts afresh
    supervisor.process.wait(60)
    supervisor.poll()
    assert read_status(tmp_path)["message"].endswith("restart 4 in 5 s")


def test_supervisor_caps_the_backoff_and_stop_ends_the_trainer(tmp_path):
    clock = Clock()
    supervisor = TrainerSupervisor([sys.executable, "-c", "import time; time.sleep(120)"], tmp_path, clock=clock,
                                   first_delay_s=200)
    supervisor.start()
    supervisor.process.kill()
    supervisor.process.wait()
    supervisor.poll()
    assert read_status(tmp_path)["message"].endswith("restart 1 in 200 s")
    assert supervisor.delay_s == 300  # 400, capped at TRAINER_MAX_DELAY_S
    clock.now += 200
    supervisor.poll()
    process = supervisor.process
    assert process is not None and process.poll() is None
    supervisor.stop()
    assert process.poll() is not None
    clock.now += 1000
    supervisor.poll()  # stopped on purpose: not restarted
    assert supervisor.process is None and read_status(tmp_path)["restarts"] == 1


def test_the_server_keeps_gradios_copies_of_exports_private(monkeypatch, tmp_path):
    """Gradio copies each export zip it serves into /tmp/gradio by default, readable by every user of the machine."""
    import os
    import stat

    from app.serve_commands import private_gradio_files

    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    private_gradio_files()
    folder = Path(os.environ["GRADIO_TEMP_DIR"])
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    folder.rmdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))  # the user's own choice is kept
    private_gradio_files()
    assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path)
