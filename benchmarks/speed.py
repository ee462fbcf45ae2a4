"""Issue 5, speed against this CPU's limits: is the tool fast enough on a 2-core laptop-class machine?

Measures (medians; peak memory of each step as the process's resident-set high-water mark while it ran):
- float32 matmul GFLOP/s (a 2048 x 2048 product, the faster of PyTorch and OpenVINO): the roofline the encoder is
  compared against,
- encoder seconds per image through each runtime (PyTorch default, channels-last, torch.compile with its compile
  time; OpenVINO on the exported ONNX graph, the cache's, with its export and compile time) and each one's fraction
  of that roofline at 75 GFLOP per 256 px LiteMedSAM image (issue 14's goal: >= 80%); on a CPU with native bf16
  also OpenVINO in bf16 against the bf16 product's roofline, with its embeddings' relative error (not used),
- automatic prediction (adapter + CAM + decoder + cascade) and click-refine milliseconds on a cached embedding,
- one training step, and per image through the decoder (masked + unlabeled images of a step),
- a full retrain round of the app's trainer at 10% masks once embeddings are cached (goal <= 5 min), and re-scoring
  the unlabeled pool (images per second), both through app.trainer.BackgroundTrainer as the app runs them.

Supersedes benchmarks/encoder_speed.py (same encoder method, plus the rest).

    python benchmarks/speed.py --data ../shared/datasets/busi --json benchmarks/results/speed.json
    python benchmarks/speed.py --quick      # micro backbone, generated data: checks the script, not figures
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

ENCODER_GFLOP = 75.0  # LiteMedSAM TinyViT at 256 px (../shared/docs/adasam.md)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measured(fn: Callable[[], object]) -> tuple[object, dict]:
    """Run fn once; (its result, {seconds, rss_before_mb, peak_rss_mb}). The peak is reset first (Linux
    clear_refs) so it is this step's own high-water mark; without that it is the process's peak so far."""
    before = _status_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result, {"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak, "peak_is_per_step": reset}


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(name: str, results: dict, fn: Callable[[], dict]) -> None:
    """One section: fn returns its figures; its wall time and peak memory are added."""
    print(f"# {name}", flush=True)
    figures, memory = measured(fn)
    results[name] = {**figures, "wall_s": memory["seconds"], **{k: v for k, v in memory.items() if k != "seconds"}}
    print(json.dumps(results[name], default=float), flush=True)


def matmul(repeats: int) -> dict:
    """The float32 roofline: a 2048 x 2048 product through PyTorch and through OpenVINO (oneDNN), the faster of the
    two. On an AVX-512 CPU OpenVINO's reaches about twice PyTorch's (360 against 184 GFLOP/s on 2026-12-03): a
    roofline from PyTorch alone would put OpenVINO's encoder above 100% of it."""
    from model.openvino_encoder import OpenVinoEncoder
    from model.openvino_runtime import cpu_has_bf16

    a = torch.randn(2048, 2048)
    seconds = median_seconds(lambda: a @ a, repeats, warmup=2)
    product = torch.nn.Linear(2048, 2048, bias=False).eval()
    scratch = Path(tempfile.mkdtemp())
    with torch.no_grad():
        torch.onnx.export(product, (a,), str(scratch / "matmul.onnx"), dynamo=False, opset_version=17)
    openvino = OpenVinoEncoder(scratch / "matmul.onnx")  # same settings as the encoder's: float32, 2 threads
    bf16 = OpenVinoEncoder(scratch / "matmul.onnx", precision="bf16") if cpu_has_bf16() else None
    shutil.rmtree(scratch)
    array = a.numpy()
    ov_seconds = median_seconds(lambda: openvino.infer(array), repeats, warmup=2)
    flop = 2 * 2048 ** 3
    by_runtime = {"pytorch": flop / seconds / 1e9, "openvino": flop / ov_seconds / 1e9}
    bf16_gflops = None if bf16 is None else flop / median_seconds(lambda: bf16.infer(array), repeats, warmup=2) / 1e9
    return {"seconds": min(seconds, ov_seconds), "gflops": max(by_runtime.values()), "gflops_by_runtime": by_runtime,
            "gflops_bf16": bf16_gflops, "threads": torch.get_num_threads()}


def encoder(backbone, repeats: int, matmul_gflops: float, bf16_gflops: float | None = None) -> dict:
    """Seconds per image through each runtime, in one run: PyTorch (default layout, channels-last, torch.compile)
    and OpenVINO on the exported ONNX graph (what the embedding cache uses on the CPU); where the CPU computes bf16
    natively, also OpenVINO in bf16 (not used by the tool: its embeddings are ~6% off), against its own roofline."""
    from model.openvino_encoder import OpenVinoEncoder, export_encoder

    image = torch.rand(1, 3, backbone.image_size, backbone.image_size)
    cl_image = image.contiguous(memory_format=torch.channels_last)
    default_layout = copy.deepcopy(backbone)  # the channels-last conversion below changes the module in place
    backbone.image_encoder.to(memory_format=torch.channels_last)
    out = {"backbone": backbone.name, "image_size": backbone.image_size}
    with torch.inference_mode():
        started = time.perf_counter()
        compiled = torch.compile(backbone.image_encoder)
        backbone.encode(cl_image, compiled)
        out["compile_s"] = time.perf_counter() - started
    scratch = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    onnx = export_encoder(backbone, scratch / "encoder.onnx")
    out["openvino_export_s"] = time.perf_counter() - started
    started = time.perf_counter()
    openvino = OpenVinoEncoder(onnx)
    out["openvino_compile_s"] = time.perf_counter() - started
    bf16 = OpenVinoEncoder(onnx, precision="bf16") if bf16_gflops else None
    shutil.rmtree(scratch)
    runs = {"default": lambda: default_layout.encode(image), "channels_last": lambda: backbone.encode(cl_image),
            "compiled": lambda: backbone.encode(cl_image, compiled), "openvino": lambda: openvino(image)}
    if bf16 is not None:
        runs["openvino_bf16"] = lambda: bf16(image)
        with torch.inference_mode():
            reference = default_layout.encode(image)
            out["bf16_relative_error"] = float((bf16(image) - reference).norm() / reference.norm())
            out["openvino_relative_error"] = float((openvino(image) - reference).norm() / reference.norm())
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(repeats):  # interleaved, so a burst of load on a shared machine hits every runtime alike
            for name, fn in runs.items():
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
    for name, values in times.items():
        out[f"s_per_image_{name}"] = statistics.median(values)
    runtimes = ["default", "channels_last", "compiled", "openvino"]
    out["s_per_image"] = min(out[f"s_per_image_{name}"] for name in runtimes)
    if backbone.name == "litemedsam":  # the 75 GFLOP count is LiteMedSAM's; other backbones get no roofline figure
        for name in runtimes:
            out[f"roofline_fraction_{name}"] = ENCODER_GFLOP / out[f"s_per_image_{name}"] / matmul_gflops
        if bf16 is not None:  # against the bf16 product's own roofline
            out["roofline_fraction_openvino_bf16"] = ENCODER_GFLOP / out["s_per_image_openvino_bf16"] / bf16_gflops
        out["gflops"] = ENCODER_GFLOP / out["s_per_image"]
        out["roofline_fraction"] = out["gflops"] / matmul_gflops
        out["goal_s_per_image_at_80pct"] = ENCODER_GFLOP / (0.8 * matmul_gflops)
    else:
        out["gflops"] = out["roofline_fraction"] = None
    return out


def decoder(model, embedding, geometry, repeats: int) -> dict:
    from model.inference import Predictor

    predictor = Predictor(model)
    predict_s = median_seconds(lambda: predictor.predict(embedding, geometry), repeats)
    h, w = geometry.height, geometry.width
    refine_s = median_seconds(lambda: predictor.refine(embedding, geometry, positive=[(w / 2, h / 2)],
                                                       negative=[(w / 8, h / 8)]), repeats)
    return {"predict_ms": 1000 * predict_s, "refine_ms": 1000 * refine_s}


def train_step(backbone_name: str, items: list, steps: int) -> dict:
    from model.adasam import AdaSamConfig
    from model.train import TrainConfig, Trainer, TrainingData, build_training_model

    model = build_training_model(AdaSamConfig(backbone=backbone_name), 0)
    n = len(items)
    data = TrainingData(masked=items[: n // 2], tagged=items, unlabeled=items[n // 2:], val=[])
    config = TrainConfig(steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, config, data, Path(tmp), log=lambda line: None)
        seconds = median_seconds(trainer.train_step, steps, warmup=1)
    return {"step_s": seconds, "batch": {"masked_through_decoder": config.batch_masked, "cam": config.batch_cam,
                                         "unlabeled": config.batch_unlabeled, "tagged": config.batch_tagged}}


def retrain_round(data: str, out: Path, backbone: str, cache: str, steps: int, fraction: float) -> dict:
    """The app's round at `fraction` masks: embed the workspace (cached after the first run), then train_round
    (train, publish, re-score), then re-score the pool once more on its own to time it alone."""
    from active_learning import oracle_workspace

    from app.trainer import BackgroundTrainer

    store, folder, chosen = oracle_workspace(data, out, fraction)
    bt = BackgroundTrainer(out / "workspace", backbone, cache, round_every=1, steps=steps)
    _, embed = measured(bt.embed_new)
    _, round_ = measured(bt.train_round)
    rnd = store.latest_round()
    if rnd.status != "done":
        raise RuntimeError(f"round failed: {rnd.error}")
    version = store.latest_model().version
    n_scored = store.conn.execute("SELECT COUNT(*) FROM predictions WHERE model_version = ?", (version,)).fetchone()[0]
    with store.transaction() as conn:
        conn.execute("DELETE FROM predictions WHERE model_version = ?", (version,))
    _, rescore = measured(lambda: bt.rescore(version))
    store.close()
    return {"backbone": backbone, "steps": steps, "mask_fraction": fraction, "n_masks": len(chosen),
            "n_pool": len(folder.split("pool")), "embed_workspace_s": embed["seconds"],
            "round_s": round_["seconds"], "round_train_s": round_["seconds"] - rescore["seconds"],
            "round_peak_rss_mb": round_["peak_rss_mb"], "rescore_images": n_scored,
            "rescore_s": rescore["seconds"], "rescore_images_per_s": n_scored / rescore["seconds"],
            "rescore_peak_rss_mb": rescore["peak_rss_mb"], "goal_round_s": 300}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "busi"),
                        help="data folder for the retrain round and re-scoring")
    parser.add_argument("--backbone", default="litemedsam")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "adasam" / "embeddings"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--round-steps", type=int, default=120, help="steps of the retrain round (the app's default)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    parser.add_argument("--quick", action="store_true", help="micro backbone, generated data, few repeats")
    parser.add_argument("--encoder-only", action="store_true",
                        help="only the roofline and the encoder runtimes (about 2 min for LiteMedSAM)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="adasam-speed-"))
    if args.quick:
        from model.testing import write_blob_dataset

        args.data = str(write_blob_dataset(scratch / "data", n=30, negatives=6))
        args.backbone, args.cache, args.repeats, args.round_steps = "micro_random", str(scratch / "cache"), 2, 3
        if args.json == parser.get_default("json"):
            args.json = str(scratch / "speed.json")

    from model.adasam import AdaSamConfig, build_adasam
    from model.cache import encode_batch
    from model.evaluate import Item
    from model.preprocess import preprocess_image
    from model.testing import blob_image

    results: dict = {"config": {"backbone": args.backbone, "repeats": args.repeats, "quick": args.quick,
                                "threads": torch.get_num_threads(), "data": os.path.relpath(args.data, ROOT)}}
    timed("matmul", results, lambda: matmul(args.repeats))
    model = build_adasam(AdaSamConfig(backbone=args.backbone)).eval()
    timed("encoder", results, lambda: encoder(model.backbone, args.repeats, results["matmul"]["gflops"],
                                              results["matmul"]["gflops_bf16"]))
    if args.encoder_only:
        return write_results(results, args.json, scratch)
    rng = np.random.default_rng(0)
    pairs = [blob_image(rng, (400, 500), present=k >= 2) for k in range(32)]  # fills every batch of a step
    prepared = [preprocess_image(image, model.image_size) for image, _ in pairs]
    embeddings = encode_batch(model.backbone, torch.stack([t for t, _ in prepared])).float()
    items = [Item(f"s{k}", embeddings[k].clone(), g, mask, bool(mask.any()))
             for k, ((_, mask), (_, g)) in enumerate(zip(pairs, prepared))]
    timed("decoder", results, lambda: decoder(model, items[3].embedding, items[3].geometry, args.repeats))
    timed("train_step", results, lambda: train_step(args.backbone, items, max(3, args.repeats)))
    timed("retrain_round", results, lambda: retrain_round(args.data, scratch / "round", args.backbone, args.cache,
                                                          args.round_steps, 0.1))
    return write_results(results, args.json, scratch)


def write_results(results: dict, path: str, scratch: Path) -> int:
    results["summary"] = summary(results)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2, default=float))
    print(results["summary"])
    print(f"wrote {path}")
    if not Path(path).resolve().is_relative_to(scratch.resolve()):
        shutil.rmtree(scratch, ignore_errors=True)  # the round's workspace (and quick data): nothing to keep
    return 0


def summary(r: dict) -> str:
    e = r["encoder"]
    roof = "n/a (not LiteMedSAM)" if e["roofline_fraction"] is None else f"{100 * e['roofline_fraction']:.0f}%"
    by = r["matmul"].get("gflops_by_runtime", {})
    rows = [("matmul float32 (2048^2), the faster of " + ", ".join(f"{k} {v:.0f}" for k, v in by.items()),
             f"{r['matmul']['gflops']:.1f} GFLOP/s", r["matmul"]["peak_rss_mb"])]
    for name in ("default", "channels_last", "compiled", "openvino"):
        fraction = e.get(f"roofline_fraction_{name}")
        rows.append((f"encoder per image, {name}", f"{1000 * e[f's_per_image_{name}']:.1f} ms"
                     + ("" if fraction is None else f" ({100 * fraction:.0f}% of the roofline)"), e["peak_rss_mb"]))
    rows.append(("encoder, best", f"{1000 * e['s_per_image']:.1f} ms (roofline {roof})", e["peak_rss_mb"]))
    if "s_per_image_openvino_bf16" in e:
        fraction = e.get("roofline_fraction_openvino_bf16")
        rows.append((f"encoder per image, openvino bf16 (not used: embeddings {100 * e['bf16_relative_error']:.1f}% "
                     f"off; bf16 matmul {r['matmul']['gflops_bf16']:.0f} GFLOP/s)",
                     f"{1000 * e['s_per_image_openvino_bf16']:.1f} ms"
                     + ("" if fraction is None else f" ({100 * fraction:.0f}% of the bf16 roofline)"),
                     e["peak_rss_mb"]))
    if "retrain_round" in r:
        rows += _rest_rows(r)
    lines = [f"## Speed ({r['config']['backbone']}, {r['config']['threads']} threads)", "",
             "| what | figure | peak RSS (MB) |", "|---|---|---|"]
    lines += [f"| {what} | {figure} | {peak:.0f} |" for what, figure, peak in rows]
    return "\n".join(lines)


def _rest_rows(r: dict) -> list[tuple]:
    d, t, rr = r["decoder"], r["train_step"], r["retrain_round"]
    return [("prediction (auto prompt)", f"{d['predict_ms']:.1f} ms", d["peak_rss_mb"]),
            ("refine (2 clicks)", f"{d['refine_ms']:.1f} ms", d["peak_rss_mb"]),
            ("training step", f"{t['step_s']:.3f} s (batches {t['batch']})", t["peak_rss_mb"]),
            ("retrain round at 10% masks", f"{rr['round_s']:.1f} s ({rr['steps']} steps, {rr['n_masks']} masks)",
             rr["round_peak_rss_mb"]),
            ("pool re-scoring", f"{rr['rescore_images_per_s']:.1f} images/s", rr["rescore_peak_rss_mb"])]


if __name__ == "__main__":
    sys.exit(main())
