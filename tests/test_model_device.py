"""Device choice: the GPU when there is one, ADASAM_DEVICE overrides; results always come back on the CPU."""
from __future__ import annotations

import numpy as np
import torch

from model.adasam import AdaSamConfig, build_adasam
from model.device import default_device, module_device
from model.inference import Predictor
from model_fixtures import blob_items, micro_backbone, one_torch_thread  # noqa: F401 (autouse)


def test_environment_overrides_the_device(monkeypatch):
    monkeypatch.setenv("ADASAM_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.delenv("ADASAM_DEVICE")
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_model_lives_on_its_backbones_device_and_hands_back_numpy():
    backbone = micro_backbone()
    model = build_adasam(AdaSamConfig(backbone="micro"), backbone)
    assert module_device(model) == model.device == backbone.pixel_mean.device
    item = blob_items(backbone, 1, seed=4)[0]
    prediction = Predictor(model).predict(item.embedding, item.geometry)
    assert isinstance(prediction.mask, np.ndarray) and isinstance(prediction.cam, np.ndarray)
    assert all(v.device.type == "cpu" for v in model.trainable_state().values())
