"""What every active-learning strategy gets and gives: candidates in, one priority per candidate out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # numpy only at run time: the command line lists the strategies without importing torch
    from model.uncertainty import Uncertainty


@dataclass(frozen=True)
class Candidate:
    """An unlabeled pool image as the current model sees it."""

    image_id: int
    probability: float | None  # P(target present)
    uncertainty: "Uncertainty"


# candidates, their image vectors (N x D, or None), the labeled pool images' vectors (L x D, or None) -> N priorities
RankFunction = Callable[[list[Candidate], "np.ndarray | None", "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class Strategy:
    """A named way to order the pool: higher priority is asked first; ties fall back to the workspace's seeded
    random order. `uses_vectors`: rank needs image vectors (model.strategies.vectors) of candidates and labels.
    `reads_masks`: rank reads the segmentation uncertainty, so scoring the pool for it runs the mask decoder (most of
    scoring's cost); False: the classifier alone serves it (a strategy says so explicitly: unsure means decode)."""

    name: str
    summary: str
    rank: RankFunction
    uses_vectors: bool = False
    reads_masks: bool = True


def image_vectors(name: str, candidates: list[Candidate], vectors: np.ndarray | None) -> np.ndarray:
    """A diversity strategy's candidate vectors as float64, N x D; a clear error when they do not match."""
    if vectors is None or len(vectors) != len(candidates):
        raise ValueError(f"{name} needs one image vector per candidate")
    return np.asarray(vectors, dtype=np.float64)
