"""A round cannot make the served model worse without saying so: it is published only if its val Dice is not more
than PUBLISH_TOLERANCE (or, where that is larger, PUBLISH_Z standard errors of the paired per-image differences)
below the serving model's on the same images; otherwise the old model keeps serving, the queue keeps its ranking and
the dashboard says why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from annotation import Store
from annotation import schema
from app import rounds as rounds_module
from app.model_slot import ModelSlot
from app.studio import Studio
from app.rounds import (PUBLISH_MAX_MARGIN, PUBLISH_MIN_PAIRS, PUBLISH_TOLERANCE, items, validation_digest,
                        validation_masks)
from app.trainer import BackgroundTrainer
from app.validation import fix_validation_set
from app.ui import dice_curve_svg, figures_html, rounds_table
from app_fixtures import label, make_workspace


@pytest.fixture
def trainer(tmp_path):
    workspace = make_workspace(tmp_path, n=16, n_val=3)
    bt = BackgroundTrainer(workspace, "micro_random", tmp_path / "cache", round_every=3, steps=4)
    label(bt.store, 3)
    bt.train_round()  # r0001: nothing serves yet, so it is published whatever its score
    assert bt.store.latest_model().version == "r0001" and bt.store.rounds()[-1].note is None
    yield bt
    bt.store.close()


def score_by_checkpoint(monkeypatch, serving: float | list[float], new: float | list[float]) -> list[str]:
    """Replace the val evaluation with fixed Dice figures: `serving` for a published checkpoint (models/rNNNN.pt),
    `new` for the round's own (models/training/model.pt); a list gives per-image scores (keyed "0", "1", ... as
    if the validation set had that many images) and their mean, a float only the mean. Returns the checkpoints
    scored, in order."""
    scored = []

    def val_summary(base, checkpoint, items):
        name = Path(checkpoint).name
        scored.append(name)
        dice, auc = (new, 0.6) if name == "model.pt" else (serving, 0.5)
        summary = {"n_lesion": len(items), "presence_auc": auc}
        if isinstance(dice, list):
            summary["val_scores"] = {str(k): d for k, d in enumerate(dice)}
            dice = sum(dice) / len(dice)
        return {**summary, "dice_lesion": dice, "dice_all": dice}

    monkeypatch.setattr(rounds_module, "val_summary", val_summary)
    return scored


def correct_a_validation_mask(store: Store) -> None:
    """Someone redraws a validation mask: figures measured before no longer hold."""
    image_id = fix_validation_set(store)[0]
    mask = store.load_mask(image_id)
    mask[:2] = ~mask[:2]
    store.save_mask(image_id, mask, "reviewer")


def test_a_round_worse_on_validation_keeps_the_old_model_serving(trainer, monkeypatch):
    store = trainer.store
    scored = score_by_checkpoint(monkeypatch, serving=0.80, new=0.80 - PUBLISH_TOLERANCE - 0.01)
    slot = ModelSlot(store, "micro_random", trainer.root.parent / "cache")
    queue_before = store.queue_model()
    correct_a_validation_mask(store)
    label(store, 3)
    trainer.train_round()
    assert scored == ["model.pt", "r0001.pt"]  # both judged now, on the same validation images
    rnd = store.rounds()[-1]
    assert rnd.status == "done" and rnd.model_version == "r0002" and rnd.val_dice == pytest.approx(0.77)
    assert "not published" in rnd.note and "r0001 keeps serving" in rnd.note and "0.770 against 0.800" in rnd.note
    held = store.model("r0002")
    assert not held.published and Path(held.checkpoint_path).is_file()  # kept for the record, not served
    assert store.latest_model().version == "r0001" and [m.version for m in store.models()] == ["r0001", "r0002"]
    assert not slot.refresh() and slot.version == "r0001"
    assert store.queue_model() == "r0001" and store.queue_model() == queue_before
    assert all(store.prediction(i.id, "r0002") is None for i in store.images(split="pool"))  # no re-scoring
    assert "not published" in trainer._status["message"]

    studio = Studio(store, slot)
    dashboard = studio.dashboard()
    assert [r["published"] for r in dashboard["rounds"]] == [True, False]
    figures = figures_html(dashboard)
    serving_auc = store.model("r0001").metrics["presence_auc"]
    assert serving_auc != 0.6 and store.model("r0002").metrics["presence_auc"] == 0.6
    assert "r0001 keeps serving" in figures and f"{serving_auc:.3f}" in figures  # the serving model's AUC
    svg = dice_curve_svg(dashboard["rounds"])
    assert svg.count("class='point'") == 1 and svg.count("class='held-back'") == 1 and "not published" in svg
    table = rounds_table(dashboard["rounds"]).value
    assert "not published" in str(table["data"])


def test_a_round_within_the_tolerance_is_published_and_rescored(trainer, monkeypatch):
    store = trainer.store
    score_by_checkpoint(monkeypatch, serving=0.80, new=0.80 - PUBLISH_TOLERANCE + 0.005)
    correct_a_validation_mask(store)
    label(store, 3)
    trainer.train_round()
    rnd = store.rounds()[-1]
    assert rnd.model_version == "r0002" and store.model("r0002").published
    assert rnd.note.startswith("validation Dice 0.785 against 0.800 for r0001 on the same 3 images")
    assert store.latest_model().version == "r0002" and store.queue_model() == "r0002"
    assert store.queue_model() == "r0002"
    assert all(store.prediction(i.id, "r0002") is not None for i in store.images(split="pool", state="unlabeled"))


def test_the_serving_models_figure_is_reused_while_the_validation_set_is_unchanged(trainer, monkeypatch):
    """Re-measuring the serving model on the same images and masks would repeat its publish-time figure; once a
    validation mask changes, it is measured again."""
    store = trainer.store
    stored = store.model("r0001").metrics
    masks = validation_masks(store)
    val = items(trainer.cache, trainer.pixels, sorted(masks), masks)
    assert stored["val_digest"] == validation_digest(val, trainer.base)
    serving_figure = stored["dice_lesion"]
    scored = score_by_checkpoint(monkeypatch, serving=0.80, new=serving_figure + 0.01)
    label(store, 3)
    trainer.train_round()
    assert scored == ["model.pt"]
    assert store.rounds()[-1].note.startswith(
        f"validation Dice {serving_figure + 0.01:.3f} against {serving_figure:.3f} for r0001")
    correct_a_validation_mask(store)
    label(store, 3)
    trainer.train_round()
    assert scored == ["model.pt", "model.pt", "r0002.pt"]
    assert "against 0.800 for r0002" in store.rounds()[-1].note


def test_a_serving_model_without_a_stored_digest_is_measured_again(trainer, monkeypatch):
    """A model published before figures were fingerprinted (or by another version of the scoring): no reuse."""
    store = trainer.store
    metrics = {k: v for k, v in store.model("r0001").metrics.items() if k != "val_digest"}
    store.conn.execute("UPDATE models SET metrics = ? WHERE version = 'r0001'", (json.dumps(metrics),))
    store.conn.commit()
    scored = score_by_checkpoint(monkeypatch, serving=0.80, new=0.81)
    label(store, 3)
    trainer.train_round()
    assert scored == ["model.pt", "r0001.pt"] and "against 0.800 for r0001" in store.rounds()[-1].note


def test_an_old_workspace_gains_the_publish_columns_with_its_models_published(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:2])
    monkeypatch.setattr(schema, "LATEST_VERSION", 2)
    with Store(tmp_path / "ws") as store:
        round_id = store.start_round(3)
        store.conn.execute("INSERT INTO models (version, created_at, checkpoint_path, metrics, round_id) "
                           "VALUES ('r0001', 'then', 'models/r0001.pt', '{}', ?)", (round_id,))
        store.conn.commit()
    monkeypatch.undo()
    with Store(tmp_path / "ws") as store:
        assert store.model("r0001").published and store.latest_model().version == "r0001"
        store.register_model("r0002", "models/r0002.pt", published=False)
        assert store.latest_model().version == "r0001"
        assert store.finish_round(round_id, note="why").note == "why"


def test_a_model_from_an_earlier_version_is_replaced_not_served(trainer):
    """A workspace whose serving model this version cannot read (an older checkpoint format): the page says so and
    shows no proposal, and the next round trains afresh and is published without a comparison."""
    import torch

    store = trainer.store
    path = store.latest_model().checkpoint_path
    payload = torch.load(path, weights_only=False)
    torch.save({**payload, "format": 1}, path)
    slot = ModelSlot(store, "micro_random", trainer.root.parent / "cache")
    assert slot.version == "pretrained" and "checkpoint format 1" in slot.note()
    label(store, 3)
    trainer.train_round()
    rnd = store.rounds()[-1]
    assert rnd.status == "done" and store.model("r0002").published and rnd.note is None
    assert slot.refresh() and slot.version == "r0002" and slot.unusable is None


def test_requests_refreshing_at_once_load_the_new_model_once(trainer, monkeypatch):
    """Each request refreshes the slot; two loading at once could both load, and the later swap put back the older
    model when a round was published between them."""
    import threading
    import time

    from app import model_slot

    slot = ModelSlot(trainer.store, "micro_random", trainer.root.parent / "cache")
    label(trainer.store, 3)
    trainer.train_round()
    loads, real = [], model_slot.load_checkpoint

    def slow_load(*args, **kwargs):
        loads.append(args[0])
        time.sleep(0.3)  # both requests are inside refresh before the first load ends
        return real(*args, **kwargs)

    monkeypatch.setattr(model_slot, "load_checkpoint", slow_load)
    threads = [threading.Thread(target=slot.refresh) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1 and slot.version == trainer.store.latest_model().version == "r0002"


def test_a_model_of_another_backbone_is_marked_unusable_not_raised_at_every_request(trainer, monkeypatch):
    """A server started with another --backbone than the workspace's models were trained on: each request's refresh
    raised the load's CheckpointError; now the slot keeps what it serves and says why, trying the load once."""
    from app import model_slot
    from model.backbones import build_micro_random

    slot = ModelSlot(trainer.store, "micro_random", trainer.root.parent / "cache")
    assert slot.version == "r0001"
    slot.base = build_micro_random(1)  # the same shapes, other weights: the model's own backbone is micro_random-0
    label(trainer.store, 3)
    trainer.train_round()
    loads, real = [], model_slot.load_checkpoint
    monkeypatch.setattr(model_slot, "load_checkpoint", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert not slot.refresh() and not slot.refresh()
    assert slot.version == "r0001" and len(loads) == 1  # not tried again at every request
    assert "trained on backbone micro_random-0-32, not on this one (micro_random-1-32)" in slot.note()


def noisy(mean: float, n: int = 40, spread: float = 0.3) -> list[float]:
    """n per-image scores averaging `mean`, half `spread` above it and half below."""
    return [mean + spread * (1 if k % 2 else -1) for k in range(n)]


def retrain_with(trainer, monkeypatch, serving, new) -> tuple[bool, str]:
    """A round whose model scores `new` against the serving model's `serving`: (published?, the round's note)."""
    score_by_checkpoint(monkeypatch, serving=serving, new=new)
    correct_a_validation_mask(trainer.store)  # so the serving model is scored again, by the stand-in
    label(trainer.store, 3)
    trainer.train_round()
    rnd = trainer.store.rounds()[-1]
    return trainer.store.model(rnd.model_version).published, rnd.note


def test_a_drop_past_the_tolerance_but_within_the_per_image_noise_is_published(trainer, monkeypatch):
    """40 images, each 0.3 better or worse on the new model: a mean drop of 0.04 is within the noise."""
    published, note = retrain_with(trainer, monkeypatch, serving=[0.6] * 40, new=noisy(0.56))
    assert published and trainer.store.latest_model().version == "r0002"
    assert "0.560 against 0.600" in note and "standard error 0.048" in note


def test_a_drop_past_the_tolerance_on_every_image_is_held_back(trainer, monkeypatch):
    published, note = retrain_with(trainer, monkeypatch, serving=noisy(0.6), new=[d - 0.03 for d in noisy(0.6)])
    assert not published and trainer.store.latest_model().version == "r0001"
    assert "not published" in note and f"(margin {PUBLISH_TOLERANCE:.3f})" in note  # no noise widens it


def test_a_large_mean_drop_is_held_back_however_noisy_the_images(trainer, monkeypatch):
    new = noisy(0.6 - PUBLISH_MAX_MARGIN - 0.005)
    published, note = retrain_with(trainer, monkeypatch, serving=[0.6] * 40, new=new)
    assert not published and f"(margin {PUBLISH_MAX_MARGIN:.3f})" in note


def test_a_few_images_do_not_widen_the_margin(trainer, monkeypatch):
    """Below PUBLISH_MIN_PAIRS images the spread says little about noise: the fixed tolerance holds."""
    n = PUBLISH_MIN_PAIRS - 1
    published, note = retrain_with(trainer, monkeypatch, serving=[0.6] * n, new=noisy(0.56, n))
    assert not published and f"(margin {PUBLISH_TOLERANCE:.3f})" in note and "standard error" not in note


def test_the_serving_models_stored_per_image_scores_are_paired_while_the_validation_set_is_unchanged(trainer,
                                                                                                    monkeypatch):
    """The serving model's scores come back from the store (not re-measured) and pair with the new model's."""
    store = trainer.store
    metrics = {**store.model("r0001").metrics, "val_scores": {str(k): d for k, d in enumerate(noisy(0.6))},
               "dice_lesion": 0.6, "n_lesion": 40}
    store.conn.execute("UPDATE models SET metrics = ? WHERE version = 'r0001'", (json.dumps(metrics),))
    store.conn.commit()
    scored = score_by_checkpoint(monkeypatch, serving=0.0, new=noisy(0.56)[::-1])  # each image 0.3 either way
    label(store, 3)
    trainer.train_round()
    note = store.rounds()[-1].note
    assert scored == ["model.pt"] and store.model("r0002").published
    assert "0.560 against 0.600" in note and "standard error 0.096" in note


def test_a_model_stores_its_per_image_val_scores_and_they_make_its_val_figure(trainer):
    """The scores the paired check reads: one per val lesion image, by image id, averaging to the round's figure."""
    store = trainer.store
    metrics = store.model("r0001").metrics
    masks = validation_masks(store)
    lesion_ids = {str(i) for i, m in masks.items() if m.any()}
    scores = metrics["val_scores"]
    assert set(scores) == (lesion_ids or {str(i) for i in masks})
    figure = metrics["dice_lesion"] if lesion_ids else metrics["dice_all"]
    assert sum(scores.values()) / len(scores) == pytest.approx(figure)
