"""`adasam serve` (the web app plus its background trainer), `adasam trainer` (that trainer on its own, or on
another machine with --server), `adasam trainer-token` (what remote trainers log in with) and `adasam passwd`
(users for --auth)."""
from __future__ import annotations

import argparse
import atexit
import getpass
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from app.errors import CommandError

ROUND_STEPS = 60  # per background round (serve and trainer share it)

TRAINER_FIRST_DELAY_S = 5.0  # wait before restarting a trainer that exited on its own; doubles per restart ...
TRAINER_MAX_DELAY_S = 300.0  # ... up to this
TRAINER_STABLE_S = 600.0  # a trainer that ran this long before exiting starts the backoff afresh


def register(sub) -> None:
    from annotation import DEFAULT_WORKSPACE
    from model.strategies import DEFAULT_STRATEGY, STRATEGIES

    p = sub.add_parser("serve", help="start the annotation web app (and its background trainer)",
                       description="Serve WORKSPACE in the browser: Annotate, Dashboard and Export tabs. A trainer "
                                   "process retrains the model in the background; stopping the server (Ctrl+C) "
                                   "stops it. An empty default workspace is filled with demo images first.")
    p.add_argument("workspace", nargs="?", default=str(DEFAULT_WORKSPACE),
                   help="workspace folder (default: data/workspace)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", metavar="FILE", help="require a login; FILE holds name:hash lines (adasam passwd)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve a non-loopback --host without logins (anyone who reaches the port can annotate)")
    p.add_argument("--max-request-mb", type=float, default=16.0, metavar="N",
                   help="refuse request bodies over N MB (default 16)")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="URL",
                   help="the address users open, e.g. https://studio.example.org, where a proxy forwards neither "
                        "Host nor X-Forwarded-Host, or forwards that name as the Host to a server on 127.0.0.1 "
                        "(requests from other sites' pages, and for other names on loopback, are refused)")
    p.add_argument("--annotator", default=os.environ.get("USER") or "annotator",
                   help="name saved with every mask when there is no --auth (default: $USER)")
    p.add_argument("--backbone", default="litemedsam",
                   help="litemedsam (default), sam_vit_b:/path.pth, or micro_random for tests and demos")
    p.add_argument("--cache", default=None, help="embedding cache folder (default ~/.cache/adasam/embeddings)")
    p.add_argument("--round-every", type=int, default=10, metavar="N",
                   help="train after N new labels (default 10; the first round after 5)")
    p.add_argument("--train-steps", type=int, default=ROUND_STEPS,
                   help=f"training steps per round, each from the last round's model (default {ROUND_STEPS}; "
                        "LiteMedSAM on 2 CPU cores: about 0.85 s a step; a round, about 2 min, the first about 4)")
    p.add_argument("--strategy", choices=list(STRATEGIES), default=None,
                   help=f"active-learning strategy ordering the queue, kept with the workspace (default: the "
                        f"workspace's, at first {DEFAULT_STRATEGY}): " + "; ".join(
                            f"{s.name}: {s.summary}" for s in STRATEGIES.values()))
    p.add_argument("--image-view", action=argparse.BooleanOptionalAction, default=None,
                   help="rounds also train the classifier's image view (a U-Net on the image whose map joins the "
                        "CAM, kept only if it beats the CAM alone on val: on BUSI at 10%% masks round val Dice "
                        "0.73-0.80 against 0.61-0.72, at about 5.5 min more for a first round on 2 cores, about 1 "
                        "min for later ones), kept with the workspace (default: the workspace's, at first on)")
    p.add_argument("--demo", action="store_true", help="fill an empty workspace with demo images (the default "
                                                      "workspace always is)")
    p.add_argument("--max-points", type=int, default=None, metavar="N",
                   help="clicks one refine may send (default 64: each costs decoder time under the model lock)")
    p.add_argument("--no-trainer", action="store_true", help="do not start the background trainer")
    p.add_argument("--remote-trainers", action="store_true",
                   help="rounds are trained by `adasam trainer --server` on other machines (tokens from `adasam "
                        "trainer-token`); the local trainer process only embeds and re-scores")
    p.add_argument("--max-model-mb", type=float, default=1024.0, metavar="N",
                   help="refuse model uploads from remote trainers over N MB (default 1024)")
    p.set_defaults(func=cmd_serve)

    t = sub.add_parser("trainer", help="run the background trainer of a workspace (serve starts it for you), or "
                                       "with --server, a trainer on another machine",
                       description="Train a workspace's rounds: in the background of `adasam serve` (it starts this "
                                   "for you), or, with --server URL --token FILE, on another machine (a GPU box) for "
                                   "a server started with --remote-trainers: it pulls each due round's masks and "
                                   "images over HTTP, trains (one process, or several under torchrun) and uploads "
                                   "the model, which the server checks on its own validation set before serving.")
    t.add_argument("workspace", nargs="?", help="the workspace (a local trainer; not with --server)")
    t.add_argument("--server", metavar="URL", help="the annotation server to train for, e.g. http://annot:7860")
    t.add_argument("--token", metavar="FILE", help="file holding this trainer's token (adasam trainer-token)")
    t.add_argument("--data", metavar="DIR", default=None,
                   help="with --server: where downloaded images are kept (default ~/.cache/adasam/trainer/HOST)")
    t.add_argument("--rounds", type=int, default=None, metavar="N", help="with --server: stop after N rounds")
    t.add_argument("--poll", type=float, default=None, metavar="S",
                   help="with --server: seconds between asking for a round (default 10)")
    t.add_argument("--backbone", default="litemedsam",
                   help="with --server: the server's backbone, on this machine (same weights; checked)")
    t.add_argument("--cache", default=None, help="embedding cache folder (default ~/.cache/adasam/embeddings)")
    t.add_argument("--round-every", type=int, default=10, help="local trainer only (a remote one follows the server)")
    t.add_argument("--train-steps", type=int, default=ROUND_STEPS,
                   help="local trainer only (a remote one trains the server's number of steps)")
    t.add_argument("--no-rounds", action="store_true", help=argparse.SUPPRESS)  # serve --remote-trainers
    t.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    t.set_defaults(func=cmd_trainer)

    k = sub.add_parser("trainer-token", help="make, list or revoke the tokens remote trainers log in with",
                       description="Make a token for a trainer on another machine (`adasam trainer --server URL "
                                   "--token FILE`); only its hash is kept in the workspace, so it is shown (or "
                                   "written to --out) this once. Making one again for a name replaces its token.")
    k.add_argument("workspace")
    k.add_argument("name", nargs="?", help="the trainer's name (shown on the dashboard with its rounds)")
    k.add_argument("--out", metavar="FILE", help="write the token to FILE (mode 600) instead of printing it")
    k.add_argument("--revoke", action="store_true", help="revoke NAME's token: its requests get 401 from now on")
    k.add_argument("--list", action="store_true", help="list the trainer tokens (names and dates, never tokens)")
    k.set_defaults(func=cmd_trainer_token)

    w = sub.add_parser("passwd", help="add or change a user in an --auth file (only a salted hash is stored)")
    w.add_argument("file")
    w.add_argument("name")
    w.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    w.set_defaults(func=cmd_passwd)


def keep_workspace_choices(store, args: argparse.Namespace) -> None:
    """What `adasam serve` is told stays with the workspace for the next serve and the trainer: the queue's strategy
    (the trainer re-ranks by it) and whether rounds train the image view (at first on; from the next round)."""
    from app.status import IMAGE_VIEW, QUEUE_STRATEGY

    if args.strategy and store.get_setting(QUEUE_STRATEGY) != args.strategy:
        store.set_setting(QUEUE_STRATEGY, args.strategy, who=args.annotator)
    if args.image_view is not None and store.get_setting(IMAGE_VIEW) != args.image_view:
        store.set_setting(IMAGE_VIEW, args.image_view, who=args.annotator)
    elif store.get_setting(IMAGE_VIEW) is None:
        store.set_setting(IMAGE_VIEW, True)  # the default, chosen by nobody: the log says "system"


def _cache_dir(value: str | None) -> Path:
    from model.cache import DEFAULT_CACHE_DIR

    return Path(value) if value else DEFAULT_CACHE_DIR


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(args: argparse.Namespace) -> str | None:
    """A server others can reach needs --auth, or --no-auth to say that is meant; returns a warning to print."""
    if args.auth and args.no_auth:
        raise CommandError("--auth and --no-auth contradict each other: choose one")
    if args.max_request_mb <= 0 or args.max_model_mb <= 0:
        raise CommandError("--max-request-mb and --max-model-mb must be positive")
    if args.auth or is_loopback(args.host):
        return None
    if not args.no_auth:
        raise CommandError(f"--host {args.host} lets other machines reach the app: add --auth FILE (users from "
                           f"`adasam passwd FILE NAME`), or --no-auth to let anyone who reaches the port annotate")
    return (f"warning: serving on {args.host} without --auth: anyone who can reach this port can annotate, "
            f"as {args.annotator!r}")


def check_rounds(args: argparse.Namespace) -> None:
    """Below 1, --round-every would train without end and --train-steps would train nothing."""
    for flag, value in (("--round-every", args.round_every), ("--train-steps", args.train_steps)):
        if value < 1:
            raise CommandError(f"{flag} must be at least 1")


def private_gradio_files() -> None:
    """Gradio copies every file it serves (export zips: masks, and images in an nnU-Net export) into its temp folder,
    by default /tmp/gradio, which every user of the machine can list and read. Unless GRADIO_TEMP_DIR says where,
    use a folder only this user can open (mkdtemp: 0700), removed when the server exits. Before gradio is imported:
    it reads the variable then."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        folder = tempfile.mkdtemp(prefix="adasam-gradio-")
        os.environ["GRADIO_TEMP_DIR"] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


def cmd_serve(args: argparse.Namespace) -> int:
    warning = check_exposure(args)
    if args.max_points is not None and args.max_points < 1:
        raise CommandError("--max-points must be at least 1")
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be 0-65535, got {args.port}")
    try:
        socket.getaddrinfo(args.host, args.port)
    except (OSError, UnicodeError) as exc:
        raise CommandError(f"--host {args.host}: not a name or address this machine can resolve ({exc})") from None
    check_rounds(args)
    if warning:
        print(warning, flush=True)
    private_gradio_files()

    import gradio as gr
    from starlette.middleware import Middleware

    from annotation import DEFAULT_WORKSPACE, Store, release_all_leases
    from app.auth import checker, read_users
    from app.guard import Guard
    from app.seed import seed_workspace
    from app.model_slot import ModelSlot
    from app.studio import MAX_POINTS, Studio
    from app.trainer_api import UPLOAD_PATH, TrainerAPI
    from app.ui import build_ui

    users = read_users(args.auth) if args.auth else None
    workspace = Path(args.workspace)
    store = Store(workspace)
    keep_workspace_choices(store, args)
    released = release_all_leases(store)
    if released:
        print(f"released {released} image lease(s) left by an earlier server", flush=True)
    if not store.counts().images:
        if args.demo or workspace.resolve() == DEFAULT_WORKSPACE.resolve():
            print(f"{workspace} is empty: importing the demo images (first run only) ...", flush=True)
            print(seed_workspace(store), flush=True)
        else:
            print(f"{workspace} has no images yet: import some with `adasam import {workspace} FOLDER`")
    slot = ModelSlot(store, args.backbone, _cache_dir(args.cache))
    studio = Studio(store, slot, args.round_every, max_points=args.max_points or MAX_POINTS,
                    local_trainer=not args.no_trainer)
    trainer_api = TrainerAPI(store, slot, args.round_every, args.train_steps, accept_rounds=args.remote_trainers)
    trainer = None if args.no_trainer else TrainerSupervisor(_trainer_command(args, workspace), workspace)
    if trainer is not None:
        trainer.start()
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
                        auth_message="ADA-SAM Studio: log in with your annotator name (after 5 wrong "
                                     "passwords a name must wait before trying again).", prevent_thread_lock=True,
                        show_error=True, theme=theme, css=_page_css(), share=False, enable_monitoring=False,
                        app_kwargs={"routes": trainer_api.router().routes, "middleware": [Middleware(
                            Guard, max_body_bytes=int(args.max_request_mb * 2**20),
                            uploads=(UPLOAD_PATH, int(args.max_model_mb * 2**20)),
                            allowed_origins=tuple(args.allowed_origin), loopback=is_loopback(args.host))]})
        except OSError as exc:
            raise CommandError(f"cannot listen on {args.host}:{args.port} ({exc}); is another server running? "
                               f"Choose another --port") from None
        print(f"ADA-SAM Studio: http://{args.host}:{args.port} (workspace {workspace}; Ctrl+C stops it and its "
              f"trainer)", flush=True)
        if args.remote_trainers and args.no_trainer:
            print("warning: --no-trainer: nothing embeds new images or re-scores the pool for the remote trainers' "
                  "models, so the queue keeps its order", flush=True)
        if args.remote_trainers:
            print(f"rounds are trained remotely: `adasam trainer --server http://THIS-HOST:{args.port} --token FILE` "
                  f"with a token from `adasam trainer-token {workspace} NAME --out FILE`", flush=True)
        while not stop.wait(0.5):
            if trainer is not None:
                trainer.poll()
    finally:
        demo.close()
        if trainer is not None:
            trainer.stop()
        studio.close()
        store.close()
    return 0


def _page_css() -> str:
    from app.ui import PAGE_CSS

    return PAGE_CSS


def _trainer_command(args: argparse.Namespace, workspace: Path) -> list[str]:
    return [sys.executable, "-m", "app.cli", "trainer", str(workspace), "--backbone", args.backbone,
            "--cache", str(_cache_dir(args.cache)), "--round-every", str(args.round_every),
            "--train-steps", str(args.train_steps), "--parent-pid", str(os.getpid()),
            *(["--no-rounds"] if args.remote_trainers else [])]


class TrainerSupervisor:
    """Runs the trainer process and starts it again when it exits on its own (a crash, the OOM killer): after
    `first_delay_s`, doubling per restart up to `max_delay_s`, afresh once a run lasted `stable_s`. While it waits
    the trainer status file says so, which the dashboard shows. Call poll() every so often; stop() ends it."""

    def __init__(self, command: list[str], workspace: Path, first_delay_s: float = TRAINER_FIRST_DELAY_S,
                 max_delay_s: float = TRAINER_MAX_DELAY_S, stable_s: float = TRAINER_STABLE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.command, self.workspace = command, workspace
        self.first_delay_s, self.max_delay_s, self.stable_s, self.clock = first_delay_s, max_delay_s, stable_s, clock
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.delay_s = first_delay_s  # the wait before the next restart
        self.started_at = 0.0
        self.restart_at: float | None = None

    def start(self) -> None:
        root = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(self.command, env=env)
        self.started_at = self.clock()
        self.restart_at = None

    def poll(self) -> None:
        from app.status import write_status

        now = self.clock()
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return
            self.process = None
            if now - self.started_at >= self.stable_s:
                self.delay_s = self.first_delay_s
            self.restarts += 1
            self.restart_at = now + self.delay_s
            message = f"trainer exited with status {code}; restart {self.restarts} in {self.delay_s:g} s"
            print(message, flush=True)
            write_status(self.workspace, state="restarting", message=message, restarts=self.restarts)
            self.delay_s = min(self.max_delay_s, self.delay_s * 2)
        elif self.restart_at is not None and now >= self.restart_at:
            self.start()

    def stop(self, timeout: float = 60.0) -> None:
        self.restart_at = None
        _stop_trainer(self.process, timeout)
        self.process = None


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
    from annotation import Store
    from app.trainer import run_trainer

    if args.server:
        return _remote_trainer(args)
    if not args.workspace:
        raise CommandError("give a WORKSPACE, or --server URL --token FILE for a trainer on another machine")
    for flag in ("token", "data", "rounds", "poll"):
        if getattr(args, flag) is not None:
            raise CommandError(f"--{flag} is for a trainer on another machine: add --server URL")
    check_rounds(args)
    Store(args.workspace, create=False).close()  # a wrong path is refused before anything is written there
    return run_trainer(args.workspace, args.backbone, _cache_dir(args.cache), args.round_every, args.train_steps,
                       args.parent_pid, train_rounds=not args.no_rounds)


def _remote_trainer(args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    from app.remote_trainer import DEFAULT_MIRROR, POLL_S, RemoteError, RemoteTrainer, TrainerClient, read_token
    from model.device import default_device
    from model.distributed import join, leave

    if args.workspace:
        raise CommandError("--server trains for a remote workspace: leave out WORKSPACE")
    if not args.token:
        raise CommandError("--server needs --token FILE (make one on the server: adasam trainer-token WORKSPACE "
                           "NAME --out FILE)")
    url = urlsplit(args.server)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise CommandError(f"--server {args.server!r}: expected a URL like http://host:7860")
    if args.rounds is not None and args.rounds < 1:
        raise CommandError("--rounds must be at least 1")
    if args.poll is not None and not args.poll > 0:
        raise CommandError(f"--poll must be a number of seconds above 0, got {args.poll}")
    try:
        token = read_token(args.token)
    except OSError as exc:
        raise CommandError(f"cannot read --token {args.token}: {exc.strerror}") from None
    except RemoteError as exc:
        raise CommandError(str(exc)) from None
    mirror = Path(args.data) if args.data else DEFAULT_MIRROR / f"{url.hostname}-{url.port or 80}"
    ranks = join(default_device())  # one process, or one of torchrun's: rank 0 talks to the server
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    client = TrainerClient(args.server, token) if ranks.main else None
    try:
        trainer = RemoteTrainer(client, args.backbone, _cache_dir(args.cache), mirror, ranks,
                                say=print if ranks.main else lambda *_: None)
        trainer.stop = stop
        if ranks.main:
            print(f"training for {args.server} as the holder of {args.token} (images kept in {mirror})", flush=True)
        trainer.run(args.rounds, POLL_S if args.poll is None else args.poll)
    except RemoteError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if client is not None:
            client.close()
        leave(ranks)
    return 0


def cmd_trainer_token(args: argparse.Namespace) -> int:
    from annotation import Store
    from app.auth import AuthFileError, check_name
    from model.atomic import atomic_write

    with Store(args.workspace, create=False) as store:
        if args.list:
            for token in store.trainer_tokens():
                state = f"revoked {token['revoked_at'][:19]}" if token["revoked_at"] else "valid"
                print(f"{token['name']}\tmade {token['created_at'][:19]}\t{state}")
            return 0
        if not args.name:
            raise CommandError("give the trainer's NAME (or --list)")
        if args.revoke:
            store.revoke_trainer_token(args.name)
            print(f"revoked {args.name}'s token: its requests are refused from now on")
            return 0
        try:
            check_name(args.name)
        except AuthFileError as exc:
            raise CommandError(str(exc).replace("user name", "trainer name")) from None
        if not args.out:
            print(store.add_trainer_token(args.name))
            return 0
        if Path(args.out).is_dir():
            raise CommandError(f"{args.out} is a folder: give the file to write the token to")
        made: list[str] = []

        def write(handle) -> None:  # called once the file exists: a path that cannot be written changes no token
            made.append(store.add_trainer_token(args.name))
            handle.write(f"{made[0]}\n".encode())

        try:
            atomic_write(args.out, write)
        except OSError as exc:
            outcome = "its old token no longer works: run this again" if made else "its token was not changed"
            raise CommandError(f"cannot write {args.out}: {exc.strerror or exc}; {outcome}") from None
    print(f"token for trainer {args.name} written to {args.out} (mode 600): copy it to the trainer's machine and run "
          f"adasam trainer --server URL --token FILE")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    from app.auth import check_name, write_user

    check_name(args.name)  # before the password is asked for
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if password != getpass.getpass("again: "):
            raise CommandError("the passwords differ")
    if len(password) < 4:
        raise CommandError("use a password of at least 4 characters")
    try:
        write_user(args.file, args.name, password)
    except OSError as exc:  # a missing folder, a directory, no permission
        raise CommandError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"saved {args.name} in {args.file}")
    return 0
