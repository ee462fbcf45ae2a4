"""Backbones by name: clear one-line errors for bad names and checkpoints; the real LiteMedSAM weights work."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.adasam import AdaSam, AdaSamConfig
from model.backbones import BACKBONES, BackboneError, build_backbone, parse_backbone_spec
from model.decoder import decode
from model.inference import Predictor
from model.metrics import dice
from model.preprocess import box_to_model, logits_to_original, mask_box
from model_fixtures import lite_blob, shared_backbone, one_torch_thread  # noqa: F401 (autouse)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_parse_backbone_spec():
    assert parse_backbone_spec("litemedsam") == ("litemedsam", None)
    assert parse_backbone_spec("sam_vit_b:/w/sam b.pth") == ("sam_vit_b", "/w/sam b.pth")
    assert parse_backbone_spec(" sam_vit_h : x.pth ") == ("sam_vit_h", "x.pth")


def test_a_test_backbone_refuses_a_checkpoint_it_would_ignore():
    for spec in ("micro_random:/missing.pth", "tiny_random:weights.pth"):
        with pytest.raises(BackboneError, match="takes no checkpoint"):
            build_backbone(spec)
    assert build_backbone("micro_random").name == "micro_random"


def test_unknown_backbone_is_one_line():
    with pytest.raises(BackboneError) as err:
        build_backbone("resnet50")
    message = _one_line(err)
    assert "resnet50" in message
    for name in BACKBONES:
        assert name in message


def test_sam_vit_without_checkpoint_asks_for_one():
    with pytest.raises(BackboneError) as err:
        build_backbone("sam_vit_b")
    message = _one_line(err)
    assert "sam_vit_b" in message and "checkpoint" in message


@pytest.mark.parametrize("spec", ["sam_vit_b", "sam_vit_l", "sam_vit_h", "litemedsam"])
def test_missing_checkpoint_file_is_named(tmp_path, spec):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(BackboneError) as err:
        build_backbone(f"{spec}:{missing}")
    message = _one_line(err)
    assert str(missing) in message and "not found" in message and "expected" in message


def test_unreadable_checkpoint_file_is_named(tmp_path):
    garbage = tmp_path / "sam_vit_b.pth"
    garbage.write_bytes(b"definitely not a pickle\n" * 10)
    with pytest.raises(BackboneError) as err:
        build_backbone(f"sam_vit_b:{garbage}")
    message = _one_line(err)
    assert str(garbage) in message and "not a readable PyTorch file" in message


def test_mismatched_checkpoint_is_named(tmp_path):
    path = tmp_path / "random.pth"
    torch.save({"layer.weight": torch.randn(4, 4), "layer.bias": torch.randn(4)}, path)
    with pytest.raises(BackboneError) as err:
        build_backbone("litemedsam", checkpoint=path)
    message = _one_line(err)
    assert str(path) in message and "does not match" in message and "LiteMedSAM" in message


def test_checkpoint_with_wrong_shapes_is_named(tmp_path):
    path = tmp_path / "shapes.pth"
    real = shared_backbone("litemedsam")
    key = "image_encoder." + next(iter(real.image_encoder.state_dict()))
    torch.save({"model": {key: torch.zeros(3)}}, path)  # the {"model": state} wrapper is unwrapped too
    with pytest.raises(BackboneError) as err:
        build_backbone(f"litemedsam:{path}")
    message = _one_line(err)
    assert str(path) in message and "does not match" in message


def test_not_a_state_dict_is_named(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(BackboneError) as err:
        build_backbone("litemedsam", checkpoint=path)
    assert str(path) in _one_line(err)


def test_tiny_random_is_reproducible_and_litemedsam_shaped():
    a = shared_backbone("tiny_random")
    state = torch.random.get_rng_state()
    b = build_backbone("tiny_random")
    assert torch.equal(state, torch.random.get_rng_state())  # building does not disturb the global RNG
    assert a.identity == b.identity == "tiny_random-0"
    assert a.embedding_shape == (256, 64, 64) and a.image_size == 256
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


@pytest.fixture(scope="module")
def lite():
    return lite_blob()


def test_litemedsam_loads_strictly_in_eval_mode(lite):
    backbone = lite["backbone"]
    assert backbone.name == "litemedsam" and not backbone.training
    assert backbone.identity.startswith("litemedsam-")
    assert backbone.embedding_shape == (256, 64, 64) and backbone.image_size == 256
    assert lite["embedding"].shape == (256, 64, 64)
    assert torch.isfinite(lite["embedding"]).all()
    assert shared_backbone("litemedsam") is backbone


def _box_prompt(lite) -> torch.Tensor:
    box = mask_box(lite["mask"])
    return torch.from_numpy(box_to_model(box, lite["geometry"]))[None]


def test_litemedsam_segments_a_blob_given_its_box(lite):
    backbone = lite["backbone"]
    with torch.no_grad():
        logits, iou = decode(backbone.mask_decoder, backbone.prompt_encoder, lite["embedding"][None],
                             boxes=_box_prompt(lite))
    assert logits.shape == (1, 1, 256, 256) and iou.shape == (1, 1)
    mask = (logits_to_original(logits[0], lite["geometry"])[0] > 0).numpy()
    assert mask.shape == lite["mask"].shape
    assert dice(mask, lite["mask"]) > 0.8


def test_untrained_adasam_is_the_pretrained_model(lite):
    """The adapter starts as the identity, so an untrained ADA-SAM refines exactly like the shipped decoder."""
    model = AdaSam(AdaSamConfig(backbone="litemedsam"), lite["backbone"])
    features = model.features(lite["embedding"][None])
    assert torch.equal(features, lite["embedding"][None])
    box = box_to_model(mask_box(lite["mask"]), lite["geometry"])
    mask = Predictor(model).refine(lite["embedding"], lite["geometry"],
                                   box=tuple(float(v) for v in box / lite["geometry"].scale))
    assert dice(mask, lite["mask"]) > 0.8


def test_litemedsam_box_with_positive_vs_negative_click(lite):
    """LiteMedSAM was trained on boxes (a lone click gives it nothing to go on), so clicks refine a box."""
    model = AdaSam(AdaSamConfig(backbone="litemedsam"), lite["backbone"])
    predictor = Predictor(model)
    ys, xs = np.nonzero(lite["mask"])
    centre = (float(xs.mean()), float(ys.mean()))
    box = tuple(float(v) for v in mask_box(lite["mask"]))
    positive = predictor.refine(lite["embedding"], lite["geometry"], positive=[centre], box=box)
    negative = predictor.refine(lite["embedding"], lite["geometry"], negative=[centre], box=box)
    cy, cx = round(centre[1]), round(centre[0])
    assert positive[cy, cx] and not negative[cy, cx]
    assert dice(positive, lite["mask"]) > 0.6


def test_a_model_loads_only_over_the_backbone_it_was_trained_on(tmp_path):
    """Same shapes, other weights (micro_random seed 1 against 0; LiteMedSAM against a fine-tuned copy): the state
    loaded without a word and every prediction was wrong."""
    from model.adasam import CheckpointError, build_adasam, load_checkpoint, save_checkpoint
    from model.backbones import build_micro_random

    model = build_adasam(AdaSamConfig(backbone="micro_random"), build_micro_random(0))
    save_checkpoint(model, tmp_path / "model.pt")
    assert load_checkpoint(tmp_path, build_micro_random(0))[0].backbone.identity == "micro_random-0-32"
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path, build_micro_random(1))
    assert "trained on backbone micro_random-0-32, not on this one (micro_random-1-32)" in _one_line(exc)


def test_a_checkpoint_from_elsewhere_loads_tensors_and_plain_values_only(tmp_path):
    """The trainer API loaded an upload with full unpickling after a weights-only check of the same bytes; it now
    loads it weights-only too, so nothing in the file can run code."""
    import os

    from model.adasam import CheckpointError, build_adasam, load_checkpoint, save_checkpoint
    from model.backbones import build_micro_random

    class Code:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    save_checkpoint(build_adasam(AdaSamConfig(backbone="micro_random"), build_micro_random(0)), tmp_path / "m.pt",
                    {"note": Code()})
    with pytest.raises(CheckpointError, match="not an ADA-SAM checkpoint"):
        load_checkpoint(tmp_path / "m.pt", build_micro_random(0), weights_only=True)
    assert not (tmp_path / "pwned").exists()
