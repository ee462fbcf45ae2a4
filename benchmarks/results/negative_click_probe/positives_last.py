"""A + click the box must always keep (twenty-eighth session; one-off probe): `clicks_as_box` applies the - clicks
first, then widens for the + clicks, so an old - click re-applied to the box the page sends back cannot cut a new
+ click off again. Shipped order: + clicks widen, then - clicks cut (on BUSI test, seed 2 of the 10% runs, benign_291:
two - clicks moved the top edge through the lesion, and every later + click was cut off again: Dice 0.73 -> 0.006).
Run as `benchmarks/effort.py`, with the variant patched in:

    python benchmarks/results/negative_click_probe/positives_last.py --data DATA --model RUN --split val \
        --starts proposal --json OUT
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import effort  # noqa: E402
from model import inference  # noqa: E402


def clicks_as_box(box, positive, negative, pad: float) -> tuple[float, float, float, float]:
    edges = [float(v) for v in box]  # x0, y0, x1, y1
    for x, y in negative:
        x0, y0, x1, y1 = edges
        if x0 < x < x1 and y0 < y < y1:
            nearest = int(np.argmin([x - x0, y - y0, x1 - x, y1 - y]))
            edges[nearest] = (x + 1, y + 1, x - 1, y - 1)[nearest]
    for x, y in positive:
        edges = [min(edges[0], x - pad), min(edges[1], y - pad), max(edges[2], x + pad), max(edges[3], y + pad)]
    x0, y0, x1, y1 = edges
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


inference.clicks_as_box = clicks_as_box
sys.exit(effort.main())
