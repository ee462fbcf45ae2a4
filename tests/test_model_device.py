"""Device choice: the GPU when there is one, ADASAM_DEVICE overrides; results always come back on the CPU; on glibc
large CPU tensors reuse freed memory."""
from __future__ import annotations

import ctypes
import platform
import resource

import numpy as np
import pytest
import torch

from model.adasam import AdaSamConfig, build_adasam
from model.backbones import build_backbone
from model.device import default_device, keep_freed_memory, module_device
from model.inference import Predictor
from model_fixtures import blob_items, micro_backbone, one_torch_thread  # noqa: F401 (autouse)


@pytest.mark.parametrize("gpu", [True, False])
def test_environment_overrides_the_device(monkeypatch, gpu):
    """Whether PyTorch sees a GPU is faked, so both branches run on any machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.delenv("ADASAM_DEVICE", raising=False)
    assert default_device() == torch.device("cuda" if gpu else "cpu")
    monkeypatch.setenv("ADASAM_DEVICE", "")  # set but empty: as if unset
    assert default_device() == torch.device("cuda" if gpu else "cpu")
    monkeypatch.setenv("ADASAM_DEVICE", "cpu")  # beats a GPU that is there
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv("ADASAM_DEVICE", "cuda:1")  # taken at its word, never silently replaced by the CPU
    if gpu:
        assert default_device() == torch.device("cuda", 1)
    else:  # asked for a GPU that is not there: refused at once, not at the first model call
        with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
            default_device()


def test_unknown_device_name_is_refused(monkeypatch):
    monkeypatch.setenv("ADASAM_DEVICE", "gpu")
    with pytest.raises(RuntimeError, match="gpu"):
        default_device()


def test_backbone_and_model_go_where_the_environment_says(monkeypatch):
    """`meta` is a device every machine has (shapes, no data): a backbone built with ADASAM_DEVICE=meta must live
    there, and so must the model around it, whatever the CPU default would have been."""
    monkeypatch.setenv("ADASAM_DEVICE", "meta")
    backbone = build_backbone("micro_random")
    model = build_adasam(AdaSamConfig(backbone="micro_random"), backbone)
    assert backbone.device.type == model.device.type == module_device(model).type == "meta"
    assert all(p.device.type == "meta" for p in model.parameters())
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # no weights: the CPU


def test_model_lives_on_its_backbones_device_and_hands_back_numpy():
    backbone = micro_backbone()
    model = build_adasam(AdaSamConfig(backbone="micro"), backbone)
    assert module_device(model) == model.device == backbone.pixel_mean.device
    item = blob_items(backbone, 1, seed=4)[0]
    prediction = Predictor(model).predict(item.embedding, item.geometry)
    assert isinstance(prediction.mask, np.ndarray) and isinstance(prediction.cam, np.ndarray)
    assert all(v.device.type == "cpu" for v in model.trainable_state().values())


def test_the_command_line_says_a_bad_device_in_one_line(monkeypatch, tmp_path, capsys):
    from app.cli import main
    from model_fixtures import write_blob_dataset

    data = write_blob_dataset(tmp_path / "data", n=8, negatives=2)
    monkeypatch.setenv("ADASAM_DEVICE", "gpu")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--backbone", "micro_random"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adasam train: error: ADASAM_DEVICE='gpu' is not a device name")
    assert len(err.splitlines()) == 1


def test_large_tensors_reuse_freed_memory_instead_of_faulting_it_in_again():
    assert keep_freed_memory()  # Linux with glibc, as CI's machine; `import model` has already done it
    for _ in range(30):  # the heap grows up to the trim threshold, then freed blocks are reused
        torch.ones(16, 256, 64, 64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16, 256, 64, 64)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 16384  # by default each of these 64 MiB
    # tensors is mapped afresh: 16384 page faults apiece


def test_elsewhere_than_glibc_the_allocator_is_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    monkeypatch.setattr(ctypes, "CDLL", lambda name: pytest.fail("touched a C library that is not glibc"))
    assert keep_freed_memory() is False
