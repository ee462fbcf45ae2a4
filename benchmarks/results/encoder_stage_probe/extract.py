"""One-off (run from the repository root: PYTHONPATH=. python THIS_FILE [THREADS]): neck embedding + two
intermediate TinyViT outputs for BUSI pool and val (never test), fp16 on disk."""
import tempfile
import sys, time, torch
from pathlib import Path
from model.backbones import build_backbone
from model.dataset import load_data_folder
from model.preprocess import read_image, preprocess_image
DATA = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "busi"  # ../shared beside the repo
SCRATCH = Path(tempfile.gettempdir()) / "probe"  # features (3.6 GB), run folders, results.jsonl
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
out = SCRATCH / "feats"; out.mkdir(parents=True, exist_ok=True)
b = build_backbone("litemedsam"); enc = b.image_encoder.eval()
grabbed = {}
enc.layers[1].register_forward_hook(lambda m, i, o: grabbed.__setitem__("l1", o))
enc.layers[2].register_forward_hook(lambda m, i, o: grabbed.__setitem__("l2", o))
data = load_data_folder(str(DATA))
samples = [s for s in data.samples if s.split in ("pool", "val")]
todo = [s for s in samples if not (out / f"{s.id}.pt").exists()]
print(len(samples), "samples,", len(todo), "to do", flush=True)
t0 = time.time()
for k in range(0, len(todo), 4):
    chunk = todo[k:k + 4]
    pre = [preprocess_image(read_image(s.image_path), 256) for s in chunk]
    with torch.no_grad():
        emb = enc(torch.stack([p[0] for p in pre]))
    grid = lambda t: t.transpose(1, 2).reshape(t.shape[0], -1, 64, 64)
    l1, l2 = grid(grabbed["l1"]), grid(grabbed["l2"])
    for j, s in enumerate(chunk):
        g = pre[j][1]
        torch.save({"emb": emb[j].half().clone(), "l1": l1[j].half().clone(), "l2": l2[j].half().clone(),
                    "geometry": (g.height, g.width, g.size)}, out / f"{s.id}.pt")
    if k % 40 == 0:
        print(k + len(chunk), f"{time.time() - t0:.0f}s", flush=True)
print("done", time.time() - t0)
