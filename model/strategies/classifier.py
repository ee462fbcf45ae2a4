"""classifier: the presence classifier's entropy first (the paper's signal: is the target in this image at all?)."""
from __future__ import annotations

import numpy as np

from model.strategies.base import Candidate, Strategy


def rank(candidates: list[Candidate], vectors: np.ndarray | None = None,
         labeled: np.ndarray | None = None) -> np.ndarray:
    return np.array([c.uncertainty.classifier for c in candidates], dtype=float)


STRATEGY = Strategy("classifier", "presence classifier entropy", rank, reads_masks=False)
