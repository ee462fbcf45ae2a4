"""The mean-teacher baseline (`--method meanteacher`): supervised setup plus EMA-teacher consistency on unlabeled
images, with no classifier or CAM anywhere, so the label-efficiency benchmark can tell what the CAM adds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.cli import main as adasam
from model.adasam import AdaSamConfig, load_checkpoint
from model.inference import Predictor
from model.train import TrainConfig, Trainer, TrainingData, build_training_model
from model_fixtures import blob_items, micro_backbone, one_torch_thread, write_blob_dataset  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def pool():
    return blob_items(micro_backbone(), 10, negatives=2, seed=3)


def _trainer(tmp_path, pool, method: str, steps: int = 6, unlabeled: bool = True) -> Trainer:
    config = AdaSamConfig(backbone="micro", method=method, prompt="whole", cascade=0, has_negatives=False)
    model = build_training_model(config, 0, micro_backbone())
    data = TrainingData(masked=pool[:4], tagged=list(pool), unlabeled=pool[4:] if unlabeled else [], val=[])
    train_config = TrainConfig(steps=steps, batch_masked=2, batch_unlabeled=2, eval_every=1000, seed=0)
    return Trainer(model, train_config, data, tmp_path, log=lambda line: None)


def test_mean_teacher_adds_consistency_and_no_classifier_loss(pool, tmp_path):
    trainer = _trainer(tmp_path, pool, "meanteacher")
    classifier = {k: v.clone() for k, v in trainer.model.classifier.state_dict().items()}
    adapter = {k: v.clone() for k, v in trainer.model.adapter.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in trainer.model.backbone.mask_decoder.state_dict().items()}
    losses = [trainer.train_step() for _ in range(4)]
    assert all(set(step) == {"seg", "consistency"} for step in losses)  # no cam, cls or cls_consistency term
    assert all(torch.equal(v, trainer.model.classifier.state_dict()[k]) for k, v in classifier.items())
    assert all(torch.equal(v, trainer.model.adapter.state_dict()[k]) for k, v in adapter.items())
    # the EMA teacher follows the student's decoder (and only it)
    teacher = dict(trainer.teacher.backbone.mask_decoder.named_parameters())
    moved = [n for n, p in trainer.model.backbone.mask_decoder.named_parameters()
             if not torch.equal(teacher[n], decoder_before[n])]
    assert moved


def test_mean_teacher_without_unlabeled_is_supervised(pool, tmp_path):
    """Same seed, no unlabeled images: exactly the supervised baseline's weights (the only difference is the term)."""
    a = _trainer(tmp_path / "a", pool, "meanteacher", unlabeled=False)
    b = _trainer(tmp_path / "b", pool, "supervised", unlabeled=False)
    assert a.teacher is None
    for _ in range(3):
        assert set(a.train_step()) == set(b.train_step()) == {"seg"}
    sa, sb = a.model.trainable_state(), b.model.trainable_state()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_mean_teacher_cli_run_predicts_with_whole_image_box(tmp_path, capsys):
    data = write_blob_dataset(tmp_path / "data", n=18, negatives=4)
    run = tmp_path / "run"
    code = adasam(["train", "--data", str(data), "--out", str(run), "--method", "meanteacher", "--masks", "0.5",
                   "--backbone", "micro_random", "--cache", str(tmp_path / "cache"), "--steps", "4"])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "meanteacher" and summary["n_unlabeled"] > 0
    model, _ = load_checkpoint(run)
    assert (model.config.method, model.config.prompt, model.config.has_negatives) == ("meanteacher", "whole", False)
    item = blob_items(micro_backbone(), 1, seed=9)[0]
    p = Predictor(model).predict(item.embedding, item.geometry)
    h, w = item.mask.shape
    assert p.probability == 1.0 and not p.box_is_fallback
    assert np.allclose(p.box, [0, 0, w, h], atol=1.5)  # whole-image prompt, no CAM
    code = adasam(["evaluate", "--data", str(data), "--model", str(run), "--split", "test",
                   "--json", str(tmp_path / "eval.json"), "--cache", str(tmp_path / "cache")])
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["method"] == "meanteacher" and result["presence_auc"] != result["presence_auc"]  # NaN: no classifier
