"""Adapter + map head forward/backward per embedding at batch 16 / 8 / 2, oneDNN on and off (nineteenth session;
`import model` now sets the allocator, see model.device.keep_freed_memory).

    python benchmarks/results/decode_speed_probe/heads_bench3.py RUN/model.pt
"""
import statistics
import sys
import time

from probe_setup import model_and_val
import torch

MODEL = sys.argv[1]  # a model.pt of `adasam train` (the session: seed 0 default)
torch.set_flush_denormal(True)
model, items = model_and_val(MODEL, 16, with_images=False)
model.train()
emb = torch.stack([i.embedding for i in items]).float()
def fb(x):
    loc = model.classifier.location_logits(model.adapter(x)); loc.square().mean().backward()
res = {}
for _ in range(5):
    for mk in (True, False):
        torch.backends.mkldnn.enabled = mk
        for b in (16, 8, 2):
            t = time.perf_counter(); fb(emb[:b]); res.setdefault((mk, b), []).append(time.perf_counter() - t)
print({f"mkldnn={k[0]} b={k[1]}": round(statistics.median(v) / k[1], 4) for k, v in res.items()}, "s per embedding")
