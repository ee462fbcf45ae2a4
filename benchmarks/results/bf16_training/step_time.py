"""Median ADA-SAM training step on BUSI (10% masks, seed 0, heads untrained; the app's batch sizes) in the precision
ADASAM_PRECISION chooses (twenty-sixth session; adapted from ../trainer_threads_probe/train_load.py).

    ADASAM_PRECISION=float32 THREADS=2 python benchmarks/results/bf16_training/step_time.py time
    ADASAM_PRECISION=bfloat16 THREADS=2 python benchmarks/results/bf16_training/step_time.py time
    ADASAM_PRECISION=bfloat16 THREADS=2 python benchmarks/results/bf16_training/step_time.py prof   # top ops
"""
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.backbones import build_backbone  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.dataset import load_data_folder, load_items, masked_ids  # noqa: E402
from model.train import TrainConfig, Trainer, TrainingData, build_training_model, model_config  # noqa: E402

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
base = build_backbone("litemedsam")
pool = load_data_folder(ROOT.parent / "shared" / "datasets" / "busi").split("pool")
chosen = masked_ids(pool, 0.1, 0)
masked, unlabeled, tagged = [], [], []
for item in load_items(pool, model_inputs(base, 0, DEFAULT_CACHE_DIR)):
    if item.id in chosen:
        masked.append(item)
    else:
        item.mask = None
        unlabeled.append(item)
    if item.tag is not None:
        tagged.append(item)
data = TrainingData(masked, tagged, unlabeled, [])
model = build_training_model(model_config("adasam", "litemedsam", data), 0, base, None)
trainer = Trainer(model, TrainConfig(seed=0), data, Path("/tmp/step_time_out"), log=lambda *a: None)
trainer.step = 200  # past the ramp: the unlabeled terms at full weight
for _ in range(3):
    trainer.train_step()
if sys.argv[1] == "time":
    times = []
    for _ in range(int(os.environ.get("N", "20"))):
        started = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - started)
    print(f"{trainer.dtype}, {torch.get_num_threads()} threads: median step {statistics.median(times):.3f} s")
elif sys.argv[1] == "prof":
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(3):
            trainer.train_step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
