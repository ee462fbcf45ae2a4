"""Encoder, decoder and refine timings on this CPU, and the encoder's share of the matmul roofline.

    python benchmarks/encoder_speed.py [--repeats 7] [--json benchmarks/results/encoder_speed.json]

Compares the LiteMedSAM encoder in its default memory layout with channels-last (what model.cache uses), reports
medians, the float32 matmul GFLOP/s this machine reaches (2048^2 product) and the encoder's fraction of it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENCODER_GFLOP = 75.0  # LiteMedSAM TinyViT at 256 px (../shared/docs/adasam.md)


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    parser.add_argument("--backbone", default="litemedsam")
    args = parser.parse_args()

    from model.adasam import AdaSamConfig, build_adasam
    from model.inference import Predictor
    from model.preprocess import Geometry

    a = torch.randn(2048, 2048)
    matmul_s = median_seconds(lambda: a @ a, args.repeats)
    matmul_gflops = 2 * 2048 ** 3 / matmul_s / 1e9

    model = build_adasam(AdaSamConfig(backbone=args.backbone)).eval()
    backbone = model.backbone
    image = torch.rand(1, 3, backbone.image_size, backbone.image_size)
    results = {"threads": torch.get_num_threads(), "matmul_gflops": matmul_gflops}
    with torch.inference_mode():
        results["encoder_s_default"] = median_seconds(lambda: backbone.encode(image), args.repeats)
        backbone.image_encoder.to(memory_format=torch.channels_last)
        cl_image = image.contiguous(memory_format=torch.channels_last)
        results["encoder_s_channels_last"] = median_seconds(lambda: backbone.encode(cl_image), args.repeats)
        embedding = backbone.encode(cl_image)[0].contiguous()
    best = min(results["encoder_s_default"], results["encoder_s_channels_last"])
    results["encoder_gflops"] = ENCODER_GFLOP / best
    results["encoder_roofline_fraction"] = results["encoder_gflops"] / matmul_gflops
    geometry = Geometry(200, 256, 256)
    predictor = Predictor(model)
    results["predict_s"] = median_seconds(lambda: predictor.predict(embedding, geometry), args.repeats)
    results["refine_s"] = median_seconds(
        lambda: predictor.refine(embedding, geometry, positive=[(100, 80)], negative=[(30, 30)]), args.repeats)
    for key, value in results.items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
