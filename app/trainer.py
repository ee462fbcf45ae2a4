"""The background trainer: a separate process (`adasam trainer WORKSPACE`, started by `adasam serve`) so the UI
never waits on it.

Its loop: embed images that have no cached embedding yet; finish re-scoring the pool for the newest model; start a
training round once `round_every` new labels have come in (app.rounds.FIRST_ROUND_LABELS while no model serves) or
someone pressed "Retrain now". A round trains ADA-SAM semi-supervised, warm-started from the last model, on every
mask, tag and (a sample of the) unlabeled images, evaluates on the fixed validation set, and publishes a new version
atomically (checkpoint renamed into WORKSPACE/models/, then registered in the store) unless its validation Dice is
more than PUBLISH_TOLERANCE (or the per-image noise, app.rounds.publish_verdict) below the serving model's on the
same images: then it is registered unpublished, the old model keeps serving and the round's note (on the
dashboard) says why. The server notices the new version between requests; the trainer re-scores the pool's
uncertainty in chunks so the queue follows it. A failed round is recorded with its error and the last good model
keeps serving. SIGTERM (or the server disappearing) stops it between steps: the
round is marked cancelled, its progress stays in WORKSPACE/models/training/ and the next start resumes it. What a
round trains on and the check before publishing are app/rounds.py's, shared with trainers on other machines
(app/trainer_api.py).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from annotation import PredictionRecord, Store
from annotation.store import LOCAL_TRAINER
from app.rounds import (
    Verdict, items, plan_round, publish_round, round_cancelled, round_due, round_finished, round_started, round_trainer,
    serving_model, training_data,
)
from app.status import QUEUE_STRATEGY, write_status
from model.adasam import checkpoint_problem, load_checkpoint
from model.backbones import backbone_view, build_backbone
from model.cache import EmbeddingCache, content_hash
from model.decoder import compiled_decoding
from model.evaluate import Item, batch_inputs
from model.inference import Predictor
from model.strategies import DEFAULT_STRATEGY, Candidate, Strategy, get_strategy
from model.strategies.vectors import image_vector
from model.train import Trainer
from model.uncertainty import Uncertainty, combined_uncertainty

SCORE_CHUNK = 16  # small enough that a stop request is answered within seconds


class Stopped(Exception):
    """Raised inside a round when the trainer is asked to stop."""


class BackgroundTrainer:
    def __init__(self, workspace: str | Path, backbone: str, cache_dir: str | Path, round_every: int = 10,
                 steps: int = 60, parent_pid: int | None = None, poll_s: float = 1.0, train_rounds: bool = True
                 ) -> None:
        """`train_rounds=False` (`adasam serve --remote-trainers`): rounds are trained elsewhere; this process still
        embeds new images and re-scores the pool for each model published."""
        self.root = Path(workspace)
        self.train_rounds = train_rounds
        self.spec, self.round_every, self.steps, self.poll_s = backbone, round_every, steps, poll_s
        self.parent_pid = parent_pid
        self.stop = threading.Event()
        self.store = Store(self.root, create=False)
        self.base = build_backbone(backbone)
        self.cache = EmbeddingCache(cache_dir, self.base)
        self.models = self.root / "models"
        self.work = self.models / "training"
        self._embedded: set[int] = set()
        self._vectors: dict[int, np.ndarray] = {}  # image vectors for diversity strategies, computed once per image
        self._ranked_for: tuple | None = None  # (model, strategy, labels) the queue was last ranked for
        self._seen_upto = 0
        self.unreadable: set[int] = set()  # images whose stored file could not be read: left out from then on
        self._status: dict[str, Any] = {"state": "idle"}
        self._last_write = 0.0
        self.resumed_from: int | None = None  # the step an interrupted round was resumed at (None: started clean)

    # -- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        for rnd in self.store.rounds():
            # left by a crash or kill -9 (to be redone), or by a remote trainer when rounds are trained here now
            if rnd.status == "running" and (self.train_rounds or rnd.owner == LOCAL_TRAINER):
                round_cancelled(self.store, rnd.id, "trainer stopped before the round finished")
        self.status(state="idle", force=True)
        while not self.stopping():
            try:
                self.embed_new()
                latest = self.store.latest_model()
                if latest is not None and not checkpoint_problem(latest.checkpoint_path):
                    self.rescore(latest.version)
                if self.due():
                    self.train_round()
                self.status(state="idle", round=None, message=self._status.get("message", ""))
            except Stopped:
                break
            except Exception as exc:  # noqa: BLE001 - never die silently: say it, log it, try again later
                self.status(state="error", message=f"{type(exc).__name__}: {exc}"[:300], force=True)
                self.store.log_event("trainer", "trainer_error", {"traceback": traceback.format_exc()})
                self.stop.wait(30)
            self.stop.wait(self.poll_s)
        self.status(state="stopped", force=True)

    def stopping(self) -> bool:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            self.stop.set()  # the server is gone: nobody will stop us otherwise
        return self.stop.is_set()

    def check(self) -> None:
        if self.stopping():
            raise Stopped()

    def status(self, force: bool = False, **update: Any) -> None:
        """Update the status file, at most once a second unless forced (state changes are)."""
        if update.get("state") != self._status.get("state"):
            force = True
        self._status.update(update)
        if force or time.monotonic() - self._last_write >= 1.0:
            self._last_write = time.monotonic()
            write_status(self.root, **self._status)

    # -- embeddings --------------------------------------------------------------------------------------------

    def pixels(self, image_id: int) -> np.ndarray | None:
        """The image's pixels, or None when its stored file cannot be read (damaged since the import): said once in
        the event log, then left out of embedding, rounds and re-scoring, so that one bad file among thousands does
        not stop every round (the Annotate tab skips it too)."""
        if image_id in self.unreadable:
            return None
        try:
            return workspace_pixels(self.store, image_id)
        except (OSError, ValueError, EOFError) as exc:  # as Studio.task: the image's data, not the server, is at fault
            self.unreadable.add(image_id)
            self.store.log_event("trainer", "image_unreadable", {"error": f"{type(exc).__name__}: {exc}"[:300]},
                                 image_id)
            return None

    def embed_new(self) -> None:
        """Encode every image the cache lacks (new imports included), pool images first."""
        new_ids = self.store.image_ids_after(self._seen_upto)
        if not new_ids:
            return
        total = self.store.counts().images
        missing = []
        for image_id in new_ids:
            pixels = self.pixels(image_id)
            if pixels is None:
                continue
            if self.cache.path_for(content_hash(pixels)).exists():
                self._embedded.add(image_id)
            else:
                missing.append(image_id)
        self.cache.expect(len(missing))  # one image at a time below, but OpenVINO's encoder for many
        started = time.monotonic()
        for done, image_id in enumerate(missing):
            self.check()
            self.status(state="embedding", done=done, total=len(missing),
                        eta_s=_eta(started, done, len(missing)),
                        embedded={"done": len(self._embedded), "total": total})
            try:
                if (pixels := self.pixels(image_id)) is not None:
                    self.cache.get(pixels)
                    self._embedded.add(image_id)
            except Exception as exc:  # noqa: BLE001 - one image the encoder fails on must not stop the others
                self.store.log_event("trainer", "embed_failed", {"error": f"{type(exc).__name__}: {exc}"}, image_id)
        self._seen_upto = max(new_ids)
        self.status(embedded={"done": len(self._embedded), "total": total})

    def items(self, ids: list[int]) -> list[Item]:
        return items(self.cache, self.pixels, ids)

    # -- rounds ------------------------------------------------------------------------------------------------

    def labels(self) -> int:
        """Labeled pool images: a mask, a no-finding mark or an image-level tag."""
        return self.store.label_count("pool")

    def due(self) -> bool:
        if not self.train_rounds:
            self.status(message="rounds are trained by remote trainers (adasam trainer --server)")
            return False
        reason = round_due(self.store, self.round_every)
        self.status(message=reason or "")
        return reason is None

    def train_round(self) -> None:
        store = self.store
        labels = round_started(store)
        round_id = store.start_round(labels)
        self.status(state="training", round=round_id, step=0, total=self.steps, eta_s=None, message="", force=True)

        def end_round(verdict: Verdict) -> None:
            """In the transaction that registers the model: a registered model always has its round ended (a kill
            between two transactions left a served model beside a "cancelled" round, trained again). The work
            folder stops being a round to resume first."""
            (self.work / "round.json").unlink(missing_ok=True)
            store.finish_round(round_id, "done", val_dice=verdict.val_dice, model_version=verdict.version,
                               note=verdict.note)
            round_finished(store, labels)

        try:
            verdict = self._train(round_id, end_round)
        except Stopped:
            round_cancelled(store, round_id, "server stopped during training; resumes on restart")
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is recorded; the last good model keeps serving
            error = f"{type(exc).__name__}: {exc}"
            store.finish_round(round_id, "failed", error=error[:500])
            store.log_event("trainer", "round_failed", {"round": round_id, "traceback": traceback.format_exc()})
            round_finished(store, labels)  # wait for new labels (or Retrain now) before retrying
            self.status(state="idle", message=f"round {round_id} failed: {error[:200]}", force=True)
            return
        if not verdict.published:
            self.status(message=f"round {round_id}: {verdict.note}", force=True)
            return
        self.status(message=f"round {round_id} published {verdict.version}", force=True)
        self.rescore(verdict.version)

    def _train(self, round_id: int, registering: Callable[[Verdict], None]) -> Verdict:
        """Train a round and register its model (validation decoding compiled, as in model.train.Trainer.run);
        `registering` runs in the transaction that registers it (publish_round)."""
        with compiled_decoding():
            return self._train_round(round_id, registering)

    def _train_round(self, round_id: int, registering: Callable[[Verdict], None]) -> Verdict:
        plan = plan_round(self.store, round_id)
        data, sizes = training_data(plan, self.cache, self.pixels)
        self.check()
        previous = serving_model(self.store)
        trainer = round_trainer(data, self.spec, self.base, round_id, self.steps, self.work,
                                init=previous.checkpoint_path if previous else None, image_view=plan.image_view)
        self._resume(trainer)
        started, first_step = time.monotonic(), trainer.step

        def progress(step: int, total: int) -> None:
            self.status(step=step, total=total, eta_s=_eta(started, step - first_step, total - first_step))
            self.check()

        if plan.image_view and trainer.image_view_report is None:
            self.status(message="training the image view first (then the steps)")
        best = trainer.run(progress=progress, stop_check=self.check)
        metrics = {**sizes, "steps": trainer.config.steps, "round": round_id, "best_step": best.get("step"),
                   "train_seconds": round(time.monotonic() - started, 1), "image_view": best.get("image_view"),
                   "view_self_training": best.get("view_self_training"),
                   "image_view_check": best.get("image_view_check")}
        verdict = publish_round(self.store, self.base, round_id, self.work / "model.pt", data.val, metrics,
                                check=self.check, registering=registering)
        shutil.rmtree(self.work, ignore_errors=True)
        return verdict

    def _resume(self, trainer: Trainer) -> None:
        """Continue an interrupted round's steps when it trained the same kind of model; else start clean."""
        marker = self.work / "round.json"
        wanted = {"model": asdict(trainer.model.config), "steps": trainer.config.steps, "from": self._from_version()}
        if (self.work / "last.pt").exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
            trainer.load_resume_state(self.work / "last.pt", same_data=False)  # on the labels there are now
            self.resumed_from = trainer.step
            self.status(message=f"resumed an interrupted round at step {trainer.step}")
            return
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        marker.write_text(json.dumps(wanted))

    def _from_version(self) -> str | None:
        latest = self.store.latest_model()
        return None if latest is None else latest.version

    # -- re-scoring the pool -----------------------------------------------------------------------------------

    def strategy(self) -> Strategy:
        """The workspace's active-learning strategy (`adasam serve --strategy`; else DEFAULT_STRATEGY)."""
        return get_strategy(self.store.get_setting(QUEUE_STRATEGY) or DEFAULT_STRATEGY)

    def unscored_ids(self, version: str) -> list[int]:
        """The unlabeled pool images `version` still has to score for the workspace's strategy."""
        return self.store.unscored_ids(version, with_masks=self.strategy().reads_masks)

    def rescore(self, version: str, ids: list[int] | None = None, rank: bool = True) -> None:
        """Score every unlabeled pool image `version` has not scored yet for the workspace's strategy, or `ids` (a
        torchrun rank's share: `adasam score`), in chunks, each recorded as it is done, so a stopped trainer resumes
        where it was; then, with `rank`, let the strategy order the queue. The decoder runs only for a strategy
        that reads the mask's uncertainty; switching to one later scores the masks then."""
        store = self.store
        strategy = self.strategy()  # read once: a switch meanwhile is picked up by the next call
        if ids is None:
            ids = store.unscored_ids(version, with_masks=strategy.reads_masks)
        if ids:
            model, _ = load_checkpoint(store.model(version).checkpoint_path, backbone_view(self.base))
            predictor = Predictor(model)
            decoding = compiled_decoding if strategy.reads_masks else contextlib.nullcontext  # the decoder: masks
            score = _scored_with_masks if strategy.reads_masks else _scored_by_classifier
            started = time.monotonic()
            for start in range(0, len(ids), SCORE_CHUNK):
                self.check()
                self.status(state="scoring", model=version, done=start, total=len(ids),
                            eta_s=_eta(started, start, len(ids)))
                chunk = self.items(ids[start:start + SCORE_CHUNK])  # unreadable images left out
                if not chunk:
                    continue
                with decoding():
                    scores = score(predictor, chunk)
                store.record_predictions(version, scores)
                self._ranked_for = None  # recording copied raw figures into the queue's order: rank again
            self.status(state="idle", message=f"{version} scored {len(ids)} pool images", force=True)
        if rank:
            self.rank_queue(version, strategy)

    def rank_queue(self, version: str, strategy: Strategy | None = None) -> None:
        """Order the queue by `strategy` (default: the workspace's, QUEUE_STRATEGY) over `version`'s predictions;
        redone whenever the model, the strategy, the number of labels or the predictions changed since the last
        time."""
        store = self.store
        strategy = strategy or self.strategy()
        ranking = (version, strategy.name, self.labels())
        if self._ranked_for == ranking or store.queue_model() != version:
            return
        predictions = store.pool_predictions(version)
        candidates = [Candidate(p.image_id, p.probability, Uncertainty(
            _known(p.classifier_uncertainty), _known(p.segmentation_uncertainty), p.uncertainty))
            for p in predictions]
        vectors = labeled = None
        if strategy.uses_vectors:
            vectors = self.vectors([c.image_id for c in candidates])
            labeled = self.vectors(store.image_ids(split="pool", labeled=True))
        priorities = strategy.rank(candidates, vectors, labeled)
        if store.set_priorities(version, {c.image_id: float(p) for c, p in zip(candidates, priorities)}):
            self._ranked_for = ranking

    def rank_cold_start(self) -> None:
        """Before the first model: order the pool by k-center greedy on the image vectors (the coreset strategy needs
        no model), so the first masks spread over the data instead of following the seeded shuffle. Ranked again
        when the pool grows; the first model's predictions replace it. Measured worse than the shuffle on BUSI
        (benchmarks/README.md), so only `benchmarks/active_learning.py --cold-start coreset` calls it."""
        store = self.store
        if store.queue_model() is not None:
            return
        ids = [i for i in store.image_ids(split="pool", labeled=False) if i in self._embedded]
        labeled = [i for i in store.image_ids(split="pool", labeled=True) if i in self._embedded]
        ranking = ("cold start", len(ids) + len(labeled))
        if not ids or self._ranked_for == ranking:
            return
        unknown = Uncertainty(0.0, 0.0, 0.0)
        priorities = get_strategy("coreset").rank([Candidate(i, None, unknown) for i in ids], self.vectors(ids),
                                  self.vectors(labeled) if labeled else None)
        if store.set_priorities(None, {i: float(p) for i, p in zip(ids, priorities)}):
            self._ranked_for = ranking

    def vectors(self, ids: list[int]) -> np.ndarray:
        """Image vectors (model.strategies.vectors) of `ids`, N x C, from the embedding cache."""
        missing = [i for i in ids if i not in self._vectors]
        for start in range(0, len(missing), SCORE_CHUNK):
            self.check()
            for item in self.items(missing[start:start + SCORE_CHUNK]):
                self._vectors[int(item.id)] = image_vector(item.embedding, item.geometry)
        return np.stack([self._vectors[i] for i in ids]) if ids else np.zeros((0, self.base.embedding_shape[0]))


def _scored_with_masks(predictor: Predictor, chunk: list[Item]) -> list[PredictionRecord]:
    predictions = predictor.predict_batch(*batch_inputs(chunk))
    return [PredictionRecord(int(item.id), p.uncertainty.combined, p.probability, tuple(map(float, p.box)),
                             classifier_uncertainty=p.uncertainty.classifier,
                             segmentation_uncertainty=p.uncertainty.segmentation)
            for item, p in zip(chunk, predictions)]


def _scored_by_classifier(predictor: Predictor, chunk: list[Item]) -> list[PredictionRecord]:
    """No decoder: the segmentation part stays unknown (NULL), and the combined figure counts the classifier's."""
    presences = predictor.presence_batch(*batch_inputs(chunk))
    return [PredictionRecord(int(item.id), combined_uncertainty(p.probability, p.classifier_uncertainty, 0.0),
                             p.probability, tuple(map(float, p.box)), classifier_uncertainty=p.classifier_uncertainty)
            for item, p in zip(chunk, presences)]


def _known(value: float | None) -> float:
    """A part of the uncertainty a prediction does not have (recorded before the parts were stored, or scored by the
    classifier alone for a strategy that does not read it): rank it as certain."""
    return 0.0 if value is None else value


def workspace_pixels(store: Store, image_id: int) -> np.ndarray:
    """A workspace image's pixels as the embedding cache is keyed by: float32, as `adasam train` reads image files."""
    return store.load_image(image_id).astype(np.float32)


def _eta(started: float, done: int, total: int) -> float | None:
    if done <= 0:
        return None
    return (time.monotonic() - started) / done * (total - done)


def trainer_threads() -> int:
    """Threads the trainer process computes with: every core this process may use. The trainer runs at nice 5, so
    the server, whose requests a person waits on, still gets a core when it asks for one: on 2 cores, beside a
    2-thread trainer the Annotate tab's latency was that beside a 1-thread one (accept -> next 82 against 79 ms,
    click -> mask 191 against 188 ms, median), and training steps run 1.8x faster while the server is idle
    (benchmarks/README.md, twentieth session)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_trainer(workspace: str | Path, backbone: str, cache_dir: str | Path, round_every: int, steps: int,
                parent_pid: int | None = None, train_rounds: bool = True) -> int:
    """Entry point of `adasam trainer`: one trainer per workspace (a lock file), stopped by SIGTERM/SIGINT."""
    lock_path = Path(workspace) / "trainer" / "lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lock = open(lock_path, "w")
    said = False
    while True:  # another trainer (e.g. a server still shutting down) holds the workspace: wait for it
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not said:
                print(f"another trainer is running on {workspace}; waiting for it to stop", flush=True)
                said = True
            if stop.wait(1.0) or (parent_pid is not None and os.getppid() != parent_pid):
                return 0
    torch.set_num_threads(trainer_threads())
    os.nice(5)
    trainer = BackgroundTrainer(workspace, backbone, cache_dir, round_every, steps, parent_pid,
                                train_rounds=train_rounds)
    trainer.stop = stop
    trainer.run()
    return 0
