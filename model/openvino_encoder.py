"""The image encoder exported once to ONNX and run by OpenVINO on the CPU: how the embedding cache encodes many images.

Measured on 2 cores (benchmarks/speed.py, same run): LiteMedSAM 0.46-0.51 s per 256 px image against 0.83-0.89 s
for PyTorch (channels-last, eager or through torch.compile, which also pauses ~80 s first); 0.30 s against 0.59-0.63 s
on an AVX-512 machine (70-74% of its float32 matmul peak), embeddings within 4e-6 of
PyTorch's (the cache stores float16, whose rounding at the embeddings' scale is ~100x larger). OpenVINO reads the
ONNX file itself, and is imported with its usage statistics off (`import_openvino`): nothing in this tool may touch
the network.

The ONNX file is written beside the backbone's cache entries, once per machine and backbone (~6 s for LiteMedSAM);
each process compiles it again (~0.5 s). PyTorch stays where it must: training, GPUs, a few images at a time.
"""
from __future__ import annotations

import sys
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch

from model.atomic import atomic_write
from model.backbones import Backbone

OPENVINO_SETTINGS = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


class _Normalised(torch.nn.Module):
    """`Backbone.encode` as a module (pixel normalisation included), the graph that is exported."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(images)


class OpenVinoEncoder:
    """Callable like `Backbone.encode`: B x 3 x S x S images in [0, 1] -> B x C x s x s float32 embeddings on the
    CPU. The graph takes one image at a time (TinyViT's export fixes the batch); calls from several threads queue."""

    def __init__(self, onnx_file: Path, threads: int | None = None) -> None:
        self._compiled = compile_onnx(onnx_file, threads)
        self._output = self._compiled.output(0)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        outputs = []
        with self._lock:
            for image in images.detach().float().cpu():
                result = self.infer(image[None].contiguous().numpy())
                outputs.append(torch.from_numpy(result.copy()))  # the request reuses its output buffer
        return torch.cat(outputs)

    def infer(self, inputs: np.ndarray) -> np.ndarray:
        """One run of the graph on an array of its input's shape; the result is the request's own buffer (copy it
        before the next run). Not thread-safe: `__call__` is."""
        return self._request.infer({0: inputs})[self._output]


def compile_onnx(path: Path, threads: int | None = None):
    """An ONNX file compiled for the CPU with the tool's settings (float32, latency; PyTorch's thread count)."""
    core = import_openvino().Core()
    settings = {**OPENVINO_SETTINGS, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
    return core.compile_model(core.read_model(str(path)), "CPU", settings)


def import_openvino():
    """`openvino`, without its usage statistics. Importing the package imports its model converter, which starts
    `openvino_telemetry`: it writes ~/intel and looks a server up on the network (seen with strace). A None entry in
    sys.modules makes that import fail, and OpenVINO then uses its own do-nothing stub; the converter is not used."""
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


def onnx_file(backbone: Backbone, folder: Path) -> Path:
    """Where `backbone`'s exported encoder lives in a cache folder (one per weights identity and input size)."""
    return folder / backbone.identity / f"encoder-{backbone.image_size}px.onnx"


def export_encoder(backbone: Backbone, path: Path) -> Path:
    """Export the backbone's encoder (normalisation included) to ONNX at `path`, atomically."""
    example = torch.zeros(1, 3, backbone.image_size, backbone.image_size)
    module = _Normalised(backbone).cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript-based exporter warns about its own tracing and deprecation
        warnings.simplefilter("ignore")
        with torch.no_grad():
            atomic_write(path, lambda handle: torch.onnx.export(
                module, (example,), handle, input_names=["images"], output_names=["embeddings"], dynamo=False,
                opset_version=17))
    return path


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
