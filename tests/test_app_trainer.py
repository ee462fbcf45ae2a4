"""The background trainer in-process (micro_random, a few steps): rounds publish and re-score, failures keep the last
good model, a stopped round resumes; the fixed validation set; the server's model swap; auth files."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from annotation import Store
from app import trainer as trainer_module
from app.auth import AuthFileError, hash_password, read_users, verify_password, write_user
from app.status import LABELS_AT_LAST_ROUND, VALIDATION_IDS, read_status
from app.model_slot import ModelSlot
from app.dashboard import dashboard
from app.rounds import FIRST_ROUND_LABELS, round_due
from app.studio import Studio
from app.trainer import BackgroundTrainer
from app.validation import VAL_MIN_LABELS, fix_validation_set, validation_line
from model.train import Trainer
from app_fixtures import label, make_workspace


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path, n=16, n_val=3)


def queue_priorities(store: Store) -> dict[int, float]:
    """Unlabeled pool image id -> the priority the queue orders it by."""
    return dict(store.conn.execute("SELECT id, priority FROM images WHERE split = 'pool' AND state = 'unlabeled'"))


def make_trainer(workspace, steps: int = 6) -> BackgroundTrainer:
    return BackgroundTrainer(workspace, "micro_random", workspace.parent / "cache", round_every=3, steps=steps)


def test_round_publishes_a_model_and_rescores_the_pool(workspace):
    bt = make_trainer(workspace)
    store = bt.store
    assert not bt.due()  # nothing labeled yet
    label(store, 3)
    bt.embed_new()
    assert read_status(workspace)["embedded"] == {"done": 16, "total": 16}
    assert bt.due()
    bt.train_round()
    rnd = store.rounds()[-1]
    assert rnd.status == "done" and rnd.model_version == "r0001" and rnd.val_dice is not None
    model = store.latest_model()
    assert model.version == "r0001" and (workspace / "models" / "r0001.pt").is_file()
    assert model.metrics["n_masks"] == 2 and model.metrics["n_empty"] == 1 and model.metrics["n_val"] == 3
    unlabeled = store.images(split="pool", state="unlabeled")
    assert all(store.prediction(info.id, "r0001") is not None for info in unlabeled)
    assert store.queue_model() == "r0001"
    assert store.get_setting(VALIDATION_IDS) == [info.id for info in store.images(split="val")]
    assert store.get_setting(LABELS_AT_LAST_ROUND) == 3 and not bt.due()
    assert not (workspace / "models" / "training").exists()


def test_the_first_round_comes_after_five_labels_then_every_round_every(tmp_path):
    """Before any model there is no proposal at all, and a first round from 5 labels measured as good as one from
    10-20 on BUSI: the first round does not wait for `round_every`; the ones after it do."""
    workspace = make_workspace(tmp_path, n=40, n_val=3)
    bt = BackgroundTrainer(workspace, "micro_random", tmp_path / "cache", round_every=10, steps=2)
    store = bt.store
    slot = ModelSlot(store, "micro_random", tmp_path / "cache")
    assert dashboard(store, slot, 10)["training"]["first_round"] == FIRST_ROUND_LABELS  # said on the dashboard
    assert dashboard(store, slot, 3)["training"]["first_round"] is None  # --round-every 3 comes sooner anyway
    label(store, FIRST_ROUND_LABELS - 1)
    assert round_due(store, 10) == "next round after 1 more labels (or Retrain now)" and not bt.due()
    label(store, 1)
    assert bt.due()
    real_train = bt._train
    bt._train = lambda round_id: (_ for _ in ()).throw(RuntimeError("first round broke"))
    bt.train_round()  # fails: no model serves, so the next try waits for 5 new labels, not 10, nor none
    assert store.rounds()[-1].status == "failed" and store.latest_model() is None and not bt.due()
    label(store, FIRST_ROUND_LABELS - 1)
    assert not bt.due()
    label(store, 1)
    assert bt.due()
    bt._train = real_train
    bt.train_round()
    assert store.rounds()[-1].status == "done" and store.get_setting(LABELS_AT_LAST_ROUND) == 2 * FIRST_ROUND_LABELS
    assert dashboard(store, slot, 10)["training"]["first_round"] is None  # a model serves: every 10 from now on
    label(store, FIRST_ROUND_LABELS)
    assert round_due(store, 10) == "next round after 5 more labels (or Retrain now)" and not bt.due()
    label(store, 5)
    assert bt.due()
    assert round_due(store, 3) is None and round_due(store, 20) is not None  # a smaller or larger --round-every
    bt.store.close()


def test_no_round_before_a_mask_shows_the_target(tmp_path):
    """Empty masks (say an empty proposal accepted before the first round) and no-finding marks are labels, but a
    round needs a target to learn from: it waits for one instead of failing."""
    workspace = make_workspace(tmp_path, n=12, n_val=3)
    with Store(workspace) as store:
        pool = store.image_ids(split="pool", state="unlabeled")
        for image_id in pool[:FIRST_ROUND_LABELS]:
            info = store.image(image_id)
            store.save_mask(image_id, np.zeros((info.height, info.width), bool), "ann", origin="accepted_prediction")
        assert "first mask that shows the target" in round_due(store, 10)
        label(store, 1)
        assert round_due(store, 10) is None


def test_failed_round_is_recorded_and_the_last_model_keeps_serving(workspace, monkeypatch):
    bt = make_trainer(workspace)
    label(bt.store, 3)
    bt.train_round()
    slot = ModelSlot(bt.store, "micro_random", workspace.parent / "cache")
    assert slot.version == "r0001"

    def boom(self, progress=None, stop_check=None):
        raise RuntimeError("disk full")

    monkeypatch.setattr(trainer_module.Trainer, "run", boom)
    label(bt.store, 3)
    bt.train_round()
    failed = bt.store.rounds()[-1]
    assert failed.status == "failed" and failed.error == "RuntimeError: disk full"
    assert bt.store.latest_model().version == "r0001"
    assert "failed" in read_status(workspace)["message"]
    assert not slot.refresh() and slot.version == "r0001"
    assert any(e["what"] == "round_failed" for e in bt.store.events(limit=20))


def test_a_stop_between_the_image_views_steps_cancels_the_round(workspace, monkeypatch):
    """The first round's view trains for minutes before the first step's progress call: the round hands the view
    its stop check too (without it a stopped server's trainer went on until the view was done)."""
    bt = make_trainer(workspace)
    label(bt.store, 3)

    def view_step(self, progress=None, stop_check=lambda: None):
        bt.stop.set()  # SIGTERM, or the server gone, during the view
        stop_check()
        raise AssertionError("the view went on after a stop")

    monkeypatch.setattr(trainer_module.Trainer, "run", view_step)
    with pytest.raises(trainer_module.Stopped):
        bt.train_round()
    assert bt.store.rounds()[-1].status == "cancelled"


def test_stopped_round_is_cancelled_and_resumes_on_restart(workspace):
    bt = make_trainer(workspace, steps=8)  # validated (and last.pt written) at steps 4 and 8
    label(bt.store, 3)
    original = bt.check

    def stop_at_step_5() -> None:
        if bt._status.get("step") == 5:
            bt.stop.set()
        original()

    bt.check = stop_at_step_5
    with pytest.raises(trainer_module.Stopped):
        bt.train_round()
    assert bt.store.rounds()[-1].status == "cancelled"
    assert (workspace / "models" / "training" / "last.pt").exists()
    bt.store.close()

    again = make_trainer(workspace, steps=8)
    assert again.due()  # a cancelled round does not count as done
    again.train_round()
    assert again.store.rounds()[-1].status == "done" and again.resumed_from == 5  # where it stopped, not at 4
    assert again.store.latest_model().version == "r0002"  # versions are named after their round


def test_validation_set_is_frozen_from_early_labels(tmp_path):
    workspace = make_workspace(tmp_path, n=VAL_MIN_LABELS + 10, n_val=0)
    with Store(workspace) as store:
        label(store, VAL_MIN_LABELS - 1)
        assert fix_validation_set(store) == [] and store.get_setting(VALIDATION_IDS) is None
        first = label(store, 1)
        chosen = fix_validation_set(store)
        assert len(chosen) == 3 and first[0] not in chosen
        label(store, 5)
        assert fix_validation_set(store) == chosen  # fixed once chosen


def test_the_dashboard_says_which_validation_set_the_first_round_will_fix(tmp_path):
    with Store(make_workspace(tmp_path / "imported", n=6, n_val=3)) as store:
        assert validation_line(store).startswith("not fixed yet: the first round fixes the 3 images imported")
        fix_validation_set(store)
        assert validation_line(store) == "3 images imported with split 'val' and a mask (fixed)"
    with Store(make_workspace(tmp_path / "none", n=6, n_val=0)) as store:
        assert validation_line(store).startswith(f"not fixed yet: once {VAL_MIN_LABELS} pool images are labeled")


def test_server_swaps_in_a_new_model_between_requests(workspace):
    bt = make_trainer(workspace)
    store = Store(workspace)
    slot = ModelSlot(store, "micro_random", workspace.parent / "cache")
    studio = Studio(store, slot)
    first = studio.task("ann")
    assert first["model"] == "pretrained" and first["cam"] is None
    label(bt.store, 3)
    bt.train_round()
    after = studio.skip("ann", first["view"])
    assert after["model"] == "r0001" and after["cam"].startswith("data:image/png")
    assert after["probability"] is not None and "Model r0001" in after["model_note"]
    studio.close()


def test_auth_file(tmp_path):
    encoded = hash_password("pw1234")
    assert verify_password("pw1234", encoded) and not verify_password("nope", encoded)
    users = tmp_path / "users"
    write_user(users, "ann", "pw1234")
    write_user(users, "ann", "changed")
    assert list(read_users(users)) == ["ann"] and verify_password("changed", read_users(users)["ann"])
    (tmp_path / "bad").write_text("ann:plaintext\n")
    with pytest.raises(AuthFileError, match="expected name:pbkdf2"):
        read_users(tmp_path / "bad")


def test_first_run_seeding(tmp_path):
    from app.seed import seed_workspace, write_phantoms

    with Store(tmp_path / "phantom-ws") as store:  # no BUSI beside the repo: generated phantoms
        note = seed_workspace(store, busi=tmp_path / "missing", phantoms=12, progress=False)
        assert note.startswith("Synthetic phantoms") and store.get_setting("workspace_note") == note
        assert store.counts().by_split == {"pool": 10, "val": 2}
        assert store.counts().masked == 2 and not store.labeled(split="pool")
    busi = tmp_path / "busi"  # the BUSI layout: pool without masks, val with masks, test left out
    write_phantoms(tmp_path / "src", 9, 3)
    (busi / "images").mkdir(parents=True)
    (busi / "masks").mkdir()
    rows = ["id,split,has_lesion"]
    for split, folder in (("val", "val"), ("pool", "pool")):
        for image in sorted((tmp_path / "src" / folder / "images").iterdir()):
            image.rename(busi / "images" / image.name)
            (tmp_path / "src" / folder / "masks" / image.name).rename(busi / "masks" / image.name)
            rows.append(f"{image.stem},{'test' if image.stem.endswith('8') else split},1")
    (busi / "manifest.csv").write_text("\n".join(rows) + "\n")
    with Store(tmp_path / "busi-ws") as store:
        note = seed_workspace(store, busi=busi, progress=False)
        assert note.startswith("BUSI breast ultrasound") and "5 pool images" in note and "3 validation" in note
        assert store.counts().by_split == {"pool": 5, "val": 3}
        assert store.counts().masked == 3 and not store.labeled(split="pool")


def test_sixteen_bit_images_are_windowed_for_display(tmp_path):
    import base64
    import io

    from PIL import Image

    from annotation import import_sources

    pixels = (1000 + np.arange(64 * 80).reshape(64, 80) % 500).astype(np.uint16)  # a narrow band of 16-bit values
    Image.fromarray(pixels).save(tmp_path / "ct.png")
    with Store(tmp_path / "ws") as store:
        import_sources(store, [tmp_path / "ct.png"], progress=False)
        studio = Studio(store, ModelSlot(store, "micro_random", tmp_path / "cache"))
        task = studio.task("ann")
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(task["image"].split(",")[1]))))
        assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255  # not a flat grey
        studio.close()


def test_empty_queue_and_tag_only(tmp_path):
    workspace = make_workspace(tmp_path, n=4, n_val=2)
    with Store(workspace) as store:
        studio = Studio(store, ModelSlot(store, "micro_random", tmp_path / "cache"))
        first = studio.task("ann")
        second = studio.tag_only("ann", first["view"])  # tagged, no mask: back of the queue
        assert second["image_id"] != first["image_id"] and store.tags(first["image_id"])[0]["tag"] == "finding"
        third = studio.no_finding("ann", second["view"])
        assert third["image_id"] == first["image_id"] and third["skipped_before"]  # only the tagged one is left
        done = studio.no_finding("ann", third["view"])
        assert done["image_id"] is None and done["left"] == 0 and done["done"] == 2
        studio.close()


def test_peek_next_is_the_image_the_queue_hands_out_next(tmp_path):
    from annotation import next_task
    from annotation.queue import peek_next

    with Store(make_workspace(tmp_path, n=6, n_val=1)) as store:
        current = next_task(store, "ann").image.id
        upcoming = peek_next(store, "ann")
        assert upcoming not in (None, current)
        assert next_task(store, "ann").image.id == current  # peeking leases nothing
        store.mark_no_finding(current, "ann")
        assert next_task(store, "ann").image.id == upcoming


def test_the_workspace_strategy_orders_the_queue_and_follows_new_labels(workspace):
    from annotation import next_task, release_lease
    from app.status import QUEUE_STRATEGY
    from model.strategies import get_strategy

    bt = make_trainer(workspace)
    store = bt.store
    label(store, 3)
    bt.embed_new()
    bt.train_round()
    version = store.latest_model().version
    bt.rescore(version)

    def first_in_queue() -> int:
        image_id = next_task(store, "ann").image.id
        release_lease(store, "ann", image_id)
        return image_id

    store.set_setting(QUEUE_STRATEGY, "combined")
    bt.rescore(version)
    scored = store.pool_predictions(version)
    assert first_in_queue() == max(scored, key=lambda p: p.uncertainty).image_id
    store.set_setting(QUEUE_STRATEGY, "classifier")
    bt.rescore(version)  # nothing new to score, but the strategy changed: the queue is ranked again
    assert first_in_queue() == max(scored, key=lambda p: p.classifier_uncertainty).image_id

    store.set_setting(QUEUE_STRATEGY, "coreset")
    bt.rescore(version)
    labeled = [i.id for i in store.images(split="pool") if i.state != "unlabeled"]

    def coreset_priorities() -> dict[int, float]:
        pool = store.pool_predictions(version)
        ranked = get_strategy("coreset").rank(pool, bt.vectors([p.image_id for p in pool]), bt.vectors(labeled))
        return {p.image_id: float(v) for p, v in zip(pool, ranked)}

    expected = coreset_priorities()
    assert queue_priorities(store) == pytest.approx(expected)
    assert first_in_queue() == max(expected, key=expected.get)
    store.mark_no_finding(first_in_queue(), "ann")  # a new label moves every coreset priority: ranked again
    labeled = [i.id for i in store.images(split="pool") if i.state != "unlabeled"]
    bt.rescore(version)
    after = queue_priorities(store)
    assert after == pytest.approx(coreset_priorities())
    assert after != pytest.approx({i: expected[i] for i in after})  # not the ranking from before the label


def test_before_the_first_model_the_queue_spreads_over_the_pool_and_the_first_model_takes_over(workspace):
    from annotation import next_task
    from model.strategies import Candidate, get_strategy
    from app.status import QUEUE_STRATEGY
    from model.uncertainty import Uncertainty

    bt = make_trainer(workspace)
    store = bt.store
    store.set_setting(QUEUE_STRATEGY, "combined")  # after the first model: its uncertainties order the queue
    bt.embed_new()
    bt.rank_cold_start()
    pool = store.image_ids(split="pool")
    vectors = bt.vectors(pool)
    expected = get_strategy("coreset").rank([Candidate(i, None, Uncertainty(0, 0, 0)) for i in pool], vectors, None)
    handed = []
    for k in range(FIRST_ROUND_LABELS):
        image_id = next_task(store, "ann").image.id
        handed.append(image_id)
        info = store.image(image_id)
        mask = np.zeros((info.height, info.width), bool)
        mask[10:40, 20:60] = k != 1
        store.save_mask(image_id, mask, "ann") if mask.any() else store.mark_no_finding(image_id, "ann")
    assert handed == [pool[k] for k in np.argsort(-expected, kind="stable")[:FIRST_ROUND_LABELS]]
    nearest_the_mean = pool[int(np.argmin(((vectors - vectors.mean(0)) ** 2).sum(1)))]
    assert handed[0] == nearest_the_mean  # the most typical image first, then each the farthest from those before
    labeled = bt.vectors(handed)
    unlabeled = [i for i in pool if i not in handed]
    farthest = unlabeled[int(np.argmax([np.linalg.norm(labeled - v, axis=1).min() for v in bt.vectors(unlabeled)]))]
    restarted = make_trainer(workspace)  # a new trainer process ranks afresh, from the labels given so far
    restarted.embed_new()
    restarted.rank_cold_start()
    assert max(queue_priorities(store), key=queue_priorities(store).get) == farthest
    restarted.store.close()
    assert bt.due()
    bt.train_round()
    version = store.latest_model().version
    bt.rescore(version)

    predicted = {p.image_id: p.uncertainty for p in store.pool_predictions(version)}
    assert store.queue_model() == version and queue_priorities(store) == pytest.approx(predicted)  # the model's
    bt.rank_cold_start()  # a model orders the queue now: the cold start leaves it alone
    assert queue_priorities(store) == pytest.approx(predicted)


def test_a_strategy_that_does_not_read_masks_scores_the_pool_without_the_decoder(workspace, monkeypatch):
    """Re-scoring for classifier, coreset or random needs no mask: the decoder is skipped (most of the cost).
    Switching to a strategy that reads the mask scores the masks then, and the queue follows them."""
    from annotation import next_task, release_lease
    from app.status import QUEUE_STRATEGY
    from model.adasam import load_checkpoint
    from model.backbones import backbone_view
    from model.inference import Predictor

    bt = make_trainer(workspace)
    store = bt.store
    store.set_setting(QUEUE_STRATEGY, "classifier")
    label(store, 3)
    bt.embed_new()
    bt.train_round()  # publishes, then re-scores the pool for the classifier strategy
    version = store.latest_model().version
    unlabeled = store.image_ids(split="pool", state="unlabeled")
    scored = {p.image_id: p for p in store.pool_predictions(version)}
    assert sorted(scored) == unlabeled and all(p.segmentation_uncertainty is None for p in scored.values())
    model, _ = load_checkpoint(store.model(version).checkpoint_path, backbone_view(bt.base))
    chunk = bt.items(unlabeled)
    full = Predictor(model).predict_batch(torch.stack([i.embedding for i in chunk]), [i.geometry for i in chunk])
    for image_id, p in zip(unlabeled, full):  # the same classifier figures as a full prediction's
        assert scored[image_id].probability == pytest.approx(p.probability, abs=1e-6)
        assert scored[image_id].classifier_uncertainty == pytest.approx(p.uncertainty.classifier, abs=1e-6)
        assert scored[image_id].box == pytest.approx(tuple(p.box), abs=1e-4)

    decoded = []
    real = Predictor.predict_batch
    monkeypatch.setattr(Predictor, "predict_batch", lambda self, e, g, i: decoded.append(len(g)) or real(self, e, g, i))
    store.set_setting(QUEUE_STRATEGY, "segmentation")
    bt.rescore(version)
    assert sum(decoded) == len(unlabeled)
    masks = {p.image_id: p.segmentation_uncertainty for p in store.pool_predictions(version)}
    assert masks == pytest.approx({i: p.uncertainty.segmentation for i, p in zip(unlabeled, full)}, abs=1e-5)
    priorities = dict(store.conn.execute(
        "SELECT id, priority FROM images WHERE split = 'pool' AND state = 'unlabeled'"))
    assert priorities == pytest.approx(masks)  # the queue is ordered by the mask figures just scored
    first = next_task(store, "ann").image.id
    release_lease(store, "ann", first)
    assert first == max(masks, key=masks.get)
    bt.rescore(version)
    assert sum(decoded) == len(unlabeled)  # scored once


def test_the_dashboard_names_the_strategy_ordering_the_queue(tmp_path):
    from app.status import QUEUE_STRATEGY
    from model.strategies import DEFAULT_STRATEGY

    with Store(make_workspace(tmp_path, n=4, n_val=1)) as store:
        studio = Studio(store, ModelSlot(store, "micro_random", tmp_path / "cache"))
        queue = studio.dashboard()["queue"]
        assert queue["strategy"].startswith(f"{DEFAULT_STRATEGY} (")
        store.set_setting(QUEUE_STRATEGY, "random")
        assert studio.dashboard()["queue"]["ordered_by"] == "seeded random order"  # said once, not twice
        store.set_setting(QUEUE_STRATEGY, "coreset")
        queue = studio.dashboard()["queue"]
        assert queue["strategy"].startswith("coreset (k-center")
        assert queue["ordered_by"].startswith("seeded random order until the first model, then coreset (k-center")
        studio.close()


def test_without_a_local_trainer_the_dashboard_says_so_instead_of_starting(tmp_path):
    from app.status import write_status

    with Store(make_workspace(tmp_path, n=4, n_val=1)) as store:
        slot = ModelSlot(store, "micro_random", tmp_path / "cache")
        assert dashboard(store, slot, 10)["training"]["line"] == "trainer: starting"  # no status written yet
        write_status(store.root, state="training", round=3, step=5, total=60)  # an old run's file
        quiet = Studio(store, slot, local_trainer=False)  # adasam serve --no-trainer
        assert quiet.dashboard()["training"]["line"] == "trainer: none on this server (adasam serve --no-trainer)"
        assert quiet.task("ann")["trainer"] == quiet.dashboard()["training"]["line"]  # the Annotate tab's header too
        quiet.close()


def test_the_dashboard_projects_the_masks_needed_for_the_target_dice(tmp_path):
    from app.status import DEFAULT_TARGET_DICE
    from app.ui import dice_curve_svg, projection_line

    def rounds(masks: list[int], dice: list[float]) -> list[dict]:
        return [{"round": k + 1, "status": "done", "masks": m, "val_dice": d, "published": True}
                for k, (m, d) in enumerate(zip(masks, dice))]

    masks = [10, 20, 30, 40]
    rising = rounds(masks, [0.85 - 0.9 * m ** -0.6 for m in masks])  # reaches 0.8 at about 124 masks
    with Store(make_workspace(tmp_path, n=4, n_val=1)) as store:
        studio = Studio(store, ModelSlot(store, "micro_random", tmp_path / "cache"))
        early = studio.projection(rising[:3])
        assert early["estimate"] is None and "needs 4 published rounds" in early["why"]
        repeated = studio.projection(rising[:3] + rounds([30, 30], [0.7, 0.71]))  # five rounds, three mask counts
        assert "with different mask counts (3 so far)" in repeated["why"]
        undone = rounds([10, 30, 20], [0.5, 0.7, 0.6])  # an undo between rounds: fewer masks in a later round
        drawn = re.search(r"<path d='([^']*)' fill='none' stroke='#1e88e5'", dice_curve_svg(undone)).group(1)
        xs = [float(step[1:].split(",")[0]) for step in drawn.split()]
        assert xs == sorted(xs)  # the line runs along the mask axis, not back and forth
        assert early["target"] == DEFAULT_TARGET_DICE
        found = studio.projection(rising)
        assert found["estimate"] == pytest.approx(124, rel=0.01) and found["low"] <= found["estimate"] <= found["high"]
        assert "about 124 masks" in projection_line(found) and "an estimate" in projection_line(found)
        svg = dice_curve_svg(rising, found)
        assert "class='fitted'" in svg and "class='target'" in svg
        assert "class='fitted'" not in dice_curve_svg(rising, early)

        studio.set_target_dice(0.9, "lead")
        beyond = studio.projection(rising)
        assert beyond["estimate"] is None and "levels off at 0.850" in projection_line(beyond)
        for bad in (None, 0, 1.2):
            with pytest.raises(ValueError, match="between 0 and 1"):
                studio.set_target_dice(bad, "lead")
        assert studio.dashboard()["projection"]["target"] == 0.9
        studio.close()


def test_the_projection_range_carries_the_noise_of_the_val_figures(tmp_path):
    """Four rounds on an exact curve leave no residuals; the models' per-image val scores say how far two equally
    good models differ, and the range opens by that much (it was a point)."""
    from app.dashboard import point_noise, projection

    rng = np.random.default_rng(0)
    masks = [10, 20, 30, 40]
    with Store(make_workspace(tmp_path, n=4, n_val=1)) as store:
        rounds = []
        for k, m in enumerate(masks):
            scores = {f"v{i}": float(np.clip(0.7 + rng.normal(0, 0.25), 0, 1)) for i in range(60)}
            store.register_model(f"m{k}", tmp_path / f"m{k}.pt", {"n_masks": m, "val_scores": scores})
            rounds.append({"round": k + 1, "masks": m, "val_dice": 0.85 - 0.9 * m ** -0.6, "published": True,
                           "model": f"m{k}"})
        noise = point_noise(store, rounds)
        assert 0.02 < noise < 0.05  # unpaired draws of sd 0.25 over 60 images: sqrt(2) * 0.25 / sqrt(60) / sqrt(2)
        found = projection(store, rounds)
        assert found["low"] < 0.8 * found["estimate"] and (found["high"] is None or found["high"] > 1.25 * 124)
        plain = projection(store, [{**r, "model": ""} for r in rounds])  # no scores: the residuals alone
        assert plain["low"] == pytest.approx(plain["estimate"], rel=0.02)
    from app.ui import projection_line  # most refits never reaching the target: no range end to print

    line = projection_line({"target": 0.8, "estimate": 124.0, "low": None, "high": None, "masks_now": 40,
                            "rounds": 4, "fit": {"plateau": 0.85}})
    assert "about 124 masks" in line and "never reach it" in line


def test_the_trainer_imports_nothing_of_the_web_side():
    import subprocess
    import sys

    code = ("import sys, app.trainer; print(sorted(m for m in ('app.studio', 'app.ui', 'gradio', 'matplotlib') "
            "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=trainer_module.__file__.rsplit("/app/", 1)[0]).stdout.strip()
    assert loaded == "[]"


def test_a_workspace_with_the_image_view_trains_serves_and_rescores_with_it(workspace, monkeypatch):
    """`adasam serve --image-view`: the first round trains a fresh view, the next one goes on from the serving
    model's (the warm budget); the server's proposals and the pool's re-scoring pass the images (a model with a view
    refuses to predict without them)."""
    from app import rounds
    from app.status import IMAGE_VIEW
    from model.adasam import checkpoint_problem, load_checkpoint
    from model.image_view import ImageViewTraining

    monkeypatch.setattr(rounds, "FRESH_IMAGE_VIEW", ImageViewTraining(steps=6, eval_every=2, patience=0, min_steps=0))
    monkeypatch.setattr(rounds, "WARM_IMAGE_VIEW", ImageViewTraining(steps=4, eval_every=2, patience=0, min_steps=0))
    monkeypatch.setattr(Trainer, "check_image_view", lambda self: None)  # a micro model's view may not beat its
    # CAM (the check that would drop it is tested in test_model_image_view.py): the view is served here
    bt = make_trainer(workspace, steps=2)
    store = bt.store
    store.set_setting(IMAGE_VIEW, True)
    label(store, 3)
    bt.train_round()
    first = store.latest_model()
    assert first.version == "r0001" and first.metrics["image_view"]["stopped_at"] == 6
    assert first.metrics["view_self_training"] is None  # not in rounds: its cost bought too little there
    assert checkpoint_problem(first.checkpoint_path) is None
    assert all(store.prediction(info.id, "r0001") is not None for info in store.images(split="pool", state="unlabeled"))

    slot = ModelSlot(store, "micro_random", workspace.parent / "cache")
    studio = Studio(store, slot)
    shown = studio.task("ann")
    assert shown["model"] == "r0001" and shown["cam"].startswith("data:image/png")
    view_before = load_checkpoint(first.checkpoint_path)[0].image_view.state_dict()

    label(store, 3)
    bt.train_round()
    second = store.latest_model()
    assert second.version == "r0002" and second.metrics["image_view"]["stopped_at"] == 4  # the warm budget
    warm = load_checkpoint(second.checkpoint_path)[0].image_view.state_dict()
    assert any(not torch.equal(v, view_before[k]) for k, v in warm.items())  # it went on training
    assert studio.skip("ann", shown["view"])["model"] == "r0002"
    assert dashboard(store, slot, 3)["training"]["image_view"] is True  # the dashboard says rounds train it
    studio.close()
