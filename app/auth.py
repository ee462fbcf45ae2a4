"""Logins for `adasam serve --auth FILE`: one `name:pbkdf2_sha256$iterations$salt$hash` line per user.

Only hashes are stored, so the file can be shared with whoever runs the server; `adasam passwd FILE NAME` adds or
replaces a user. Standard library only (PBKDF2-HMAC-SHA256).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from app.errors import CommandError

ITERATIONS = 200_000


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
    users: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read auth file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not name.strip() or not encoded.startswith("pbkdf2_sha256$"):
            raise CommandError(f"{path}:{number}: expected name:pbkdf2_sha256$... (make lines with `adasam passwd`)")
        users[name.strip()] = encoded.strip()
    if not users:
        raise CommandError(f"auth file {path} holds no users (add one with `adasam passwd {path} NAME`)")
    return users


def write_user(path: str | os.PathLike[str], name: str, password: str) -> None:
    """Add or replace one user's line, keeping the others."""
    if not name or ":" in name or name != name.strip():
        raise CommandError(f"user name {name!r} must be non-empty, without ':' or surrounding spaces")
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if line.partition(":")[0].strip() != name]
    lines.append(f"{name}:{hash_password(password)}")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def checker(users: dict[str, str]):
    """The callable Gradio's login asks: (name, password) -> allowed."""
    def check(name: str, password: str) -> bool:
        encoded = users.get(name)
        return encoded is not None and verify_password(password, encoded)

    return check
