"""LoRA on the encoder's attention, on the tiny random TinyViT (CPU)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model.adasam import AdaSamConfig, build_adasam, live_encoder_precision, load_checkpoint, save_checkpoint
from model.backbones import build_backbone
from model.lora import LoRAQKV, _qv_masks, apply_lora
from model_fixtures import shared_backbone, one_torch_thread  # noqa: F401 (autouse)


@pytest.fixture(scope="module")
def lora_encoder():
    """A fresh tiny_random encoder (LoRA mutates it), its output before LoRA, and the image used."""
    backbone = build_backbone("tiny_random")
    encoder = backbone.image_encoder
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = encoder(image)
    added = apply_lora(encoder, rank=2)
    return encoder, added, image, before


def test_lora_starts_as_the_identity(lora_encoder):
    encoder, added, image, before = lora_encoder
    with torch.no_grad():
        after = encoder(image)
    assert torch.allclose(after, before, atol=1e-5)


def test_only_lora_parameters_train(lora_encoder):
    encoder, added, _, _ = lora_encoder
    trainable = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    wrappers = [m for m in encoder.modules() if isinstance(m, LoRAQKV)]
    assert len(wrappers) == 3  # one attention per TinyViT transformer block (depth 1 in each stage after the conv one)
    assert len(trainable) == 4 * len(wrappers) == len(added)
    assert {id(p) for _, p in trainable} == {id(p) for p in added}
    assert all(any(k in n for k in ("q_down", "q_up", "v_down", "v_up")) for n, _ in trainable)
    assert all(p.shape[0] == 2 or p.shape[1] == 2 for p in added)  # rank 2
    assert all(not m.base.weight.requires_grad for m in wrappers)


def test_lora_gets_gradients_and_a_step_changes_the_output(lora_encoder):
    encoder, added, image, before = lora_encoder
    # eval mode, as AdaSam keeps the encoder: in train mode tiny_random's DropPath drops whole blocks at random, and
    # a dropped block's LoRA gets no gradient (this test failed 1 run in 8 that way)
    encoder.eval()
    out = encoder(image)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).mean().backward()
    ups = [p for n, p in encoder.named_parameters() if n.endswith(("q_up.weight", "v_up.weight"))]
    assert ups and all(p.grad is not None and p.grad.abs().sum() > 0 for p in ups)
    frozen = [p for p in encoder.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)
    optimizer = torch.optim.SGD(added, lr=1.0)
    optimizer.step()
    optimizer.zero_grad()
    encoder.eval()
    with torch.no_grad():
        after = encoder(image)
    assert not torch.allclose(after, before, atol=1e-4)


def _perturbed_qkv(base: nn.Linear, q_mask, v_mask) -> tuple[torch.Tensor, torch.Tensor]:
    wrapper = LoRAQKV(base, 2, q_mask, v_mask)
    x = torch.randn(5, base.in_features)
    with torch.no_grad():
        wrapper.q_up.weight.normal_()
        wrapper.v_up.weight.normal_()
        return wrapper(x) - base(x), x


def test_tinyvit_lora_touches_q_and_v_only():
    encoder = shared_backbone("tiny_random").image_encoder  # read only: the wrapper below is built aside
    attention = next(m for m in encoder.modules() if isinstance(getattr(m, "qkv", None), nn.Linear))
    q_mask, v_mask = _qv_masks(attention, attention.qkv.out_features)
    delta, _ = _perturbed_qkv(attention.qkv, q_mask, v_mask)
    per_head = delta.view(5, attention.num_heads, -1)
    q, k, v = per_head.split([attention.key_dim, attention.key_dim, attention.d], dim=2)  # TinyViT's own layout
    assert float(k.abs().max()) == 0.0
    assert v.abs().sum() > 0 and q.abs().sum() > 0


def test_sam_vit_layout_q_k_v_thirds():
    attention = nn.Module()
    attention.qkv = nn.Linear(8, 24)
    q_mask, v_mask = _qv_masks(attention, 24)
    assert q_mask.tolist() == [1] * 8 + [0] * 16 and v_mask.tolist() == [0] * 16 + [1] * 8
    delta, _ = _perturbed_qkv(attention.qkv, q_mask, v_mask)
    assert float(delta[:, 8:16].abs().max()) == 0.0 and delta[:, :8].abs().sum() > 0


def test_encoder_without_attention_is_refused():
    with pytest.raises(ValueError, match="no attention qkv"):
        apply_lora(nn.Sequential(nn.Conv2d(3, 4, 1)), rank=2)


def test_adasam_with_encoder_lora_keeps_lora_in_its_checkpoint(tmp_path):
    model = build_adasam(AdaSamConfig(backbone="tiny_random", encoder_lora=2))
    state = model.trainable_state()
    lora_keys = [k for k in state if k.startswith("backbone.image_encoder.") and ("_up." in k or "_down." in k)]
    assert len(lora_keys) == 12  # 3 attention blocks x (q_down, q_up, v_down, v_up)
    assert not [k for k in state if k.startswith("backbone.image_encoder.") and k not in lora_keys]
    assert any(k.startswith("adapter.") for k in state) and any(k.startswith("classifier.") for k in state)
    assert any(k.startswith("backbone.mask_decoder.") for k in state)
    assert not any(k.startswith("backbone.prompt_encoder.") for k in state)
    with torch.no_grad():
        for key in lora_keys:
            model.get_parameter(key).normal_()
    save_checkpoint(model, tmp_path / "lora.pt")
    loaded, payload = load_checkpoint(tmp_path / "lora.pt")
    assert payload["config"]["encoder_lora"] == 2
    for key in lora_keys:
        assert torch.equal(loaded.get_parameter(key), model.get_parameter(key)), key


def test_the_encoder_keeps_eval_mode_while_the_model_trains():
    """Its batch norms keep the pretrained statistics: LoRA adapts attention, not normalisation."""
    model = build_adasam(AdaSamConfig(backbone="tiny_random", encoder_lora=2)).train()
    assert model.training and model.adapter.training and not model.backbone.image_encoder.training
    assert not any(m.training for m in model.backbone.image_encoder.modules())


def test_with_encoder_lora_the_model_reads_images_and_the_segmentation_loss_reaches_the_encoder():
    model = build_adasam(AdaSamConfig(backbone="tiny_random", encoder_lora=2))
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    embeddings = model.embed(images)
    assert tuple(embeddings.shape[1:]) == model.backbone.embedding_shape
    frozen = build_adasam(AdaSamConfig(backbone="tiny_random"))
    assert torch.equal(frozen.embed(embeddings), embeddings)
    box = torch.tensor([[40.0, 40.0, 200.0, 200.0]] * 2)
    logits, _ = model.segment(model.features(images), box)
    logits.mean().backward()
    down = [p for n, p in model.named_parameters() if n.endswith("q_down.weight")]
    up = [p for n, p in model.named_parameters() if n.endswith("q_up.weight")]
    assert down and all(p.grad is not None for p in up) and any(p.grad.abs().sum() > 0 for p in up)


def test_lora_never_rewrites_an_encoder_it_shares():
    """A LoRA model gets its own copy of the encoder: the base that fills the embedding cache keeps its own weights."""
    from model.backbones import backbone_view

    base = build_backbone("tiny_random")
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = base.encode(image)
    model = build_adasam(AdaSamConfig(backbone="tiny_random", encoder_lora=2), backbone_view(base))
    assert any(isinstance(m, LoRAQKV) for m in model.backbone.image_encoder.modules())
    assert not any(isinstance(m, LoRAQKV) for m in base.image_encoder.modules())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("_up.weight"):
                parameter.normal_()
        torch.testing.assert_close(base.encode(image), before)


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_the_live_encoder_runs_in_bf16_on_a_gpu_with_bf16_and_in_float32_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    on_gpu = live_encoder_precision(torch.device("cuda"))
    assert isinstance(on_gpu, torch.autocast) and on_gpu.fast_dtype == torch.bfloat16 and on_gpu.device == "cuda"
    assert not isinstance(live_encoder_precision(torch.device("cpu")), torch.autocast)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert not isinstance(live_encoder_precision(torch.device("cuda")), torch.autocast)
    model = build_adasam(AdaSamConfig(backbone="tiny_random", encoder_lora=2))  # on the CPU: float32, unchanged
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model.embed(images), model.backbone.encode(images))
