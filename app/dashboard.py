"""What the Dashboard tab shows, as plain data: rounds and the val Dice curve, how many more masks the target
needs, labels and annotators, effort saved, trainer and queue status. Reads the workspace through annotation's
named functions; the Gradio layout draws it (app.ui)."""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from annotation import Store
from app.model_slot import ModelSlot
from app.rounds import FIRST_ROUND_LABELS, paired_standard_error, serving_model
from app.status import (DEFAULT_TARGET_DICE, IMAGE_VIEW, QUEUE_STRATEGY, TARGET_DICE, VALIDATION_IDS,
                        WORKSPACE_NOTE, read_remote_status, read_status)
from app.validation import validation_line
from model.learning_curve import MIN_POINTS, project
from model.strategies import DEFAULT_STRATEGY, Strategy, get_strategy, random_order


def workspace_strategy(store: Store) -> Strategy:
    """The workspace's active-learning strategy (`adasam serve --strategy`; else DEFAULT_STRATEGY)."""
    return get_strategy(store.get_setting(QUEUE_STRATEGY) or DEFAULT_STRATEGY)


def strategy_line(store: Store) -> str:
    """The workspace's active-learning strategy, as the dashboard names it."""
    strategy = workspace_strategy(store)
    return f"{strategy.name} ({strategy.summary})"

def order_line(store: Store) -> str:
    """What orders the queue right now."""
    model = store.queue_model()
    if model:
        return f"{strategy_line(store)}, model {model}"
    if workspace_strategy(store) is random_order.STRATEGY:
        return "seeded random order"
    return f"seeded random order until the first model, then {strategy_line(store)}"

def dashboard(store: Store, slot: ModelSlot, round_every: int, local_trainer: bool = True) -> dict[str, Any]:
    """Everything the dashboard tab shows, as plain data (`local_trainer`: False under `adasam serve --no-trainer`)."""
    counts = store.counts()
    rounds = []
    for r in store.rounds():
        model = store.model(r.model_version) if r.model_version else None
        metrics = model.metrics if model else {}
        rounds.append({"round": r.id, "status": r.status, "masks": metrics.get("n_masks"),
                       "labels": r.labels_used, "val_dice": _num(r.val_dice),
                       "presence_auc": _num(metrics.get("presence_auc")), "model": r.model_version or "",
                       "published": bool(model and model.published),
                       "started": r.started_at[:19].replace("T", " "), "trained_by": r.owner,
                       "error": r.error or "", "note": r.note or ""})
    annotators = store.annotator_counts()
    reviews = store.review_dice()
    pool = store.split_states("pool")
    tagged = store.tagged_count("pool")
    status = read_status(store.root)
    pool_unlabeled = pool.get("unlabeled", 0)
    scored = store.ranked_count()
    val_ids = store.get_setting(VALIDATION_IDS)
    return {
        "rounds": rounds,
        "labels": {"masks": pool.get("masked", 0), "no_finding": pool.get("no_finding", 0),
                   "tagged": tagged, "unlabeled": pool.get("unlabeled", 0), "images": counts.images,
                   "pool": sum(pool.values()), "other_splits": counts.images - sum(pool.values())},
        "annotators": annotators,
        "effort": {"reviews": len(reviews), "mean_dice": _num(float(np.mean(reviews)) if reviews else None),
                   "unchanged": sum(1 for d in reviews if d is not None and d >= 0.999)},
        "training": {"status": status, "line": trainer_line(status, read_remote_status(store.root), local_trainer),
                     "round_every": round_every, "latest_round": rounds[-1] if rounds else None,
                     "image_view": bool(store.get_setting(IMAGE_VIEW, False)),
                     "first_round": FIRST_ROUND_LABELS if (round_every > FIRST_ROUND_LABELS
                                                           and serving_model(store) is None) else None},
        "projection": projection(store, rounds),
        "queue": {"left": pool_unlabeled, "scored_by_model": scored, "leased": counts.leased,
                  "strategy": strategy_line(store), "model": store.queue_model(),
                  "ordered_by": order_line(store)},
        "validation": {"images": None if val_ids is None else len(val_ids),
                       "source": validation_line(store)},
        "model": {"serving": slot.version, "note": slot.note()},
        "conflicts": [{"image_id": m.image_id, "name": store.image(m.image_id).name, "version": m.version,
                       "annotator": m.annotator, "over_version": m.conflict_with} for m in store.conflicts()],
        "workspace_note": store.get_setting(WORKSPACE_NOTE, ""),
    }


def set_target_dice(store: Store, value: float | None, annotator: str) -> float:
    """The val Dice the project lead aims for (the dashboard projects the masks needed to reach it)."""
    if value is None or not (0 < float(value) < 1):
        raise ValueError("the target Dice must be between 0 and 1")
    store.set_setting(TARGET_DICE, float(value), who=annotator)
    return float(value)

def target_dice(store: Store) -> float:
    """The val Dice the project lead aims for (the Dashboard tab sets it)."""
    return float(store.get_setting(TARGET_DICE, DEFAULT_TARGET_DICE))


def projection(store: Store, rounds: list[dict]) -> dict[str, Any]:
    """Masks needed to reach the target val Dice, from a learning curve fitted to the published rounds."""
    target = target_dice(store)
    published = [r for r in rounds if r["published"] and r["masks"] and r["val_dice"] is not None]
    points = [(r["masks"], r["val_dice"]) for r in published]
    found = project([m for m, _ in points], [d for _, d in points], target, noise=point_noise(store, published))
    if found is None:
        counts = len({m for m, _ in points})
        why = (f"needs {MIN_POINTS} published rounds with different mask counts ({counts} so far)"
               if counts < MIN_POINTS else f"no learning curve fits the {len(points)} published rounds yet")
        return {"target": target, "estimate": None, "why": why}
    fit = found.fit
    finite = lambda v: _num(v) if math.isfinite(v) else None  # noqa: E731 - infinite: not reached (JSON-safe)
    return {"target": target, "estimate": finite(found.masks), "low": finite(found.low),
            "high": finite(found.high), "rounds": found.points, "masks_now": max(m for m, _ in points),
            "fit": {"plateau": fit.plateau, "scale": fit.scale, "exponent": fit.exponent},
            "why": None if math.isfinite(found.masks) else
            f"the fitted curve levels off at {fit.plateau:.3f}, below the target"}


def point_noise(store: Store, published: list[dict]) -> float:
    """How far one round's val Dice may be off by noise alone: the standard error of the paired per-image
    differences between consecutive published models (median over the pairs), split between the two (/sqrt 2); 0
    where the models hold no per-image scores (then the fit's residuals alone size the range)."""
    scores = [store.model(r["model"]).metrics.get("val_scores") if r.get("model") else None for r in published]
    errors = [e for old, new in zip(scores, scores[1:]) if (e := paired_standard_error(new, old)) is not None]
    return float(np.median(errors) / math.sqrt(2)) if errors else 0.0


def trainer_line(status: dict[str, Any], remote: dict[str, Any] | None = None, local_trainer: bool = True) -> str:
    """One sentence on what the background trainer is doing (and a trainer on another machine, from what it last
    reported: `remote`). Without a local trainer (`local_trainer` False) its status file, if any, is an old one."""
    if remote and remote.get("round") is not None:
        ago = time.time() - remote.get("updated", 0)
        line = (f"round {remote['round']} training on {remote.get('trainer')}: step {remote.get('step')}/"
                f"{remote.get('total')} (reported {ago:.0f} s ago)")
        return f"{line} · {trainer_line(status, local_trainer=local_trainer)}"
    if not local_trainer:
        return "trainer: none on this server (adasam serve --no-trainer)"
    if not status:
        return "trainer: starting"
    if time.time() - status.get("updated", 0) > 120 and status.get("state") not in ("stopped",):
        return f"trainer: no heartbeat for {time.time() - status.get('updated', 0):.0f} s (is it running?)"
    state = status.get("state", "idle")
    parts = [f"trainer: {state}"]
    if state == "training":
        parts.append(f"round {status.get('round')} step {status.get('step')}/{status.get('total')}")
        if status.get("eta_s") is not None:
            parts.append(f"ETA {status['eta_s']:.0f} s")
    elif state == "embedding":
        parts.append(f"{status.get('done')}/{status.get('total')} images embedded")
    elif state == "scoring":
        parts.append(f"model {status.get('model')}: {status.get('done')}/{status.get('total')} pool images rescored")
    if status.get("message"):
        parts.append(status["message"])
    embedded = status.get("embedded")
    if embedded and state != "embedding" and embedded.get("done", 0) < embedded.get("total", 0):
        parts.append(f"{embedded['done']}/{embedded['total']} embedded")
    return " · ".join(parts)


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)
