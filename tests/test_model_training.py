"""Semi-supervised training on a micro backbone: losses fall, seeded determinism, checkpoints, resume, no negatives."""
from __future__ import annotations

import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

from model.adasam import AdaSamConfig, CheckpointError, checkpoint_problem, load_checkpoint, save_checkpoint
from model.inference import Predictor, valid_grid
from model.losses import consistency_loss, dice_loss, map_loss, segmentation_loss
from model.metrics import box_iou, presence_auc
from model.preprocess import mask_box
from model.train import TrainConfig, Trainer, TrainingData, build_training_model, detect_negatives, model_config
from model_fixtures import blob_items, micro_backbone, one_torch_thread  # noqa: F401 (autouse)

STEPS = 80  # the map head with position channels and a pooling pyramid learns the toy map by ~70 steps (40 before them)


@pytest.fixture(scope="module")
def pool():
    """12 encoded blob images (3 without a blob) and 4 validation images (1 without)."""
    backbone = micro_backbone()
    return blob_items(backbone, 12, negatives=3, seed=1), blob_items(backbone, 4, negatives=1, seed=2, prefix="v")


def _data(pool, masked=8, with_val=False):
    items, val = pool
    return TrainingData(masked=items[:masked], tagged=list(items), unlabeled=items[masked:],
                        val=list(val) if with_val else [])


def _trainer(tmp_path, data, seed=0, steps=STEPS, method="adasam", has_negatives=True, eval_every=1000, **overrides):
    config = AdaSamConfig(backbone="micro", method=method, has_negatives=has_negatives)
    model = build_training_model(config, seed, micro_backbone())
    train_config = TrainConfig(steps=steps, batch_masked=4, batch_unlabeled=2, batch_tagged=4,
                               eval_every=eval_every, seed=seed, **overrides)
    return Trainer(model, train_config, data, tmp_path, log=lambda line: None)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- losses ---------------------------------------------------------------------------------------------------------

def test_loss_functions():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    good, bad = (target - 0.5) * 40, (0.5 - target) * 40
    assert float(dice_loss(good, target)) < 0.01 and float(dice_loss(bad, target)) > 0.95
    assert float(segmentation_loss(good, target)) < 0.02 < 1 < float(segmentation_loss(bad, target))
    valid = torch.ones_like(target[:, 0])
    assert float(map_loss(good[:, 0], target[:, 0], valid)) < 0.02 < 1 < float(map_loss(bad[:, 0], target[:, 0], valid))
    valid[:, 4:] = 0  # what the map says on padding costs nothing
    assert float(map_loss(torch.where(valid > 0, good[:, 0], bad[:, 0]), target[:, 0], valid)) < 0.02
    # consistency: agreeing with a confident teacher costs little; an unsure teacher (p = 0.5) has no weight
    teacher = torch.sigmoid(good)
    assert float(consistency_loss(good, teacher)) < 0.02
    unsure = torch.full_like(target, 0.5)
    assert float(consistency_loss(bad, unsure)) < float(consistency_loss(bad, teacher))
    # a weight of zero on some pixels leaves them out of the Dice
    weight = torch.ones_like(target)
    weight[:, :, :4] = 0
    half_wrong = good.clone()
    half_wrong[:, :, :4] *= -1
    assert float(dice_loss(half_wrong, target, weight)) < 0.01 < float(dice_loss(half_wrong, target))


# -- training ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(pool, tmp_path_factory):
    # the micro backbone's decoder is random, so this run trains it (ADA-SAM keeps a pretrained one frozen)
    trainer = _trainer(tmp_path_factory.mktemp("run"), _data(pool), lr_decoder=1e-3, lr_heads=3e-3,
                       train_decoder=True)
    losses = [trainer.train_step() for _ in range(STEPS)]
    return trainer, losses


def test_losses_fall_on_a_toy_problem(trained):
    _, losses = trained
    assert {"seg", "cam", "cls", "consistency"} == set().union(*losses)
    assert all(math.isfinite(v) for step in losses for v in step.values())

    def mean(key, part):
        return np.mean([step[key] for step in part if key in step])

    for key, factor in (("seg", 0.9), ("cam", 0.5), ("cls", 0.95)):
        first, last = mean(key, losses[:5]), mean(key, losses[-5:])
        assert last < factor * first, (key, first, last)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_a_step_computes_in_the_chosen_precision_and_keeps_float32_weights(pool, tmp_path, monkeypatch, precision):
    monkeypatch.setenv("ADASAM_PRECISION", precision)
    trainer = _trainer(tmp_path, _data(pool), lr_heads=3e-3)
    dtype = getattr(torch, precision)
    inputs = trainer._embeddings(pool[0][:3])
    assert trainer.dtype == dtype and inputs.dtype == dtype
    assert inputs.is_contiguous(memory_format=torch.channels_last) == (precision == "bfloat16")
    assert torch.equal(inputs.float()[1], pool[0][1].embedding.to(dtype).float())  # each row its own embedding
    losses = [trainer.train_step() for _ in range(STEPS)]
    assert all(math.isfinite(v) for step in losses for v in step.values())
    assert np.mean([s["cam"] for s in losses[-5:]]) < 0.5 * np.mean([s["cam"] for s in losses[:5]])
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    assert {v.dtype for v in trainer.optimizer.state_dict()["state"][0].values() if v.dim()} == {torch.float32}


def test_the_precision_switch_is_checked_and_float32_by_default(monkeypatch):
    from model.device import DeviceError, training_dtype

    monkeypatch.setenv("ADASAM_PRECISION", "float16")
    with pytest.raises(DeviceError, match="ADASAM_PRECISION='float16'"):
        training_dtype(torch.device("cpu"))
    monkeypatch.setenv("ADASAM_PRECISION", "bfloat16")
    assert training_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.delenv("ADASAM_PRECISION")
    assert training_dtype(torch.device("cpu")) == torch.float32


def test_classifier_learns_presence(trained, pool):
    """Measured on images training never saw (the pool trained it; val is not used by this run either). A ranking
    alone is not enough (without the map and presence losses every probability is ~0 yet AUC is still 1): the default
    threshold of 0.5 must separate them too."""
    trainer, _ = trained
    items = list(pool[1]) + blob_items(micro_backbone(), 12, negatives=5, seed=3, prefix="h")
    predictions = Predictor(trainer.model).predict_batch(torch.stack([i.embedding for i in items]),
                                                         [i.geometry for i in items])
    present = [bool(i.mask.any()) for i in items]
    assert presence_auc([p.probability for p in predictions], present) > 0.9
    assert all((p.probability >= 0.5) == truth for p, truth in zip(predictions, present))


def test_training_moves_the_cam_onto_the_blobs(trained, pool):
    trainer, _ = trained
    _, val = pool
    untrained = build_training_model(trainer.model.config, 0, micro_backbone())
    trained_iou, untrained_iou = [], []
    for model, ious in ((trainer.model, trained_iou), (untrained, untrained_iou)):
        predictor = Predictor(model)
        for item in val:
            if item.mask.any():
                p = predictor.predict(item.embedding, item.geometry)
                ious.append(box_iou(p.box, mask_box(item.mask)))
    assert np.mean(trained_iou) > 0.4
    assert np.mean(trained_iou) > np.mean(untrained_iou) + 0.1


def test_seeded_training_is_deterministic(pool, tmp_path):
    states = []
    for seed, folder in ((0, "a"), (0, "b"), (1, "c")):
        trainer = _trainer(tmp_path / folder, _data(pool), seed=seed)
        for _ in range(3):
            trainer.train_step()
        states.append(trainer.model.trainable_state())
    assert _states_equal(states[0], states[1])
    assert not _states_equal(states[0], states[2])


@pytest.mark.parametrize("method", ["adasam", "supervised"])
def test_checkpoint_round_trip(pool, tmp_path, method):
    trainer = _trainer(tmp_path, _data(pool), method=method, steps=3, lr_decoder=1e-3)
    for _ in range(3):
        trainer.train_step()
    model = trainer.model.eval()
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(model, path, {"note": "hello"})
    assert not list(path.parent.glob("*.tmp"))
    payload = torch.load(path, weights_only=False)
    assert payload["note"] == "hello" and payload["config"] == asdict(model.config)
    assert not any(k.startswith(("backbone.image_encoder.", "backbone.prompt_encoder.")) for k in payload["state"])
    assert any(k.startswith("backbone.mask_decoder.") for k in payload["state"])
    assert any(k.startswith("adapter.") for k in payload["state"]) == (method == "adasam")

    loaded, _ = load_checkpoint(path.parent, backbone=micro_backbone())  # a run folder holding model.pt
    assert loaded.config == model.config and not loaded.training
    _, val = pool
    embeddings = torch.stack([i.embedding for i in val])
    geometries = [i.geometry for i in val]
    before = Predictor(model).predict_batch(embeddings, geometries)
    after = Predictor(loaded).predict_batch(embeddings, geometries)
    fresh = Predictor(build_training_model(model.config, 5, micro_backbone())).predict_batch(embeddings, geometries)
    assert any(not np.array_equal(a.raw_mask, f.raw_mask) or a.probability != f.probability
               for a, f in zip(before, fresh))  # training changed the predictions...
    for a, b in zip(before, after):  # ...and the checkpoint restores them exactly
        assert np.array_equal(a.mask, b.mask) and np.array_equal(a.raw_mask, b.raw_mask)
        assert a.probability == pytest.approx(b.probability, abs=1e-6)
        np.testing.assert_allclose(a.box, b.box)
        if method == "adasam":
            np.testing.assert_allclose(a.cam, b.cam, atol=1e-6)


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such model checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not an ADA-SAM checkpoint") as err:
        load_checkpoint(tmp_path / "model.pt")
    assert "\n" not in str(err.value)
    assert "not an ADA-SAM checkpoint" in checkpoint_problem(tmp_path / "model.pt")
    model = build_training_model(AdaSamConfig(backbone="micro"), 0, micro_backbone())
    save_checkpoint(model, tmp_path / "model.pt")
    assert checkpoint_problem(tmp_path / "model.pt") is None
    payload = torch.load(tmp_path / "model.pt", weights_only=False)
    torch.save({**payload, "format": 1}, tmp_path / "old.pt")  # an earlier version's model: other weights
    with pytest.raises(CheckpointError, match=r"checkpoint format 1, this one reads 2\); train it again"):
        load_checkpoint(tmp_path / "old.pt")
    assert checkpoint_problem(tmp_path / "old.pt") == "old.pt: checkpoint format 1, this version reads 2"
    payload["config"]["encoder_lora"] = 2  # the app cannot serve a model whose encoder trained
    torch.save(payload, tmp_path / "lora.pt")
    assert checkpoint_problem(tmp_path / "lora.pt") == ("lora.pt: trained with encoder LoRA (adasam train "
                                                        "--encoder-lora): the app serves frozen-encoder models only")


def test_resume_gives_the_same_weights(pool, tmp_path):
    data = _data(pool, with_val=True)
    straight = _trainer(tmp_path / "straight", data, steps=4, eval_every=2)
    straight.run()
    assert [r["step"] for r in straight.history] == [2, 4]
    assert (tmp_path / "straight" / "model.pt").is_file() and (tmp_path / "straight" / "last.pt").is_file()

    first = _trainer(tmp_path / "resumed", data, steps=4, eval_every=2)
    first.train_step()
    first.train_step()
    first.save_resume_state()
    del first
    torch.manual_seed(1234)  # whatever happened in between must not matter
    np.random.default_rng(99).random(10)
    second = _trainer(tmp_path / "resumed", data, steps=4, eval_every=2)
    second.load_resume_state(tmp_path / "resumed" / "last.pt")
    assert second.step == 2
    second.run()
    assert second.step == 4
    # after run() the model holds the val-picked weights; the last step's weights are in last.pt
    last_straight, last_second = (torch.load(tmp_path / name / "last.pt", weights_only=False)
                                  for name in ("straight", "resumed"))
    assert _states_equal(last_straight["state"], last_second["state"])
    assert _states_equal(last_straight["teacher"], last_second["teacher"])


def test_a_stopped_run_resumes_from_the_step_it_stopped_after(pool, tmp_path):
    """A stop raised by the progress callback (the background trainer's) comes after the step's evaluation, if one
    was due, and saves the resume state at that step: a resumed run loses no step and skips no evaluation."""

    class Stop(Exception):
        pass

    def stop_at(step):
        def progress(done, total):
            if done == step:
                raise Stop
        return progress

    def resumed():
        trainer = _trainer(tmp_path, data, steps=4, eval_every=2)
        trainer.load_resume_state(tmp_path / "last.pt")
        return trainer

    data = _data(pool, with_val=True)
    with pytest.raises(Stop):
        _trainer(tmp_path, data, steps=4, eval_every=2).run(progress=stop_at(2))  # an evaluation step
    again = resumed()
    assert again.step == 2 and [r["step"] for r in again.history] == [2]  # evaluated before it stopped
    with pytest.raises(Stop):
        again.run(progress=stop_at(3))
    last = resumed()
    assert last.step == 3 and [r["step"] for r in last.history] == [2]  # not back at 2, the last evaluation
    best = last.run()
    assert [r["step"] for r in last.history] == [2, 4] and best["step"] in (2, 4)
    assert torch.load(tmp_path / "model.pt", weights_only=False)["step"] == best["step"]


def test_a_stop_is_not_hidden_by_a_failed_save(pool, tmp_path, monkeypatch):
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    trainer = _trainer(tmp_path, _data(pool), steps=4)
    logged = []
    trainer.log = logged.append
    monkeypatch.setattr(trainer, "save_resume_state", lambda: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(Stop):
        trainer.run(progress=stop)
    assert "disk full" in logged[-1]


def test_each_method_gets_its_model_from_one_rule(pool):
    items, _ = pool
    positives = [i for i in items if i.mask.any()]
    only_positives = TrainingData(masked=positives[:6], tagged=positives, unlabeled=[], val=[])
    mixed = _data(pool)
    assert model_config("adasam", "micro_random", mixed).has_negatives
    assert not model_config("adasam", "micro_random", only_positives).has_negatives  # presence assumed
    teacher = model_config("meanteacher", "micro_random", mixed)
    assert (teacher.prompt, teacher.has_negatives, teacher.cam_prompted) == ("whole", False, False)
    assert model_config("adasam", "micro_random", mixed, cam_threshold=0.3, prompt="whole").cam_threshold == 0.3
    assert not model_config("adasam", "micro_random", mixed, prompt="whole").cam_prompted  # the ablation


def test_data_without_negatives_still_gives_useful_boxes(pool, tmp_path):
    items, val = pool
    positives = [i for i in items if i.mask.any()]
    data = TrainingData(masked=positives[:6], tagged=positives, unlabeled=positives[6:], val=[])
    assert not detect_negatives(data) and detect_negatives(_data(pool))
    trainer = _trainer(tmp_path, data, has_negatives=False)
    losses = [trainer.train_step() for _ in range(STEPS)]
    assert all("cls" not in step for step in losses)  # nothing to contrast: no classifier loss
    assert all(math.isfinite(v) for step in losses for v in step.values())
    predictor = Predictor(trainer.model)
    ious = []
    for item in val:
        if item.mask.any():
            p = predictor.predict(item.embedding, item.geometry)
            assert not p.box_is_fallback
            assert p.probability == 1.0  # presence is assumed, not asked of an untrained classifier
            ious.append(box_iou(p.box, mask_box(item.mask)))
    assert min(ious) > 0.2 and np.mean(ious) > 0.4


def test_freeze_adapter_and_supervised_leave_heads_alone(pool, tmp_path):
    for name, kwargs in (("frozen", {"freeze_adapter": True, "train_decoder": True}),
                         ("supervised", {"method": "supervised"})):
        trainer = _trainer(tmp_path / name, _data(pool), steps=2, **kwargs)
        adapter = {k: v.clone() for k, v in trainer.model.adapter.state_dict().items()}
        decoder = {k: v.clone() for k, v in trainer.model.backbone.mask_decoder.state_dict().items()}
        trainer.train_step()
        trainer.train_step()
        assert _states_equal(adapter, trainer.model.adapter.state_dict())
        assert not _states_equal(decoder, trainer.model.backbone.mask_decoder.state_dict())
        assert not any(k.startswith("adapter.") for k in trainer.model.trainable_state())


def test_trainer_needs_a_masked_positive(pool, tmp_path):
    items, _ = pool
    negatives = [i for i in items if not i.mask.any()]
    data = TrainingData(masked=negatives, tagged=list(items), unlabeled=[], val=[])
    with pytest.raises(ValueError, match="at least one"):
        _trainer(tmp_path, data)


def test_training_stops_when_val_stops_improving_and_keeps_the_best(pool, tmp_path, monkeypatch):
    """The budget rule of every method: stop after `patience` evaluations without a better val score; model.pt holds
    the best evaluation's weights, not the last."""
    scores = iter([0.1, 0.5, 0.4, 0.5, 0.3, 0.2, 0.45, 0.9])
    trainer = _trainer(tmp_path, _data(pool, with_val=True), steps=100, eval_every=2, patience=3)
    monkeypatch.setattr(trainer, "validate", lambda: {"n_lesion": 1, "dice_lesion_ungated": next(scores)})
    saved = {}
    original_save = save_checkpoint

    def remember(model, path, extra=None):
        if path.name == "model.pt":
            saved[extra["step"]] = {k: v.clone() for k, v in model.trainable_state().items()}
        original_save(model, path, extra)

    monkeypatch.setattr("model.train.save_checkpoint", remember)
    best = trainer.run()
    # 0.5 at step 4 is equalled at step 8 (equals keep the later); then 3 evaluations without it: stop at step 14
    assert [r["step"] for r in trainer.history] == [2, 4, 6, 8, 10, 12, 14] and trainer.step == 14
    assert best["step"] == 8 and sorted(saved) == [2, 4, 8]
    stored = torch.load(tmp_path / "model.pt", weights_only=False)
    assert stored["step"] == 8 and _states_equal(stored["state"], saved[8])
    assert not _states_equal(stored["state"], torch.load(tmp_path / "last.pt", weights_only=False)["state"])


def test_adasam_keeps_the_pretrained_decoder_unless_asked(pool, tmp_path):
    for name, train_decoder in (("frozen", False), ("trained", True)):
        trainer = _trainer(tmp_path / name, _data(pool), steps=2, train_decoder=train_decoder)
        decoder = {k: v.clone() for k, v in trainer.model.backbone.mask_decoder.state_dict().items()}
        adapter = {k: v.clone() for k, v in trainer.model.adapter.state_dict().items()}
        trainer.train_step()
        trainer.train_step()
        assert _states_equal(decoder, trainer.model.backbone.mask_decoder.state_dict()) != train_decoder
        assert not _states_equal(adapter, trainer.model.adapter.state_dict())  # the feedback path trains


@pytest.mark.parametrize("method", ["adasam", "supervised"])
def test_a_finished_trainer_frees_its_data_without_the_cycle_collector(pool, tmp_path, method):
    """A round's embeddings are gigabytes: they must go when the trainer goes, not when Python's cycle collector
    happens to run (the background trainer grew by ~2.5 GB a round on BUSI while a reference cycle held them)."""
    import gc
    import weakref

    trainer = _trainer(tmp_path, _data(pool, with_val=True), steps=2, method=method)
    trainer.run()
    data = weakref.ref(trainer.data)
    gc.disable()
    try:
        del trainer
        assert data() is None
    finally:
        gc.enable()


def test_training_a_model_leaves_the_shared_encoder_in_eval_mode():
    """A round's model shares the encoder with the backbone that fills the embedding cache (backbone_view). Training
    must not switch that encoder's batch norms to batch statistics: embeddings computed after a round would differ
    (on LiteMedSAM by up to 1.08 at a mean magnitude of 0.09) and be cached under the same key."""
    from model.adasam import build_adasam
    from model.backbones import backbone_view, build_backbone

    base = build_backbone("tiny_random")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in base.image_encoder.modules())
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = base.encode(images)
    model = build_adasam(AdaSamConfig(backbone="tiny_random"), backbone_view(base)).train()
    assert model.adapter.training and not base.image_encoder.training
    with torch.inference_mode():
        torch.testing.assert_close(base.encode(images), before)


# -- presence from the last weights -----------------------------------------------------------------------------------

def _head_state(model) -> dict:
    return {f"{part}.{k}": v for part in ("adapter", "classifier")
            for k, v in getattr(model.presence, part).state_dict().items()}


def _last_weights(payload: dict, source: str) -> dict:
    """The adapter and classifier of last.pt's student ("state") or EMA teacher ("teacher")."""
    return {k: v for k, v in payload[source].items() if k.startswith(("adapter.", "classifier."))}


@pytest.mark.parametrize("unlabeled", [True, False])
def test_model_pt_decides_presence_with_the_last_weights_and_prompts_with_the_picked_ones(pool, tmp_path, monkeypatch,
                                                                                           unlabeled):
    """The checkpoint val picks (step 2 here) keeps its map and decoder; presence comes from the last step's adapter
    and classifier: the EMA teacher's when unlabeled images train one, else the student's."""
    scores = iter([0.9, 0.1, 0.1])
    trainer = _trainer(tmp_path, _data(pool, with_val=True), steps=6, eval_every=2, patience=2,
                       use_unlabeled=unlabeled)
    monkeypatch.setattr(trainer, "validate", lambda: {"n_lesion": 1, "dice_lesion_ungated": next(scores)})
    picked = {}
    original_save = save_checkpoint

    def remember(model, path, extra=None):
        if path.name == "model.pt" and "presence_head" not in (extra or {}):
            picked.setdefault(extra["step"], {k: v.clone() for k, v in model.trainable_state().items()})
        original_save(model, path, extra)

    monkeypatch.setattr("model.train.save_checkpoint", remember)
    best = trainer.run()
    assert best["step"] == 2 and trainer.step == 6
    source = "teacher" if unlabeled else "state"
    assert best["presence_head"] == {"weights": "EMA teacher" if unlabeled else "student", "step": 6}
    model, payload = load_checkpoint(tmp_path, backbone=micro_backbone())
    assert model.config.presence_head and payload["presence_head"]["step"] == 6
    last = _last_weights(torch.load(tmp_path / "last.pt", weights_only=False), source)
    assert _states_equal(_head_state(model), last)
    map_weights = {k: v for k, v in model.trainable_state().items() if k.startswith(("adapter.", "classifier."))}
    assert _states_equal(map_weights, {k: v for k, v in picked[2].items() if k in map_weights})
    assert not _states_equal(map_weights, last)  # the two parts really differ

    _, val = pool
    embeddings, geometries = torch.stack([i.embedding for i in val]), [i.geometry for i in val]
    valid = valid_grid(geometries, model.grid)
    with torch.no_grad():
        head_probability = model.presence.classifier(model.presence.adapter(embeddings), valid).softmax(1)[:, 1]
        map_probability = model.cam(model.features(embeddings), valid)[1].softmax(1)[:, 1]
    predictions = Predictor(model).predict_batch(embeddings, geometries)
    assert [p.probability for p in predictions] == pytest.approx(head_probability.tolist(), abs=1e-6)
    assert not np.allclose([p.probability for p in predictions], map_probability.numpy(), atol=1e-4)
    without = load_checkpoint(tmp_path, backbone=micro_backbone())[0]
    without.presence, without.config.presence_head = None, False
    for with_head, plain in zip(predictions, Predictor(without).predict_batch(embeddings, geometries)):
        np.testing.assert_allclose(with_head.cam, plain.cam, atol=1e-6)  # the map that prompts is the picked one
        assert np.array_equal(with_head.raw_mask, plain.raw_mask)


def test_a_resumed_finished_run_keeps_its_presence_head_and_one_trained_further_takes_a_new_one(pool, tmp_path):
    data = _data(pool, with_val=True)
    _trainer(tmp_path, data, steps=4, eval_every=2).run()
    first = torch.load(tmp_path / "model.pt", weights_only=False)
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    for key in last["teacher"]:  # were the head copied again, it would now differ
        if key.startswith("classifier."):
            last["teacher"][key] = last["teacher"][key] + 1.0
    torch.save(last, tmp_path / "last.pt")

    def resumed(steps):
        trainer = _trainer(tmp_path, data, steps=steps, eval_every=2)
        trainer.load_resume_state(tmp_path / "last.pt")
        trainer.run()
        return trainer, torch.load(tmp_path / "model.pt", weights_only=False)

    def head(payload):
        return {k: v for k, v in payload["state"].items() if k.startswith("presence.")}

    _, second = resumed(4)
    assert second["presence_head"] == first["presence_head"] and second["config"]["presence_head"]
    assert head(first) and _states_equal(head(first), head(second))
    further, third = resumed(6)  # two more steps: the head is the new last step's
    assert third["presence_head"] == {"weights": "EMA teacher", "step": 6}
    teacher = _last_weights(torch.load(tmp_path / "last.pt", weights_only=False), "teacher")
    assert _states_equal({k.removeprefix("presence."): v for k, v in head(third).items()}, teacher)
    assert _states_equal(_head_state(further.model), teacher)


def test_no_presence_head_without_a_classifier_that_saw_negatives_nor_in_a_warm_start(pool, tmp_path):
    items, val = pool
    positives = [i for i in items if i.mask.any()]
    no_negatives = TrainingData(masked=positives[:6], tagged=positives, unlabeled=positives[6:], val=list(val))
    for name, data, kwargs in (("positives", no_negatives, {"has_negatives": False}),
                               ("supervised", _data(pool, with_val=True), {"method": "supervised"})):
        _trainer(tmp_path / name, data, steps=2, eval_every=2, **kwargs).run()
        model, payload = load_checkpoint(tmp_path / name, backbone=micro_backbone())
        assert model.presence is None and "presence_head" not in payload
    _trainer(tmp_path / "run", _data(pool, with_val=True), steps=2, eval_every=2).run()
    served, _ = load_checkpoint(tmp_path / "run", backbone=micro_backbone())
    assert served.presence is not None
    warm = build_training_model(model_config("adasam", "micro", _data(pool)), 0, micro_backbone(),
                                init=tmp_path / "run")
    assert warm.presence is None and not warm.config.presence_head  # the next round makes its own


def test_an_encoder_with_lora_gets_no_presence_head(pool, tmp_path):
    """The head would read the picked checkpoint's encoder, not the one its weights learned on."""
    trainer = _trainer(tmp_path, _data(pool, with_val=True), steps=2, eval_every=2)
    trainer.train_step()
    trainer.train_step()
    trainer._evaluate_and_save([], 0.0)
    trainer.model.config = AdaSamConfig(**{**asdict(trainer.model.config), "encoder_lora": 2})
    trainer.keep_presence_head()
    assert trainer.model.presence is None and "presence_head" not in torch.load(tmp_path / "model.pt",
                                                                                 weights_only=False)
    trainer.model.config = AdaSamConfig(**{**asdict(trainer.model.config), "encoder_lora": 0})
    trainer.keep_presence_head()  # the same run without LoRA does get one
    assert trainer.model.presence is not None


def test_written_val_dice_is_the_last_phase_s_figure():
    """The checkpoint's score is the map head's; the phases after it (calibration, the view's self-training, the
    view check) say what model.pt scores on val, each superseding the one before."""
    from model.train import written_val_dice

    best = {"score": 0.80, "step": 450, "val": {"n_lesion": 61}}
    assert written_val_dice(best) == 0.80
    best["calibration"] = {"cam_threshold": {"chosen": 0.4, "val_dice_lesion": {0.3: 0.79, 0.4: 0.81}}}
    assert written_val_dice(best) == 0.81
    best["view_self_training"] = {"kept": True, "val_dice_lesion_before": 0.81, "val_dice_lesion_after": 0.83}
    assert written_val_dice(best) == 0.83
    best["view_self_training"]["kept"] = False
    assert written_val_dice(best) == 0.81
    best["image_view_check"] = {"kept": False, "val_dice_lesion_with_view": 0.81, "val_dice_lesion_cam_alone": 0.82}
    assert written_val_dice(best) == 0.82
    assert written_val_dice({"score": 3.0, "step": 3, "val": {}}) is None  # no val: the score is the step
    assert written_val_dice({"score": 0.6, "step": 3, "val": {"n_lesion": 0}}) is None  # score is dice_all then
