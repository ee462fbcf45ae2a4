"""One-off probe (kept for reproducibility, not part of the tool; run from the repository root after extract.py,
as `PYTHONPATH=. python THIS_FILE l1|l2|emb SEED [THREADS] [cheap|full]`):
does the map head tell lesions apart better when it also reads an intermediate TinyViT output?

Real Trainer, map head + tags only (freeze_adapter, no unlabeled: the cheap protocol), 10% masks, val-picked.
The decoder always reads the 256-channel neck embedding; the classifier reads [embedding, extra]."""
import tempfile
import json, sys, time
from pathlib import Path
import torch
from model.adasam import AdaSam, AdaSamConfig
from model.backbones import build_backbone
from model.dataset import load_data_folder, masked_ids
from model.evaluate import Item, evaluate
from model.heads import LocationClassifier
from model.preprocess import Geometry, read_mask
from model.train import TrainConfig, Trainer, TrainingData
DATA = Path(__file__).resolve().parents[4] / "shared" / "datasets" / "busi"  # ../shared beside the repo
SCRATCH = Path(tempfile.gettempdir()) / "probe"  # features (3.6 GB), run folders, results.jsonl

variant, seed = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
mode = sys.argv[4] if len(sys.argv) > 4 else "cheap"
EXTRA = {"emb": [], "l1": ["l1"], "l2": ["l2"], "l12": ["l1", "l2"]}[variant]


class SplitAdapter(torch.nn.Module):
    def __init__(self, adapter, dim):
        super().__init__(); self.adapter, self.dim = adapter, dim
    def forward(self, x):
        return torch.cat([self.adapter(x[:, :self.dim]), x[:, self.dim:]], 1)


class ProbeSam(AdaSam):
    def segment(self, features, boxes=None, points=None):
        return super().segment(features[:, :256], boxes, points)


data = load_data_folder(str(DATA))
feats = SCRATCH / "feats"
pool, val = data.split("pool"), data.split("val")
stats = {}
if EXTRA:
    for name in EXTRA:
        acc = [torch.load(feats / f"{s.id}.pt")[name].float().flatten(1) for s in pool[:200]]
        cat = torch.cat(acc, 1)
        stats[name] = (cat.mean(1).view(-1, 1, 1), cat.std(1).view(-1, 1, 1) + 1e-3)


def item(s, with_mask):
    e = torch.load(feats / f"{s.id}.pt")
    parts = [e["emb"].float()] + [(e[n].float() - stats[n][0]) / stats[n][1] for n in EXTRA]
    g = Geometry(*e["geometry"])
    mask = read_mask(s.mask_path, (g.height, g.width)) if (with_mask and s.mask_path) else None
    tag = s.has_lesion if s.has_lesion is not None else (bool(mask.any()) if mask is not None else None)
    return Item(s.id, torch.cat(parts, 0), g, mask, tag)


chosen = masked_ids(pool, 0.1, seed)
pool_items = [item(s, True) for s in pool]
masked = [i for i in pool_items if i.id in chosen]
held = [i for i in pool_items if i.id not in chosen]  # pool images whose masks training never sees
tagged = [Item(i.id, i.embedding, i.geometry, None, i.tag) for i in pool_items]
unlabeled = [Item(i.id, i.embedding, i.geometry, None, i.tag) for i in held]
val_items = [item(s, True) for s in val]
dim = 256 + sum({"l1": 160, "l2": 320}[n] for n in EXTRA)
backbone = build_backbone("litemedsam")
torch.manual_seed(seed)
model = ProbeSam(AdaSamConfig(), backbone)
model.classifier = LocationClassifier(dim, dropout=0.3)
model.adapter = SplitAdapter(model.adapter, 256)
cheap = mode == "cheap"
cfg = TrainConfig(seed=seed, calibrate=False, freeze_adapter=cheap, use_unlabeled=not cheap)
out = SCRATCH / "runs" / f"{mode}_{variant}_seed{seed}"; out.mkdir(parents=True, exist_ok=True)
log = open(out / "train.log", "w")
t0 = time.time()
trainer = Trainer(model, cfg, TrainingData(masked, tagged, unlabeled if not cheap else [], val_items), out,
                  log=lambda line: (log.write(line + "\n"), log.flush()))
best = trainer.run()
train_s = time.time() - t0
state = torch.load(out / "model.pt", weights_only=False)["state"]
model.load_state_dict(state, strict=False)
held_lesion = [i for i in held if i.mask is not None and i.mask.any()][:120]
summary, _ = evaluate(model.eval(), held_lesion, with_hd95=False)
history = [(r["step"], round(r["score"], 3)) for r in trainer.history]
result = {"variant": variant, "seed": seed, "mode": mode, "best_step": best["step"], "val_best": best["score"],
          "held_pool_lesion_dice_ungated": summary["dice_lesion_ungated"], "n_held": len(held_lesion),
          "history": history, "train_s": train_s}
print(json.dumps(result))
with open(SCRATCH / "results.jsonl", "a") as f:
    f.write(json.dumps(result) + "\n")
