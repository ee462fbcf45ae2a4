"""ADA-SAM training steps on BUSI (10% masks, seed 0, heads untrained; the app's batch sizes), as a stand-in for the
background trainer (twentieth session).

    THREADS=N python benchmarks/results/trainer_threads_probe/train_load.py time   # median step, N torch threads
    THREADS=N python benchmarks/results/trainer_threads_probe/train_load.py load   # steps forever at nice 5, as
        # `adasam trainer` runs; started 40 s before `python benchmarks/ui_latency.py` and killed after it
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
trainer = Trainer(model, TrainConfig(seed=0), data, Path("/tmp/train_load_out"), log=lambda *a: None)
trainer.step = 200  # past the ramp: the unlabeled terms at full weight
for _ in range(3):
    trainer.train_step()
if sys.argv[1] == "time":
    times = []
    for _ in range(10):
        started = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - started)
    print(f"{torch.get_num_threads()} threads: median step {statistics.median(times):.3f} s")
else:
    os.nice(5)
    done, started = 0, time.perf_counter()
    while True:
        trainer.train_step()
        done += 1
        if done % 20 == 0:
            print(f"steps/s {done / (time.perf_counter() - started):.3f}", flush=True)
