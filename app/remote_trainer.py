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
from model.backbones import build_backbone
from model.cache import EmbeddingCache
from model.distributed import Ranks

POLL_S = 10.0  # between asking for a round when none is due
REPORT_EVERY = 10  # steps between progress reports (each also asks whether the round is still this trainer's)
DEFAULT_MIRROR = Path.home() / ".cache" / "adasam" / "trainer"


class RemoteError(Exception):
    """The server refused or could not be reached (one-line message for the command line)."""


class RoundLost(Exception):
    """The server gave this trainer's round to another (it fell silent too long) or ended it."""


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
            raise RemoteError(f"cannot reach {self.url}: {exc}") from None
        if response.status_code == 401:
            raise RemoteError(f"{self.url} refused the trainer token (401): make one with `adasam trainer-token "
                              f"WORKSPACE NAME` on the server and pass its file with --token")
        if response.status_code == 409:
            raise RoundLost(_detail(response))
        if response.status_code >= 400:
            raise RemoteError(f"{method} {API}{path}: {response.status_code} {_detail(response)}")
        return response

    def claim(self) -> dict[str, Any]:
        return self._call("POST", "/rounds").json()

    def image(self, image_id: int) -> np.ndarray:
        return np.load(io.BytesIO(self._call("GET", f"/images/{image_id}").content), allow_pickle=False)

    def model(self, version: str, path: Path) -> Path:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(self._call("GET", f"/models/{version}").content)
        os.replace(tmp, path)
        return path

    def progress(self, round_id: int, step: int, total: int) -> None:
        self._call("POST", f"/rounds/{round_id}/progress", json={"step": step, "total": total})

    def failed(self, round_id: int, error: str) -> None:
        self._call("POST", f"/rounds/{round_id}/failed", json={"error": error})

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
        """Train rounds until stopped (or `rounds` of them were uploaded); returns how many were."""
        done, said = 0, None
        while not self.stop.is_set() and (rounds is None or done < rounds):
            answer = self.ranks.from_main(self._claim() if self.ranks.main else None)
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

    def round(self, answer: dict[str, Any]) -> int:
        """Train and upload one claimed round; 1 when its model was uploaded, 0 when the round was lost or failed."""
        plan = RoundPlan.from_json(answer["plan"])
        server_identity = answer["backbone"]["identity"]
        if server_identity != self.base.identity:
            message = (f"the server serves backbone {server_identity}, this trainer has {self.base.identity}: "
                       f"start it with --backbone {answer['backbone']['spec'].split(':')[0]}[:PATH to the same "
                       f"weights]")
            if self.ranks.main:
                self.client.failed(plan.round_id, message)
            raise RemoteError(message)
        work = self.mirror / f"round-{plan.round_id:04d}"
        try:
            fetched = self._fetched(plan, answer["images"], work) if self.ranks.main else None
            init, lost, error = self.ranks.from_main(fetched)  # every rank stops if rank 0's downloads did
            if lost or error:
                raise RoundLost(lost) if lost else RemoteError(error)
            pixels = self._pixels(answer["images"])
            self.cache.fill([pixels(i) for i in plan.image_ids()], self.ranks)  # each rank embeds its share
            data, sizes = training_data(plan, self.cache, pixels)
            trainer = round_trainer(data, self.spec, self.base, plan.round_id, int(answer["steps"]), work, init,
                                    self.ranks)
            started = time.monotonic()
            best = trainer.run(progress=self._reporter(plan.round_id))
            if not self.ranks.main:
                return 1
            metrics = {**sizes, "steps": int(answer["steps"]), "best_step": best.get("step"),
                       "train_seconds": round(time.monotonic() - started, 1), "ranks": self.ranks.world}
            verdict = self.client.upload(plan.round_id, _upload_file(work, metrics))
            state = "published" if verdict["published"] else "kept unpublished"
            dice = "none" if verdict["val_dice"] is None else f"{verdict['val_dice']:.3f}"
            self.say(f"round {plan.round_id}: {verdict['version']} {state} (server's val Dice {dice})"
                     + (f"; {verdict['note']}" if verdict.get("note") else ""))
            return 1
        except RoundLost as exc:
            self.say(f"round {plan.round_id} is no longer ours: {exc}")
            return 0
        except RemoteError:
            raise
        except Exception as exc:
            if self.ranks.main:
                self.client.failed(plan.round_id, f"{type(exc).__name__}: {exc}")
                self.say(traceback.format_exc())
            if self.ranks.joined:
                raise  # the other ranks cannot be told apart from a hang: let torchrun end them all
            return 0
        finally:
            if self.ranks.main:
                shutil.rmtree(work, ignore_errors=True)

    def _fetched(self, plan: RoundPlan, images: dict[str, str], work: Path) -> tuple[str | None, str, str]:
        """(model to start from, why the round was lost, what went wrong), as rank 0 tells the others."""
        try:
            return self._fetch(plan, images, work), "", ""
        except RoundLost as exc:
            return None, str(exc), ""
        except RemoteError as exc:
            return None, "", str(exc)

    def _fetch(self, plan: RoundPlan, images: dict[str, str], work: Path) -> str | None:
        """Download the images the mirror lacks and the model to start from; returns that model's path."""
        missing = [int(i) for i, sha in images.items() if not self._image_path(sha).exists()]
        if missing:
            self.say(f"round {plan.round_id}: downloading {len(missing)} of {len(images)} images")
        for image_id in missing:
            path = self._image_path(images[str(image_id)])
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as handle:  # np.save on a name would append .npy to it
                np.save(handle, self.client.image(image_id), allow_pickle=False)
            os.replace(tmp, path)
        work.mkdir(parents=True, exist_ok=True)
        if plan.init is None:
            return None
        return str(self.client.model(plan.init, work / f"init-{plan.init}.pt"))

    def _image_path(self, sha256: str) -> Path:
        return self.mirror / "images" / f"{sha256}.npy"

    def _pixels(self, images: dict[str, str]):
        def pixels(image_id: int) -> np.ndarray:  # float32, as the server keys its cache (workspace_pixels)
            return np.load(self._image_path(images[str(image_id)]), allow_pickle=False).astype(np.float32)

        return pixels

    def _reporter(self, round_id: int):
        """The training progress callback: every REPORT_EVERY steps rank 0 reports; every rank learns whether the
        round is still ours (and all stop together when it is not) or this trainer is being stopped."""
        def report(step: int, total: int) -> None:
            if step % REPORT_EVERY and step != total:
                return
            lost = None
            if self.ranks.main:
                try:
                    self.client.progress(round_id, step, total)
                except RoundLost as exc:
                    lost = str(exc)
                if self.stop.is_set():
                    lost = "this trainer was stopped"
            lost = self.ranks.from_main(lost)
            if lost:
                raise RoundLost(lost)

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
