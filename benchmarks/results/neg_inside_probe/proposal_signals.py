"""Per val image, what the Annotate tab shows before any click: the proposal's box and mask as shares of the image,
P(target present) and the combined uncertainty (thirty-first session; one-off, val only). Joined with effort.py's
per-image rows to ask whether a proposal likely to be bad is better not shown (the annotator then starts with clicks).
python proposal_signals.py RUN val OUT.json"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
sys.path[:0] = [str(Path(__file__).resolve().parents[3]), str(Path(__file__).resolve().parents[3] / "benchmarks")]
import effort
from annotation import Store
from app.model_slot import ModelSlot
from app.studio import Studio
from app.pictures import decode_mask
from model.cache import DEFAULT_CACHE_DIR
data = Path("../shared/datasets/busi"); model = Path(sys.argv[1]); split = sys.argv[2]
ids = effort.split_ids(data, split)
out = {}
with tempfile.TemporaryDirectory() as tmp:
    ws = effort.workspace_of(Path(tmp), data, ids, model)
    store = Store(ws); studio = Studio(store, ModelSlot(store, "litemedsam", str(DEFAULT_CACHE_DIR)), max_points=11)
    while True:
        t = studio.task("a")
        if t["image_id"] is None: break
        from PIL import Image
        h, w = np.asarray(Image.open(next((data / "images").glob(t["name"] + ".*")))).shape[:2]
        b = t["box"]
        shown = decode_mask(t["mask"], (h, w))
        out[t["name"]] = {"box_share": None if b is None else (b[2] - b[0]) * (b[3] - b[1]) / (h * w),
                          "shown": int(shown.sum()), "mask_share": float(shown.sum()) / (h * w),
                          "uncertainty": t["uncertainty"], "probability": t["probability"]}
        studio.no_finding("a", t["view"])
    studio.close(); store.close()
json.dump(out, open(sys.argv[3], "w"))
