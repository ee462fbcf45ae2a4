"""What a + click far from the box does (thirtieth session; one-off probe, val only), patched over 4c34016's
model.inference (PROBE_ROOT=a checkout of 4c34016). VARIANT: restart (box restarts at + clicks farther than
CLICK_BOX_PAD from it) | restart_half (farther than half the box's longer side) | restart_iou, half_iou, half_iou8
(the new box's reach chosen by the decoder's IoU among 1, 2, 4 (8) pads).
python far_probe.py --data DATA --model RUN --split val ..."""

import os, sys
from pathlib import Path
import torch

ROOT = Path(os.environ.get("PROBE_ROOT", Path(__file__).resolve().parents[3]))
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort
from model import inference
from model.inference import clicks_as_box, CLICK_BOX_PAD, box_to_model
from model.preprocess import logits_to_original

V = os.environ.get("VARIANT", "shipped")
orig = inference.Predictor.redraw


def decode_iou(self, geometry, box):
    boxes = torch.from_numpy(box_to_model(box, geometry))[None]
    logits, iou = self.model.segment(self._features, boxes=boxes)
    return (logits_to_original(logits[0].cpu(), geometry)[0] > 0).numpy(), float(iou.reshape(-1)[0])


def redraw(self, embedding, geometry, positive=(), negative=(), box=None):
    if V != "shipped" and positive and box is not None and self.model.backbone.box_prompts:
        pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
        x0, y0, x1, y1 = (float(v) for v in box)
        margin = pad if V in ("restart", "restart_iou") else max(x1 - x0, y1 - y0) / 2
        near = any(x0 - margin <= x <= x1 + margin and y0 - margin <= y <= y1 + margin for x, y in positive)
        px, py = positive[0]
        fresh = (
            len(positive) + len(negative) == 1
            and max(abs(x0 - px), abs(x1 - px), abs(y0 - py), abs(y1 - py)) <= pad + 1
        )
        if fresh and V.startswith("half_iou"):
            near = False
        if not near:
            x, y = positive[0]
            box = clicks_as_box((x, y, x, y), positive, (), pad)
            if V in ("restart_iou", "half_iou", "half_iou8"):
                if embedding is not self._embedding:
                    self._features = self.model.features(embedding[None])
                    self._embedding, self._decoded = embedding, {}
                best = None
                for k in (1, 2, 4, 8) if V == "half_iou8" else (1, 2, 4):
                    b = clicks_as_box((x, y, x, y), positive, (), k * pad)
                    b = (
                        max(0.0, b[0]),
                        max(0.0, b[1]),
                        min(float(geometry.width), b[2]),
                        min(float(geometry.height), b[3]),
                    )
                    m, iou = decode_iou(self, geometry, b)
                    if best is None or iou > best[0]:
                        best = (iou, b)
                box = best[1]
    return orig(self, embedding, geometry, positive=positive, negative=negative, box=box)


inference.Predictor.redraw = redraw
sys.exit(effort.main())
