"""`adasam trainer --server URL --token FILE`: the background trainer's rounds, run on another machine (a GPU box)
for an annotation server started with `--remote-trainers` (app/trainer_api.py is the other side).

Its loop: ask the server for a round; when one is due, get its plan (masks, tags, the unlabeled sample, the
validation set), download the images it lacks into a local mirror (`--data`, one .npy per image content) and the
serving model to start from, embed with its own backbone (which must be the server's: same weights identity), train
the round as the local trainer would (app/rounds.round_trainer), reporting progress (which keeps its claim on the
round alive), and upload the model. The server checks and publishes it. Under torchrun, rank 0 does all the HTTP
and the downloads; every rank embeds its share of the images, then they train together (DistributedDataParallel).
"""
from __future__ import annotations

import io
import os
import re
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from app.rounds import RoundPlan, round_trainer, training_data
from app.trainer_api import API
from model.adasam import CheckpointError, read_checkpoint
from model.atomic import save_torch
from model.backbones import build_backbone
from model.cache import EmbeddingCache
from model.distributed import Ranks

POLL_S = 10.0  # between asking for a round when none is due
REPORT_EVERY = 10  # steps between progress reports (each also asks whether the round is still this trainer's)
ALIVE_EVERY_S = 60.0  # while downloading images: a word to the server this often keeps the claim
SHA256 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"r\d+")
DEFAULT_MIRROR = Path.home() / ".cache" / "adasam" / "trainer"


class RemoteError(Exception):
    """The server refused or could not be reached (one-line message for the command line). `retry`: worth asking
    again later (no connection, a server error), as opposed to a refusal that would only repeat (401, 413, 422)."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


class ImageGone(RemoteError):
    """The server cannot read an image of the round (410: its stored file is damaged); the round goes on without it,
    as the server's own trainer does."""


class RoundLost(Exception):
    """The server gave this trainer's round to another (it fell silent too long) or ended it."""


class Stopping(Exception):
    """This trainer was asked to stop (SIGTERM, Ctrl+C) in the middle of a round."""


class TrainerClient:
    """The trainer's HTTP calls to one annotation server (httpx), authenticated by its token."""

    def __init__(self, url: str, token: str, timeout_s: float = 300.0, http: httpx.Client | None = None) -> None:
        """`http`: an httpx client to send through instead (a test's in-process app)."""
        self.url = url.rstrip("/")
        self.http = http or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self.http.base_url = self.url + API
        self.http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {self.url}: {exc}", retry=True) from None
        if response.status_code == 401:
            raise RemoteError(f"{self.url} refused the trainer token (401): make one with `adasam trainer-token "
                              f"WORKSPACE NAME` on the server and pass its file with --token")
        if response.status_code == 409:
            raise RoundLost(_detail(response))
        if response.status_code == 410:
            raise ImageGone(_detail(response))
        if response.status_code >= 400:
            raise RemoteError(f"{method} {API}{path}: {response.status_code} {_detail(response)}",
                              retry=response.status_code >= 500)
        return response

    def claim(self) -> dict[str, Any]:
        return self._call("POST", "/rounds").json()

    def image(self, image_id: int) -> np.ndarray | None:
        """The image's stored pixels; None when the server cannot read them (ImageGone)."""
        try:
            content = self._call("GET", f"/images/{image_id}").content
        except ImageGone:
            return None
        return np.load(io.BytesIO(content), allow_pickle=False)

    def model(self, version: str, path: Path) -> Path:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(self._call("GET", f"/models/{version}").content)
        os.replace(tmp, path)
        return path

    def progress(self, round_id: int, step: int, total: int) -> None:
        self._call("POST", f"/rounds/{round_id}/progress", json={"step": step, "total": total})

    def failed(self, round_id: int, error: str, cancelled: bool = False) -> None:
        self._call("POST", f"/rounds/{round_id}/failed", json={"error": error, "cancelled": cancelled})

    def upload(self, round_id: int, checkpoint: Path) -> dict[str, Any]:
        with open(checkpoint, "rb") as handle:
            return self._call("POST", f"/rounds/{round_id}/model", content=handle,
                              headers={"Content-Type": "application/octet-stream",
                                       "Content-Length": str(checkpoint.stat().st_size)}).json()


class RemoteTrainer:
    """Rounds for one server, one after the other. Rank 0 talks to the server; every rank trains."""

    def __init__(self, client: TrainerClient | None, backbone: str, cache_dir: str | Path, mirror: str | Path,
                 ranks: Ranks = Ranks(), say=print) -> None:
        self.client, self.spec, self.ranks, self.say = client, backbone, ranks, say
        self.base = build_backbone(backbone)
        self.cache = EmbeddingCache(cache_dir, self.base)
        self.mirror = Path(mirror)
        (self.mirror / "images").mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()

    def run(self, rounds: int | None = None, poll_s: float = POLL_S) -> int:
        """Train rounds until stopped (or `rounds` of them were uploaded); returns how many were. Every decision
        is rank 0's, sent to the others, so all ranks always take the same path."""
        done, said = 0, None
        while rounds is None or done < rounds:
            if self.ranks.from_main(self.stop.is_set()):
                break
            answer = self.ranks.from_main(self._claim() if self.ranks.main else None)
            if answer.get("fatal"):
                raise RemoteError(answer["fatal"])
            if answer.get("round") is None:
                if answer.get("reason") != said:  # said once, not every poll
                    said = answer.get("reason")
                    self.say(f"no round now: {said}")
                self.stop.wait(poll_s)
                continue
            said = None
            done += self.round(answer)
        return done

    def _claim(self) -> dict[str, Any]:
        try:
            return self.client.claim()
        except RoundLost as exc:  # another trainer is training: wait for the next one
            return {"round": None, "reason": str(exc)}
        except RemoteError as exc:
            if not exc.retry:  # e.g. a revoked token: every rank stops (below), none is left waiting
                return {"round": None, "fatal": str(exc)}
            return {"round": None, "reason": str(exc)}  # the server restarting, the network: ask again later

    def round(self, answer: dict[str, Any]) -> int:
        """Train and upload one claimed round; 1 when its model was uploaded, 0 when the round was lost or failed.
        RemoteError when going on would only fail again (another backbone, a refused token or upload)."""
        plan = RoundPlan.from_json(answer["plan"])
        work = self.mirror / f"round-{plan.round_id:04d}"
        outcome = (0, "")  # rank 0's (uploaded, why the trainer must stop), sent to every rank at the end
        try:
            self._check_backbone(answer["backbone"])
            fetched = self._fetched(plan, answer["images"], work) if self.ranks.main else None
            init, gone, lost, error, retry = self.ranks.from_main(fetched)  # every rank stops if rank 0's downloads did
            if lost or error:
                raise RoundLost(lost) if lost else RemoteError(error, retry=retry)
            pixels = self._pixels(answer["images"], gone)
            self.cache.fill([image for i in plan.image_ids() if (image := pixels(i)) is not None],
                            self.ranks)  # each rank embeds its share
            data, sizes = training_data(plan, self.cache, pixels)
            trainer = round_trainer(data, self.spec, self.base, plan.round_id, int(answer["steps"]), work, init,
                                    self.ranks, image_view=plan.image_view)
            started = time.monotonic()
            best = trainer.run(progress=self._reporter(plan.round_id), stop_check=self._stop_check)
            if self.ranks.main:
                metrics = {**sizes, "steps": trainer.config.steps, "best_step": best.get("step"),
                           "train_seconds": round(time.monotonic() - started, 1), "ranks": self.ranks.world}
                outcome = self._upload(plan.round_id, work, metrics)
        except Stopping:  # raised on every rank alike: the decision was sent
            self._report_failed(plan.round_id, "the trainer was stopped", cancelled=True)
            self.say(f"round {plan.round_id} cancelled: this trainer was stopped")
        except RoundLost as exc:  # raised on every rank alike: the decision was sent
            self.say(f"round {plan.round_id} is no longer ours: {exc}")
        except RemoteError as exc:  # raised on every rank alike: the decision was sent
            if not exc.retry:
                self._report_failed(plan.round_id, str(exc))
                raise
            # the network or the server, for now: the round is due again at once, and this trainer asks again
            self._report_failed(plan.round_id, f"{exc} (to be tried again)", cancelled=True)
            self.say(f"round {plan.round_id} cancelled: {exc}; asking for a round again")
        except Exception as exc:
            self._report_failed(plan.round_id, f"{type(exc).__name__}: {exc}")
            self.say(traceback.format_exc())
            if self.ranks.joined:
                raise  # one rank's own failure cannot be told apart from a hang: let torchrun end them all
        finally:
            if self.ranks.main:
                shutil.rmtree(work, ignore_errors=True)
        uploaded, fatal = self.ranks.from_main(outcome)
        if fatal:
            raise RemoteError(fatal)
        return uploaded

    def _check_backbone(self, server: dict[str, str]) -> None:
        if server["identity"] != self.base.identity:
            raise RemoteError(f"the server serves backbone {server['identity']}, this trainer has "
                              f"{self.base.identity}: start it with --backbone {server['spec'].split(':')[0]}"
                              f"[:PATH to the same weights]")

    def _upload(self, round_id: int, work: Path, metrics: dict[str, Any]) -> tuple[int, str]:
        """Rank 0: upload the round's model -> (1 if the server took it, why to stop or "")."""
        try:
            verdict = self.client.upload(round_id, _upload_file(work, metrics))
        except RoundLost as exc:
            self.say(f"round {round_id} is no longer ours: {exc}")
            return 0, ""
        except RemoteError as exc:  # a blip (retry) cancels the round, so that it is due again at once
            self._report_failed(round_id, f"upload: {exc}", cancelled=exc.retry)
            self.say(f"round {round_id}: upload failed: {exc}")
            return 0, "" if exc.retry else str(exc)
        state = "published" if verdict["published"] else "kept unpublished"
        dice = "none" if verdict["val_dice"] is None else f"{verdict['val_dice']:.3f}"
        self.say(f"round {round_id}: {verdict['version']} {state} (server's val Dice {dice})"
                 + (f"; {verdict['note']}" if verdict.get("note") else ""))
        return 1, ""

    def _report_failed(self, round_id: int, error: str, cancelled: bool = False) -> None:
        """Rank 0: tell the server, if it can be told (the round is then not left running until its lease ends)."""
        if not self.ranks.main:
            return
        try:
            self.client.failed(round_id, error, cancelled)
        except (RemoteError, RoundLost):
            pass

    def _fetched(self, plan: RoundPlan, images: dict[str, str], work: Path
                 ) -> tuple[str | None, list[int], str, str, bool]:
        """(model to start from, images the server cannot read, why the round was lost, what went wrong, whether
        that is worth trying again), as rank 0 tells the others."""
        try:
            return *self._fetch(plan, images, work), "", "", False
        except RoundLost as exc:
            return None, [], str(exc), "", False
        except RemoteError as exc:
            return None, [], "", str(exc), exc.retry

    def _fetch(self, plan: RoundPlan, images: dict[str, str], work: Path) -> tuple[str | None, list[int]]:
        """Download the images the mirror lacks and the model to start from; returns that model's path and the
        images the server could not read. Names from the server are checked before they become paths, the model
        before it is loaded."""
        if not all(SHA256.fullmatch(sha) for sha in images.values()) or (
                plan.init is not None and not VERSION.fullmatch(plan.init)):
            raise RemoteError("the server's round names images or a model in an unexpected form")
        missing = [int(i) for i, sha in images.items() if not self._image_path(sha).exists()]
        if missing:
            self.say(f"round {plan.round_id}: downloading {len(missing)} of {len(images)} images")
        last_word, gone = time.monotonic(), []
        for image_id in missing:
            path = self._image_path(images[str(image_id)])
            tmp = path.with_name(f".{path.name}.tmp")
            pixels = self.client.image(image_id)
            if pixels is None:
                gone.append(image_id)
                continue
            with open(tmp, "wb") as handle:  # np.save on a name would append .npy to it
                np.save(handle, pixels, allow_pickle=False)
            os.replace(tmp, path)
            if time.monotonic() - last_word > ALIVE_EVERY_S:  # a long download must not cost the round
                self.client.progress(plan.round_id, 0, 0)
                last_word = time.monotonic()
        if gone:
            self.say(f"round {plan.round_id}: {len(gone)} images the server cannot read are left out")
        work.mkdir(parents=True, exist_ok=True)
        if plan.init is None:
            return None, gone
        path = self.client.model(plan.init, work / f"init-{plan.init}.pt")
        try:
            _, payload, _ = read_checkpoint(path, weights_only=True)  # tensors and plain values only: no code
        except CheckpointError as exc:
            raise RemoteError(f"the server's model {plan.init} is not a plain checkpoint: {exc}") from None
        save_torch(payload, path)  # rewritten from what that safe load read: the training's own loads of it (full
        # unpickling) can then meet nothing else, whatever the two loaders would make of the downloaded bytes
        return str(path), gone

    def _image_path(self, sha256: str) -> Path:
        return self.mirror / "images" / f"{sha256}.npy"

    def _pixels(self, images: dict[str, str], gone: list[int]):
        def pixels(image_id: int) -> np.ndarray | None:  # float32, as the server keys its cache (workspace_pixels)
            if image_id in gone:
                return None
            return np.load(self._image_path(images[str(image_id)]), allow_pickle=False).astype(np.float32)

        return pixels

    def _stop_check(self) -> None:
        """Between the image view's steps: a stop request answered there, in one process. Under torchrun rank 0
        trains the view alone while the others wait in a broadcast, so there the stop waits for the view's end and
        the next progress report, where every rank decides together."""
        if not self.ranks.joined and self.stop.is_set():
            raise Stopping()

    def _reporter(self, round_id: int):
        """The training progress callback: every REPORT_EVERY steps rank 0 reports; every rank learns whether the
        round is still ours (and all stop together when it is not) or this trainer is being stopped."""
        def report(step: int, total: int) -> None:
            if step % REPORT_EVERY and step not in (1, total):
                return
            lost = None
            if self.ranks.main:
                try:
                    self.client.progress(round_id, step, total)
                except RoundLost as exc:
                    lost = str(exc)
                except RemoteError as exc:  # a refused token ends the round; a blip does not: the next report
                    # renews the claim, and a claim that lapsed meanwhile answers 409 (RoundLost) then
                    if not exc.retry:
                        lost = str(exc)
            lost, stopping = self.ranks.from_main((lost, self.stop.is_set()))
            if lost:
                raise RoundLost(lost)
            if stopping:
                raise Stopping()

        return report


def _upload_file(work: Path, metrics: dict[str, Any]) -> Path:
    """The round's best model as the server takes it: tensors and plain values only."""
    payload = torch.load(work / "model.pt", map_location="cpu", weights_only=False)
    upload = {key: payload[key] for key in ("format", "config", "state", "backbone_identity")}
    upload["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    path = work / "upload.pt"
    torch.save(upload, path)
    return path


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))[:300]
    except ValueError:
        return response.text[:300]


def read_token(path: str | os.PathLike[str]) -> str:
    """A token file's token (its first word)."""
    words = Path(path).read_text().split()
    if not words:
        raise RemoteError(f"{path} is empty: it should hold the token `adasam trainer-token` printed")
    return words[0]
