"""A - click on a stray blob: remove the blob, leave the box alone? (twenty-eighth session; one-off probe, nothing
shipped.)

For LiteMedSAM (a decoder trained on boxes) the app turns a - click inside the box into an edit of the box: its
nearest edge moves past the click (model.inference.clicks_as_box). Where the false area is a separate blob beside
the lesion, that edge can cut the lesion. The variant: a - click that lands on a connected part of the + clicks'
mask other than its largest part removes that part from the mask, and does not edit the box; any other - click
edits the box as before. Run as `benchmarks/effort.py` with the variant patched into `Predictor` (or not, with
`--shipped`), from the proposal start, on `--split val` to choose:

    python benchmarks/results/negative_click_probe/probe.py [--shipped] --data DATA --model RUN --split val \
        --starts proposal --json OUT
"""
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort  # noqa: E402
from model import inference  # noqa: E402
from model.inference import CLICK_BOX_PAD, Predictor, clicks_as_box, part_box  # noqa: E402

shipped_refine = Predictor.refine
stray_calls = []  # per refine with - clicks: how many landed on a stray part


def refine(self, embedding, geometry, positive=(), negative=(), box=None):
    if not (box is not None and self.model.backbone.box_prompts and negative):
        self._edited = None
        return shipped_refine(self, embedding, geometry, positive, negative, box)
    if embedding is not self._embedding:
        self._features = self.model.features(embedding[None])
        self._embedding = embedding
    pad = CLICK_BOX_PAD * max(geometry.height, geometry.width)

    def decoded(edges):
        mask = self._decode(geometry, edges)
        for x, y in positive:
            if not mask[min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)]:
                mask |= self._decode(geometry, part_box(edges, x, y))
        return mask

    first = decoded(clicks_as_box(box, positive, [], pad))
    labels, count = ndimage.label(first)
    largest = 1 + int(np.argmax(ndimage.sum(first, labels, range(1, count + 1)))) if count else 0
    on_stray = [labels[min(int(y), labels.shape[0] - 1), min(int(x), labels.shape[1] - 1)] not in (0, largest)
                for x, y in negative]
    stray_calls.append(sum(on_stray))
    edits = [point for point, stray in zip(negative, on_stray) if not stray]
    edges = clicks_as_box(box, positive, edits, pad)
    self._edited = edges
    mask = decoded(edges) if edits else first
    parts, _ = ndimage.label(mask)
    for (x, y), stray in zip(negative, on_stray):
        part = parts[min(int(y), parts.shape[0] - 1), min(int(x), parts.shape[1] - 1)]
        if stray and part:
            mask &= parts != part
    return mask


def edited_box(self, geometry, box, positive=(), negative=()):
    edited = getattr(self, "_edited", None)
    return edited if edited is not None else shipped_edited_box(self, geometry, box, positive, negative)


shipped_edited_box = Predictor.edited_box
if "--shipped" in sys.argv:
    sys.argv.remove("--shipped")
else:
    inference.Predictor.refine, inference.Predictor.edited_box = refine, edited_box
status = effort.main()
print(f"refines with - clicks: {len(stray_calls)}, with a - click on a stray part: {sum(map(bool, stray_calls))}")
sys.exit(status)
