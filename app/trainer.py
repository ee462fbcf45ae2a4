"""The background trainer: a separate process (`adasam trainer WORKSPACE`, started by `adasam serve`) so the UI
never waits on it.

Its loop: embed images that have no cached embedding yet; finish re-scoring the pool for the newest model; start a
training round once `round_every` new labels have come in or someone pressed "Retrain now". A round trains ADA-SAM
semi-supervised, warm-started from the last model, on every mask, tag and (a sample of the) unlabeled images,
evaluates on the fixed validation set, and publishes a new version atomically (checkpoint renamed into
WORKSPACE/models/, then registered in the store) unless its validation Dice is more than PUBLISH_TOLERANCE below the
serving model's on the same images: then it is registered unpublished, the old model keeps serving and the round's
note (on the dashboard) says why. The server notices the new version between requests; the trainer
re-scores the pool's uncertainty in chunks so the queue follows it. A failed round is recorded with its error and
the last good model keeps serving. SIGTERM (or the server disappearing) stops it between steps: the round is marked
cancelled, its progress stays in WORKSPACE/models/training/ and the next start resumes it.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import signal
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from annotation import PredictionRecord
from annotation import ModelInfo, Store
from app.status import LABELS_AT_LAST_ROUND, QUEUE_STRATEGY, RETRAIN_REQUESTED, TAG, write_status
from app.validation import fix_validation_set
from model.adasam import AdaSamConfig, checkpoint_problem, load_checkpoint
from model.backbones import backbone_view, build_backbone
from model.cache import EmbeddingCache, content_hash
from model.evaluate import Item, evaluate
from model.inference import Predictor
from model.strategies import DEFAULT_STRATEGY, Candidate, get_strategy
from model.strategies.vectors import image_vector
from model.train import Trainer, TrainConfig, TrainingData, build_training_model, model_config
from model.uncertainty import Uncertainty

PUBLISH_TOLERANCE = 0.02  # a round is published unless its val Dice is more than this below the serving model's on
# the same images: two checkpoints of one BUSI run 50 steps apart differ by about 0.03 on 78 val images, so a
# smaller margin would hold back rounds for noise, a larger one let a real drop through
UNLABELED_SAMPLE = 128  # unlabeled images per round (embeddings are held in memory: ~4 MB each for LiteMedSAM)
SCORE_CHUNK = 16  # small enough that a stop request is answered within seconds


class Stopped(Exception):
    """Raised inside a round when the trainer is asked to stop."""


class BackgroundTrainer:
    def __init__(self, workspace: str | Path, backbone: str, cache_dir: str | Path, round_every: int = 10,
                 steps: int = 60, parent_pid: int | None = None, poll_s: float = 1.0) -> None:
        self.root = Path(workspace)
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
        self._status: dict[str, Any] = {"state": "idle"}
        self._last_write = 0.0
        self.resumed_from: int | None = None  # the step an interrupted round was resumed at (None: started clean)

    # -- the loop ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        for rnd in self.store.rounds():
            if rnd.status == "running":  # left by a crash or kill -9: it will be redone
                self.store.finish_round(rnd.id, "cancelled", error="trainer stopped before the round finished")
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

    def pixels(self, image_id: int) -> np.ndarray:
        return workspace_pixels(self.store, image_id)

    def embed_new(self) -> None:
        """Encode every image the cache lacks (new imports included), pool images first."""
        new_ids = self.store.image_ids_after(self._seen_upto)
        if not new_ids:
            return
        total = self.store.counts().images
        missing = []
        for image_id in new_ids:
            if self.cache.path_for(content_hash(self.pixels(image_id))).exists():
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
                self.cache.get(self.pixels(image_id))
                self._embedded.add(image_id)
            except Exception as exc:  # noqa: BLE001 - one unreadable image must not stop the others
                self.store.log_event("trainer", "embed_failed", {"error": f"{type(exc).__name__}: {exc}"}, image_id)
        self._seen_upto = max(new_ids)
        self.status(embedded={"done": len(self._embedded), "total": total})

    def items(self, ids: list[int], masks: dict[int, np.ndarray] | None = None,
              tags: dict[int, bool] | None = None) -> list[Item]:
        masks, tags = masks or {}, tags or {}
        embedded = self.cache.get_many([self.pixels(i) for i in ids], progress=False)
        return [Item(str(i), emb, geo, masks.get(i), tags.get(i)) for i, (emb, geo) in zip(ids, embedded)]

    # -- rounds ------------------------------------------------------------------------------------------------

    def labels(self) -> int:
        """Labeled pool images: a mask, a no-finding mark or an image-level tag."""
        return self.store.label_count("pool")

    def due(self) -> bool:
        requested = self.store.get_setting(RETRAIN_REQUESTED)
        if requested:
            self.store.set_setting(RETRAIN_REQUESTED, None, who="trainer")
        new = self.labels() - int(self.store.get_setting(LABELS_AT_LAST_ROUND, 0))
        if not (requested or new >= self.round_every):
            self.status(message=f"next round after {self.round_every - new} more labels (or Retrain now)")
            return False
        if not self.store.image_ids(split="pool", state="masked"):
            self.status(message="waiting for a first mask that shows the target before training")
            return False
        return True

    def training_data(self, round_id: int, val_ids: set[int]) -> tuple[TrainingData, dict[str, int]]:
        """Every pool mask (no-finding = empty mask), every tag, a sample of unlabeled images, the validation set."""
        store = self.store
        masks: dict[int, np.ndarray] = {}
        for info, mask in store.labeled(split="pool"):
            if info.id not in val_ids:
                masks[info.id] = store.read_mask(info, mask)
        tags = {i: p for i, p in store.latest_tags(TAG, "pool").items() if i not in val_ids}
        tags.update({i: bool(m.any()) for i, m in masks.items()})
        unlabeled = store.image_ids(split="pool", state="unlabeled")
        rng = np.random.default_rng(round_id)
        sample = sorted(rng.choice(unlabeled, size=min(UNLABELED_SAMPLE, len(unlabeled)), replace=False).tolist()
                        ) if unlabeled else []
        val_masks = {i: m for i in val_ids if (m := store.load_mask(i)) is not None}
        masked_items = self.items(sorted(masks), masks, tags)
        tag_only = {int(i.id): i for i in self.items(sorted(set(tags) - set(masks)), tags=tags)}
        unlabeled_items = self.items([i for i in sample if i not in tag_only]) + [tag_only[i] for i in sample
                                                                                  if i in tag_only]
        by_id = {int(item.id): item for item in masked_items} | tag_only
        data = TrainingData(masked=masked_items, tagged=[by_id[i] for i in sorted(tags)],
                            unlabeled=unlabeled_items, val=self.items(sorted(val_masks), val_masks))
        empty = sum(not m.any() for m in masks.values())
        sizes = {"n_masks": len(masks) - empty, "n_empty": empty, "n_tagged": len(tags),
                 "n_unlabeled_sampled": len(unlabeled_items), "n_val": len(data.val)}
        return data, sizes

    def train_round(self) -> None:
        store = self.store
        labels = self.labels()
        round_id = store.start_round(labels)
        self.status(state="training", round=round_id, step=0, total=self.steps, eta_s=None, message="", force=True)
        try:
            version, val_dice, published, note = self._train(round_id)
        except Stopped:
            store.finish_round(round_id, "cancelled", error="server stopped during training; resumes on restart")
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is recorded; the last good model keeps serving
            error = f"{type(exc).__name__}: {exc}"
            store.finish_round(round_id, "failed", error=error[:500])
            store.log_event("trainer", "round_failed", {"round": round_id, "traceback": traceback.format_exc()})
            store.set_setting(LABELS_AT_LAST_ROUND, labels)  # wait for new labels (or Retrain now) before retrying
            self.status(state="idle", message=f"round {round_id} failed: {error[:200]}", force=True)
            return
        store.finish_round(round_id, "done", val_dice=val_dice, model_version=version, note=note)
        store.set_setting(LABELS_AT_LAST_ROUND, labels)
        if not published:
            self.status(message=f"round {round_id}: {note}", force=True)
            return
        self.status(message=f"round {round_id} published {version}", force=True)
        self.rescore(version)

    def _train(self, round_id: int) -> tuple[str, float | None, bool, str | None]:
        """Train a round and register its model -> (version, val Dice, published, note)."""
        store = self.store
        data, sizes = self.training_data(round_id, set(fix_validation_set(store)))
        self.check()
        config = model_config("adasam", self.spec, data)
        previous = store.latest_model()
        if previous is not None and checkpoint_problem(previous.checkpoint_path):
            previous = None  # made by an earlier version: start afresh, and nothing usable to be compared with
        model = build_training_model(config, round_id, backbone_view(self.base),
                                     init=previous.checkpoint_path if previous else None)
        train_config = TrainConfig(steps=self.steps, eval_every=max(1, self.steps // 2), seed=round_id)
        trainer = Trainer(model, train_config, data, self.work, log=lambda line: None)
        self._resume(trainer, config, train_config)
        started, first_step = time.monotonic(), trainer.step

        def progress(step: int, total: int) -> None:
            self.status(step=step, total=total, eta_s=_eta(started, step - first_step, total - first_step))
            self.check()

        best = trainer.run(progress=progress)
        metrics: dict[str, Any] = {**sizes, "steps": self.steps, "round": round_id, "best_step": best.get("step"),
                                   "train_seconds": round(time.monotonic() - started, 1)}
        val_dice, published, note = None, True, None
        if data.val:
            summary = self.val_summary(self.work / "model.pt", data.val)
            metrics.update({k: _clean(summary.get(k)) for k in ("dice_lesion", "dice_all", "presence_auc",
                                                                 "n_lesion")})
            val_dice = round_score(summary)
            if previous is not None and val_dice is not None:
                self.check()
                published, note = self.publish_verdict(previous, val_dice, data.val)
        version = f"r{round_id:04d}"
        path = self.models / f"{version}.pt"
        tmp = self.models / f".{version}.pt.tmp"
        shutil.copyfile(self.work / "model.pt", tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # the file is complete before the store points at it
        store.register_model(version, path, metrics, round_id, published=published)
        shutil.rmtree(self.work, ignore_errors=True)
        return version, val_dice, published, note

    def val_summary(self, checkpoint: str | Path, items: list[Item]) -> dict:
        """A model's figures on the validation images, as it would serve them (its own calibrated thresholds)."""
        model, _ = load_checkpoint(checkpoint, backbone_view(self.base))
        summary, _ = evaluate(model.eval(), items, with_hd95=False)
        return summary

    def publish_verdict(self, serving: ModelInfo, new_score: float, val: list[Item]) -> tuple[bool, str]:
        """Whether a round's model may replace the serving one, and why: not if its val Dice is more than
        PUBLISH_TOLERANCE below the serving model's, measured now on the same images (the validation set may have
        grown since the serving model was scored)."""
        old_score = round_score(self.val_summary(serving.checkpoint_path, val))
        name = serving.version
        if old_score is None:
            return True, f"{name} has no validation score to compare with"
        compared = f"validation Dice {new_score:.3f} against {old_score:.3f} for {name} on the same {len(val)} images"
        if new_score >= old_score - PUBLISH_TOLERANCE:
            return True, compared
        return False, f"not published, {name} keeps serving: {compared} (tolerance {PUBLISH_TOLERANCE})"

    def _resume(self, trainer: Trainer, config: AdaSamConfig, train_config: TrainConfig) -> None:
        """Continue an interrupted round's steps when it trained the same kind of model; else start clean."""
        marker = self.work / "round.json"
        wanted = {"model": asdict(config), "steps": train_config.steps, "from": self._from_version()}
        if (self.work / "last.pt").exists() and marker.exists() and json.loads(marker.read_text()) == wanted:
            trainer.load_resume_state(self.work / "last.pt")
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

    def rescore(self, version: str, ids: list[int] | None = None, rank: bool = True) -> None:
        """Score every unlabeled pool image `version` has not scored yet, or `ids` (a torchrun rank's share: `adasam
        score`), in chunks, each recorded as it is done, so a stopped trainer resumes where it was; then, with
        `rank`, let the workspace's strategy order the queue."""
        store = self.store
        ids = store.unscored_ids(version) if ids is None else ids
        if ids:
            model, _ = load_checkpoint(store.model(version).checkpoint_path, backbone_view(self.base))
            predictor = Predictor(model)
            started = time.monotonic()
            for start in range(0, len(ids), SCORE_CHUNK):
                self.check()
                self.status(state="scoring", model=version, done=start, total=len(ids),
                            eta_s=_eta(started, start, len(ids)))
                chunk = self.items(ids[start:start + SCORE_CHUNK])
                predictions = predictor.predict_batch(torch.stack([i.embedding for i in chunk]),
                                                      [i.geometry for i in chunk])
                store.record_predictions(version, [
                    PredictionRecord(int(item.id), p.uncertainty.combined, p.probability, tuple(map(float, p.box)),
                                     classifier_uncertainty=p.uncertainty.classifier,
                                     segmentation_uncertainty=p.uncertainty.segmentation)
                    for item, p in zip(chunk, predictions)])
            self.status(state="idle", message=f"{version} scored {len(ids)} pool images", force=True)
        if rank:
            self.rank_queue(version)

    def rank_queue(self, version: str) -> None:
        """Order the queue by the workspace's strategy (QUEUE_STRATEGY, default combined) over `version`'s
        predictions; redone whenever the model, the strategy or the number of labels changed since the last time."""
        store = self.store
        name = store.get_setting(QUEUE_STRATEGY) or DEFAULT_STRATEGY
        ranking = (version, name, self.labels())
        if self._ranked_for == ranking or store.queue_model() != version:
            return
        strategy = get_strategy(name)
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

    def vectors(self, ids: list[int]) -> np.ndarray:
        """Image vectors (model.strategies.vectors) of `ids`, N x C, from the embedding cache."""
        missing = [i for i in ids if i not in self._vectors]
        for start in range(0, len(missing), SCORE_CHUNK):
            self.check()
            for item in self.items(missing[start:start + SCORE_CHUNK]):
                self._vectors[int(item.id)] = image_vector(item.embedding, item.geometry)
        return np.stack([self._vectors[i] for i in ids]) if ids else np.zeros((0, self.base.embedding_shape[0]))


def _known(value: float | None) -> float:
    """A part of the uncertainty a prediction recorded before the parts were stored: rank it as certain."""
    return 0.0 if value is None else value


def round_score(summary: dict) -> float | None:
    """The figure a round is judged and plotted by: lesion Dice on val as served (presence-gated), or Dice over every
    val image when none has the target."""
    return _clean(summary["dice_lesion"] if summary.get("n_lesion") else summary["dice_all"])


def workspace_pixels(store: Store, image_id: int) -> np.ndarray:
    """A workspace image's pixels as the embedding cache is keyed by: float32, as `adasam train` reads image files."""
    return store.load_image(image_id).astype(np.float32)


def _eta(started: float, done: int, total: int) -> float | None:
    if done <= 0:
        return None
    return (time.monotonic() - started) / done * (total - done)


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def run_trainer(workspace: str | Path, backbone: str, cache_dir: str | Path, round_every: int, steps: int,
                parent_pid: int | None = None) -> int:
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
    cores = os.cpu_count() or 2
    torch.set_num_threads(max(1, cores - 1))  # leave a core to the server, whose requests a person waits on
    os.nice(5)
    trainer = BackgroundTrainer(workspace, backbone, cache_dir, round_every, steps, parent_pid)
    trainer.stop = stop
    trainer.run()
    return 0
