"""The CAM threshold is picked on val after training and stored in the checkpoint; a fixed one is kept."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from model.adasam import AdaSamConfig, build_adasam, load_checkpoint
from model.calibrate import (CAM_THRESHOLDS, PRESENCE_DEFAULT, calibrate, calibrate_presence, presence_probabilities,
                             threshold_scores)
from model.evaluate import batch_inputs, evaluate
from model.image_view import ImageViewTraining
from model.inference import Predictor
from model.train import TrainConfig, Trainer, TrainingData
from model_fixtures import blob_items, micro_backbone, one_torch_thread  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def val():
    return blob_items(micro_backbone(), 10, negatives=5, seed=3, prefix="v")


def _model(**config):
    torch.manual_seed(0)
    return build_adasam(AdaSamConfig(backbone="micro", **config), micro_backbone()).eval()


def test_the_cam_threshold_with_the_best_val_dice_is_chosen(val):
    model = _model()
    report = calibrate(model, val)
    scores = report["cam_threshold"]["val_dice_lesion"]
    assert sorted(scores) == sorted(CAM_THRESHOLDS)
    chosen = report["cam_threshold"]["chosen"]
    assert model.config.cam_threshold == chosen and scores[chosen] == max(scores.values())
    for threshold, score in scores.items():  # each recorded score is what evaluate gives at that threshold
        model.config.cam_threshold = threshold
        assert evaluate(model, val, with_hd95=False)[0]["dice_lesion_ungated"] == pytest.approx(score)
    assert model.config.presence_threshold == 0.5  # calibrate() sets the CAM threshold only


def test_the_thresholds_share_their_decodes_where_their_boxes_agree(val, monkeypatch):
    model = _model()
    lesions = [i for i in val if i.mask.any()]
    predictor = Predictor(model)
    distinct = 0
    for item in lesions:
        boxes = set()
        for threshold in CAM_THRESHOLDS:
            model.config.cam_threshold = threshold
            boxes.add(predictor.automatic_prompt(*batch_inputs([item]))[3][0].numpy().tobytes())
        distinct += len(boxes)
    assert distinct < len(CAM_THRESHOLDS) * len(lesions)  # some boxes repeat: sharing is put to the test
    decoded = []
    real_segment = type(model).segment
    monkeypatch.setattr(type(model), "segment",
                        lambda self, features, *a, **k: decoded.append(len(features)) or real_segment(
                            self, features, *a, **k))
    model.config.cam_threshold = 0.45
    scores = threshold_scores(model, lesions, list(CAM_THRESHOLDS))
    assert sum(decoded) == distinct and model.config.cam_threshold == 0.45
    monkeypatch.setattr(type(model), "segment", real_segment)
    for threshold, score in scores.items():
        model.config.cam_threshold = threshold
        assert evaluate(model, lesions, with_hd95=False)[0]["dice_lesion_ungated"] == pytest.approx(score)
    assert threshold_scores(model, lesions, []) == {}


def test_nothing_to_calibrate_without_cam_prompts_or_lesions(val):
    for model in (_model(prompt="whole"), _model(method="supervised")):
        assert calibrate(model, val) == {} and model.config.cam_threshold == 0.4
    negatives = [i for i in val if not i.mask.any()]
    assert calibrate(_model(), negatives) == {}


def _train(tmp_path, val, **overrides):
    items = blob_items(micro_backbone(), 8, negatives=2, seed=1)
    data = TrainingData(masked=items[:6], tagged=items, unlabeled=items[6:], val=list(val))
    model = build_adasam(AdaSamConfig(backbone="micro", cam_threshold=0.45), micro_backbone())
    config = TrainConfig(steps=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, eval_every=2, **overrides)
    best = Trainer(model, config, data, tmp_path, log=lambda line: None).run()
    return best, load_checkpoint(tmp_path, micro_backbone())[0]


def test_training_stores_the_calibrated_threshold(val, tmp_path):
    best, saved = _train(tmp_path, val)
    assert saved.config.cam_threshold == best["calibration"]["cam_threshold"]["chosen"] in CAM_THRESHOLDS


def test_a_fixed_threshold_is_kept(val, tmp_path):
    best, saved = _train(tmp_path, val, calibrate=False)
    assert "calibration" not in best and saved.config.cam_threshold == 0.45


def test_the_presence_threshold_is_lowered_only_when_it_separates_better(val):
    model = _model()
    probability = presence_probabilities(model, val)
    present = np.array([bool(i.mask.any()) for i in val])

    def balanced(t: float) -> float:
        return ((probability[present] >= t).mean() + (probability[~present] < t).mean()) / 2

    report = calibrate_presence(model, val)["presence_threshold"]
    chosen = report["chosen"]
    assert model.config.presence_threshold == chosen <= PRESENCE_DEFAULT  # never stricter than 0.5
    assert report["val_balanced_accuracy"] == pytest.approx(balanced(chosen), abs=1e-4)
    assert report["at_default"] == pytest.approx(balanced(PRESENCE_DEFAULT), abs=1e-4)
    grid = np.linspace(0, PRESENCE_DEFAULT, 501)  # no threshold up to 0.5 separates val better
    assert max(balanced(t) for t in grid) <= report["val_balanced_accuracy"] + 1e-9
    if chosen < PRESENCE_DEFAULT:  # lowered only for a real gain
        assert report["val_balanced_accuracy"] > report["at_default"]


@pytest.mark.parametrize("lesions, target_free, chosen", [
    ((0.45, 0.42, 0.48, 0.9, 0.8), (0.2, 0.1, 0.3, 0.05, 0.6), 0.36),  # lowered: balanced accuracy 0.9 against 0.6
    ((0.6, 0.7, 0.8, 0.9, 0.55), (0.2, 0.1, 0.3, 0.05, 0.45), 0.5),  # 0.5 separates perfectly
    ((0.3, 0.9, 0.9, 0.9, 0.9), (0.4, 0.1, 0.1, 0.1, 0.1), 0.5),  # 0.2 only equals 0.5 (0.9): the higher is kept
])
def test_the_presence_threshold_is_lowered_exactly_when_that_separates_better(val, monkeypatch, lesions, target_free,
                                                                             chosen):
    """The same rule on probabilities set by hand, so that each case is sure to happen."""
    present = [bool(i.mask.any()) for i in val]
    given = iter(lesions), iter(target_free)
    probability = np.array([next(given[0]) if p else next(given[1]) for p in present])
    monkeypatch.setattr("model.calibrate.presence_probabilities", lambda model, items: probability)
    model = _model()
    report = calibrate_presence(model, val)["presence_threshold"]
    assert report["chosen"] == model.config.presence_threshold == pytest.approx(chosen)
    assert (report["val_balanced_accuracy"] > report["at_default"]) == (chosen < PRESENCE_DEFAULT)


def test_no_presence_threshold_to_choose_without_both_kinds_or_a_classifier(val):
    positives = [i for i in val if i.mask.any()]
    for model, items in ((_model(), positives), (_model(method="supervised"), val), (_model(has_negatives=False), val)):
        assert calibrate_presence(model, items) == {} and model.config.presence_threshold == 0.5


@pytest.mark.parametrize("image_view", [False, True])
def test_mostly_target_free_data_with_small_targets_still_gets_its_targets_found(tmp_path, image_view):
    """Two thirds of the images target-free, small targets, a short budget (the pooled-MLP classifier this project
    had kept every probability under 0.5 here, and a fixed 0.5 gate called every image empty). With the image view
    too, which then trains, and self-trains, on mostly empty masks."""
    backbone = micro_backbone()
    pool = blob_items(backbone, 30, negatives=20, seed=7, radius=(0.1, 0.15), with_images=image_view)
    val = blob_items(backbone, 12, negatives=8, seed=8, radius=(0.1, 0.15), prefix="v", with_images=image_view)
    masked = [i for i in pool if i.mask.any()][:8] + [i for i in pool if not i.mask.any()][:5]
    unlabeled = [replace(i, mask=None) for i in pool if i not in masked]
    data = TrainingData(masked=masked, tagged=pool, unlabeled=unlabeled, val=val)
    torch.manual_seed(0)
    model = build_adasam(AdaSamConfig(backbone="micro", image_view=image_view), backbone)
    config = TrainConfig(steps=100, batch_masked=4, batch_unlabeled=2, batch_tagged=8, eval_every=10,
                         lr_decoder=1e-3, lr_heads=5e-4, train_decoder=True, patience=0,  # a random micro decoder
                         # learns late: a fixed budget here
                         image_view=ImageViewTraining(steps=150, eval_every=25, patience=2, min_steps=50))
    best = Trainer(model, config, data, tmp_path, log=lambda line: None).run()
    if image_view:
        assert best["image_view"]["val_dice_lesion"] > 0.5
        assert best["view_self_training"]["proposals"] == len(unlabeled)
    saved = load_checkpoint(tmp_path, backbone)[0]
    summary, rows = evaluate(saved, val, with_hd95=False)
    gate = best["calibration"]["presence_threshold"]
    assert gate["val_balanced_accuracy"] >= max(gate["at_default"], 0.9)  # never a gate that says "all absent"
    assert saved.config.presence_threshold == gate["chosen"] <= 0.5
    assert best["step"] > 10 and summary["presence_auc"] > 0.8  # a later checkpoint, one that learned
    assert np.mean([r["dice"] > 0 for r in rows if r["lesion"]]) >= 0.75 and summary["dice_lesion"] > 0.3
