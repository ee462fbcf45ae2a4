"""What the presence head costs at inference, on the machine it runs on (twenty-eighth session; one-off timing).

The same model with its presence head and with the head taken off (P(target present) then comes from the map's own
classifier, as before the head), alternated: `Predictor.presence_batch` (what re-scoring for the map-only strategies
runs) and `Predictor.predict_batch` (a whole prediction), over the first N val images in batches of 16, per image.

    python benchmarks/results/presence_head_cost/time_presence.py DATA RUN [N] [REPEATS] [THREADS]
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from model.adasam import load_checkpoint  # noqa: E402
from model.backbones import build_backbone  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.dataset import load_data_folder, load_items  # noqa: E402
from model.evaluate import batch_inputs  # noqa: E402
from model.inference import Predictor  # noqa: E402

data, run = sys.argv[1:3]
given = sys.argv[3:6]
count, repeats, threads = (int(a) for a in given + ["32", "5", "1"][len(given):])
torch.set_num_threads(threads)
base = build_backbone("litemedsam")
model, _ = load_checkpoint(Path(run), base)
head = model.presence
assert head is not None, "this timing needs a model with a presence head"
items = load_items(load_data_folder(data).split("val")[:count], model_inputs(base, 0, DEFAULT_CACHE_DIR),
                   with_images=True)
batches = [batch_inputs(items[i:i + 16]) for i in range(0, len(items), 16)]
predictor = Predictor(model)
times = {(call, with_head): [] for call in ("presence_batch", "predict_batch") for with_head in (True, False)}
for _ in range(repeats):
    for call in ("presence_batch", "predict_batch"):
        for with_head in (True, False):
            model.presence = head if with_head else None
            start = time.perf_counter()
            for embeddings, geometries, images in batches:
                getattr(predictor, call)(embeddings, geometries, images)
            times[call, with_head].append((time.perf_counter() - start) / len(items) * 1000)
model.presence = head
report = {f"{call} {'with' if h else 'without'} head (ms an image, median of {repeats})": statistics.median(t)
          for (call, h), t in times.items()}
report.update(images=len(items), threads=threads, run=run)
print(json.dumps(report, indent=1))
