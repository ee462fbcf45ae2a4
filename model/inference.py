"""Fully automatic prediction and click/box refinement on cached embeddings (images for an encoder-LoRA model)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from model.adasam import AdaSam
from model.preprocess import Geometry, box_to_model, box_to_original, logits_to_original
from model.uncertainty import (Uncertainty, classifier_uncertainty, combined_uncertainty, mc_dropout_probability,
                               segmentation_uncertainty)


CLICK_BOX_PAD = 0.05  # a positive click outside the box widens it to the click plus this share of the image side
CLICK_PART_SHARE = 0.25  # a positive click the box's mask misses adds the mask of a box this share of the box's
# sides to each side of the click (half the box across): on BUSI val, effort.py's NoC@90 from the proposal 3.90 ->
# 3.57 and from a box 2.66 -> 2.41 (0.5: 3.77 / 2.41; 0.15: 3.67 / 2.21; benchmarks/README.md, seventeenth session)
DECODES_KEPT = 64  # masks a predictor keeps for the image being edited (a 1000 x 1000 image: 1 MB each)
CLICK_PART_SHARES = (CLICK_PART_SHARE, CLICK_PART_SHARE / 2, CLICK_PART_SHARE / 4)  # while a + click is still missed,
# the next smaller part box, then the first with the click as a point: a + click that changed nothing was clicked
# again and again (BUSI val, 10% masks: NoC@90 from the proposal 2.82 -> 2.42, mean of seeds 0-2; twenty-ninth session)
FAR_CLICK_SHARE = 0.5  # no + click within this share of the box's width (height) beside (above, below) it: the
# clicks are on another target than the box's, and the box starts again at them (widening the box to them spanned
# the wrong target and the missed one; within the box's longer side instead: NoC@85 from the proposal on BUSI val
# 1.525 -> 1.656 on seed 1, the same elsewhere; within CLICK_BOX_PAD of it: NoC@90 2.26 -> 2.43)
START_BOX_PADS = (1, 2, 4)  # a box started at + clicks reaches this many CLICK_BOX_PADs past them: the one the
# decoder's own IoU estimate rates best (BUSI val, 10% masks: NoC@90 clicks only 5.48 -> 3.53, seed 0, and from the
# proposal 2.42 -> 2.26, mean of seeds 0-2; (1, 2, 4, 8): 4.28 / 2.29; benchmarks/README.md, thirtieth session)


def clicks_as_box(box, positive, negative, pad: float, mask: np.ndarray | None = None
                  ) -> tuple[float, float, float, float]:
    """Clicks as edits of the box, for a decoder trained on boxes alone (Backbone.box_prompts): each positive click
    widens the box to include it (plus `pad`), then each negative click inside it moves an edge past it: the one
    that removes the least of `mask` (the decoder's mask for the widened box), else the nearest. The nearest edge
    can be the one across the target (BUSI test: two - clicks beside a lesion cut it to Dice 0.002); least-mask
    took val NoC@90 from 2.38 / 3.75 / 2.72 to 2.41 / 3.51 / 2.56 (seeds 0-2, with cut_outside; benchmarks/README.md,
    "Twenty-ninth session"). On BUSI val LiteMedSAM given the clicks themselves with the box needed more of them."""
    edges = [float(v) for v in box]  # x0, y0, x1, y1
    for x, y in positive:
        edges = [min(edges[0], x - pad), min(edges[1], y - pad), max(edges[2], x + pad), max(edges[3], y + pad)]
    rows, columns = np.nonzero(mask) if mask is not None else (np.zeros(0), np.zeros(0))
    for x, y in negative:
        x0, y0, x1, y1 = edges
        if x0 < x < x1 and y0 < y < y1:
            beyond = [columns <= x, rows <= y, columns >= x, rows >= y]  # what moving each edge past the click cuts
            removed, distance = [int(b.sum()) for b in beyond], [x - x0, y - y0, x1 - x, y1 - y]
            edge = min(range(4), key=lambda k: (removed[k], distance[k]))  # no mask: all remove 0, the nearest
            edges[edge] = (x + 1, y + 1, x - 1, y - 1)[edge]
            rows, columns = rows[~beyond[edge]], columns[~beyond[edge]]
    x0, y0, x1, y1 = edges
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def near_box(box, positive) -> bool:
    """Whether a + click lies beyond `box` by at most FAR_CLICK_SHARE of the box's width across and of its height
    down (None: no box, not near). Per axis: a wide, flat box reaches no farther down than its height says."""
    if box is None:
        return False
    x0, y0, x1, y1 = (float(v) for v in box)
    across, down = FAR_CLICK_SHARE * (x1 - x0), FAR_CLICK_SHARE * (y1 - y0)
    return any(x0 - across <= x <= x1 + across and y0 - down <= y <= y1 + down for x, y in positive)


def part_box(box, x: float, y: float, share: float = CLICK_PART_SHARE) -> tuple[float, float, float, float]:
    """A smaller box around a click inside `box`, clipped to it: where a box-trained decoder is asked what lies at
    a positive click its mask for the whole box missed (a box cannot say "this too" from inside)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    half_w, half_h = share * (x1 - x0), share * (y1 - y0)
    return max(x0, x - half_w), max(y0, y - half_h), min(x1, x + half_w), min(y1, y + half_h)


def cut_outside(mask: np.ndarray, box, positive, negative) -> np.ndarray:
    """`mask` without each piece of it beyond `box` that a negative click lies on; where a positive click lies on the
    piece too, without the part of it nearer a negative click than a positive one. SAM's mask can spill past the box
    it was given, and a negative click there moves no edge (clicks_as_box: it is already outside), so it changed
    nothing: on BUSI val (effort.py, 10% masks, seed 0) 55 of 157 clicks did nothing, most of them the same click on
    such a spill again and again. With this rule NoC@90 from the proposal went 2.57 / 3.75 -> 2.38 / 3.75 (seeds
    0 / 1; benchmarks/README.md, "Twenty-ninth session"); splitting a piece both kinds of click lie on (kept whole
    before: 31 clicks on seeds 0-2 changed nothing) took NoC@85 on seed 1 from 1.53 to 1.36 ("Thirtieth session")."""
    x0, y0, x1, y1 = (float(v) for v in box)
    height, width = mask.shape
    outside = mask.copy()
    # inside: pixels whose centre lies strictly inside the box, as clicks_as_box tests a click (a click on an edge
    # is beyond the box there, and must not fall between the two rules)
    rows = slice(max(0, math.floor(y0 + 0.5)), max(0, math.ceil(y1 - 0.5)))
    outside[rows, max(0, math.floor(x0 + 0.5)):max(0, math.ceil(x1 - 0.5))] = False
    pieces, _ = ndimage.label(outside)

    def piece_at(x: float, y: float) -> int:
        return int(pieces[min(max(int(y), 0), height - 1), min(max(int(x), 0), width - 1)])

    def nearest(points, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:  # squared distance to the nearest of `points`
        return np.min([(xs + 0.5 - x) ** 2 + (ys + 0.5 - y) ** 2 for x, y in points], axis=0)

    mask = mask.copy()
    for piece in {piece_at(x, y) for x, y in negative} - {0}:
        ys, xs = np.nonzero(pieces == piece)
        kept = [(x, y) for x, y in positive if piece_at(x, y) == piece]
        cut = nearest([(x, y) for x, y in negative if piece_at(x, y) == piece], ys, xs) < nearest(kept, ys, xs) \
            if kept else slice(None)
        mask[ys[cut], xs[cut]] = False
    return mask


@dataclass
class Prediction:
    """What the model proposes for one image, in original pixel coordinates."""

    mask: np.ndarray  # bool H x W; empty when the classifier says the target is absent
    raw_mask: np.ndarray  # bool H x W; the decoder's mask whatever the classifier says
    probability: float  # P(target present)
    cam: np.ndarray  # float H x W in [0, 1]
    box: np.ndarray  # (x0, y0, x1, y1) prompt box
    box_is_fallback: bool  # True when no CAM region passed the threshold (central box used)
    uncertainty: Uncertainty


@dataclass
class Presence:
    """The classifier's view of one image: P(target present), its entropy and the prompt box (original pixels)."""

    probability: float
    classifier_uncertainty: float
    box: np.ndarray


def valid_grid(geometries: list[Geometry], grid: int) -> torch.Tensor:
    """B x grid x grid: 1 over the embedding cells that cover real image (not padding)."""
    valid = torch.zeros(len(geometries), grid, grid)
    for i, g in enumerate(geometries):
        h, w = g.resized
        valid[i, :math.ceil(h * grid / g.size), :math.ceil(w * grid / g.size)] = 1
    return valid


class Predictor:
    """Runs an AdaSam in eval mode; `refine` remembers the last image's features so each click costs one decode."""

    def __init__(self, model: AdaSam, dropout_samples: int = 1) -> None:
        self.model = model.eval()
        self.dropout_samples = dropout_samples
        self._embedding: torch.Tensor | None = None  # held, so `is` cannot match a recycled object
        self._features: torch.Tensor | None = None
        self._decoded: dict[tuple, tuple[np.ndarray, float]] = {}  # prompt -> (mask, IoU estimate) on the features
        # held: each redraw applies every click so far again, and repeats most of the last redraw's decodes

    def predict(self, embedding: torch.Tensor, geometry: Geometry, image: torch.Tensor | None = None) -> Prediction:
        return self.predict_batch(embedding[None], [geometry], None if image is None else image[None])[0]

    def automatic_prompt(self, embeddings: torch.Tensor, geometries: list[Geometry], images: torch.Tensor | None):
        """The decoder-free part of a prediction: (features, maps, P(target present), prompt boxes, fallbacks).
        `images` (B x 1 x S x S): required by a model with an image view, whose map joins the CAM's."""
        model, config = self.model, self.model.config
        valid = valid_grid(geometries, model.grid)
        with torch.no_grad():
            embedded = model.embed(embeddings)
            features = model.adapter(embedded)
            cams, logits = model.cam(features, valid)
            cams = model.prompt_maps(cams, images, geometries)
            classifier, presence_features = model.presence_reader(embedded, features)
            if classifier is not model.classifier:
                logits = classifier(presence_features, valid)
        if self.dropout_samples > 1:
            probability = mc_dropout_probability(classifier, presence_features, self.dropout_samples, valid)
        else:
            probability = logits.softmax(1)[:, 1]
        if config.method == "supervised" or not config.has_negatives:
            probability = torch.ones_like(probability)  # no classifier to ask: the target is assumed present
        boxes, fallbacks = model.auto_boxes(cams, [g.resized for g in geometries])
        return features, cams, probability, boxes, fallbacks

    def presence_batch(self, embeddings: torch.Tensor, geometries: list[Geometry],
                       images: torch.Tensor | None = None) -> list[Presence]:
        """What the classifier alone says of each image, without the decoder (most of a prediction's cost):
        enough for the active-learning strategies that do not read the mask."""
        _, _, probability, boxes, _ = self.automatic_prompt(embeddings, geometries, images)
        probability = probability.cpu()
        return [Presence(float(p), float(classifier_uncertainty(p)), box_to_original(box.numpy(), g))
                for p, box, g in zip(probability, boxes, geometries)]

    def predict_batch(self, embeddings: torch.Tensor, geometries: list[Geometry],
                      images: torch.Tensor | None = None) -> list[Prediction]:
        config = self.model.config
        features, cams, probability, boxes, fallbacks = self.automatic_prompt(embeddings, geometries, images)
        mask_logits = self.auto_logits(features, cams, boxes)
        cams, probability = cams.cpu(), probability.cpu()
        cls_unc = classifier_uncertainty(probability)
        out = []
        for i, g in enumerate(geometries):
            full = logits_to_original(mask_logits[i], g)[0]
            prob_map = torch.sigmoid(mask_logits[i, 0])
            h, w = (round(s * prob_map.shape[-1] / g.size) for s in g.resized)
            seg_unc = segmentation_uncertainty(prob_map[None, :h, :w])[0]
            p = float(probability[i])
            raw = (full > 0).numpy()
            cam_full = F.interpolate(cams[i][None, None], size=(g.size, g.size), mode="bilinear",
                                     align_corners=False)[0, 0, :g.resized[0], :g.resized[1]]
            cam_full = F.interpolate(cam_full[None, None], size=(g.height, g.width), mode="bilinear",
                                     align_corners=False)[0, 0].clamp(0, 1).numpy()
            out.append(Prediction(
                mask=raw if p >= config.presence_threshold else np.zeros_like(raw),
                raw_mask=raw, probability=p, cam=cam_full,
                box=box_to_original(boxes[i].numpy(), g), box_is_fallback=fallbacks[i],
                uncertainty=Uncertainty(float(cls_unc[i]), float(seg_unc),
                                        float(combined_uncertainty(probability[i], cls_unc[i], seg_unc)))))
        return out

    @torch.no_grad()
    def auto_logits(self, features: torch.Tensor, cams: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The decoder's answer (B x 1 x H x W logits, on the CPU) to the automatic prompt: the maps' boxes, plus
        their peaks as clicks and the cascade where the model's config asks for them."""
        model = self.model
        logits, _ = model.segment(features, boxes, model.auto_points(cams))
        if model.config.cascade:
            logits, _ = model.cascade(features, boxes, logits, model.config.cascade)
        return logits.cpu()

    def refine(self, embedding: torch.Tensor, geometry: Geometry, positive: list[tuple[float, float]] = (),
               negative: list[tuple[float, float]] = (), box: tuple[float, float, float, float] | None = None
               ) -> np.ndarray:
        """Re-run the decoder with clicks (original pixel x, y) and/or a box -> boolean mask at original size."""
        return self.redraw(embedding, geometry, positive, negative, box)[0]

    @torch.no_grad()
    def redraw(self, embedding: torch.Tensor, geometry: Geometry, positive: list[tuple[float, float]] = (),
               negative: list[tuple[float, float]] = (), box: tuple[float, float, float, float] | None = None):
        """(the mask `refine` gives, the box the decoder was given): the app draws that box, so the box on screen is
        the one SAM used. A decoder trained on boxes alone (Backbone.box_prompts) gets the clicks as box edits
        (clicks_as_box, reading the mask of the box widened for the positive clicks when a negative click lies
        inside it), each positive click its mask still misses adds the mask of a smaller box around it (part_box;
        smaller again, then with the click as a point, while it is missed: CLICK_PART_SHARES), and a negative click
        on the mask beyond the box removes that piece (cut_outside). With no box, or no + click near it
        (FAR_CLICK_SHARE), the box starts at the + clicks (start_box). Other decoders get the clicks as points, with
        the box as given."""
        if not positive and not negative and box is None:
            raise ValueError("refine needs at least one click or a box")
        if embedding is not self._embedding:
            self._features = self.model.features(embedding[None])
            self._embedding, self._decoded = embedding, {}
        pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
        if self.model.backbone.box_prompts and positive and not near_box(box, positive):
            box = self.start_box(geometry, positive)
        if not (box is not None and self.model.backbone.box_prompts and (positive or negative)):
            return self._decode(geometry, box, positive, negative), box
        widened = clicks_as_box(box, positive, (), pad)
        x0, y0, x1, y1 = widened
        inside = any(x0 < x < x1 and y0 < y < y1 for x, y in negative)
        box = clicks_as_box(widened, (), negative, pad, self._decode(geometry, widened) if inside else None)
        mask = self._decode(geometry, box)
        for x, y in dict.fromkeys((float(x), float(y)) for x, y in positive):  # a click repeated is decoded once
            row, column = min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)
            for share in CLICK_PART_SHARES:
                if mask[row, column]:
                    break
                mask |= self._decode(geometry, part_box(box, x, y, share))
            if not mask[row, column]:  # no box around it finds anything there: the click as a point too
                mask |= self._decode(geometry, part_box(box, x, y), [(x, y)])
        return cut_outside(mask, box, positive, negative), box

    def start_box(self, geometry: Geometry, positive) -> tuple[float, float, float, float]:
        """A box for + clicks on a target no box surrounds yet: around them, reaching one, two or four
        CLICK_BOX_PADs past them (START_BOX_PADS), whichever the decoder's IoU estimate rates best. A fixed reach
        fits one size of target: the smallest took BUSI val's clicks-only start 5.5 interactions to 0.9 Dice."""
        pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)
        x, y = positive[0]
        boxes = [clicks_as_box((x, y, x, y), positive, (), k * pad) for k in START_BOX_PADS]
        boxes = [(max(0.0, x0), max(0.0, y0), min(float(geometry.width), x1), min(float(geometry.height), y1))
                 for x0, y0, x1, y1 in boxes]
        return max(boxes, key=lambda b: self._kept_decode(geometry, b)[1])

    def _decode(self, geometry: Geometry, box=None, positive=(), negative=()) -> np.ndarray:
        """One decoder pass on the cached features -> boolean mask at original size (a copy of the one kept, when
        this image was given the same prompt before)."""
        return self._kept_decode(geometry, box, positive, negative)[0].copy()

    def _kept_decode(self, geometry: Geometry, box=None, positive=(), negative=()) -> tuple[np.ndarray, float]:
        """(mask, the decoder's IoU estimate) for a prompt, kept for the image being edited (DECODES_KEPT)."""
        key = (geometry.height, geometry.width, None if box is None else tuple(float(v) for v in box),
               tuple((float(x), float(y)) for x, y in positive), tuple((float(x), float(y)) for x, y in negative))
        if key not in self._decoded:
            if len(self._decoded) >= DECODES_KEPT:
                del self._decoded[next(iter(self._decoded))]
            self._decoded[key] = self._decode_once(geometry, box, positive, negative)
        return self._decoded[key]

    def _decode_once(self, geometry: Geometry, box=None, positive=(), negative=()) -> tuple[np.ndarray, float]:
        points = None
        if positive or negative:
            coords = np.array(list(positive) + list(negative), dtype=np.float32).reshape(-1, 2) * geometry.scale
            labels = np.array([1] * len(positive) + [0] * len(negative), dtype=np.float32)
            # no padding point here: SAM's prompt encoder adds one itself when no box accompanies the clicks
            points = (torch.from_numpy(coords)[None], torch.from_numpy(labels)[None])
        boxes = None if box is None else torch.from_numpy(box_to_model(box, geometry))[None]
        logits, iou = self.model.segment(self._features, boxes=boxes, points=points)
        return (logits_to_original(logits[0].cpu(), geometry)[0] > 0).numpy(), float(iou.reshape(-1)[0])
