"""How many more masks? A learning curve fitted to validation Dice against the number of masks trained on.

The curve is the inverse power law most often used for it, Dice(n) = plateau - scale * n^-exponent (Figueroa et al.
2012, "Predicting sample size required for classification performance"): it rises fast, then flattens towards a
plateau below 1. Its uncertainty comes from a parametric bootstrap (refits on the fitted values plus noise the size
of a val figure's own), so a projection is a range, not a promise; with fewer than MIN_POINTS rounds there is none.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 4  # rounds with distinct mask counts before a fit is shown: three parameters need more than three
RANGE = (10, 90)  # percentiles of the bootstrap projections quoted as the range


@dataclass(frozen=True)
class CurveFit:
    plateau: float
    scale: float
    exponent: float

    def dice_at(self, masks: float | np.ndarray) -> float | np.ndarray:
        return _law(np.asarray(masks, dtype=float), self.plateau, self.scale, self.exponent)

    def masks_for(self, target: float) -> float:
        """Masks at which the curve reaches `target` (infinity when the plateau is at or below it)."""
        if target >= self.plateau:
            return math.inf
        return (self.scale / (self.plateau - target)) ** (1 / self.exponent)


@dataclass(frozen=True)
class Projection:
    """Masks needed to reach `target`: `masks` from the fit, `low`..`high` the bootstrap range (`high` infinite
    when more than the upper percentile of refits never reach the target)."""

    target: float
    masks: float
    low: float
    high: float
    fit: CurveFit
    points: int


def _law(n: np.ndarray, plateau: float, scale: float, exponent: float) -> np.ndarray:
    return plateau - scale * np.power(n, -exponent)


def _points(masks: list[float], dice: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The points a curve can be fitted to: finite, with at least one mask."""
    x, y = np.asarray(masks, dtype=float), np.asarray(dice, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0)
    return x[keep], y[keep]


def fit_learning_curve(masks: list[float], dice: list[float]) -> CurveFit | None:
    """The least-squares inverse power law through (masks, Dice) points; None with fewer than MIN_POINTS distinct
    mask counts or when the fit does not converge."""
    x, y = _points(masks, dice)
    if len(np.unique(x)) < MIN_POINTS:
        return None
    start = (min(1.0, y.max() + 0.05), max(1e-3, (y.max() - y.min()) * x.min() ** 0.5), 0.5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(_law, x, y, p0=start, bounds=([0.0, 0.0, 0.01], [1.0, np.inf, 3.0]), maxfev=5000)
    except (RuntimeError, ValueError):
        return None
    return CurveFit(*map(float, params))


def project(masks: list[float], dice: list[float], target: float, noise: float = 0.0, samples: int = 200,
            seed: int = 0) -> Projection | None:
    """Masks needed to reach val Dice `target`, with a bootstrap range; None when no curve can be fitted yet.

    Each refit sees the fitted values moved by Gaussian noise of the larger of `noise` (the standard error of one
    val figure, from its images' spread: what two equally good models differ by) and the residuals' sd over the fit's
    degrees of freedom. Three parameters through four or five points leave residuals near zero, and a range drawn
    from them alone was far narrower than the val figures' own noise. A refit that fails counts as never reaching
    the target: no curve fits that draw."""
    x, y = _points(masks, dice)
    fit = fit_learning_curve(x, y)
    if fit is None:
        return None
    fitted = fit.dice_at(x)
    spread = max(noise, float(np.sqrt(np.sum((y - fitted) ** 2) / max(1, len(x) - 3))))
    rng = np.random.default_rng(seed)
    needed = []
    for _ in range(samples):
        refit = fit_learning_curve(x, fitted + rng.normal(0.0, spread, len(x)))
        needed.append(math.inf if refit is None else refit.masks_for(target))
    low = np.percentile(needed, RANGE[0], method="lower")  # no interpolation: a range end may be infinite
    high = np.percentile(needed, RANGE[1], method="higher")
    return Projection(target, fit.masks_for(target), float(low), float(high), fit, len(np.unique(x)))
