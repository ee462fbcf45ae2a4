"""Box-prompted decoding under OpenVINO on the CPU: what proposals, validation, calibration and re-scoring run.

ADA-SAM keeps the pretrained mask decoder frozen by default, so every round's model decodes with the same weights:
the decoder (with the prompt encoder's box path) is exported once per process and weights, and each decode after
that costs a third of PyTorch's. Measured on 2 cores (AVX-512), LiteMedSAM, batches of 16 cached BUSI embeddings:
0.035 s per image against 0.10-0.13 s, logits within 5e-5 of PyTorch's (their scale ~30). The export is keyed by the
weights themselves (SHA-256) and the prompt encoder's sizes, so a decoder that training changes is exported again
when it is next looked up (a `Predictor` looks it up once: build a new one after changing weights in place).
PyTorch stays where it must: training (gradients), clicks and mask prompts (refinement), GPUs.
"""
from __future__ import annotations

import hashlib
import tempfile
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from model.decoder import decode
from model.openvino_runtime import CompiledGraph, export_onnx

KEEP = 4  # compiled decoders kept per process (the serving model's, a round's, a baseline's ...)


class _BoxDecoding(nn.Module):
    """`model.decoder.decode` with box prompts as a module: the graph that is exported."""

    def __init__(self, mask_decoder: nn.Module, prompt_encoder: nn.Module) -> None:
        super().__init__()
        self.mask_decoder, self.prompt_encoder = mask_decoder, prompt_encoder

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decode(self.mask_decoder, self.prompt_encoder, features, boxes=boxes)


class OpenVinoDecoder(CompiledGraph):
    """Callable like `decode(..., boxes=...)`: B x C x h x w features and B x 4 boxes (model pixels) -> (B x 1 x H x W
    mask logits, B x 1 IoU predictions), float32 on the CPU."""

    def __call__(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, iou = self.run(features.detach().float().cpu().contiguous().numpy(),
                               boxes.detach().float().cpu().contiguous().numpy())
        return torch.from_numpy(logits), torch.from_numpy(iou)


def export_decoder(mask_decoder: nn.Module, prompt_encoder: nn.Module, path: Path) -> Path:
    """Export box-prompted decoding (any batch size) to ONNX at `path`."""
    dim, size = prompt_encoder.embed_dim, prompt_encoder.image_embedding_size
    example = (torch.zeros(2, dim, *size), torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(2, 1))
    batch = {0: "batch"}
    return export_onnx(_BoxDecoding(mask_decoder, prompt_encoder), example, path, ["features", "boxes"],
                       ["logits", "iou"], {"features": batch, "boxes": batch, "logits": batch, "iou": batch})


def decoder_identity(mask_decoder: nn.Module, prompt_encoder: nn.Module) -> str:
    """SHA-256 of what the exported graph depends on: both modules' classes and weights (names, shapes, values) and
    the prompt encoder's sizes (how boxes are normalised). ~12 ms for LiteMedSAM."""
    digest = hashlib.sha256(repr((type(mask_decoder).__name__, type(prompt_encoder).__name__,
                                  tuple(prompt_encoder.input_image_size),
                                  tuple(prompt_encoder.image_embedding_size))).encode())
    for module in (mask_decoder, prompt_encoder):
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def openvino_decoder(mask_decoder: nn.Module, prompt_encoder: nn.Module) -> OpenVinoDecoder | None:
    """The compiled box decoder for these weights, exported now if this process has not yet; None, with a warning
    once per weights, where OpenVINO cannot build it (the caller then decodes with PyTorch)."""
    try:
        key = decoder_identity(mask_decoder, prompt_encoder)
    except Exception as exc:  # noqa: BLE001 - an unusual decoder (other attributes, dtypes): PyTorch still works
        warnings.warn(f"OpenVINO decoder unavailable ({type(exc).__name__}: {exc}); decoding with PyTorch")
        return None
    with _LOCK:
        built = _BUILT.get(key)
        if built is None:
            try:
                with tempfile.TemporaryDirectory(prefix="adasam-decoder-") as folder:
                    built = OpenVinoDecoder(export_decoder(mask_decoder, prompt_encoder, Path(folder) / "d.onnx"))
            except Exception as exc:  # noqa: BLE001 - the exporter and OpenVINO raise many types; PyTorch still works
                warnings.warn(f"OpenVINO decoder unavailable ({type(exc).__name__}: {exc}); decoding with PyTorch")
                built = False
        _BUILT[key] = built
        _BUILT.move_to_end(key)
        while len(_BUILT) > KEEP:
            _BUILT.popitem(last=False)
    return built or None


_BUILT: "OrderedDict[str, OpenVinoDecoder | bool]" = OrderedDict()
_LOCK = threading.Lock()
