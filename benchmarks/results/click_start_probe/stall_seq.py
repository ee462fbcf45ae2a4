"""Per image needing 6+ clicks: each click as +/- i(nside)/o(utside) the box, = when the mask did not change."""

import json, sys


def inside(b, p):
    return b is not None and b[0] < p[0] < b[2] and b[1] < p[1] < b[3]


f = sys.argv[1]
d = json.load(open(f))
imgs = d["starts"]["proposal"]["images"]
clicks = json.load(open(f + ".clicks.json"))
k = 0
for im in imgs:
    if not im["lesion"]:
        continue
    n = len(im["dices"]) - 1
    calls = clicks[k : k + n]
    k += n
    if im["noc90"] < 6:
        continue
    seq = []
    ph = None
    np_ = 0
    for j, cl in enumerate(calls):
        pos = len(cl["pos"]) > np_
        np_ = len(cl["pos"])
        pt = cl["pos"][-1] if pos else cl["neg"][-1]
        seq.append(
            ("+" if pos else "-")
            + ("i" if inside(cl["box"], pt) else "o")
            + ("" if cl["hash"] != ph else "=")
            + f"{im['dices'][j + 1]:.2f}"
        )
        ph = cl["hash"]
    print(im["name"], f"{im['dices'][0]:.2f}", " ".join(seq))
