"""The image encoder exported once to ONNX and run by OpenVINO on the CPU: how the embedding cache encodes many images.

Measured on 2 cores (benchmarks/speed.py, same run): LiteMedSAM 0.46-0.51 s per 256 px image against 0.83-0.89 s
for PyTorch (channels-last, eager or through torch.compile, which also pauses ~80 s first); 0.30 s against 0.59-0.63 s
on an AVX-512 machine (70-74% of its float32 matmul peak), embeddings within 4e-6 of
PyTorch's (the cache stores float16, whose rounding at the embeddings' scale is ~100x larger). How OpenVINO is
imported, compiled and run: model/openvino_runtime.py.

The ONNX file is written beside the backbone's cache entries, once per machine and backbone (~6 s for LiteMedSAM);
each process compiles it again (~0.5 s). PyTorch stays where it must: training, GPUs, a few images at a time.
"""
from __future__ import annotations

import warnings
import weakref
from pathlib import Path

import torch

from model.backbones import Backbone
from model.openvino_runtime import CompiledGraph, export_onnx


class _Normalised(torch.nn.Module):
    """`Backbone.encode` as a module (pixel normalisation included), the graph that is exported."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(images)


class OpenVinoEncoder(CompiledGraph):
    """Callable like `Backbone.encode`: B x 3 x S x S images in [0, 1] -> B x C x s x s float32 embeddings on the
    CPU. The graph takes one image at a time (TinyViT's export fixes the batch)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.from_numpy(self.run(image[None].contiguous().numpy())[0])
                          for image in images.detach().float().cpu()])


def onnx_file(backbone: Backbone, folder: Path) -> Path:
    """Where `backbone`'s exported encoder lives in a cache folder (one per weights identity and input size)."""
    return folder / backbone.identity / f"encoder-{backbone.image_size}px.onnx"


def export_encoder(backbone: Backbone, path: Path) -> Path:
    """Export the backbone's encoder (normalisation included) to ONNX at `path`, atomically."""
    example = torch.zeros(1, 3, backbone.image_size, backbone.image_size)
    return export_onnx(_Normalised(backbone).cpu(), (example,), path, ["images"], ["embeddings"])


def openvino_encoder(backbone: Backbone, folder: Path) -> OpenVinoEncoder | None:
    """The backbone's encoder under OpenVINO, exported to `folder` if not there yet and built once per backbone
    object; None, with a warning, where it cannot be (the caller then encodes with PyTorch)."""
    cached = _BUILT.get(backbone)
    if cached is None:
        try:
            path = onnx_file(backbone, folder)
            if not path.is_file():
                export_encoder(backbone, path)
            cached = OpenVinoEncoder(path)
        except Exception as exc:  # noqa: BLE001 - the exporter and OpenVINO raise many types; PyTorch still works
            warnings.warn(f"OpenVINO encoder unavailable ({type(exc).__name__}: {exc}); encoding with PyTorch")
            cached = False
        _BUILT[backbone] = cached
    return cached or None


_BUILT: "weakref.WeakKeyDictionary[Backbone, OpenVinoEncoder | bool]" = weakref.WeakKeyDictionary()  # kept off the
# backbone itself, so copying or saving a model never meets a compiled graph
