"""A training round's parts that do not depend on where it trains, shared by the workspace's own trainer
(app/trainer.py) and a trainer on another machine (app/remote_trainer.py, through app/trainer_api.py):

- `round_due`: whether the labels (or "Retrain now") call for a round;
- `RoundPlan` / `plan_round`: what a round trains on, read from the store as ids and masks (sent as JSON to a
  remote trainer), and `training_data`, which turns a plan into embeddings on whichever machine trains;
- `round_trainer`: the model and `Trainer` a round runs, warm-started from the serving model;
- `publish_round`: the server's check before a round's model may serve (validation Dice recomputed on its own
  validation images, against the serving model's), then registering it. Whoever trained it, this runs on the
  server, so a remote trainer's own figures are never trusted.
"""
from __future__ import annotations

import base64
import hashlib
import io
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from annotation import ModelInfo, Store, WorkspaceError
from app.status import IMAGE_VIEW, LABELS_AT_LAST_ROUND, RETRAIN_REQUESTED, TAG
from app.validation import fix_validation_set
from model.adasam import AdaSamConfig, checkpoint_problem, load_checkpoint, read_checkpoint
from model.backbones import Backbone, backbone_view
from model.cache import EmbeddingCache
from model.distributed import Ranks
from model.evaluate import Item, evaluate
from model.image_view import ImageViewTraining, image_input
from model.train import Trainer, TrainConfig, TrainingData, build_training_model, model_config

PUBLISH_TOLERANCE = 0.02  # a round is published unless its val Dice is more than this below the serving model's on
# the same images: two checkpoints of one BUSI run 50 steps apart differ by about 0.03 on 78 val images, so a
# smaller margin would hold back rounds for noise, a larger one let a real drop through
PUBLISH_Z = 1.645  # ... and unless the drop is within the noise of the per-image differences (one-sided 95%): on
# BUSI's 61 val lesions their standard error is 0.015-0.047, at or above the fixed tolerance. That wider margin needs
PUBLISH_MIN_PAIRS = 30  # this many images scored by both models (a few images' spread says little about noise)
PUBLISH_MAX_MARGIN = 0.05  # and stops here, so a mean drop this large is held back however noisy the images
FIRST_ROUND_LABELS = 5  # while no model serves, a round comes this early (when --round-every is larger): on BUSI a
# first round from 5 labels scored val Dice 0.58 in both seeds measured, no worse than one from 10 or 20 (0.40-0.55;
# 40: 0.63), and before it an annotator gets no proposal at all (benchmarks/first_round.py, benchmarks/README.md)
SCORE_VERSION = 2  # bump when how a round's val figure is computed changes (model.evaluate, round_score): figures
# stored by earlier versions then stop standing in for a new measurement in the publish check
UNLABELED_SAMPLE = 128  # unlabeled images per round (embeddings are held in memory: ~4 MB each for LiteMedSAM)
FRESH_IMAGE_VIEW = ImageViewTraining()  # a round that starts the image view: the full rule (it can predict nothing
# for its first ~1000 steps, so patience counts from step 1500)
WARM_IMAGE_VIEW = ImageViewTraining(min_steps=0, patience=2)  # a round whose start model has an image view goes on
# training that view on the new masks until its val Dice stops improving for two evaluations (200 steps)

Pixels = Callable[[int], np.ndarray | None]  # image id -> float32 pixels, as the embedding cache is keyed by; None:
# the image cannot be read (its file damaged since the import), and a round goes on without it


def round_due(store: Store, round_every: int) -> str | None:
    """None when a round should start now (`round_every` new labels, FIRST_ROUND_LABELS while no model serves, or
    "Retrain now"), else why not. New labels count from the last finished round, failed ones too: no retry loop."""
    needed = round_every if serving_model(store) is not None else min(round_every, FIRST_ROUND_LABELS)
    new = store.label_count("pool") - int(store.get_setting(LABELS_AT_LAST_ROUND, 0))
    if not (store.get_setting(RETRAIN_REQUESTED) or new >= needed):
        return f"next round after {needed - new} more labels (or Retrain now)"
    if not any(store.read_mask(image, mask).any() for image, mask in store.labeled(split="pool")):
        return "waiting for a first mask that shows the target before training"  # the trainer needs one
    return None


def round_started(store: Store) -> int:
    """Take back a "Retrain now" once a round starts; returns the label count the round is for."""
    if store.get_setting(RETRAIN_REQUESTED):
        store.set_setting(RETRAIN_REQUESTED, None, who="trainer")
    return store.label_count("pool")


def round_cancelled(store: Store, round_id: int, error: str, who: str = "trainer", owner: str | None = None) -> None:
    """End a round stopped part way (its trainer stopped) so that it is due again at once, whatever called for it:
    a "Retrain now" that `round_started` took back is asked again, in the same transaction."""
    with store.transaction():
        store.finish_round(round_id, "cancelled", error=error[:500], who=who, owner=owner)
        store.set_setting(RETRAIN_REQUESTED, time.time(), who=who)


def round_finished(store: Store, labels: int) -> None:
    """The next round waits for `round_every` labels beyond this one's (also after a failure: no retry loop)."""
    store.set_setting(LABELS_AT_LAST_ROUND, labels)


@dataclass
class RoundPlan:
    """What one round trains on: pool masks (no finding = empty), image-level tags, a sample of unlabeled images
    and the validation images with their masks, all by workspace image id."""

    round_id: int
    masks: dict[int, np.ndarray]
    tags: dict[int, bool]
    unlabeled: list[int]
    val_masks: dict[int, np.ndarray]
    init: str | None = None  # the serving model's version the round starts from (None: a fresh model)
    image_view: bool = False  # train the classifier's image view too (model.image_view; the workspace setting)

    def image_ids(self) -> list[int]:
        return sorted(set(self.masks) | set(self.tags) | set(self.unlabeled) | set(self.val_masks))

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round_id, "init": self.init, "image_view": self.image_view,
                "masks": {str(i): _mask_png(m) for i, m in self.masks.items()},
                "tags": {str(i): bool(p) for i, p in self.tags.items()}, "unlabeled": list(self.unlabeled),
                "val_masks": {str(i): _mask_png(m) for i, m in self.val_masks.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RoundPlan":
        return cls(int(data["round"]), {int(i): _png_mask(m) for i, m in data["masks"].items()},
                   {int(i): bool(p) for i, p in data["tags"].items()}, [int(i) for i in data["unlabeled"]],
                   {int(i): _png_mask(m) for i, m in data["val_masks"].items()}, data.get("init"),
                   bool(data.get("image_view", False)))


def plan_round(store: Store, round_id: int) -> RoundPlan:
    """Every pool mask, every tag, a sample of unlabeled images (seeded by the round), the fixed validation set."""
    val_ids = set(fix_validation_set(store))
    masks = {info.id: store.read_mask(info, mask) for info, mask in store.labeled(split="pool")
             if info.id not in val_ids}
    tags = {i: p for i, p in store.latest_tags(TAG, "pool").items() if i not in val_ids}
    tags.update({i: bool(m.any()) for i, m in masks.items()})
    unlabeled = store.image_ids(split="pool", state="unlabeled")
    rng = np.random.default_rng(round_id)
    sample = sorted(rng.choice(unlabeled, size=min(UNLABELED_SAMPLE, len(unlabeled)), replace=False).tolist()
                    ) if unlabeled else []
    serving = serving_model(store)
    return RoundPlan(round_id, masks, tags, sample, validation_masks(store), serving.version if serving else None,
                     bool(store.get_setting(IMAGE_VIEW, False)))


def validation_masks(store: Store) -> dict[int, np.ndarray]:
    """The fixed validation set (app/validation.py) with the masks rounds are scored against."""
    return {i: m for i in sorted(fix_validation_set(store)) if (m := store.load_mask(i)) is not None}


def serving_model(store: Store) -> ModelInfo | None:
    """The serving model if this version can load it (one made by an earlier version is neither a start nor a
    benchmark for a new round)."""
    latest = store.latest_model()
    return None if latest is None or checkpoint_problem(latest.checkpoint_path) else latest


def items(cache: EmbeddingCache, pixels: Pixels, ids: list[int], masks: dict[int, np.ndarray] | None = None,
          tags: dict[int, bool] | None = None) -> list[Item]:
    """Workspace images as model inputs: the cached embedding, and the image view's input (128 px, 64 kB: cheap
    enough to carry always, so a model with an image view can score and validate on any of them). Images `pixels`
    cannot read are left out."""
    masks, tags = masks or {}, tags or {}
    loaded = [(i, image) for i in ids if (image := pixels(i)) is not None]
    embedded = cache.get_many([image for _, image in loaded], progress=False)
    return [Item(str(i), emb, geo, masks.get(i), tags.get(i), image_input(image))
            for (i, image), (emb, geo) in zip(loaded, embedded)]


def training_data(plan: RoundPlan, cache: EmbeddingCache, pixels: Pixels) -> tuple[TrainingData, dict[str, int]]:
    """The plan's images as embeddings (from `cache`, encoding what it lacks), and the counts a round records."""
    masks, tags = plan.masks, plan.tags
    masked = items(cache, pixels, sorted(masks), masks, tags)
    tag_only = {int(i.id): i for i in items(cache, pixels, sorted(set(tags) - set(masks)), tags=tags)}
    unlabeled = items(cache, pixels, [i for i in plan.unlabeled if i not in tag_only]) + [
        tag_only[i] for i in plan.unlabeled if i in tag_only]
    by_id = {int(item.id): item for item in masked} | tag_only
    data = TrainingData(masked=masked, tagged=[by_id[i] for i in sorted(tags) if i in by_id], unlabeled=unlabeled,
                        val=items(cache, pixels, sorted(plan.val_masks), plan.val_masks))
    empty = sum(not item.mask.any() for item in masked)
    sizes = {"n_masks": len(masked) - empty, "n_empty": empty, "n_tagged": len(data.tagged),
             "n_unlabeled_sampled": len(unlabeled), "n_val": len(data.val)}
    return data, sizes


def round_trainer(data: TrainingData, spec: str, base: Backbone, round_id: int, steps: int, work: Path,
                  init: str | Path | None, ranks: Ranks = Ranks(), image_view: bool = False) -> Trainer:
    """The Trainer of a round: ADA-SAM warm-started from `init` (the serving model's checkpoint), seeded by the
    round, validated half-way and at the end, writing to `work`; with `image_view`, the classifier's image view
    trains first (from the serving model's view when it has one: WARM_IMAGE_VIEW)."""
    config = model_config("adasam", spec, data, image_view=image_view)
    model = build_training_model(config, round_id, backbone_view(base), init=init)
    warm_view = image_view and init is not None and read_checkpoint(init)[2].image_view
    train_config = TrainConfig(steps=steps, eval_every=max(1, steps // 2), seed=round_id,
                               image_view=WARM_IMAGE_VIEW if warm_view else FRESH_IMAGE_VIEW,
                               view_self_training=False)  # ~100 s a BUSI round for a gain val confirmed in
    # one round of two (benchmarks/README.md, "Fifteenth session"); the check that drops a weak view stays (30 s)
    return Trainer(model, train_config, data, work, log=lambda line: None, ranks=ranks)


ROUND_DECIDES = ("backbone", "cam_threshold", "presence_threshold", "image_view", "presence_head", "has_negatives")


def round_config_problem(config: AdaSamConfig) -> str | None:
    """Why a model's config cannot be a round's (None if it can). A model from a remote trainer may differ from the
    config `round_trainer` builds only where a round decides: its thresholds (calibrated on val: probabilities), its
    image view and presence head (kept or not), whether its data had target-free images, and the backbone's name
    (its weights' identity is checked apart). Any other value (300 cascade decodes, a huge adapter) would reach every
    annotator's proposals unchecked."""
    built = AdaSamConfig(method="adasam")  # as round_trainer's model_config, less what a round decides
    for f in fields(AdaSamConfig):
        value = getattr(config, f.name)
        if f.name not in ROUND_DECIDES and (type(value) is not type(getattr(built, f.name))
                                             or value != getattr(built, f.name)):
            return f"{f.name} is {value!r}, rounds train with {getattr(built, f.name)!r}"
    for name in ("cam_threshold", "presence_threshold"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            return f"{name} is {value!r}, not a probability"
    for name in ("image_view", "presence_head", "has_negatives"):
        if not isinstance(getattr(config, name), bool):
            return f"{name} is {getattr(config, name)!r}, not true or false"
    return None


@dataclass
class Verdict:
    """What became of a round's model."""

    version: str
    val_dice: float | None
    published: bool
    note: str | None
    metrics: dict[str, Any] = field(default_factory=dict)


def publish_round(store: Store, base: Backbone, round_id: int, checkpoint: Path, val: list[Item],
                  metrics: dict[str, Any], check: Callable[[], None] = lambda: None,
                  registering: Callable[["Verdict"], None] = lambda verdict: None) -> Verdict:
    """Score `checkpoint` on the validation items, compare with the serving model on the same items, copy it into
    WORKSPACE/models/ (complete and synced before the store points at it) and register it, published or not.
    `check` may stop the work before the comparison; `registering` runs in the transaction that registers the model
    (to end the round in it too) and may raise when the round may no longer have one (a remote trainer's token
    revoked while its upload was scored): then nothing is registered and the copy is removed."""
    serving = serving_model(store)
    metrics = dict(metrics)
    val_dice, published, note = None, True, None
    if val:
        summary = val_summary(base, checkpoint, val)
        metrics.update({k: _clean(summary.get(k)) for k in ("dice_lesion", "dice_all", "presence_auc", "n_lesion")})
        metrics["val_scores"] = summary.get("val_scores")
        metrics["val_digest"] = validation_digest(val, base)
        val_dice = round_score(summary)
        if serving is not None and val_dice is not None:
            check()
            published, note = publish_verdict(base, serving, metrics, val)
    version = f"r{round_id:04d}"
    models = Path(store.root) / "models"
    models.mkdir(exist_ok=True)
    path, tmp = models / f"{version}.pt", models / f".{version}.pt.tmp"
    if path.exists():  # a version's file is never replaced: the store may already point at it
        raise WorkspaceError(f"{path} exists already: round {round_id} has a model")
    shutil.copyfile(checkpoint, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    verdict = Verdict(version, val_dice, published, note, metrics)
    try:
        with store.transaction():
            store.register_model(version, path, metrics, round_id, published=published)
            registering(verdict)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return verdict


def val_summary(base: Backbone, checkpoint: str | Path, val: list[Item]) -> dict:
    """A model's figures on the validation images, as it would serve them (its own calibrated thresholds), with
    `val_scores`: each image's term of the round score (image id -> Dice), which the publish check pairs."""
    model, _ = load_checkpoint(checkpoint, backbone_view(base))
    summary, rows = evaluate(model.eval(), val, with_hd95=False)
    scored = [r for r in rows if r["lesion"]] or rows  # as round_score: lesion images, or all when none has one
    summary["val_scores"] = {str(r["id"]): _clean(r["dice"]) for r in scored}
    return summary


def publish_verdict(base: Backbone, serving: ModelInfo, new: dict, val: list[Item]) -> tuple[bool, str]:
    """Whether a round's model (its val figures `new`) may replace the serving one, and why: not if its val Dice is
    more than PUBLISH_TOLERANCE below the serving model's on the same images and, where both have per-image scores
    for at least PUBLISH_MIN_PAIRS images, the drop is also beyond PUBLISH_Z standard errors of the paired per-image
    differences (at most PUBLISH_MAX_MARGIN), so that noise does not hold rounds back. The serving model's figures
    from when it was published are used while the validation images and masks are unchanged since (same digest);
    else they are measured again now (the validation set may have grown, or a mask been corrected)."""
    old = serving.metrics
    if old.get("val_digest") != validation_digest(val, base):
        old = val_summary(base, serving.checkpoint_path, val)
    new_score, old_score = round_score(new), round_score(old)
    name = serving.version
    if old_score is None:
        return True, f"{name} has no validation score to compare with"
    compared = f"validation Dice {new_score:.3f} against {old_score:.3f} for {name} on the same {len(val)} images"
    margin, noise = publish_margin(new.get("val_scores"), old.get("val_scores"))
    if noise is not None:
        compared += f" (per-image difference: standard error {noise:.3f})"
    if new_score >= old_score - margin:
        return True, compared
    return False, f"not published, {name} keeps serving: {compared} (margin {margin:.3f})"


def publish_margin(new: dict | None, old: dict | None) -> tuple[float, float | None]:
    """(how far below the serving model's val Dice a round may fall and still publish, the standard error of the
    paired per-image differences it rests on, or None where there are too few pairs for one)."""
    noise = paired_standard_error(new, old)
    if noise is None:
        return PUBLISH_TOLERANCE, None
    return min(max(PUBLISH_TOLERANCE, PUBLISH_Z * noise), PUBLISH_MAX_MARGIN), noise


def paired_standard_error(new: dict | None, old: dict | None) -> float | None:
    """Standard error of the mean per-image Dice difference between two models scored on the same images; None
    when either lacks per-image scores or fewer than PUBLISH_MIN_PAIRS images pair up."""
    if not new or not old:
        return None
    diffs = [new[k] - old[k] for k in new.keys() & old.keys() if new[k] is not None and old[k] is not None]
    if len(diffs) < PUBLISH_MIN_PAIRS:
        return None
    return float(np.std(diffs, ddof=1) / math.sqrt(len(diffs)))


def validation_digest(val: list[Item], base: Backbone) -> str:
    """A fingerprint of what a model's val figure depends on besides the model: the validation image ids and masks,
    the backbone's weights and how a round is scored (SCORE_VERSION). Equal digests: the stored figure still holds."""
    digest = hashlib.sha256(f"{SCORE_VERSION};{base.identity};".encode())
    for item in sorted(val, key=lambda i: str(i.id)):
        mask = np.asarray(item.mask, bool)
        digest.update(f"{item.id}:{mask.shape};".encode())
        digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()[:32]


def round_score(summary: dict) -> float | None:
    """The figure a round is judged and plotted by: lesion Dice on val as served (presence-gated), or Dice over every
    val image when none has the target."""
    return _clean(summary["dice_lesion"] if summary.get("n_lesion") else summary["dice_all"])


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _mask_png(mask: np.ndarray) -> str:
    """A mask as base64 PNG (a JSON string): lossless, and small for the mostly empty masks segmentation has."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, bool)).save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def _png_mask(text: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
        return np.asarray(image.convert("1"), dtype=bool)
