"""One ADA-SAM training step (the app's batches, BUSI 10% masks, seed 0, as trainer_threads_probe/train_load.py),
with the adapter, the map head and the inputs in PyTorch's default layout or channels-last (twenty-third session,
one-off; measured slower, not shipped).

    CL=0|1 THREADS=2 python benchmarks/results/channels_last_probe/step.py
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
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
CL = os.environ.get("CL") == "1"
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
trainer = Trainer(model, TrainConfig(seed=0), data, Path("/tmp/channels_last_probe"), log=lambda *a: None)
if CL:
    for m in (model.adapter, model.classifier, trainer.teacher.adapter, trainer.teacher.classifier):
        m.to(memory_format=torch.channels_last)
    orig = trainer._embeddings
    trainer._embeddings = lambda items: orig(items).contiguous(memory_format=torch.channels_last)
trainer.step = 200
for _ in range(3):
    trainer.train_step()
times = []
for _ in range(int(os.environ.get("N", "10"))):
    started = time.perf_counter()
    trainer.train_step()
    times.append(time.perf_counter() - started)
print(f"CL={CL} {torch.get_num_threads()} threads: median step {statistics.median(times):.3f} s  min {min(times):.3f}")
