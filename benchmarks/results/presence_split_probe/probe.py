"""Would presence from a later checkpoint help? (twenty-seventh session; one-off probe, nothing shipped.)

model.pt is the checkpoint val's ungated lesion Dice picked, often early, when the classifier has learned little
(twenty-fifth session). Here the presence probability of the same run's *last* weights (last.pt: the student, and
its EMA teacher) is paired with model.pt's masks: the gate is chosen on val by the shipped rule (balanced accuracy,
at most 0.5; model.calibrate) from those probabilities, and test's served figures follow from model.pt's per-image
ungated Dice (`adasam evaluate --json` rows), with no decoding.

    python benchmarks/results/presence_split_probe/probe.py DATA RUN VAL_ROWS.json TEST_ROWS.json OUT.json
"""
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from model.adasam import load_checkpoint  # noqa: E402
from model.backbones import build_backbone  # noqa: E402
from model.cache import DEFAULT_CACHE_DIR, model_inputs  # noqa: E402
from model.calibrate import presence_probabilities  # noqa: E402
from model.dataset import load_data_folder, load_items  # noqa: E402

torch.set_num_threads(1)
data, run, val_rows, test_rows, out = sys.argv[1:6]
rows = {"val": json.load(open(val_rows))["images"], "test": json.load(open(test_rows))["images"]}
base = build_backbone("litemedsam")
folder = load_data_folder(data)
student, payload = load_checkpoint(Path(run) / "last.pt", base)
served_model, _ = load_checkpoint(Path(run) / "model.pt", base)
models = {"model.pt": served_model, "last student": student}
if "teacher" in payload:  # none without unlabeled images (every mask)
    teacher = copy.deepcopy(student)
    teacher.load_state_dict(payload["teacher"], strict=False)
    models["last teacher"] = teacher.eval()
probabilities = {name: {} for name in models}
for split in ("val", "test"):
    by_id = {s.id: s for s in folder.split(split)}
    items = load_items([by_id[r["id"]] for r in rows[split]], model_inputs(base, 0, DEFAULT_CACHE_DIR),
                       with_images=True)
    for name, model in models.items():
        probabilities[name][split] = presence_probabilities(model, items).tolist()


def served(p, lesion, d, t):
    on = p >= t
    lesion_dice = np.where(on[lesion], d[lesion], 0.0)
    negative = np.where(on[~lesion], d[~lesion], 1.0)
    return float(lesion_dice.mean()), float(np.concatenate([lesion_dice, negative]).mean())


def ba_capped(p, lesion):
    below = np.unique(p[p < 0.5])
    candidates = [0.5, *((below[1:] + below[:-1]) / 2), *below[:1] / 2]
    ba = {float(t): ((p[lesion] >= t).mean() + (p[~lesion] < t).mean()) / 2 for t in candidates}
    return max(ba, key=lambda t: (round(ba[t], 6), t))


def auc(p, lesion):
    pos, neg = p[lesion], p[~lesion]
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


report = {"run": run, "step": payload.get("step"), "models": {}}
for name in models:
    val_p, test_p = (np.array(probabilities[name][s]) for s in ("val", "test"))
    vl, tl = (np.array([r["lesion"] for r in rows[s]]) for s in ("val", "test"))
    vd, td = (np.array([r["dice_ungated"] for r in rows[s]]) for s in ("val", "test"))
    t = ba_capped(val_p, vl)
    report["models"][name] = {"threshold": t, "val_auc": auc(val_p, vl), "test_auc": auc(test_p, tl),
                              "val_served": served(val_p, vl, vd, t), "test_served": served(test_p, tl, td, t)}
    print(f"{name:13s} t={t:.3f} AUC val {auc(val_p, vl):.3f} test {auc(test_p, tl):.3f}  "
          f"test lesion / dice_all {served(test_p, tl, td, t)[0]:.3f} / {served(test_p, tl, td, t)[1]:.3f}")
report["probabilities"] = probabilities
Path(out).write_text(json.dumps(report, indent=1))
