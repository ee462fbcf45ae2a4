"""Adapter + map head forward/backward per embedding at batch 16 / 8 / 2, oneDNN on and off (nineteenth session;
`import model` now sets the allocator, see model.device.keep_freed_memory).

    python benchmarks/results/decode_speed_probe/heads_bench3.py RUN/model.pt
"""
import sys, time, torch, statistics
ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
MODEL = sys.argv[1]  # a model.pt of `adasam train` (the session: seed 0 default)
torch.set_num_threads(1)
torch.set_flush_denormal(True)
from model.backbones import build_backbone, backbone_view
from model.cache import model_inputs, DEFAULT_CACHE_DIR
from model.dataset import load_data_folder, load_items
from model.adasam import load_checkpoint
base = build_backbone("litemedsam")
folder = load_data_folder(str(ROOT.parent / "shared" / "datasets" / "busi"))
cache = model_inputs(base, 0, DEFAULT_CACHE_DIR)
items = load_items(folder.split("val")[:16], cache)
model, _ = load_checkpoint(MODEL, backbone_view(base))
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
