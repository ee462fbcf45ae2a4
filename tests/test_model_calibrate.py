"""The CAM threshold is picked on val after training and stored in the checkpoint; a fixed one is kept."""
from __future__ import annotations

import pytest
import torch

from model.adasam import AdaSamConfig, build_adasam, load_checkpoint
from model.calibrate import CAM_THRESHOLDS, calibrate
from model.evaluate import evaluate
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
    assert model.config.presence_threshold == 0.5  # not calibrated (it over-fitted BUSI's small val set)


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
