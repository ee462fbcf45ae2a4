"""A real `adasam serve` in a child process over a small workspace of generated phantoms, and headless Debian Chromium
to drive it (like `numpy.testing`): for the tests, the UI and load benchmarks, and screenshots."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from annotation import Store, import_sources
from app.seed import write_phantoms
from app.status import WORKSPACE_NOTE

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"  # Debian's; `playwright install` cannot download browsers here
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_workspace(root: Path, n: int = 24, n_val: int = 4, size: tuple[int, int] = (80, 96)) -> Path:
    """A workspace like the first-run demo: pool images without masks, validation images with masks."""
    source = root / "phantoms"
    write_phantoms(source, n, n_val, size=size)
    workspace = root / "workspace"
    with Store(workspace) as store:
        import_sources(store, [source / "pool" / "images"], with_masks=False, progress=False)
        import_sources(store, [source / "val"], with_masks=True, progress=False)
        store.set_setting(WORKSPACE_NOTE, "Test phantoms.")
    return workspace


class Server:
    """`adasam serve` in a subprocess; stop() sends SIGTERM like Ctrl+C would, and waits."""

    def __init__(self, workspace: Path, log: Path, *extra: str, backbone: str = "micro_random",
                 cache: str | None = None, port: int | None = None) -> None:
        self.workspace = workspace
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "app.cli", "serve", str(workspace), "--port", str(self.port),
                   "--backbone", backbone, "--cache", cache or str(workspace.parent / "cache"), "--annotator", "tester",
                   *extra]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()}")
            try:
                urllib.request.urlopen(self.url + "/config", timeout=2)
                return
            except urllib.error.HTTPError:  # e.g. 401 behind --auth: it answers, so it is up
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
        raise RuntimeError(f"server did not start in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch_chromium(playwright):
    """Headless Debian Chromium, launched by a playwright instance."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def mask_png(mask: np.ndarray) -> str:
    """A boolean mask as the data URL the browser sends."""
    from app.pictures import png_data_url

    return png_data_url((mask * 255).astype(np.uint8))
