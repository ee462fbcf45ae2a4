"""The learning curve behind the dashboard's "how many more masks?": fit, projection, range, and when it says no."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model.learning_curve import MIN_POINTS, fit_learning_curve, project

MASKS = [10, 20, 30, 40, 60, 80]


def law(masks, plateau=0.85, scale=0.9, exponent=0.6):
    return plateau - scale * np.asarray(masks, dtype=float) ** -exponent


def test_a_clean_curve_is_recovered_and_projected():
    fit = fit_learning_curve(MASKS, law(MASKS))
    assert (fit.plateau, fit.scale, fit.exponent) == pytest.approx((0.85, 0.9, 0.6), rel=1e-3)
    truth = (0.9 / (0.85 - 0.8)) ** (1 / 0.6)  # masks where the law reaches 0.8: about 124
    assert fit.masks_for(0.8) == pytest.approx(truth, rel=1e-3)


def test_noise_gives_a_range_around_the_estimate():
    noisy = law(MASKS) + np.random.default_rng(0).normal(0, 0.01, len(MASKS))
    found = project(MASKS, noisy, 0.8)
    assert found.points == len(MASKS) and found.low <= found.masks <= found.high
    assert found.low < 124 < found.high  # the true answer is inside the quoted range


def test_a_flat_curve_never_reaches_a_higher_target():
    flat = 0.64 + np.random.default_rng(1).normal(0, 0.005, len(MASKS))
    found = project(MASKS, flat, 0.8)
    assert math.isinf(found.masks) and math.isinf(found.high) and found.fit.plateau < 0.8


def test_too_few_rounds_give_no_projection():
    assert project(MASKS[:MIN_POINTS - 1], law(MASKS[:MIN_POINTS - 1]), 0.8) is None
    assert project([10, 10, 10, 10, 20], law([10, 10, 10, 10, 20]), 0.8) is None  # distinct mask counts count


def test_the_range_is_at_least_as_wide_as_the_val_figures_noise():
    """Four exact points leave no residuals: the range came out a point while real val figures move by 0.02-0.03
    between equally good models. Given that noise, the range opens around the estimate."""
    exact = law(MASKS[:4])
    tight = project(MASKS[:4], exact, 0.8)
    assert tight.low == pytest.approx(124, rel=0.02) and tight.high == pytest.approx(124, rel=0.02)
    wide = project(MASKS[:4], exact, 0.8, noise=0.02)
    assert wide.masks == pytest.approx(tight.masks)  # the estimate is the fit's; only the range widens
    assert wide.low < 0.8 * 124 and wide.high > 1.25 * 124


def test_a_draw_no_curve_fits_counts_as_never_reaching_the_target(monkeypatch):
    import model.learning_curve as learning_curve

    real = learning_curve.fit_learning_curve
    calls = []

    def every_other(masks, dice):
        calls.append(1)
        return real(masks, dice) if len(calls) % 2 else None  # the fit itself, then every second refit fails

    monkeypatch.setattr(learning_curve, "fit_learning_curve", every_other)
    found = learning_curve.project(MASKS, law(MASKS), 0.8)
    # half the draws fit no curve: they count as "never", not dropped (which left a range of the other half only)
    assert found.masks == pytest.approx(124, rel=0.01) and found.low == pytest.approx(124, rel=0.05)
    assert math.isinf(found.high)
