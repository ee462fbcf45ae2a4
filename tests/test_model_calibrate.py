"""Prompt thresholds picked on val: the best CAM threshold and presence threshold are chosen and stored."""
from __future__ import annotations

import pytest
import torch

from model.adasam import AdaSamConfig, build_adasam, load_checkpoint
from model.calibrate import CAM_THRESHOLDS, MIN_PER_CLASS, _presence, calibrate
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
    for threshold, score in scores.items():  # each recorded score is what evaluate gives at that threshold
        model.config.cam_threshold = threshold
        assert evaluate(model, val, with_hd95=False)[0]["dice_lesion_ungated"] == pytest.approx(score)
    assert scores[report["cam_threshold"]["chosen"]] == max(scores.values())


def test_a_fixed_cam_threshold_is_kept(val):
    model = _model(cam_threshold=0.35)
    report = calibrate(model, val, cam_thresholds=None)
    assert model.config.cam_threshold == 0.35 and "cam_threshold" not in report


def test_presence_threshold_maximises_dice_all():
    model = _model()
    lesion = [{"lesion": True, "probability": p, "dice_ungated": 0.8} for p in (0.7, 0.8, 0.9, 0.95, 0.99)]
    clear = [{"lesion": False, "probability": p, "dice_ungated": 0.0} for p in (0.55, 0.6, 0.62, 0.65, 0.3)]
    report = _presence(model, lesion + clear)
    chosen = report["presence_threshold"]["chosen"]
    assert 0.65 < chosen <= 0.7 and model.config.presence_threshold == chosen
    assert report["presence_threshold"]["val_dice_all"][chosen] == pytest.approx(0.9)  # 5 x 0.8 + 5 x 1, / 10
    assert _presence(model, lesion + clear[:MIN_PER_CLASS - 1]) == {}  # too few negatives to say anything


def test_training_stores_the_calibrated_thresholds(val, tmp_path):
    items = blob_items(micro_backbone(), 8, negatives=2, seed=1)
    data = TrainingData(masked=items[:6], tagged=items, unlabeled=items[6:], val=list(val))
    model = build_adasam(AdaSamConfig(backbone="micro"), micro_backbone())
    trainer = Trainer(model, TrainConfig(steps=2, batch_masked=2, batch_unlabeled=2, batch_tagged=4, eval_every=2),
                      data, tmp_path, log=lambda line: None)
    best = trainer.run()
    saved, _ = load_checkpoint(tmp_path, micro_backbone())
    assert saved.config.cam_threshold == best["calibration"]["cam_threshold"]["chosen"]
    assert saved.config.presence_threshold == best["calibration"]["presence_threshold"]["chosen"]  # 5 + 5 in val
