"""Prompt -> mask on precomputed embeddings, one prompt per image.

Stock segment-anything `MaskDecoder.predict_masks` repeats every image embedding once per prompt in the batch, so a
batch of B images with one box each costs B^2 decoder passes. `decode` runs the same layers with the i-th prompt
paired with the i-th image only.

Inside `compiled_decoding()` (a trainer's rounds: validation, calibration, re-scoring) batches decoded without
gradients on the CPU go through torch.compile: half of an eager decode is copies and element-wise adds around the
attention's matrix products, which the compiler fuses. LiteMedSAM on BUSI, 1 thread: 0.07 s an image against
0.11-0.16 s eager, logits within 2e-5; the compile costs ~20 s once a process (~7 s from inductor's disk cache).
Single images (the annotator's clicks) stay eager: no compile pause where a person waits.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Callable, Iterator

import torch
from torch import nn

COMPILE_SWITCH = "ADASAM_COMPILE"  # "0": never compile (the test suite; a machine without a C++ compiler)
_state = threading.local()  # per thread: the UI's threads stay eager while a trainer thread compiles
_compiled: dict[str, Callable | None] = {}  # "decode": the compiled function, None once compiling failed
log = logging.getLogger(__name__)


@contextlib.contextmanager
def compiled_decoding() -> Iterator[None]:
    """Within this block, on this thread, `decode` runs batches of two or more without gradients on the CPU through
    torch.compile (unless ADASAM_COMPILE=0)."""
    before = getattr(_state, "on", False)
    _state.on = os.environ.get(COMPILE_SWITCH, "1") != "0"
    try:
        yield
    finally:
        _state.on = before


def encode_prompts(prompt_encoder: nn.Module, boxes: torch.Tensor | None = None,
                   points: tuple[torch.Tensor, torch.Tensor] | None = None,
                   masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (B x 4, model pixels), points ((B x N x 2, B x N labels 1/0/-1)) and/or mask logits -> prompt tokens."""
    return prompt_encoder(points=points, boxes=boxes, masks=masks)


def decode(mask_decoder: nn.Module, prompt_encoder: nn.Module, embeddings: torch.Tensor,
           boxes: torch.Tensor | None = None, points: tuple[torch.Tensor, torch.Tensor] | None = None,
           mask_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """B embeddings + B prompts -> (B x 1 x 4s x 4s mask logits, B IoU predictions), single-mask output."""
    compiled = _compiled_decode(embeddings)
    if compiled is not None:
        try:
            return compiled(mask_decoder, prompt_encoder, embeddings, boxes, points, mask_inputs)
        except Exception as exc:  # noqa: BLE001 - no compiler, an unsupported op: decode eagerly from now on
            _compiled["decode"] = None
            log.warning("decoding without torch.compile from now on: %s: %s", type(exc).__name__, exc)
    return _decode(mask_decoder, prompt_encoder, embeddings, boxes, points, mask_inputs)


def _compiled_decode(embeddings: torch.Tensor) -> Callable | None:
    """The compiled `_decode` where `compiled_decoding` asks for it and it pays (see the module's docstring)."""
    if not (getattr(_state, "on", False) and embeddings.shape[0] > 1 and embeddings.device.type == "cpu"
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")):  # a bf16 training step's
        # decodes: a second graph would compile for them
        return None
    if "decode" not in _compiled:
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # else "No CUDA runtime is found"
        # in the trainer's log on every CPU machine, which reads like a fault
        _compiled["decode"] = torch.compile(_decode, dynamic=True)
    return _compiled["decode"]


def _decode(mask_decoder: nn.Module, prompt_encoder: nn.Module, embeddings: torch.Tensor,
            boxes: torch.Tensor | None, points: tuple[torch.Tensor, torch.Tensor] | None,
            mask_inputs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    device = embeddings.device  # prompts are made on the CPU (numpy boxes, clicks): move them to the model
    boxes = None if boxes is None else boxes.to(device)
    points = None if points is None else (points[0].to(device), points[1].to(device))
    mask_inputs = None if mask_inputs is None else mask_inputs.to(device)
    sparse, dense = encode_prompts(prompt_encoder, boxes=boxes, points=points, masks=mask_inputs)
    batch = embeddings.shape[0]
    tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
    src = embeddings + dense
    image_pe = prompt_encoder.get_dense_pe().expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = mask_decoder.transformer(src, image_pe, tokens)
    iou_token_out = hs[:, 0, :]
    mask_token_out = hs[:, 1, :]  # token 0 of the mask tokens: SAM's single-mask output
    upscaled = mask_decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = mask_decoder.output_hypernetworks_mlps[0](mask_token_out)
    b, c, h, w = upscaled.shape
    logits = (hyper.unsqueeze(1) @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)
    iou = mask_decoder.iou_prediction_head(iou_token_out)[:, :1]
    return logits, iou
