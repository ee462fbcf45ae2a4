"""What else a - click inside the box could do (thirty-first session; diagnosis only, nothing chosen on val/test here).
Replays effort.py (its simulate, through Studio.refine) on the POOL split; at every redraw whose newest click is a -
click inside the box the redraw widened, it also computes what each alternative would have given, against the truth:
  edge0..3   the box's left / top / right / bottom edge moved past the click (the shipped rule picks one of them)
  point      the widened box with every click as a point too (no edge moved)
  piece      the mask of the widened box without the connected piece the click lies on, if it is not the largest
  voronoi    that mask without its part nearer the - clicks than the nearer of the + clicks and its own core
             (the point deepest inside it)
and per alternative the decoder's IoU estimate where one exists.
python neg_probe.py --data DATA [--model RUN] --split val --starts proposal|box --json F   (events -> F.events.json)"""
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort  # noqa: E402
from model import inference  # noqa: E402
from model.metrics import dice  # noqa: E402

split_ids = effort.split_ids
effort.split_ids = lambda data, split: split_ids(data, "pool")
state, events = {}, []
next_click = effort.next_click


def remember(mask, truth):
    state["truth"], state["previous"] = truth, round(dice(mask, truth), 4)
    point, positive = next_click(mask, truth)
    state["shown_at_click"] = bool(mask[int(point[1]), int(point[0])])
    state["last_positive"] = positive
    return point, positive


effort.next_click = remember
orig = inference.Predictor.redraw


def moved(widened, click, edge):
    x, y = click
    edges = list(widened)
    edges[edge] = (x + 1, y + 1, x - 1, y - 1)[edge]
    return tuple(edges)


def voronoi(mask, click_negatives, positives):
    if not mask.any():
        return mask
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
    keep = list(positives) + [(cx + 0.5, cy + 0.5)]
    ys, xs = np.nonzero(mask)

    def nearest(points):
        return np.min([(xs + 0.5 - x) ** 2 + (ys + 0.5 - y) ** 2 for x, y in points], axis=0)

    cut = nearest(click_negatives) < nearest(keep)
    out = mask.copy()
    out[ys[cut], xs[cut]] = False
    return out


def multimask(self, geometry, box):
    """The decoder's four outputs (token 0: SAM's single mask, 1-3: its multimask ones) for the box -> [(mask, iou)]."""
    import torch
    from model.preprocess import box_to_model, logits_to_original
    backbone = self.model.backbone
    decoder, prompt_encoder = backbone.mask_decoder, backbone.prompt_encoder
    with torch.no_grad():
        boxes = torch.from_numpy(box_to_model(box, geometry))[None]
        sparse, dense = prompt_encoder(points=None, boxes=boxes, masks=None)
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)[None]
        tokens = torch.cat([tokens, sparse], dim=1)
        features = self._features
        src = features + dense
        b, c, h, w = src.shape
        hs, src = decoder.transformer(src, prompt_encoder.get_dense_pe(), tokens)
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        _, c2, h2, w2 = upscaled.shape
        iou = decoder.iou_prediction_head(hs[:, 0, :])[0]
        out = []
        for k in range(decoder.num_mask_tokens):
            hyper = decoder.output_hypernetworks_mlps[k](hs[:, 1 + k, :])
            logits = (hyper.unsqueeze(1) @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, 1, h2, w2)
            out.append(((logits_to_original(logits[0], geometry)[0] > 0).numpy(), float(iou[k])))
    return out


def redraw(self, embedding, geometry, positive=(), negative=(), box=None):
    mask, used = orig(self, embedding, geometry, positive=positive, negative=negative, box=box)
    truth = state.get("truth")
    if not negative or box is None or truth is None or truth.shape != mask.shape or not self.model.backbone.box_prompts:
        return mask, used
    if positive and not inference.near_box(box, positive):
        return mask, used
    pad = inference.CLICK_BOX_PAD * max(geometry.height, geometry.width)
    widened = inference.clicks_as_box(box, positive, (), pad)
    x, y = negative[-1]
    x0, y0, x1, y1 = widened
    if not (x0 < x < x1 and y0 < y < y1):
        return mask, used
    before, before_iou = self._kept_decode(geometry, widened)
    row = {"dice_shipped": round(dice(mask, truth), 4), "n_pos": len(positive), "n_neg": len(negative),
           "box_side": [round(x1 - x0), round(y1 - y0)], "truth_at_click": bool(truth[int(y), int(x)]),
           "mask_at_click": bool(before[int(y), int(x)]), "dice_widened": round(dice(before, truth), 4),
           "iou_widened": round(before_iou, 3)}
    for edge in range(4):
        m, _ = orig(self, embedding, geometry, positive=positive, negative=negative, box=moved(widened, (x, y), edge))
        row[f"dice_edge{edge}"] = round(dice(m, truth), 4)
        row[f"iou_edge{edge}"] = round(self._kept_decode(geometry, moved(widened, (x, y), edge))[1], 3)
        row[f"removed_edge{edge}"] = int((before & ~m).sum())
        row[f"off_edge{edge}"] = not m[int(y), int(x)]
    point, point_iou = self._kept_decode(geometry, widened, positive, negative)
    row["dice_point"], row["iou_point"] = round(dice(point, truth), 4), round(point_iou, 3)
    row["off_point"] = not point[int(y), int(x)]
    row["shipped_box"] = [round(float(v), 1) for v in used]
    row["widened_box"] = [round(float(v), 1) for v in widened]
    for k, (m, iou) in enumerate(multimask(self, geometry, widened)):
        row[f"dice_token{k}"], row[f"iou_token{k}"] = round(dice(m, truth), 4), round(iou, 3)
        row[f"off_token{k}"] = not m[int(y), int(x)]
    pieces, count = ndimage.label(before)
    at = pieces[int(y), int(x)]
    if at and count > 1 and np.bincount(pieces.ravel())[1:].argmax() + 1 != at:
        row["dice_piece"] = round(dice(before & (pieces != at), truth), 4)
    row["dice_voronoi"] = round(dice(voronoi(before, negative, positive), truth), 4)
    row["dice_voronoi_shipped"] = round(dice(voronoi(mask, negative, positive), truth), 4)
    row["previous"], row["new_negative"] = state.get("previous"), not state.get("last_positive")
    row["shown_at_click"] = state.get("shown_at_click")
    events.append(row)
    return mask, used


inference.Predictor.redraw = redraw
rc = effort.main()
Path(sys.argv[sys.argv.index("--json") + 1] + ".events.json").write_text(json.dumps(events))
sys.exit(rc)
