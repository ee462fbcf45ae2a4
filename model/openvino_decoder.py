"""Box-prompted decoding under OpenVINO on the CPU: what proposals, validation, calibration and re-scoring run.

ADA-SAM keeps the pretrained mask decoder frozen by default, so every round's model decodes with the same weights:
the decoder (with the prompt encoder's box path) is exported once per process and weights, and each decode after
that costs a third of PyTorch's. Measured on 2 cores (AVX-512), LiteMedSAM, batches of 16 cached BUSI embeddings:
0.035 s per image against 0.107 s, logits within 5e-5 of PyTorch's (their scale ~30). The export is keyed by the
weights themselves (SHA-256), so a decoder that training changes is exported again, never served stale.
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
from model.openvino_encoder import compile_onnx

KEEP = 4  # compiled decoders kept per process (the serving model's, a round's, a baseline's ...)


class _BoxDecoding(nn.Module):
    """`model.decoder.decode` with box prompts as a module: the graph that is exported."""

    def __init__(self, mask_decoder: nn.Module, prompt_encoder: nn.Module) -> None:
        super().__init__()
        self.mask_decoder, self.prompt_encoder = mask_decoder, prompt_encoder

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decode(self.mask_decoder, self.prompt_encoder, features, boxes=boxes)


class OpenVinoDecoder:
    """Callable like `decode(..., boxes=...)`: B x C x h x w features and B x 4 boxes (model pixels) -> (B x 1 x H x W
    mask logits, B x 1 IoU predictions), float32 on the CPU. Calls from several threads queue."""

    def __init__(self, onnx_file: Path, threads: int | None = None) -> None:
        self._compiled = compile_onnx(onnx_file, threads)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {0: features.detach().float().cpu().contiguous().numpy(),
                  1: boxes.detach().float().cpu().contiguous().numpy()}
        with self._lock:
            result = self._request.infer(inputs)
            logits, iou = (torch.from_numpy(result[i].copy()) for i in range(2))  # the request reuses its buffers
        return logits, iou


def export_decoder(mask_decoder: nn.Module, prompt_encoder: nn.Module, path: Path) -> Path:
    """Export box-prompted decoding (any batch size) to ONNX at `path`."""
    dim, size = prompt_encoder.embed_dim, prompt_encoder.image_embedding_size
    example = (torch.zeros(2, dim, *size), torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(2, 1))
    batch = {0: "batch"}
    with warnings.catch_warnings():  # the TorchScript-based exporter warns about its own tracing and deprecation
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(_BoxDecoding(mask_decoder, prompt_encoder).eval(), example, str(path),
                              input_names=["features", "boxes"], output_names=["logits", "iou"], dynamo=False,
                              opset_version=17, dynamic_axes={"features": batch, "boxes": batch, "logits": batch,
                                                              "iou": batch})
    return path


def weights_identity(*modules: nn.Module) -> str:
    """SHA-256 of the modules' weights (names, shapes and values): ~12 ms for LiteMedSAM's decoder."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def openvino_decoder(mask_decoder: nn.Module, prompt_encoder: nn.Module) -> OpenVinoDecoder | None:
    """The compiled box decoder for these weights, exported now if this process has not yet; None, with a warning
    once per weights, where OpenVINO cannot build it (the caller then decodes with PyTorch)."""
    key = weights_identity(mask_decoder, prompt_encoder)
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
