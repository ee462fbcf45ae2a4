"""typiclust: typical images of the clusters labels have not reached yet (Hacohen, Dekel & Weinshall, ICML 2022).

At small budgets the most informative image is a typical one, not an uncertain or outlying one: the pool (labeled
and unlabeled) is cut by k-means into as many clusters as there are labels plus one round's worth, and the queue
asks, cluster by cluster, from the clusters with the fewest labels and the largest first, for the cluster's most
typical unlabeled image (the inverse mean distance to its nearest neighbours inside the cluster); then round after
round over the same order. Like coreset it needs no model output and holds with any share of target-free images
(in the app it ranks once a model has scored the pool; before that the seeded shuffle or the cold start decides).
"""
from __future__ import annotations

import warnings

import numpy as np

from model.strategies.base import Candidate, Strategy, image_vectors

LOOK_AHEAD = 20  # clusters beyond the labels: the picks one ranking must spread (the queue is re-ranked when labels
# come in, but a busy trainer or several annotators take a round's worth from one ranking)
MAX_CLUSTERS = 500  # the paper's cap
MIN_CLUSTER_SIZE = 5  # smaller clusters are outliers: last in each pass over the clusters
NEIGHBOURS = 20
MAX_PICKS = 2000  # ordered picks (each recomputes one cluster's typicality); the rest follow by typicality


def rank(candidates: list[Candidate], vectors: np.ndarray | None = None,
         labeled: np.ndarray | None = None) -> np.ndarray:
    from sklearn.cluster import KMeans  # here: listing the strategies (the command line) stays cheap
    from sklearn.exceptions import ConvergenceWarning

    n = len(candidates)
    if n == 0:
        return np.zeros(0)
    vectors = image_vectors("typiclust", candidates, vectors)
    no_labels = labeled is None or len(labeled) == 0
    labeled = np.zeros((0, vectors.shape[1])) if no_labels else np.asarray(labeled, np.float64)
    points = np.concatenate([vectors, labeled])
    k = min(len(labeled) + LOOK_AHEAD, MAX_CLUSTERS, len(np.unique(points, axis=0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # near-duplicate images: fewer clusters than asked
        cluster = KMeans(k, n_init=1, random_state=0).fit_predict(points) if k > 1 else np.zeros(len(points), int)
    sizes = np.bincount(cluster, minlength=k)
    covered = np.bincount(cluster[n:], minlength=k)  # labels per cluster
    free = cluster[:n].copy()  # the candidates' clusters; -1 once picked
    order = sorted(range(k), key=lambda c: (sizes[c] < MIN_CLUSTER_SIZE, covered[c], -sizes[c]))
    priority = np.zeros(n)
    picks, turn = 0, 0
    while picks < min(n, MAX_PICKS):
        c = order[turn % k]
        turn += 1
        members = np.flatnonzero(free == c)
        if len(members) == 0:
            continue
        pick = members[np.argmax(typicality(points[members]))]
        priority[pick] = 2.0 - picks / n  # above every unpicked candidate (below 1)
        free[pick] = -1
        picks += 1
    rest = np.flatnonzero(free >= 0)
    for c in np.unique(free[rest]):
        members = rest[free[rest] == c]
        typical = typicality(points[members])
        priority[members] = typical / (1 + typical)  # below every pick (< 1), the most typical first
    return priority


def typicality(points: np.ndarray) -> np.ndarray:
    """1 / mean distance to the nearest neighbours (at most NEIGHBOURS, half the cluster) among `points`."""
    if len(points) < 3:
        return np.ones(len(points))
    squared = (points * points).sum(1)
    distance = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * points @ points.T, 0))
    neighbours = min(NEIGHBOURS, len(points) // 2)
    nearest = np.sort(distance, axis=1)[:, 1:neighbours + 1]  # column 0 is the point itself
    return 1.0 / (nearest.mean(1) + 1e-8)


STRATEGY = Strategy("typiclust", "typical images of the clusters with fewest labels (diversity for small budgets)",
                    rank, uses_vectors=True, reads_masks=False)
