"""model.decoder.decode: one prompt per image, batched, identical to segment-anything's own decoder."""
from __future__ import annotations

import threading

import pytest
import torch

import model.decoder as decoder_module
from model.decoder import compiled_decoding, decode
from model_fixtures import shared_backbone, one_torch_thread  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def parts():
    backbone = shared_backbone("tiny_random")
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(3, *backbone.embedding_shape, generator=generator)
    boxes = torch.tensor([[10.0, 20.0, 120.0, 200.0], [0.0, 0.0, 256.0, 256.0], [100.0, 50.0, 140.0, 90.0]])
    return backbone, embeddings, boxes


def test_batch_equals_each_image_alone(parts):
    backbone, embeddings, boxes = parts
    with torch.no_grad():
        logits, iou = decode(backbone.mask_decoder, backbone.prompt_encoder, embeddings, boxes=boxes)
        assert logits.shape == (3, 1, 256, 256) and iou.shape == (3, 1)
        for i in range(3):
            alone, alone_iou = decode(backbone.mask_decoder, backbone.prompt_encoder, embeddings[i:i + 1],
                                      boxes=boxes[i:i + 1])
            assert torch.allclose(logits[i], alone[0], atol=1e-4, rtol=1e-4)
            assert torch.allclose(iou[i], alone_iou[0], atol=1e-5)
    # the prompts are paired with their own image: different images give different masks
    assert not torch.allclose(logits[0], logits[2], atol=1e-2)


def test_single_image_matches_segment_anything(parts):
    """Same layers, same answer as the stock MaskDecoder's single-mask output."""
    backbone, embeddings, boxes = parts
    coords = torch.tensor([[[60.0, 80.0], [30.0, 30.0]]])
    labels = torch.tensor([[1.0, 0.0]])
    with torch.no_grad():
        for prompt in ({"boxes": boxes[:1], "points": None}, {"boxes": None, "points": (coords, labels)},
                       {"boxes": boxes[:1], "points": (coords, labels)}):
            ours, our_iou = decode(backbone.mask_decoder, backbone.prompt_encoder, embeddings[:1], **prompt)
            sparse, dense = backbone.prompt_encoder(points=prompt["points"], boxes=prompt["boxes"], masks=None)
            stock, stock_iou = backbone.mask_decoder(embeddings[:1], backbone.prompt_encoder.get_dense_pe(),
                                                     sparse, dense, multimask_output=False)
            assert torch.allclose(ours, stock, atol=1e-4, rtol=1e-4)
            assert torch.allclose(our_iou, stock_iou, atol=1e-5)


def test_decode_is_differentiable(parts):
    backbone, embeddings, boxes = parts
    features = embeddings[:2].clone().requires_grad_(True)
    logits, _ = decode(backbone.mask_decoder, backbone.prompt_encoder, features, boxes=boxes[:2])
    logits.mean().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


@pytest.fixture
def compiling(monkeypatch):
    """ADASAM_COMPILE on (the suite turns it off) and no compiled function left from another test."""
    monkeypatch.setenv(decoder_module.COMPILE_SWITCH, "1")
    monkeypatch.setattr(decoder_module, "_compiled", {})


def test_compiled_decoding_gives_the_eager_masks_where_it_applies(parts, compiling, monkeypatch):
    backbone, embeddings, boxes = parts
    runs = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: runs.append(kw) or real_compile(fn, **kw))
    args = (backbone.mask_decoder, backbone.prompt_encoder)
    with torch.no_grad():
        eager, eager_iou = decode(*args, embeddings, boxes=boxes)
        with compiled_decoding():
            compiled, compiled_iou = decode(*args, embeddings, boxes=boxes)
            decode(*args, embeddings[:1], boxes=boxes[:1])  # one image (a click): eager, no compile
        assert runs == [{"dynamic": True}] and decoder_module._compiled["decode"] is not None
        assert torch.allclose(compiled, eager, atol=1e-4) and torch.allclose(compiled_iou, eager_iou, atol=1e-5)
        assert torch.equal(compiled > 0, eager > 0)
    with compiled_decoding():  # with gradients: eager, so the trainer's steps are untouched
        logits, _ = decode(*args, embeddings[:2].requires_grad_(), boxes=boxes[:2])
        assert logits.grad_fn is not None


def test_a_failed_compile_falls_back_to_eager_decoding_for_good(parts, compiling, monkeypatch, caplog):
    backbone, embeddings, boxes = parts

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    args = (backbone.mask_decoder, backbone.prompt_encoder)
    with torch.no_grad():
        eager, _ = decode(*args, embeddings, boxes=boxes)
        with compiled_decoding():
            first, _ = decode(*args, embeddings, boxes=boxes)
            again, _ = decode(*args, embeddings, boxes=boxes)
    assert torch.equal(first, eager) and torch.equal(again, eager)
    assert decoder_module._compiled == {"decode": None}
    assert "without torch.compile" in caplog.text


def test_the_switch_and_other_threads_keep_eager_decoding(parts, monkeypatch):
    monkeypatch.setattr(decoder_module, "_compiled", {})
    compiles = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiles.append(fn) or fn)
    backbone, embeddings, boxes = parts
    args = (backbone.mask_decoder, backbone.prompt_encoder)
    with torch.no_grad(), compiled_decoding():  # ADASAM_COMPILE=0 (conftest)
        decode(*args, embeddings, boxes=boxes)
    monkeypatch.setenv(decoder_module.COMPILE_SWITCH, "1")
    with torch.no_grad(), compiled_decoding():
        elsewhere = threading.Thread(target=decode, args=(*args, embeddings), kwargs={"boxes": boxes})
        elsewhere.start()
        elsewhere.join()  # the UI's threads: eager however a trainer thread decodes
    assert compiles == []
    with torch.no_grad(), compiled_decoding():
        decode(*args, embeddings, boxes=boxes)
    assert len(compiles) == 1  # where it applies, it does
