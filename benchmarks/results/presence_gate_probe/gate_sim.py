"""Other presence-gate rules, simulated from the per-image probabilities and ungated Dice in adasam evaluate's
eval_val.json / eval_test.json (thirtieth session; one-off, nothing shipped): each rule picks a threshold on val,
scored on test as served lesion Dice and dice_all (a target-free image counts 1 when gated, 0 when not: the ungated
proposal is assumed non-empty). python gate_sim.py RUN_DIR ... > gate_sim.txt"""
import json, sys, numpy as np
from pathlib import Path


def load(p):
    im = json.load(open(p))["images"]
    return (
        np.array([i["probability"] for i in im]),
        np.array([i["lesion"] for i in im]),
        np.array([i["dice_ungated"] if i["lesion"] else np.nan for i in im]),
        np.array([i.get("empty_ungated", False) for i in im]),
    )


def ba(p, y, t):
    return ((p[y] >= t).mean() + (p[~y] < t).mean()) / 2


def cands(p):
    below = np.unique(p[p < 0.5])
    return [0.5, *((below[1:] + below[:-1]) / 2), *below[:1] / 2]


def r_current(p, y):
    s = {t: round(ba(p, y, t), 6) for t in cands(p)}
    return max(s, key=lambda t: (s[t], t))


def r_lower(p, y):
    s = {t: round(ba(p, y, t), 6) for t in cands(p)}
    return max(s, key=lambda t: (s[t], -t))


def r_quantile(p, y):
    k = y.sum()
    q = np.sort(p)[::-1]
    return min(0.5, (q[k - 1] + q[k]) / 2)


def r_sens(p, y, w=2):
    s = {t: round((w * (p[y] >= t).mean() + (p[~y] < t).mean()), 6) for t in cands(p)}
    return max(s, key=lambda t: (s[t], t))


def logit(x):
    x = np.clip(x, 1e-6, 1 - 1e-6)
    return np.log(x / (1 - x))


def r_mid(p, y):
    # middle (in logit) of the best BA plateau, capped at 0.5
    us = np.unique(np.concatenate([[0.0], p, [1.0]]))
    mids = (us[1:] + us[:-1]) / 2
    s = np.array([round(ba(p, y, t), 6) for t in mids])
    best = s.max()
    idx = np.where(s == best)[0]
    # take contiguous run containing the highest-threshold best
    run = [idx[-1]]
    while run[-1] - 1 in idx:
        run.append(run[-1] - 1)
    lo, hi = us[min(run)], us[max(run) + 1]
    m = 1 / (1 + np.exp(-(logit(lo) + logit(hi)) / 2))
    return min(0.5, m)


rules = dict(current=r_current, lower=r_lower, quantile=r_quantile, sens2=r_sens, mid=r_mid, fixed05=lambda p, y: 0.5)


def served(p, y, d, t):
    keep = p >= t
    les = np.where(keep[y], d[y], 0).mean()
    neg_ok = (~keep[~y]).sum()  # assumes ungated proposal on negatives is non-empty
    return les, (np.where(keep[y], d[y], 0).sum() + neg_ok) / len(y)


runs = sys.argv[1:]
tot = {r: [] for r in rules}
for run in runs:
    pv, yv, _, _ = load(
        f"{run}/eval_val.json" if Path(f"{run}/eval_val.json").exists() else run.replace("eval_test", "eval_val")
    )
    pt, yt, dt, _ = load(f"{run}/eval_test.json" if Path(f"{run}/eval_test.json").exists() else run)
    line = [Path(run).name[:28].ljust(28), f"ungated {np.nanmean(dt[yt]):.3f}"]
    for name, rule in rules.items():
        t = rule(pv, yv)
        les, allp = served(pt, yt, dt, t)
        tot[name].append((les, allp))
        line.append(f"{name} t={t:.3f} {les:.3f}/{allp:.3f}")
    print(" | ".join(line))
for name, v in tot.items():
    v = np.array(v)
    print(name.ljust(9), "lesion %.3f  all %.3f" % tuple(v.mean(0)))
print("--- prior rules")
for name, rule in dict(
    prior=lambda p, y: min(0.5, y.mean()),
    prior_then_ba=lambda p, y: max(
        [t for t in cands(p) if t <= y.mean()] + [y.mean()], key=lambda t: (round(ba(p, y, t), 6), t)
    ),
).items():
    v = []
    for run in runs:
        pv, yv, _, _ = load(f"{run}/eval_val.json")
        pt, yt, dt, _ = load(f"{run}/eval_test.json")
        t = rule(pv, yv)
        v.append(served(pt, yt, dt, t))
        print(name, round(t, 3), np.round(v[-1], 3))
    print(name, np.array(v).mean(0))
