"""OpenVINO on the CPU for the frozen parts of a backbone (today its encoder: model/openvino_encoder.py): graphs
exported from PyTorch to ONNX, compiled with one set of settings, run from any thread. OpenVINO reads the ONNX files
itself and is imported with its usage statistics off (`import_openvino`): nothing in this tool may touch the network.

Not its mask decoder (tried 2026-12-03, benchmarks/README.md): decoding alone was 3x faster, but in a process that
then trains, every PyTorch training step after an OpenVINO decode ran ~30% slower (the encoder does not do this)."""
from __future__ import annotations

import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from model.atomic import atomic_write

OPENVINO_SETTINGS = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}


class CompiledGraph:
    """An ONNX file compiled for the CPU (float32, latency; PyTorch's thread count unless `threads`). `precision`
    "bf16" is for benchmarks/speed.py only: on a CPU with AVX-512 bf16 it encodes 1.7x faster but moves LiteMedSAM's
    embeddings by ~6% (relative L2), far beyond the cache's tolerance, so the tool never uses it."""

    def __init__(self, onnx_file: Path, threads: int | None = None, precision: str = "f32") -> None:
        core = import_openvino().Core()
        settings = {**OPENVINO_SETTINGS, "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                    "INFERENCE_PRECISION_HINT": precision}
        self._compiled = core.compile_model(core.read_model(str(onnx_file)), "CPU", settings)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """One run on arrays of the graph's input shapes -> copies of every output. Calls from several threads
        queue."""
        with self._lock:
            result = self._request.infer(dict(enumerate(inputs)))
            return [result[i].copy() for i in range(len(self._compiled.outputs))]  # the request reuses buffers

    def infer(self, inputs: np.ndarray) -> np.ndarray:
        """The first output of one run on one input, as the request's own buffer (copy it before the next run).
        Not thread-safe, and no copy: for timing loops (benchmarks/speed.py)."""
        return self._request.infer({0: inputs})[self._compiled.output(0)]


def export_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                output_names: list[str]) -> Path:
    """Export `module` in eval mode (every submodule's own mode is restored after) to ONNX at `path`, atomically.
    Exports queue: the exporter keeps global state."""
    modes = [(m, m.training) for m in module.modules()]
    with _EXPORTING, warnings.catch_warnings():  # the TorchScript-based exporter warns about its own tracing
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                atomic_write(path, lambda handle: torch.onnx.export(
                    module.eval(), example, handle, input_names=input_names, output_names=output_names,
                    dynamo=False, opset_version=17))
        finally:
            for m, training in modes:
                m.training = training
    return path


def cpu_has_bf16() -> bool:
    """Whether OpenVINO can compute in bfloat16 natively on this CPU (AVX-512 bf16 or AMX)."""
    return "BF16" in import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def import_openvino():
    """`openvino`, without its usage statistics. Importing the package imports its model converter, which starts
    `openvino_telemetry`: it writes ~/intel and looks a server up on the network (seen with strace). A None entry in
    sys.modules makes that import fail, and OpenVINO then uses its own do-nothing stub; the converter is not used."""
    sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


_EXPORTING = threading.Lock()
