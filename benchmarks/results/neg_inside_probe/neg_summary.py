"""Summarise neg_probe.py's events by kind of - click: Dice after it for the shipped rule and each alternative, and
for rules that pick among them (thirty-first session; diagnosis only). python neg_summary.py OUT.json F.events.json
[...] (one JSON out, keyed by events file)."""
import json
import sys
from pathlib import Path

import numpy as np

KINDS = {"new - click on the box's own mask": lambda e: e["new_negative"] and e["mask_at_click"],
         "new - click on a part box's mask": lambda e: e["new_negative"] and not e["mask_at_click"],
         "earlier - click inside the box again (a + click widened it)": lambda e: not e["new_negative"]}


def rules(e):
    edges = range(4)
    out = {"before the click": e["previous"], "shipped": e["dice_shipped"],
           "best edge (oracle)": max(e[f"dice_edge{k}"] for k in edges),
           "edge the IoU estimate rates best": e[f"dice_edge{max(edges, key=lambda k: e[f'iou_edge{k}'])}"],
           "clicks as points with the widened box": e["dice_point"],
           "widened box's mask less the part nearer the - click": e["dice_voronoi"],
           "piece the click lies on removed, else shipped": e.get("dice_piece", e["dice_shipped"])}
    off = [k for k in edges if e[f"off_edge{k}"]] or list(edges)
    out["edge whose decode removes least, off the click"] = e[
        f"dice_edge{min(off, key=lambda k: e[f'removed_edge{k}'])}"]
    tokens = [k for k in range(4) if e[f"off_token{k}"]]
    out["multimask output off the click, best IoU, else shipped"] = e[
        f"dice_token{max(tokens, key=lambda k: e[f'iou_token{k}'])}"] if tokens else e["dice_shipped"]
    out["best of all (oracle)"] = max(out.values())
    return out


summary = {}
for path in sys.argv[2:]:
    events = json.load(open(path))
    summary[Path(path).name] = per_kind = {}
    for kind, selected in KINDS.items():
        table = [rules(e) for e in events if selected(e)]
        if not table:
            continue
        before = np.array([t["before the click"] for t in table])
        per_kind[kind] = {"events": len(table), "rules": {
            name: {"mean_dice": round(float(np.mean(v := np.array([t[name] for t in table]))), 4),
                   "worse": round(float(np.mean(v - before < -0.005)), 3),
                   "better": round(float(np.mean(v - before > 0.005)), 3)} for name in table[0]}}
        print(path, kind, len(table))
        for name, row in per_kind[kind]["rules"].items():
            print(f"   {name:58s} {row['mean_dice']:.4f}  worse {row['worse']:.0%}  better {row['better']:.0%}")
Path(sys.argv[1]).write_text(json.dumps(summary, indent=1) + "\n")
