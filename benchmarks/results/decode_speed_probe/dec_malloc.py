"""An evaluation pass per image with (argv 1 = 1) or without (0) explicit mallopt calls; run before `import model` set
them itself (nineteenth session).

    python benchmarks/results/decode_speed_probe/dec_malloc.py 0|1 RUN/model.pt
"""
import sys, ctypes, time, statistics
if sys.argv[1] == "1":
    libc = ctypes.CDLL("libc.so.6"); libc.mallopt(-4, 0); libc.mallopt(-1, 2**30)
import torch
ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
MODEL = sys.argv[2]  # a model.pt of `adasam train` (the session: seed 0 default)
torch.set_num_threads(1)
from model.backbones import build_backbone, backbone_view
from model.cache import model_inputs, DEFAULT_CACHE_DIR
from model.dataset import load_data_folder, load_items
from model.adasam import load_checkpoint
from model.evaluate import evaluate
base = build_backbone("litemedsam")
folder = load_data_folder(str(ROOT.parent / "shared" / "datasets" / "busi"))
cache = model_inputs(base, 0, DEFAULT_CACHE_DIR)
val = load_items(folder.split("val")[:32], cache, with_images=True)
model, _ = load_checkpoint(MODEL, backbone_view(base))
model.eval()
ts = []
for _ in range(3):
    t = time.perf_counter(); evaluate(model, val, with_hd95=False); ts.append(time.perf_counter() - t)
print("mallopt" if sys.argv[1] == "1" else "default", "eval per image", round(statistics.median(ts) / len(val), 4))
