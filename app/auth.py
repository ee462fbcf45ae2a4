"""Logins for `adasam serve --auth FILE`: one `name:pbkdf2_sha256$iterations$salt$hash` line per user.

Only hashes are stored, so the file can be shared with whoever runs the server; `adasam passwd FILE NAME` adds or
replaces a user. Standard library only (PBKDF2-HMAC-SHA256). A login is checked in a worker thread (PBKDF2 takes
a good part of a second, and Gradio would otherwise run it on the event loop every user's request waits on), and
repeated failures for one name make that name wait (see `Throttle`; app/guard.py does the same per client address).
"""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import math
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


class AuthFileError(ValueError):
    """A users file, or a user name, the server cannot use (one-line message; the command line shows it as is)."""


ITERATIONS = 200_000
NAME_FAILURES = 5  # failed logins for one name within NAME_WINDOW_S before that name must wait
NAME_WINDOW_S = 15 * 60.0
NAME_COOLDOWN_S = 30.0  # the first wait; it doubles with each further failure ...
NAME_MAX_COOLDOWN_S = 300.0  # ... up to this
NAME_WIDE_FAILURES = 10 * NAME_FAILURES  # failed logins for one name from all addresses before it waits everywhere
CHECKS_AT_ONCE = 2  # password checks running together (each keeps a core busy)
CLIENT_ADDRESS: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="unknown")
# set by app.guard.Guard for each request: the login check keys its name throttle by name and address
MAX_NAME_CHARS = 64
NAME_PATTERN = re.compile(r"[\w.@-]+( [\w.@-]+)*")  # letters, digits, _ . @ - and single inner spaces
_NO_USER = f"pbkdf2_sha256${ITERATIONS}$-$-"  # checked for unknown names, so they take as long as known ones


def hash_password(password: str, salt: str | None = None, iterations: int = ITERATIONS) -> str:
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"pbkdf2_sha256${iterations}${salt}${digest}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    return hmac.compare_digest(hash_password(password, salt, int(iterations)).split("$")[3], digest)


def read_users(path: str | os.PathLike[str]) -> dict[str, str]:
    """name -> encoded hash; blank lines and # comments are ignored; a malformed line is an error, not a skip."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc.strerror}") from None
    users = _parse_users(lines, path)
    if not users:
        raise AuthFileError(f"auth file {path} holds no users (add one with `adasam passwd {path} NAME`)")
    return users


def _parse_users(lines: list[str], path: str | os.PathLike[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not name.strip() or not encoded.startswith("pbkdf2_sha256$"):
            raise AuthFileError(f"{path}:{number}: expected name:pbkdf2_sha256$... (make lines with `adasam passwd`)")
        users[name.strip()] = encoded.strip()
    return users


def check_name(name: str) -> None:
    """Refuse a name the users file cannot hold as one `name:hash` line (a newline or ':' would corrupt it)."""
    if len(name) > MAX_NAME_CHARS or not NAME_PATTERN.fullmatch(name):
        raise AuthFileError(f"user name {name!r} is not allowed: use 1-{MAX_NAME_CHARS} letters, digits, '.', '_', "
                           f"'@', '-' and single spaces between words")


def write_user(path: str | os.PathLike[str], name: str, password: str) -> None:
    """Add or replace one user's line, keeping the others."""
    check_name(name)
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    _parse_users(lines, path)  # a file that is not an auth file is refused, not appended to
    lines = [line for line in lines if line.partition(":")[0].strip() != name]
    lines.append(f"{name}:{hash_password(password)}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class Throttle:
    """Failures per key (a user name, a client address) within `window_s`: from the `limit`-th on, the key waits
    `cooldown_s` after its latest failure, doubling with each further failure up to `max_cooldown_s`, so guessing
    passwords gets slow while a person who mistyped a few times is not locked out for long."""

    MAX_KEYS = 10_000  # past this, keys without a recent failure are dropped

    def __init__(self, limit: int, window_s: float, cooldown_s: float, max_cooldown_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.cooldown_s, self.max_cooldown_s = limit, window_s, cooldown_s, max_cooldown_s
        self.clock = clock
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str, now: float) -> list[float]:
        return [t for t in self._failures.get(key, ()) if now - t < self.window_s]

    def wait(self, key: str) -> float:
        """Seconds `key` must still wait before its next attempt is even looked at (0: go ahead)."""
        now = self.clock()
        recent = self._recent(key, now)
        if len(recent) < self.limit:
            return 0.0
        cooldown = min(self.max_cooldown_s, self.cooldown_s * 2 ** min(len(recent) - self.limit, 32))
        return max(0.0, recent[-1] + cooldown - now)

    def fail(self, key: str) -> None:
        now = self.clock()
        self._failures[key] = self._recent(key, now) + [now]
        if len(self._failures) > self.MAX_KEYS:
            self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] < self.window_s}

    def forgive(self, key: str) -> None:
        """Take back one failure (one counted before the outcome was known, which turned out a success)."""
        failures = self._failures.get(key)
        if failures:
            failures.pop()

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)


def name_throttle(clock: Callable[[], float] = time.monotonic) -> Throttle:
    return Throttle(NAME_FAILURES, NAME_WINDOW_S, NAME_COOLDOWN_S, NAME_MAX_COOLDOWN_S, clock)


def checker(users: dict[str, str], throttle: Throttle | None = None,
            name_wide: Throttle | None = None) -> Callable[[str, str], Awaitable[bool]]:
    """The coroutine Gradio's login awaits: (name, password) -> allowed. PBKDF2 runs in a worker thread; a name
    with too many recent failures from this client address (`throttle`), or from all of them (`name_wide`, ten
    times as many), is refused with 429 before its password is looked at. Keyed by name alone, anyone could keep a
    colleague locked out with five wrong passwords every five minutes."""
    throttle = throttle or name_throttle()
    name_wide = name_wide or Throttle(NAME_WIDE_FAILURES, NAME_WINDOW_S, NAME_COOLDOWN_S, NAME_MAX_COOLDOWN_S,
                                      throttle.clock)
    slots = asyncio.Semaphore(CHECKS_AT_ONCE)

    async def check(name: str, password: str) -> bool:
        here = f"{name}\0{CLIENT_ADDRESS.get()}"
        wait = max(throttle.wait(here), name_wide.wait(name))
        if wait > 0:
            from fastapi import HTTPException

            seconds = math.ceil(wait)
            raise HTTPException(status_code=429, headers={"Retry-After": str(seconds)},
                                detail=f"Too many failed logins for {name!r}: try again in {seconds} s.")
        throttle.fail(here)  # counted before the check, so guesses sent in parallel see each other
        name_wide.fail(name)
        async with slots:
            allowed = await asyncio.to_thread(verify_password, password, users.get(name, _NO_USER))
        if allowed and name in users:
            throttle.reset(here)
            name_wide.forgive(name)  # the name's own success: not a guess (others' failures still count)
        return allowed and name in users

    return check
