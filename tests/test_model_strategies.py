"""Active-learning strategies: each ranks the pool by its own signal; coreset spreads picks; names are checked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.preprocess import Geometry
from model.strategies import DEFAULT_STRATEGY, STRATEGIES, Candidate, UnknownStrategy, get_strategy
from model.strategies.vectors import image_vector
from model.uncertainty import Uncertainty


def candidates(classifier, segmentation, combined):
    return [Candidate(i, 0.5, Uncertainty(c, s, m)) for i, (c, s, m) in enumerate(zip(classifier, segmentation,
                                                                                      combined))]


def order(priorities) -> list[int]:
    return [int(i) for i in np.argsort(-np.asarray(priorities), kind="stable")]


def test_uncertainty_strategies_rank_by_their_own_signal():
    pool = candidates([0.1, 0.9, 0.5], [0.8, 0.2, 0.5], [0.3, 0.4, 0.9])
    assert order(get_strategy("classifier").rank(pool, None, None)) == [1, 2, 0]
    assert order(get_strategy("segmentation").rank(pool, None, None)) == [0, 2, 1]
    assert order(get_strategy("combined").rank(pool, None, None)) == [2, 1, 0]
    assert np.all(get_strategy("random").rank(pool, None, None) == 0)  # ties: the queue's seeded order decides


def two_clusters(n: int = 6) -> np.ndarray:
    """n unit vectors near (1, 0) then n near (0, 1)."""
    rng = np.random.default_rng(0)
    points = np.concatenate([[1, 0] + 0.05 * rng.normal(size=(n, 2)), [0, 1] + 0.05 * rng.normal(size=(n, 2))])
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def test_coreset_asks_first_where_nothing_is_labeled_yet():
    vectors = two_clusters()
    pool = candidates([0] * 12, [0] * 12, [0] * 12)
    assert order(get_strategy("coreset").rank(pool, vectors, np.array([[1.0, 0.0]])))[0] >= 6  # the unlabeled cluster
    unlabeled_start = order(get_strategy("coreset").rank(pool, vectors, None))
    assert {unlabeled_start[0] // 6, unlabeled_start[1] // 6} == {0, 1}  # one of each cluster in the first two


def test_coreset_asks_for_a_duplicate_last():
    base = two_clusters()
    vectors = np.concatenate([base[5:6], base])  # image 0 repeats image 6
    pool = candidates([0] * 13, [0] * 13, [0] * 13)
    assert order(get_strategy("coreset").rank(pool, vectors, None))[-1] in (0, 6)


def test_coreset_needs_one_vector_per_candidate():
    with pytest.raises(ValueError, match="one image vector per candidate"):
        get_strategy("coreset").rank(candidates([0], [0], [0]), None, None)
    assert get_strategy("coreset").rank([], np.zeros((0, 2)), None).shape == (0,)


def test_image_vectors_ignore_padding_and_have_unit_length():
    embedding = torch.zeros(4, 8, 8)
    embedding[0, :4, :] = 2.0  # the real image: the top half (a wide image padded below)
    embedding[1, 4:, :] = 5.0  # padding only
    vector = image_vector(embedding, Geometry(height=50, width=100, size=64))
    assert np.allclose(vector, [1, 0, 0, 0])


def test_strategies_are_chosen_by_name():
    assert DEFAULT_STRATEGY in STRATEGIES
    assert {"random", "classifier", "segmentation", "combined", "coreset", "typiclust"} <= set(STRATEGIES)
    assert all(name == strategy.name for name, strategy in STRATEGIES.items())
    with pytest.raises(UnknownStrategy, match="choose one of combined"):
        get_strategy("entropyy")


def test_typiclust_asks_first_for_a_typical_image_of_a_cluster_without_labels(monkeypatch):
    from model.strategies import typiclust

    monkeypatch.setattr(typiclust, "LOOK_AHEAD", 1)  # as many clusters as labels + 1: here the three groups
    rng = np.random.default_rng(1)
    centres = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    vectors = np.concatenate([c + 0.05 * rng.normal(size=(10, 3)) for c in centres])
    pool = candidates([0] * 30, [0] * 30, [0] * 30)
    first = order(typiclust.rank(pool, vectors, centres[:2] + 0.01))[0]  # a label in each of the first two groups
    third = vectors[20:30]
    spread = np.linalg.norm(third[:, None] - third[None], axis=2).mean(1)
    assert first == 20 + int(np.argmin(spread))  # the unlabeled group's most central member, not an edge of it

    monkeypatch.setattr(typiclust, "LOOK_AHEAD", 3)
    vectors[9] = [0.6, 0.6, 0.0]  # an outlier between the first two groups
    no_labels = order(typiclust.rank(pool, vectors, None))
    assert sorted(i // 10 for i in no_labels[:3]) == [0, 1, 2]  # one typical image of each group first
    assert 9 not in no_labels[:6]


def test_typiclust_needs_one_vector_per_candidate():
    with pytest.raises(ValueError, match="one image vector per candidate"):
        get_strategy("typiclust").rank(candidates([0], [0], [0]), None, None)
    assert get_strategy("typiclust").rank([], np.zeros((0, 2)), None).shape == (0,)


def test_typiclust_ranks_duplicates_and_treats_no_labels_as_none():
    rank = get_strategy("typiclust").rank
    vectors = np.repeat(np.eye(3), [8, 8, 1], axis=0)  # two groups of identical images and one lone image
    pool = candidates([0] * 17, [0] * 17, [0] * 17)
    first = order(rank(pool, vectors, None))
    assert sorted(i // 8 for i in first[:2]) == [0, 1]  # one of each group first: the lone image (a cluster under
    # MIN_CLUSTER_SIZE) comes after them
    assert np.array_equal(rank(pool, vectors, None), rank(pool, vectors, np.zeros((0, 3))))
    assert np.array_equal(rank(pool, vectors, None), rank(pool, vectors, []))
