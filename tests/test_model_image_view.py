"""The classifier's image view (model.image_view): its map lands where the encoder saw the image, it joins the CAM
that prompts SAM, it trains first and is then kept fixed, it survives checkpoints and resumes, `adasam train
--image-view` runs end to end, and a model gains or drops a view when warm-started into a run that asks for one."""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import model.train as train_module
from app.cli import main as cli
from model.adasam import AdaSamConfig, build_adasam, checkpoint_problem, load_checkpoint, save_checkpoint
from model.evaluate import Item, batch_inputs, evaluate
from model.image_view import ImageViewTraining, image_input, lesion_dice, mask_target, on_grid, probabilities
from model.inference import Predictor, valid_grid
from model.preprocess import Geometry, preprocess_image
from model.train import TrainConfig, Trainer, TrainingData, build_training_model, proposal_targets
from model_fixtures import blob_image, micro_backbone, one_torch_thread, write_blob_folder  # noqa: F401 (autouse)

QUICK_VIEW = ImageViewTraining(steps=40, eval_every=10, patience=2, min_steps=0)


def view_items(backbone, n: int, negatives: int, seed: int, prefix: str) -> list[Item]:
    """Blob images as items that carry both the embedding and the image view's input."""
    from model.cache import encode_batch

    rng = np.random.default_rng(seed)
    pairs = [blob_image(rng, (48, 56), present=k >= negatives) for k in range(n)]
    prepared = [preprocess_image(image, backbone.image_size) for image, _ in pairs]
    embeddings = encode_batch(backbone, torch.stack([t for t, _ in prepared])).float()
    return [Item(f"{prefix}{k}", embeddings[k].clone(), geometry, mask, bool(mask.any()), image_input(image))
            for k, ((image, mask), (_, geometry)) in enumerate(zip(pairs, prepared))]


@pytest.fixture(scope="module")
def data():
    backbone = micro_backbone()
    pool, val = view_items(backbone, 12, 3, seed=1, prefix="b"), view_items(backbone, 4, 1, seed=2, prefix="v")
    return TrainingData(masked=pool[:8], tagged=list(pool), unlabeled=pool[8:], val=val)


@pytest.fixture
def keep_view(monkeypatch):
    """For runs whose subject is not the last check (Trainer.check_image_view, tested below): the view stays."""
    monkeypatch.setattr(Trainer, "check_image_view", lambda self: None)


def view_model(seed: int = 0):
    return build_training_model(AdaSamConfig(backbone="micro", image_view=True), seed, micro_backbone())


def test_on_grid_follows_the_encoders_frame():
    """A 100 x 200 image fills rows 0-31 of the 64 x 64 grid (resized to 128 x 256, padded below): the top-left
    quarter of the view's stretched map lands on rows 0-15, columns 0-31, and padding reads 0."""
    probability = torch.zeros(1, 128, 128)
    probability[0, :64, :64] = 1
    grid = on_grid(probability, [Geometry(100, 200, 256)], 64)[0]
    assert grid[:15, :31].min() > 0.9
    assert grid[18:32].max() < 0.1 and grid[:32, 34:].max() < 0.1
    assert grid[32:].abs().max() == 0


def test_image_and_mask_are_stretched_alike():
    image, mask = blob_image(np.random.default_rng(3), (60, 150))
    x, y = image_input(image), mask_target(mask)
    assert x.shape == y.shape == (1, 128, 128) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert float(x[y > 0].mean()) > float(x[y == 0].mean()) + 0.3  # the bright blob is where its mask is


def test_the_view_joins_the_cam_and_needs_the_images(data):
    model = view_model().eval()
    items = data.val
    embeddings, geometries = torch.stack([i.embedding for i in items]), [i.geometry for i in items]
    images = torch.stack([i.image for i in items])
    with torch.no_grad():
        cams, _ = model.cam(model.features(embeddings), valid_grid(geometries, model.grid))
    joined = model.prompt_maps(cams, images, geometries)
    expected = (cams + on_grid(probabilities(model.image_view, images), geometries, model.grid)) / 2
    assert torch.allclose(joined, expected)
    with pytest.raises(ValueError, match="image view"):
        model.prompt_maps(cams, None, geometries)
    with pytest.raises(ValueError, match="image view"):
        Predictor(model).predict_batch(embeddings, geometries)
    assert len(Predictor(model).predict_batch(embeddings, geometries, images)) == len(items)
    plain = build_adasam(AdaSamConfig(backbone="micro"), micro_backbone())
    assert plain.image_view is None and plain.prompt_maps(cams, None, geometries) is cams


def test_the_view_trains_first_then_stays_fixed_and_is_checkpointed(data, tmp_path, keep_view):
    model = view_model()
    untrained = {k: v.clone() for k, v in model.image_view.state_dict().items()}
    val_images, val_masks = torch.stack([i.image for i in data.val]), [i.mask for i in data.val]
    untrained_dice = lesion_dice(model.image_view, val_images, val_masks)  # 0.17 here
    config = TrainConfig(steps=4, eval_every=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, seed=0,
                         image_view=QUICK_VIEW, view_self_training=False)
    trainer = Trainer(model, config, data, tmp_path, log=lambda line: None)
    trainer.train_image_view()
    report = trainer.image_view_report
    assert report["best_step"] in (10, 20, 30, 40) and report["stopped_at"] <= 40
    after_view = {k: v.clone() for k, v in model.image_view.state_dict().items()}
    assert any(not torch.equal(after_view[k], untrained[k]) for k in untrained)
    assert lesion_dice(model.image_view, val_images, val_masks) == pytest.approx(report["val_dice_lesion"])
    assert report["val_dice_lesion"] > untrained_dice + 0.15  # it learns the blobs (0.59 after 40 steps here)
    assert all(torch.equal(v, after_view[k]) for k, v in trainer.teacher.image_view.state_dict().items())
    best = trainer.run()
    assert best["image_view"] == report
    assert all(torch.equal(v, after_view[k]) for k, v in model.image_view.state_dict().items())  # kept fixed
    loaded, _ = load_checkpoint(tmp_path / "model.pt", micro_backbone())
    assert loaded.config.image_view
    assert all(torch.equal(v, after_view[k]) for k, v in loaded.image_view.state_dict().items())
    assert checkpoint_problem(tmp_path / "model.pt") is None  # the web app serves it

    resumed = Trainer(view_model(seed=1), config, data, tmp_path, log=lambda line: None)
    resumed.load_resume_state(tmp_path / "last.pt")
    resumed.train_image_view()  # done already: nothing trains, the view comes from last.pt
    assert resumed.image_view_report == report
    assert all(torch.equal(v, after_view[k]) for k, v in resumed.model.image_view.state_dict().items())


def test_a_stop_during_the_view_is_answered_after_one_of_its_steps(data, tmp_path, keep_view):
    """The background trainer asks to stop through `stop_check`; a fresh view trains for minutes before the first
    step's `progress`, so the view must ask too (a trainer deaf to SIGTERM kept computing after its server was
    gone). `progress` is not called there: under torchrun it is a collective and rank 0 trains the view alone."""
    checks, reports = [], []

    def stop_check():
        checks.append(trainer.step)
        if len(checks) == 3:
            raise KeyboardInterrupt("stop")

    config = TrainConfig(steps=4, eval_every=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, seed=0,
                         image_view=QUICK_VIEW, view_self_training=False)
    trainer = Trainer(view_model(), config, data, tmp_path, log=lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(progress=lambda done, total: reports.append(done), stop_check=stop_check)
    assert checks == [0, 0, 0] and reports == []  # after each of the view's first three steps, before any other
    assert trainer.image_view_report is None and not (tmp_path / "last.pt").exists()  # a resumed run trains it anew


def test_the_view_is_scored_and_kept_as_an_average_of_its_weights_while_training_goes_on_from_its_own(data):
    """fit scores the exponential moving average of the steps' weights (the decay ramping up over the first
    updates) and keeps the best average; the next step starts from the step's own weights, not from the average."""
    from model.image_view import build_unet, fit

    torch.manual_seed(0)
    net = build_unet((4, 8))
    images = torch.stack([i.image for i in data.masked])
    targets = torch.stack([mask_target(i.mask) for i in data.masked])
    stepped, scored, scores = [], [], iter([0.2, 0.5, 0.4])

    def copy() -> dict:
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    def score() -> float:
        scored.append(copy())
        return next(scores)

    config = ImageViewTraining(steps=30, eval_every=10, patience=0, min_steps=0, ema_decay=0.9)
    result = fit(net, images, targets, score, config, seed=0, after_step=lambda: stepped.append(copy()))
    expected = {k: v.clone() for k, v in stepped[0].items()}  # the average starts as the first step's weights
    for n, state in enumerate(stepped[1:], start=1):
        rate = min(0.9, (1 + n) / (10 + n))
        expected = {k: expected[k] * rate + state[k] * (1 - rate) for k in expected}
        if n + 1 in (10, 20, 30):
            assert all(torch.allclose(scored[(n + 1) // 10 - 1][k], expected[k], atol=1e-6) for k in expected)
    assert not all(torch.equal(scored[0][k], stepped[9][k]) for k in expected)  # the average, not step 10's own
    assert result["best_step"] == 20 and all(torch.equal(v, scored[1][k]) for k, v in net.state_dict().items())


def test_a_bfloat16_fit_computes_its_steps_in_bfloat16_and_keeps_float32_weights(data, monkeypatch):
    from model.image_view import build_unet, fit

    torch.manual_seed(0)
    net = build_unet((4, 8))
    images = torch.stack([i.image for i in data.masked])
    targets = torch.stack([mask_target(i.mask) for i in data.masked])
    seen = []
    net.register_forward_hook(lambda module, args, out: seen.append(out.dtype) if module.training else None)
    config = ImageViewTraining(steps=4, eval_every=2, patience=0, min_steps=0)
    result = fit(net, images, targets, lambda: 0.5, config, seed=0, dtype=torch.bfloat16)
    assert seen == [torch.bfloat16] * 4 and result["stopped_at"] == 4  # every training step
    assert {p.dtype for p in net.parameters()} == {torch.float32}


def test_proposals_become_targets_by_the_tags(data):
    """Tagged target-free: empty; tagged present: the decoder's mask whatever the gate says; untagged: the gated
    proposal, as the annotator would see it."""
    model = view_model().eval()
    items = [replace(i, tag=tag) for i, tag in zip(data.val, (False, True, None, None))]
    model.config.presence_threshold = 1.01  # the gate says "no finding" everywhere
    predictions = Predictor(model).predict_batch(*batch_inputs(items))
    assert all(p.raw_mask.any() for p in predictions)  # an untrained map still boxes something
    targets = proposal_targets(model, items)
    assert not targets[0].any()
    assert np.array_equal(targets[1], predictions[1].raw_mask)
    assert not targets[2].any() and not targets[3].any()
    model.config.presence_threshold = 0.0
    assert np.array_equal(proposal_targets(model, items)[2], predictions[2].raw_mask)


def self_trained(data, tmp_path, fit_view=None, monkeypatch=None):
    """A short run whose view then self-trains; `fit_view` replaces the view's training in that last phase."""
    config = TrainConfig(steps=2, eval_every=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, seed=0,
                         image_view=QUICK_VIEW)
    trainer = Trainer(view_model(), config, data, tmp_path, log=lambda line: None)
    trainer.train_image_view()
    first_view = {k: v.clone() for k, v in trainer.model.image_view.state_dict().items()}
    if fit_view is not None:
        monkeypatch.setattr(train_module, "fit", fit_view)
    return trainer, trainer.run(), first_view


def test_the_view_self_trains_on_the_models_proposals_once(data, tmp_path, keep_view):
    seen = {}
    real_fit = train_module.fit

    def recording_fit(net, images, targets, score, config, seed, log, **hooks):
        seen.update(images=len(images), targets=targets, min_steps=config.min_steps)
        return real_fit(net, images, targets, score, config, seed, log, **hooks)

    data = replace(data, unlabeled=[replace(data.unlabeled[0], tag=False, mask=None),
                                    *[replace(i, mask=None) for i in data.unlabeled[1:]]])
    with pytest.MonkeyPatch.context() as patch:
        trainer, best, first_view = self_trained(data, tmp_path, recording_fit, patch)
    report = best["view_self_training"]
    assert seen["images"] == len(data.masked) + len(data.unlabeled) == 12 and seen["min_steps"] == 0
    assert report["proposals"] == len(data.unlabeled)
    assert not seen["targets"][len(data.masked)].any()  # tagged target-free above
    assert all(t.any() for t in seen["targets"][len(data.masked) + 1:])  # the decoder's masks
    assert report["kept"] == (report["val_dice_lesion_after"] >= report["val_dice_lesion_before"])
    payload = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=False)
    assert payload["view_self_training"] == report
    stored = {k[len("image_view."):]: v for k, v in payload["state"].items() if k.startswith("image_view.")}
    changed = any(not torch.equal(stored[k], first_view[k]) for k in first_view)
    assert changed == report["kept"]
    again = Trainer(view_model(seed=1), trainer.config, data, tmp_path, log=lambda line: None)
    again.load_resume_state(tmp_path / "last.pt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "fit", lambda *a, **k: pytest.fail("the view self-trained twice"))
        assert again.run()["view_self_training"] == report


def test_without_target_free_images_every_proposal_is_a_target(data, tmp_path, monkeypatch):
    """No negatives (presence assumed): untagged unlabeled images give the decoder's mask however the classifier
    rates them, so the view self-trains on masks, never on empties the classifier made up."""
    positives = [i for i in data.tagged if i.mask.any()]
    unlabeled = [replace(i, mask=None, tag=None) for i in positives[5:]]
    only_positives = TrainingData(masked=positives[:5], tagged=positives[:5], unlabeled=unlabeled,
                                  val=[i for i in data.val if i.mask.any()])
    model = build_training_model(AdaSamConfig(backbone="micro", image_view=True, has_negatives=False,
                                              presence_threshold=0.999), 0, micro_backbone())  # a gate only an
    # assumed presence (1.0) passes
    seen = {}
    real_fit = train_module.fit

    def recording_fit(net, images, targets, score, config, seed, log, **hooks):
        seen["last"] = targets  # the first call trains the view; self-training is the second
        return real_fit(net, images, targets, score, config, seed, log, **hooks)

    monkeypatch.setattr(train_module, "fit", recording_fit)
    config = TrainConfig(steps=2, eval_every=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, seed=0,
                         image_view=QUICK_VIEW)
    best = Trainer(model, config, only_positives, tmp_path, log=lambda line: None).run()
    assert best["view_self_training"]["proposals"] == len(unlabeled) == 4
    assert len(seen["last"]) == 9 and all(t.any() for t in seen["last"][5:])


def test_a_self_trained_view_that_scores_lower_on_val_is_not_kept(data, tmp_path, monkeypatch, keep_view):
    def ruin(net, images, targets, score, config, seed, log, **options):
        net.forward = corner
        for parameter in net.parameters():
            parameter.data.add_(1.0)  # weights that differ from the first view's, as any training leaves them
        return {"best_step": 0, "score": 0.0, "stopped_at": 0, "history": []}

    _, best, first_view = self_trained(data, tmp_path, ruin, monkeypatch)
    report = best["view_self_training"]
    assert not report["kept"] and report["val_dice_lesion_after"] < report["val_dice_lesion_before"]
    loaded, _ = load_checkpoint(tmp_path / "model.pt", micro_backbone())
    assert all(torch.equal(v, first_view[k]) for k, v in loaded.image_view.state_dict().items())


def test_an_unchanged_view_is_kept_as_the_later_of_equals(data, tmp_path, monkeypatch):
    _, best, first_view = self_trained(
        data, tmp_path, lambda net, *a, **k: {"best_step": 0, "score": 0.5, "stopped_at": 0}, monkeypatch)
    assert best["view_self_training"]["kept"]
    assert best["view_self_training"]["val_dice_lesion_after"] == best["view_self_training"]["val_dice_lesion_before"]


def corner(x: torch.Tensor) -> torch.Tensor:
    """A view sure the target is in the top-left corner of every image."""
    out = torch.full_like(x, -20.0)
    out[..., :16, :16] = 20.0
    return out


def test_a_view_that_does_worse_than_the_cam_alone_is_dropped(data, tmp_path):
    config = TrainConfig(steps=2, eval_every=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, seed=0,
                         image_view=QUICK_VIEW, view_self_training=False)
    trainer = Trainer(view_model(), config, data, tmp_path, log=lambda line: None)
    trainer.train_image_view()
    trainer.model.image_view.forward = corner
    best = trainer.run()
    report = best["image_view_check"]
    assert not report["kept"] and report["val_dice_lesion_cam_alone"] > report["val_dice_lesion_with_view"]
    loaded, payload = load_checkpoint(tmp_path / "model.pt", micro_backbone())
    assert loaded.image_view is None and not loaded.config.image_view and payload["image_view_check"] == report
    assert checkpoint_problem(tmp_path / "model.pt") is None
    items = data.val
    Predictor(loaded).predict_batch(torch.stack([i.embedding for i in items]), [i.geometry for i in items])  # no
    # images needed any more
    again = Trainer(view_model(), config, data, tmp_path, log=lambda line: None)  # rebuilt with a view, as on resume
    again.load_resume_state(tmp_path / "last.pt")
    again.run()
    reloaded, _ = load_checkpoint(tmp_path / "model.pt", micro_backbone())
    assert reloaded.image_view is None and not reloaded.config.image_view  # the dropped view stays dropped


def test_the_check_keeps_the_view_and_its_threshold_where_the_cam_alone_does_no_better(data, tmp_path,
                                                                                       monkeypatch):
    config = TrainConfig(steps=2, eval_every=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, seed=0,
                         image_view=QUICK_VIEW, view_self_training=False)
    trainer = Trainer(view_model(), config, data, tmp_path, log=lambda line: None)
    trainer.train_image_view()
    view = {k: v.clone() for k, v in trainer.model.image_view.state_dict().items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "check_image_view", lambda self: None)
        trainer.run()
    threshold = load_checkpoint(tmp_path / "model.pt", micro_backbone())[0].config.cam_threshold

    def cam_alone_scores_nothing(model, val, measured=None):  # the CAM alone, calibrated: a threshold, no Dice
        model.config.cam_threshold = 0.45
        return {"cam_threshold": {"chosen": 0.45, "val_dice_lesion": {0.45: 0.0}}}

    monkeypatch.setattr(train_module, "calibrate", cam_alone_scores_nothing)
    trainer.check_image_view()
    report = trainer.best["image_view_check"]
    assert report["kept"] and report["val_dice_lesion_cam_alone"] == 0.0
    loaded, _ = load_checkpoint(tmp_path / "model.pt", micro_backbone())
    assert loaded.config.image_view and loaded.config.cam_threshold == threshold != 0.45
    assert all(torch.equal(v, view[k]) for k, v in loaded.image_view.state_dict().items())


def test_the_check_takes_the_with_view_figure_from_calibration_without_decoding_val_again(data, tmp_path,
                                                                                        monkeypatch):
    config = TrainConfig(steps=2, eval_every=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, seed=0,
                         image_view=QUICK_VIEW, view_self_training=False)
    lesions = [i for i in data.val if i.mask.any()]
    real_check, expected = Trainer.check_image_view, {}

    def check_without_evaluate(self):
        saved, _ = load_checkpoint(self.out / "model.pt", micro_backbone())
        expected["with_view"] = evaluate(saved, lesions, with_hd95=False)[0]["dice_lesion_ungated"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(train_module, "evaluate", lambda *a, **k: pytest.fail("val decoded again for the check"))
            real_check(self)

    monkeypatch.setattr(Trainer, "check_image_view", check_without_evaluate)
    best = Trainer(view_model(), config, data, tmp_path, log=lambda line: None).run()
    assert best["image_view_check"]["val_dice_lesion_with_view"] == pytest.approx(expected["with_view"])


def test_the_view_refuses_items_without_images(data, tmp_path):
    bare = replace(data, masked=[replace(i, image=None) for i in data.masked])
    trainer = Trainer(view_model(), TrainConfig(steps=2, image_view=QUICK_VIEW), bare, tmp_path,
                      log=lambda line: None)
    with pytest.raises(ValueError, match="lack one"):
        trainer.train_image_view()


def run_cli(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli([str(a) for a in argv])
    return code, err.getvalue()


def test_train_evaluate_and_predict_with_an_image_view(tmp_path, monkeypatch):
    real_fit = train_module.fit
    monkeypatch.setattr(train_module, "fit", lambda net, images, targets, score, config, seed, log, **hooks: real_fit(
        net, images, targets, score, replace(config, steps=4, eval_every=2, min_steps=0), seed, log, **hooks))
    data = write_blob_folder(tmp_path / "data", [k not in (0, 5) for k in range(10)])
    run, cache = tmp_path / "run", tmp_path / "cache"
    code, err = run_cli("train", "--data", data, "--out", run, "--backbone", "tiny_random", "--steps", 2,
                        "--cache", cache, "--masks", 0.5, "--image-view")
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model_config"]["image_view"] is True and summary["best"]["image_view"]["stopped_at"] == 4
    code, err = run_cli("evaluate", "--data", data, "--model", run, "--split", "test", "--json",
                        tmp_path / "eval.json", "--cache", cache)
    assert code == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())["n_images"] == 2
    code, err = run_cli("predict", "--model", run, data / "images" / "img_001.png", "--out", tmp_path / "pred",
                        "--cache", cache)
    assert code == 0, err
    assert (tmp_path / "pred" / "img_001_mask.png").is_file()
    code, err = run_cli("train", "--data", data, "--out", tmp_path / "no", "--backbone", "tiny_random",
                        "--cache", cache, "--image-view", "--method", "supervised")
    assert code != 0 and "--image-view" in err and not (tmp_path / "no").exists()


def test_adasam_trains_with_the_view_by_default_and_steps_caps_it(tmp_path):
    data = write_blob_folder(tmp_path / "data", [k not in (0, 5) for k in range(10)])
    common = ("--data", data, "--backbone", "tiny_random", "--cache", tmp_path / "cache", "--masks", 0.5)

    def summary(name: str, *extra) -> dict:
        code, err = run_cli("train", *common, "--out", tmp_path / name, *extra)
        assert code == 0, err
        return json.loads((tmp_path / name / "summary.json").read_text())

    default = summary("default", "--steps", 3)
    assert default["model_config"]["image_view"] is True
    assert default["best"]["image_view"]["stopped_at"] == 3  # not the view's own floor of 1500 steps
    assert "image_view_check" in default["best"]
    plain = summary("plain", "--steps", 2, "--no-image-view")
    assert plain["model_config"]["image_view"] is False and "image_view" not in plain["best"]
    for name, extra in (("supervised", ("--method", "supervised")), ("whole", ("--prompt", "whole"))):
        assert summary(name, "--steps", 2, *extra)["model_config"]["image_view"] is False  # the view needs the CAM


def test_a_warm_start_gains_a_fresh_view_or_drops_one(tmp_path):
    plain = build_adasam(AdaSamConfig(backbone="micro"), micro_backbone())
    save_checkpoint(plain, tmp_path / "plain.pt")
    gained = build_training_model(AdaSamConfig(backbone="micro", image_view=True), 0, micro_backbone(),
                                  init=tmp_path / "plain.pt")
    assert gained.image_view is not None and gained.config.image_view
    assert all(torch.equal(v, plain.adapter.state_dict()[k]) for k, v in gained.adapter.state_dict().items())
    save_checkpoint(gained, tmp_path / "view.pt")
    dropped = build_training_model(AdaSamConfig(backbone="micro"), 0, micro_backbone(), init=tmp_path / "view.pt")
    assert dropped.image_view is None and not any(k.startswith("image_view.") for k in dropped.trainable_state())



def test_a_mask_target_keeps_its_place():
    """The view's target sits where `image_input` puts its image: sampled at pixel centres, not corners (the mean
    shift over rectangles at many offsets, in target pixels; torch's "nearest" gives +0.5)."""
    errors = []
    for offset in range(40):
        mask = np.zeros((600, 500), bool)
        mask[200 + offset:330 + offset, 120 + offset:300 + offset] = True
        target = mask_target(mask)[0].numpy()
        ys, xs = np.nonzero(target)
        scale = np.array([target.shape[1] / 500, target.shape[0] / 600])
        errors.append(np.array([xs.mean() + 0.5, ys.mean() + 0.5]) - np.array([210 + offset, 265 + offset]) * scale)
    np.testing.assert_allclose(np.mean(errors, axis=0), 0, atol=0.1)
