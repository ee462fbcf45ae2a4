"""coreset: k-center greedy on image vectors (Sener & Savarese, ICLR 2018), a diversity strategy.

Each pick is the image farthest from everything labeled or picked before it, so a batch of labels covers the pool
instead of piling up in one corner of it, which is how uncertainty sampling loses to random at small budgets. It
needs no model output at all: the same ranking works before the first round. Greedy picks stop at MAX_PICKS (the
quadratic part); the rest follow by their distance to the nearest pick.
"""
from __future__ import annotations

import numpy as np

from model.strategies.base import Candidate, Strategy, image_vectors

MAX_PICKS = 2000


def rank(candidates: list[Candidate], vectors: np.ndarray | None = None,
         labeled: np.ndarray | None = None) -> np.ndarray:
    n = len(candidates)
    if n == 0:
        return np.zeros(0)
    vectors = image_vectors("coreset", candidates, vectors)
    distance = (_distances(vectors, np.asarray(labeled, dtype=np.float64)).min(1)
                if labeled is not None and len(labeled) else None)
    priority = np.zeros(n)
    for k in range(min(n, MAX_PICKS)):
        if distance is None:  # nothing labeled: start from the most typical image (nearest the mean), not an outlier
            pick = int(np.argmin(_distances(vectors, vectors.mean(0, keepdims=True))[:, 0]))
        else:
            pick = int(np.argmax(distance))
        priority[pick] = 2.0 - k / n  # above every unpicked image (their priority is a distance, capped at 1)
        to_pick = _distances(vectors, vectors[pick:pick + 1])[:, 0]
        distance = to_pick if distance is None else np.minimum(distance, to_pick)
        distance[pick] = -np.inf
    rest = np.isfinite(distance) & (distance >= 0)
    priority[rest] = np.minimum(distance[rest], 1.0)
    return priority


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances, A x B."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(squared, 0))


STRATEGY = Strategy("coreset", "k-center greedy on image embeddings (diversity)", rank, uses_vectors=True,
                    reads_masks=False)
