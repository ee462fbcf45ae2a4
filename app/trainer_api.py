"""The annotation server's side of trainers on other machines (`adasam trainer --server URL --token FILE`): HTTP
endpoints under /api/trainer on the web app's own port, served when the server runs with `--remote-trainers`.

A trainer authenticates with `Authorization: Bearer TOKEN` (tokens from `adasam trainer-token`, stored hashed in the
workspace, revocable); anything else gets 401 and changes nothing. It claims a round when one is due (the
round's plan: masks, tags, the unlabeled sample, the validation set, which images and which model to start from),
downloads the images it lacks, reports progress (which keeps its claim alive: a trainer silent for
ROUND_LEASE_SECONDS loses the round to the next one that asks) and uploads its model. The server trusts nothing in
the upload: it loads it as tensors and plain values only, checks format and backbone, recomputes validation Dice
on its own validation images against the serving model's (app/rounds.publish_round, the local trainer's check) and
only then publishes it; the web app swaps it in between requests as it does a local round's, and the workspace's
own trainer process re-scores the pool for it. A round is owned by the trainer that claimed it: another trainer's
progress or upload for it gets 409.
"""
from __future__ import annotations

import io
import math
import secrets
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from annotation import RoundInfo, RoundTaken, Store, WorkspaceError
from annotation.store import LOCAL_TRAINER
from app.model_slot import ModelSlot
from app.rounds import (
    Verdict, items, plan_round, publish_round, round_cancelled, round_config_problem, round_due, round_finished,
    round_started, validation_masks,
)
from app.status import REMOTE_DOWNLOADS, write_remote_status
from app.trainer import workspace_pixels
from model.adasam import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, read_checkpoint, serving_problem
from model.backbones import backbone_view
from model.atomic import save_torch

API = "/api/trainer"
UPLOAD_PATH = API + r"/rounds/\d+/model"  # the one request whose body may exceed --max-request-mb
UPLOAD_METRICS = ("n_masks", "n_empty", "n_tagged", "n_unlabeled_sampled", "steps", "best_step", "train_seconds",
                  "ranks")  # what a trainer may report about its round (shown with the model; not trusted for Dice)


class TrainerAPI:
    """The endpoints, bound to one workspace and the web app's model slot (whose backbone and embedding cache the
    upload check uses). `accept_rounds=False`: the workspace's own trainer trains, so claims are refused (409)."""

    def __init__(self, store: Store, slot: ModelSlot, round_every: int, steps: int, accept_rounds: bool) -> None:
        self.store, self.slot, self.round_every, self.steps = store, slot, round_every, steps
        self.accept_rounds = accept_rounds
        self.publishing = threading.Lock()  # one upload checked at a time: no two publish one round
        self._downloads: tuple[int, frozenset[int], str | None] | None = None  # (round, its images, its init)
        for left in (Path(store.root) / "models").glob(".upload-*"):  # by a server killed mid-upload
            left.unlink(missing_ok=True)
        if accept_rounds:  # a round the workspace's own trainer left running will never finish now
            for rnd in store.rounds():
                if rnd.status == "running" and rnd.owner == LOCAL_TRAINER:
                    round_cancelled(store, rnd.id, "the server now takes rounds from remote trainers")

    def pixels(self, image_id: int) -> np.ndarray | None:
        """None for an image whose stored file cannot be read: the upload is scored without it, as rounds train."""
        try:
            return workspace_pixels(self.store, image_id)
        except (OSError, ValueError, EOFError):
            return None

    def trainer(self, authorization: str | None = Header(default=None)) -> str:
        """The dependency every endpoint has: the name of the token's trainer, or 401."""
        scheme, _, token = (authorization or "").partition(" ")
        name = self.store.trainer_for_token(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if name is None:
            raise HTTPException(401, "a valid trainer token is needed (adasam trainer-token WORKSPACE NAME makes one)",
                                headers={"WWW-Authenticate": "Bearer"})
        return name

    def router(self) -> APIRouter:
        router = APIRouter(prefix=API)
        trainer = Depends(self.trainer)

        @router.post("/rounds")
        def claim(name: str = trainer) -> dict[str, Any]:
            return self.claim(name)

        @router.get("/images/{image_id}")
        def image(image_id: int, name: str = trainer) -> Response:
            if image_id not in self._downloads_of(name)[1]:
                raise HTTPException(403, f"image {image_id} is not in your round's plan")
            return self.image(image_id)

        @router.get("/models/{version}")
        def model(version: str, name: str = trainer) -> FileResponse:
            if version != self._downloads_of(name)[2]:
                raise HTTPException(403, f"model {version} is not the one your round starts from")
            return self.model(version)

        @router.post("/rounds/{round_id}/progress")
        def progress(round_id: int, report: dict[str, Any], name: str = trainer) -> dict[str, Any]:
            return self.progress(round_id, report, name)

        @router.post("/rounds/{round_id}/failed")
        def failed(round_id: int, report: dict[str, Any], name: str = trainer) -> dict[str, Any]:
            return self.failed(round_id, report, name)

        @router.post("/rounds/{round_id}/model")
        async def upload(round_id: int, request: Request, name: str = trainer) -> dict[str, Any]:
            return await self.upload(round_id, request, name)

        return router

    # -- endpoints -------------------------------------------------------------------------------------------------

    def claim(self, name: str) -> dict[str, Any]:
        """A due round for this trainer: {"round": id, "plan": ..., "images": {id: sha256}, "backbone": ...,
        "steps": N}, or {"round": null, "reason": why not now}; 409 while another trainer owns the running round."""
        if not self.accept_rounds:
            raise HTTPException(409, "this server trains its rounds itself (start it with --remote-trainers)")
        store = self.store
        reason = round_due(store, self.round_every)
        if reason:
            return {"round": None, "reason": reason}
        labels = store.label_count("pool")
        try:
            round_id = store.claim_round(labels, name)
        except RoundTaken as exc:
            raise HTTPException(409, str(exc)) from None
        round_started(store)  # only now: a refused claim leaves a "Retrain now" standing
        try:
            plan = plan_round(store, round_id)
            images = {str(i): store.image(i).sha256 for i in plan.image_ids()}
        except Exception as exc:
            self._fail(round_id, name, labels, f"planning the round: {type(exc).__name__}: {exc}")
            raise
        store.set_setting(REMOTE_DOWNLOADS, {"round": round_id, "images": sorted(plan.image_ids()),
                                             "init": plan.init}, who=name)  # what its trainer may fetch, restarts too
        write_remote_status(store.root, trainer=name, round=round_id, step=0, total=self.steps)
        return {"round": round_id, "plan": plan.to_json(), "images": images, "steps": self.steps,
                "backbone": {"spec": self.slot.spec, "identity": self.slot.base.identity}}

    def image(self, image_id: int) -> Response:
        """An image's stored pixels as .npy (original dtype: the trainer casts as the server does)."""
        try:
            pixels = self.store.load_image(image_id)
        except WorkspaceError as exc:
            raise HTTPException(404, str(exc)) from None
        except (OSError, ValueError, EOFError) as exc:  # its file damaged since the import: the round goes on without
            raise HTTPException(410, f"image {image_id} cannot be read on the server ({type(exc).__name__})") from None
        buffer = io.BytesIO()
        np.save(buffer, pixels, allow_pickle=False)
        return Response(buffer.getvalue(), media_type="application/octet-stream")

    def model(self, version: str) -> FileResponse:
        """A published model's checkpoint: a round starts from the serving model."""
        try:
            info = self.store.model(version)
        except WorkspaceError as exc:
            raise HTTPException(404, str(exc)) from None
        if not info.published or not Path(info.checkpoint_path).is_file():
            raise HTTPException(404, f"model {version} is not published")
        return FileResponse(info.checkpoint_path, media_type="application/octet-stream")

    def progress(self, round_id: int, report: dict[str, Any], name: str) -> dict[str, Any]:
        """{"step": s, "total": t}: keeps the claim alive and shows on the dashboard; 409: the round is not
        this trainer's any more (stop training it)."""
        self._own(round_id, name)
        write_remote_status(self.store.root, trainer=name, round=round_id, step=_int(report.get("step")),
                            total=_int(report.get("total")))
        return {"ok": True}

    def failed(self, round_id: int, report: dict[str, Any], name: str) -> dict[str, Any]:
        """{"error": text}: the trainer could not finish; the round is recorded as failed, the serving model stays.
        With "cancelled": true (the trainer was stopped) the round is cancelled instead and is due again at once."""
        rnd = self._own(round_id, name)
        error = f"trainer {name!r}: {report.get('error', 'no reason given')}"
        if report.get("cancelled") is True:
            try:
                round_cancelled(self.store, round_id, error, who=name, owner=name)
            except RoundTaken as exc:
                raise HTTPException(409, str(exc)) from None
            write_remote_status(self.store.root)
        else:
            self._fail(round_id, name, rnd.labels_used, error)
        return {"ok": True}

    async def upload(self, round_id: int, request: Request, name: str) -> dict[str, Any]:
        """The round's model.pt as the request body. 200 {"version", "published", "val_dice", "note"}; 409 not this
        trainer's round (the body is not read); 422 refused (not a checkpoint, wrong format or backbone): the
        round is recorded as failed."""
        await run_in_threadpool(self._own, round_id, name)
        models = Path(self.store.root) / "models"
        models.mkdir(exist_ok=True)
        received = models / f".upload-r{round_id:04d}-{secrets.token_hex(4)}.tmp"
        try:
            with open(received, "wb") as handle:
                async for chunk in request.stream():
                    handle.write(chunk)
            return await run_in_threadpool(self._publish, round_id, name, received)
        finally:
            received.unlink(missing_ok=True)

    # -- checks ----------------------------------------------------------------------------------------------------

    def _downloads_of(self, name: str) -> tuple[int, frozenset[int], str | None]:
        """(round, image ids, starting model) of the running round `name` owns, as its plan was handed out: a token
        downloads that round's images and model only (it could fetch any image, test split included, at any time,
        even from a server taking no remote rounds); 409 without such a round."""
        if not self.accept_rounds:
            raise HTTPException(409, "this server trains its rounds itself (start it with --remote-trainers)")
        running = self.store.latest_round()  # one round runs at a time: the latest
        if running is None or running.status != "running" or running.owner != name:
            raise HTTPException(409, "no running round of yours: claim one first")
        if self._downloads is None or self._downloads[0] != running.id:  # read once a round (the ids as a set)
            saved = self.store.get_setting(REMOTE_DOWNLOADS) or {}
            if saved.get("round") != running.id:
                raise HTTPException(409, f"round {running.id}'s plan is not known here: claim a round again")
            self._downloads = (running.id, frozenset(saved["images"]), saved["init"])
        return self._downloads

    def _own(self, round_id: int, name: str) -> RoundInfo:
        """The round, its claim renewed, if it is running and `name`'s; else 409."""
        if not self.accept_rounds:
            raise HTTPException(409, "this server trains its rounds itself (start it with --remote-trainers)")
        try:
            return self.store.touch_round(round_id, name)
        except RoundTaken as exc:
            raise HTTPException(409, str(exc)) from None

    def _fail(self, round_id: int, name: str, labels: int, error: str) -> None:
        """Record `name`'s round as failed; the next waits for new labels (or Retrain now), as after a local
        failure. Nothing if the round is no longer `name`'s."""
        store = self.store
        try:
            with store.transaction():  # one step: no claim sees the round finished but the labels not yet counted
                store.finish_round(round_id, "failed", error=error[:500], who=name, owner=name)
                round_finished(store, labels)
        except RoundTaken:
            return
        write_remote_status(store.root)

    def _publish(self, round_id: int, name: str, received: Path) -> dict[str, Any]:
        with self.publishing:
            rnd = self._own(round_id, name)  # again, now that no other upload can be between this and the end
            try:
                payload = self._checked(received)
            except CheckpointError as exc:
                self._fail(round_id, name, rnd.labels_used, f"upload from {name!r} refused: {exc}")
                raise HTTPException(422, str(exc)) from None
            try:
                return self._publish_checked(rnd, name, payload, received.with_suffix(".pt"))
            except RoundTaken as exc:
                raise HTTPException(409, str(exc)) from None
            except HTTPException:
                raise
            except Exception as exc:
                self._fail(round_id, name, rnd.labels_used, f"checking the upload: {type(exc).__name__}: {exc}")
                raise

    def _publish_checked(self, rnd: RoundInfo, name: str, payload: dict[str, Any], clean: Path) -> dict[str, Any]:
        """Score the upload on the server's validation set against the serving model, register it, end the round."""
        store = self.store
        try:  # rewritten by the server: only what a model needs
            save_torch({key: payload[key] for key in ("format", "config", "state", "backbone_identity")}, clean)
            masks = validation_masks(store)
            val = items(self.slot.cache, self.pixels, sorted(masks), masks)
            reported = payload.get("metrics") if isinstance(payload.get("metrics"), dict) else {}
            metrics = {k: v for k, v in reported.items() if k in UPLOAD_METRICS and _finite(v)}
            self._own(rnd.id, name)

            def end_round(verdict: Verdict) -> None:
                """In the transaction that registers the model: a round no longer `name`'s (its token revoked
                since scoring began) registers nothing (RoundTaken), and a registered model always has its round
                ended (two transactions left a race)."""
                store.finish_round(rnd.id, "done", val_dice=verdict.val_dice, model_version=verdict.version,
                                   note=verdict.note, who=name, owner=name)
                round_finished(store, rnd.labels_used)

            verdict = publish_round(store, self.slot.base, rnd.id, clean, val,
                                    {**metrics, "round": rnd.id, "trainer": name}, registering=end_round)
        finally:
            clean.unlink(missing_ok=True)
        write_remote_status(store.root)
        return {"version": verdict.version, "published": verdict.published, "val_dice": verdict.val_dice,
                "note": verdict.note}

    def _checked(self, path: Path) -> dict[str, Any]:
        """The upload's payload if this server can serve it, else CheckpointError saying why."""
        _, payload, config = read_checkpoint(path, weights_only=True)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint format {payload.get('format')}, this server reads {CHECKPOINT_FORMAT}")
        identity = payload.get("backbone_identity")
        if identity != self.slot.base.identity:
            raise CheckpointError(f"trained on backbone {identity or 'unknown'}, this server serves "
                                  f"{self.slot.base.identity}")
        if config.method != "adasam" or not isinstance(payload.get("state"), dict):
            raise CheckpointError("not an ADA-SAM round model")
        problem = serving_problem(config) or round_config_problem(config)
        if problem:
            raise CheckpointError(problem)
        try:  # the weights must fit this backbone's model (names and shapes)
            model, _ = load_checkpoint(path, backbone_view(self.slot.base), weights_only=True)  # from the network
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"weights do not fit this model ({type(exc).__name__})") from None
        state = payload["state"]
        missing = sorted(set(model.trainable_state()) - set(state))  # they would stay as built: random
        if missing:
            raise CheckpointError(f"weights missing, e.g. {missing[0]!r}")
        broken = [k for k, v in state.items()
                  if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all()]
        if broken:
            raise CheckpointError(f"weights that are not finite, e.g. {broken[0]!r}")
        return payload


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
        return None


def _finite(value: Any) -> bool:
    """A number a float can hold (10**400 cannot)."""
    try:
        return isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:
        return False
