"""random: every image ties, so the queue's seeded shuffle decides: the baseline every other strategy must beat, and
the default while none does (benchmarks/README.md, issue 12)."""
from __future__ import annotations

import numpy as np

from model.strategies.base import Candidate, Strategy


def rank(candidates: list[Candidate], vectors: np.ndarray | None = None,
         labeled: np.ndarray | None = None) -> np.ndarray:
    return np.zeros(len(candidates))


STRATEGY = Strategy("random", "seeded random order", rank, reads_masks=False)
