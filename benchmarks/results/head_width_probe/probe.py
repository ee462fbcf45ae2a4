"""One-off probe (kept for reproducibility, not part of the tool; run from the repository root after
../encoder_stage_probe/extract.py, as `PYTHONPATH=. python THIS_FILE HIDDEN FRACTION SEED [THREADS]`):
is the map head too narrow for the masks to count? The fourth session found ten times the masks did not help the
map head on frozen embeddings, with its 32 channels; this asks the same with 64 and 128.

Real Trainer, map head + tags only (freeze_adapter, no unlabeled: the cheap protocol), val-picked; scored on val
(ungated lesion Dice, the checkpoint score) and, below 100% masks, on 120 pool lesion images training never saw."""
import json
import sys
import tempfile
import time
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
SCRATCH = Path(tempfile.gettempdir()) / "probe"  # features from extract.py; run folders; head_width.jsonl

hidden, fraction, seed = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
data = load_data_folder(str(DATA))
pool, val = data.split("pool"), data.split("val")


def item(s, with_mask):
    e = torch.load(SCRATCH / "feats" / f"{s.id}.pt")
    g = Geometry(*e["geometry"])
    mask = read_mask(s.mask_path, (g.height, g.width)) if (with_mask and s.mask_path) else None
    tag = s.has_lesion if s.has_lesion is not None else (bool(mask.any()) if mask is not None else None)
    return Item(s.id, e["emb"].float(), g, mask, tag)


chosen = masked_ids(pool, fraction, seed)
pool_items = [item(s, True) for s in pool]
masked = [i for i in pool_items if i.id in chosen]
held = [i for i in pool_items if i.id not in chosen]
tagged = [Item(i.id, i.embedding, i.geometry, None, i.tag) for i in pool_items]
val_items = [item(s, True) for s in val]
torch.manual_seed(seed)
model = AdaSam(AdaSamConfig(), build_backbone("litemedsam"))
model.classifier = LocationClassifier(256, hidden=hidden, dropout=0.3)
cfg = TrainConfig(seed=seed, calibrate=False, freeze_adapter=True, use_unlabeled=False)
out = SCRATCH / "runs" / f"width{hidden}_{fraction:g}_seed{seed}"
out.mkdir(parents=True, exist_ok=True)
log = open(out / "train.log", "w")
t0 = time.time()
trainer = Trainer(model, cfg, TrainingData(masked, tagged, [], val_items), out,
                  log=lambda line: (log.write(line + "\n"), log.flush()))
best = trainer.run()
train_s = time.time() - t0
model.load_state_dict(torch.load(out / "model.pt", weights_only=False)["state"], strict=False)
held_lesion = [i for i in held if i.mask is not None and i.mask.any()][:120]
held_dice = evaluate(model.eval(), held_lesion, with_hd95=False)[0]["dice_lesion_ungated"] if held_lesion else None
result = {"hidden": hidden, "fraction": fraction, "seed": seed, "n_masked": len(masked), "best_step": best["step"],
          "val_best": best["score"], "held_pool_lesion_dice_ungated": held_dice, "n_held": len(held_lesion),
          "history": [(r["step"], round(r["score"], 3)) for r in trainer.history], "train_s": train_s}
print(json.dumps(result))
with open(SCRATCH / "head_width.jsonl", "a") as f:
    f.write(json.dumps(result) + "\n")
