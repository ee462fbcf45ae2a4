"""`adasam serve` (the web app plus its background trainer), `adasam trainer` (that trainer on its own) and
`adasam passwd` (users for --auth)."""
from __future__ import annotations

import argparse
import getpass
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from app.errors import CommandError


def register(sub) -> None:
    from annotation import DEFAULT_WORKSPACE

    p = sub.add_parser("serve", help="start the annotation web app (and its background trainer)",
                       description="Serve WORKSPACE in the browser: Annotate, Dashboard and Export tabs. A trainer "
                                   "process retrains the model in the background; stopping the server (Ctrl+C) "
                                   "stops it. An empty default workspace is filled with demo images first.")
    p.add_argument("workspace", nargs="?", default=str(DEFAULT_WORKSPACE),
                   help="workspace folder (default: data/workspace)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", metavar="FILE", help="require a login; FILE holds name:hash lines (adasam passwd)")
    p.add_argument("--annotator", default=os.environ.get("USER") or "annotator",
                   help="name saved with every mask when there is no --auth (default: $USER)")
    p.add_argument("--backbone", default="litemedsam",
                   help="litemedsam (default), sam_vit_b:/path.pth, or micro_random for tests and demos")
    p.add_argument("--cache", default=None, help="embedding cache folder (default ~/.cache/adasam/embeddings)")
    p.add_argument("--round-every", type=int, default=10, metavar="N", help="train after N new labels (default 10)")
    p.add_argument("--train-steps", type=int, default=120,
                   help="training steps per round (default 120; LiteMedSAM on 2 CPU cores: 3-5 s a step)")
    p.add_argument("--demo", action="store_true", help="fill an empty workspace with demo images (the default "
                                                      "workspace always is)")
    p.add_argument("--no-trainer", action="store_true", help="do not start the background trainer")
    p.set_defaults(func=cmd_serve)

    t = sub.add_parser("trainer", help="run the background trainer of a workspace (serve starts it for you)")
    t.add_argument("workspace")
    t.add_argument("--backbone", default="litemedsam")
    t.add_argument("--cache", default=None)
    t.add_argument("--round-every", type=int, default=10)
    t.add_argument("--train-steps", type=int, default=120)
    t.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_trainer)

    w = sub.add_parser("passwd", help="add or change a user in an --auth file (only a salted hash is stored)")
    w.add_argument("file")
    w.add_argument("name")
    w.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    w.set_defaults(func=cmd_passwd)


def _cache_dir(value: str | None) -> Path:
    from model.cache import DEFAULT_CACHE_DIR

    return Path(value) if value else DEFAULT_CACHE_DIR


def cmd_serve(args: argparse.Namespace) -> int:
    import gradio as gr

    from annotation import DEFAULT_WORKSPACE, Store, WorkspaceError
    from app.auth import checker, read_users
    from app.seed import seed_workspace
    from app.studio import ModelSlot, Studio
    from app.ui import build_ui
    from model.backbones import BackboneError

    users = read_users(args.auth) if args.auth else None
    if users is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without --auth: anyone who can reach this port can annotate, "
              f"as {args.annotator!r}", flush=True)
    workspace = Path(args.workspace)
    try:
        store = Store(workspace)
    except WorkspaceError as exc:
        raise CommandError(str(exc)) from None
    if not store.counts().images:
        if args.demo or workspace.resolve() == DEFAULT_WORKSPACE.resolve():
            print(f"{workspace} is empty: importing the demo images (first run only) ...", flush=True)
            print(seed_workspace(store), flush=True)
        else:
            print(f"{workspace} has no images yet: import some with `adasam import {workspace} FOLDER`")
    try:
        slot = ModelSlot(store, args.backbone, _cache_dir(args.cache))
    except BackboneError as exc:
        raise CommandError(str(exc)) from None
    studio = Studio(store, slot, args.round_every)
    trainer = None if args.no_trainer else _start_trainer(args, workspace)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],  # no web fonts: offline
                              font_mono=["ui-monospace", "monospace"])
    demo = build_ui(studio, args.annotator)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        demo.queue(default_concurrency_limit=4)
        try:
            demo.launch(server_name=args.host, server_port=args.port, auth=checker(users) if users else None,
                        auth_message="ADA-SAM Studio: log in with your annotator name.", prevent_thread_lock=True,
                        show_error=True, theme=theme, css=_page_css(), share=False, enable_monitoring=False)
        except OSError as exc:
            raise CommandError(f"cannot listen on {args.host}:{args.port} ({exc}); is another server running? "
                               f"Choose another --port") from None
        print(f"ADA-SAM Studio: http://{args.host}:{args.port} (workspace {workspace}; Ctrl+C stops it and its "
              f"trainer)", flush=True)
        while not stop.wait(0.5):
            if trainer is not None and trainer.poll() is not None:
                print(f"trainer exited with status {trainer.returncode}; the app keeps serving the last model",
                      flush=True)
                trainer = None
    finally:
        demo.close()
        _stop_trainer(trainer)
        studio.close()
        store.close()
    return 0


def _page_css() -> str:
    from app.ui import PAGE_CSS

    return PAGE_CSS


def _start_trainer(args: argparse.Namespace, workspace: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "app.cli", "trainer", str(workspace), "--backbone", args.backbone,
               "--cache", str(_cache_dir(args.cache)), "--round-every", str(args.round_every),
               "--train-steps", str(args.train_steps), "--parent-pid", str(os.getpid())]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(command, env=env)


def _stop_trainer(trainer: subprocess.Popen | None, timeout: float = 60.0) -> None:
    """SIGTERM lets the trainer finish its current step and record the round as cancelled."""
    if trainer is None or trainer.poll() is not None:
        return
    trainer.terminate()
    try:
        trainer.wait(timeout)
    except subprocess.TimeoutExpired:
        trainer.kill()
        trainer.wait()


def cmd_trainer(args: argparse.Namespace) -> int:
    from annotation import WorkspaceError
    from app.trainer import run_trainer

    try:
        return run_trainer(args.workspace, args.backbone, _cache_dir(args.cache), args.round_every,
                           args.train_steps, args.parent_pid)
    except WorkspaceError as exc:
        raise CommandError(str(exc)) from None


def cmd_passwd(args: argparse.Namespace) -> int:
    from app.auth import write_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise CommandError("the passwords differ")
    if len(password) < 4:
        raise CommandError("use a password of at least 4 characters")
    write_user(args.file, args.name, password)
    print(f"saved {args.name} in {args.file}")
    return 0
