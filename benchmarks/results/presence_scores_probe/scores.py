"""Which score separates target from target-free images best (twenty-ninth session; one-off probe, nothing shipped)?
The presence head's probability (shipped), the map classifier's, the CAM's peak, the prompt map's peak (CAM and
image view), and mixes; AUC on val and test.  python benchmarks/results/presence_scores_probe/scores.py DATA RUN OUT"""
import json
import sys
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from model.adasam import load_checkpoint
from model.backbones import build_backbone
from model.cache import DEFAULT_CACHE_DIR, model_inputs
from model.dataset import load_data_folder, load_items
from model.evaluate import batch_inputs
from model.inference import valid_grid

def auc(score, label):
    pos, neg = score[label], score[~label]
    return float(((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()))

torch.set_num_threads(1)
data, run, out = sys.argv[1:4]
base = build_backbone("litemedsam")
model, _ = load_checkpoint(Path(run), base)
folder = load_data_folder(data)
report = {"run": run, "presence_threshold": model.config.presence_threshold}
for split in ("val", "test"):
    items = load_items(folder.split(split), model_inputs(base, 0, DEFAULT_CACHE_DIR), with_images=True)
    cols = {k: [] for k in ("head", "map", "cam_peak", "prompt_peak")}
    labels = []
    for start in range(0, len(items), 8):
        chunk = items[start:start + 8]
        embeddings, geometries, images = batch_inputs(chunk)
        valid = valid_grid(geometries, model.grid)
        with torch.no_grad():
            embedded = model.embed(embeddings)
            features = model.adapter(embedded)
            cams, logits = model.cam(features, valid)
            prompt = model.prompt_maps(cams, images, geometries)
            classifier, pf = model.presence_reader(embedded, features)
            head_logits = classifier(pf, valid) if classifier is not model.classifier else logits
        cols["head"] += head_logits.softmax(1)[:, 1].tolist()
        cols["map"] += logits.softmax(1)[:, 1].tolist()
        cols["cam_peak"] += (cams * valid).flatten(1).amax(1).tolist()
        cols["prompt_peak"] += (prompt * valid).flatten(1).amax(1).tolist()
        labels += [bool(i.mask.any()) for i in chunk]
    labels = np.array(labels)
    cols = {k: np.array(v) for k, v in cols.items()}
    cols["head*map"] = np.sqrt(cols["head"] * cols["map"])
    cols["mean(head,map)"] = (cols["head"] + cols["map"]) / 2
    cols["mean(head,prompt)"] = (cols["head"] + cols["prompt_peak"]) / 2
    report[split] = {"n": len(labels), "n_pos": int(labels.sum()),
                     "auc": {k: round(auc(v, labels), 4) for k, v in cols.items()},
                     "scores": {k: [round(float(x), 4) for x in v] for k, v in cols.items()},
                     "labels": labels.tolist()}
    print(split, report[split]["n_pos"], report[split]["auc"], flush=True)
Path(out).write_text(json.dumps(report))
