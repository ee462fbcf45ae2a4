"""model.openvino_decoder: box-prompted decoding under OpenVINO gives PyTorch's masks, for the weights it was given."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

import model.openvino_decoder as openvino_module
from model.adasam import AdaSamConfig, build_adasam
from model.decoder import decode
from model.inference import Predictor
from model.openvino_decoder import OpenVinoDecoder, export_decoder, openvino_decoder, decoder_identity
from model_fixtures import lite_blob, micro_backbone, tiny_blob_items, shared_backbone, one_torch_thread  # noqa: F401


@pytest.fixture(autouse=True)
def no_decoders_built_yet(monkeypatch):
    """Each test starts with an empty process cache of compiled decoders (and leaves the real one untouched)."""
    monkeypatch.setattr(openvino_module, "_BUILT", OrderedDict())


def same_masks(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to a few pixels on the boundary, where logits within the tolerance of 0 may fall either side."""
    return np.count_nonzero(a != b) <= 1e-3 * a.size


def test_matches_pytorch_on_litemedsam(tmp_path):
    """The real weights on a real embedding, several batch sizes from one export: logits within 1e-4 of their
    scale, so every mask pixel agrees."""
    lite = lite_blob()
    backbone = lite["backbone"]
    fast = OpenVinoDecoder(export_decoder(backbone.mask_decoder, backbone.prompt_encoder, tmp_path / "d.onnx"))
    embedding = lite["embedding"]
    boxes = torch.tensor([[30.0, 40.0, 160.0, 170.0], [0.0, 0.0, 256.0, 256.0], [90.0, 60.0, 130.0, 110.0]])
    for count in (1, 3):
        features = torch.stack([embedding, embedding.flip(-1), embedding * 0.9])[:count]
        logits, iou = fast(features, boxes[:count])
        with torch.no_grad():
            reference, reference_iou = decode(backbone.mask_decoder, backbone.prompt_encoder, features,
                                              boxes=boxes[:count])
        assert logits.shape == reference.shape == (count, 1, 256, 256) and iou.shape == (count, 1)
        assert (logits - reference).abs().max() < 1e-4 * reference.abs().max()
        clear = reference.abs() > 1e-3  # every pixel not within the tolerance of the threshold agrees
        assert torch.equal((logits > 0)[clear], (reference > 0)[clear])
        torch.testing.assert_close(iou, reference_iou, atol=1e-4, rtol=0)


def test_predictor_decodes_through_openvino_with_the_same_answers(monkeypatch):
    calls = []
    call = OpenVinoDecoder.__call__
    monkeypatch.setattr(OpenVinoDecoder, "__call__", lambda self, *a: calls.append(len(a[0])) or call(self, *a))
    backbone = shared_backbone("tiny_random")
    model = build_adasam(AdaSamConfig(method="adasam", cam_threshold=0.0), backbone)
    items = tiny_blob_items()
    embeddings, geometries = torch.stack([i.embedding for i in items]), [i.geometry for i in items]
    fast, plain = Predictor(model), Predictor(model, openvino=False)
    fast_predictions, plain_predictions = fast.predict_batch(embeddings, geometries), plain.predict_batch(
        embeddings, geometries)
    assert calls == [len(items)]  # the fast path decoded the batch, once
    assert isinstance(fast.box_decoder(), OpenVinoDecoder) and plain.box_decoder() is None
    for a, b in zip(fast_predictions, plain_predictions):
        assert same_masks(a.raw_mask, b.raw_mask) and a.raw_mask.any()
        assert a.uncertainty.segmentation == pytest.approx(b.uncertainty.segmentation, abs=1e-4)


def test_changed_decoder_weights_get_their_own_export():
    """A decoder that training changed is never decoded with the graph of its old weights; exporting leaves the
    modules in the mode they were in."""
    backbone = micro_backbone(seed=3)
    backbone.mask_decoder.train()
    first = openvino_decoder(backbone.mask_decoder, backbone.prompt_encoder)
    assert backbone.mask_decoder.training and not backbone.prompt_encoder.training
    assert openvino_decoder(backbone.mask_decoder, backbone.prompt_encoder) is first  # same weights: built once
    features = torch.randn(1, *backbone.embedding_shape, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[20.0, 20.0, 200.0, 200.0]])
    before = first(features, box)[0]
    identity = decoder_identity(backbone.mask_decoder, backbone.prompt_encoder)
    with torch.no_grad():
        backbone.mask_decoder.output_hypernetworks_mlps[0].layers[-1].bias.add_(0.5)
    assert decoder_identity(backbone.mask_decoder, backbone.prompt_encoder) != identity
    second = openvino_decoder(backbone.mask_decoder, backbone.prompt_encoder)
    assert second is not first
    after = second(features, box)[0]
    with torch.no_grad():
        reference = decode(backbone.mask_decoder, backbone.prompt_encoder, features, boxes=box)[0]
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, reference, atol=1e-4 * float(reference.abs().max()), rtol=0)


def test_a_decoder_openvino_cannot_build_falls_back_to_pytorch(monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter broke")

    backbone = micro_backbone(seed=4)
    monkeypatch.setattr(openvino_module, "export_decoder", broken_export)
    model = build_adasam(AdaSamConfig(method="adasam"), backbone)
    item = tiny_blob_items()[1]
    predictor = Predictor(model)
    embedding = torch.randn(*backbone.embedding_shape, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="OpenVINO decoder unavailable.*exporter broke"):
        prediction = predictor.predict(embedding, item.geometry)
    assert predictor.box_decoder() is None
    plain = Predictor(model, openvino=False).predict(embedding, item.geometry)
    assert same_masks(prediction.raw_mask, plain.raw_mask)
    assert openvino_module._BUILT[decoder_identity(backbone.mask_decoder, backbone.prompt_encoder)] is False


def test_a_runtime_failing_at_inference_falls_back_to_pytorch_for_good(monkeypatch):
    backbone = shared_backbone("tiny_random")
    model = build_adasam(AdaSamConfig(method="adasam", cam_threshold=0.0), backbone)
    item = tiny_blob_items()[1]
    predictor = Predictor(model)
    assert predictor.box_decoder() is not None

    def broken(self, *args):
        raise RuntimeError("runtime broke")

    monkeypatch.setattr(OpenVinoDecoder, "__call__", broken)
    with pytest.warns(UserWarning, match="OpenVINO decoder failed.*runtime broke"):
        prediction = predictor.predict(item.embedding, item.geometry)
    assert predictor.box_decoder() is None  # not tried again for this model
    plain = Predictor(model, openvino=False).predict(item.embedding, item.geometry)
    assert np.array_equal(prediction.raw_mask, plain.raw_mask)


def test_at_most_keep_compiled_decoders_stay_in_the_process():
    backbones = [micro_backbone(seed=10 + k) for k in range(openvino_module.KEEP + 1)]
    built = [openvino_decoder(b.mask_decoder, b.prompt_encoder) for b in backbones]
    assert len(openvino_module._BUILT) == openvino_module.KEEP and all(built)
    first = backbones[0]
    assert decoder_identity(first.mask_decoder, first.prompt_encoder) not in openvino_module._BUILT  # the oldest went
    assert openvino_decoder(first.mask_decoder, first.prompt_encoder) is not built[0]  # ... and is built anew
