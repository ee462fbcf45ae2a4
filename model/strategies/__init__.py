"""Active-learning strategies, one small module each, chosen by name (as MONAI Label's): each turns the current
model's view of the unlabeled pool into one priority per image, and the queue asks for the highest first."""
from __future__ import annotations

from model.strategies import classifier, combined, coreset, random_order, segmentation, typiclust
from model.strategies.base import Candidate, Strategy

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    combined.STRATEGY, classifier.STRATEGY, segmentation.STRATEGY, coreset.STRATEGY, typiclust.STRATEGY,
    random_order.STRATEGY)}
DEFAULT_STRATEGY = "random"  # the best mean val AUC in benchmarks/active_learning.py on BUSI, seeds 0-2, with the
# image view and without (issue 12)


class UnknownStrategy(ValueError):
    """A strategy name that is not in STRATEGIES (one-line message listing the choices)."""


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}") from None


__all__ = ["Candidate", "Strategy", "STRATEGIES", "DEFAULT_STRATEGY", "UnknownStrategy", "get_strategy"]
