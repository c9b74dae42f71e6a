"""Observers: turn the values a tensor took during calibration into the range INT8 will cover.

Each observer sees two summaries of one activation tensor over the whole calibration set:
its exact ``[lo, hi]`` (min / max) and a histogram of ``|x|`` with ``HISTOGRAM_BINS`` equal bins
over ``[0, max(|lo|, |hi|)]``. It returns ``(lo', hi')``: the range an emitter encodes (uint8
affine or int8 symmetric, see ``result.py``). Clipping observers choose a threshold ``T`` on
``|x|`` and return ``(max(lo, -T), min(hi, T))``: values beyond ``T`` saturate, values inside get
a finer step. That trade is what the methods differ in:

- ``minmax``      ``T = max|x|``: nothing saturates; one outlier stretches the step for everything.
- ``percentile``  ``T`` = the ``percentile``-th percentile of ``|x|`` (default 99.99).
- ``entropy``     TensorRT's KL-divergence calibration: for every candidate ``T`` (bin edge ``i`` of
                  the 2048-bin histogram, ``i >= 128``) let ``P`` be the histogram up to ``i`` with the
                  clipped tail folded into the last bin, and ``Q`` the same ``i`` bins quantised to
                  128 levels (``i / 128`` neighbouring bins merged, the merged count spread back evenly
                  over the bins that were non-empty). ``T`` minimises ``KL(P || Q) = Σ P log(P / Q)``:
                  the clipped distribution the int8 tensor can represent closest to the real one.
- ``mse``         ``T`` minimises the expected squared error of symmetric int8 with step ``Δ = T / 127``:
                  ``Σ_bins n_b · (Δ² / 12 if |x_b| <= T else (|x_b| - T)²)`` (uniform rounding noise
                  inside, saturation error outside), ``x_b`` the bin centres.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgekit.errors import CalibrationError

HISTOGRAM_BINS = 2048
#: int8 symmetric levels on one side (TensorRT's KL uses 128 target bins)
QUANT_LEVELS = 128
DEFAULT_PERCENTILE = 99.99
#: values per tensor and image that go into the histogram (see TensorStats.observe_histogram)
HISTOGRAM_SAMPLES = 1 << 16
#: one-pass calibration (TensorStats.observe): values per tensor and image binned (x 300 images: ~5M samples per
#: tensor for 2048 bins), and the bins of the growing histogram (twice HISTOGRAM_BINS: see ``observe``)
ONE_PASS_SAMPLES = 1 << 14
WIDE_BINS = 2 * HISTOGRAM_BINS


@dataclass
class TensorStats:
    """Running statistics of one tensor: exact min/max (pass 1) and the |x| histogram (pass 2)."""

    lo: float = math.inf
    hi: float = -math.inf
    histogram: np.ndarray | None = None  # int64 [HISTOGRAM_BINS] over [0, absmax] (float64 after ``finish``)
    wide: np.ndarray | None = None       # one pass: int64 [WIDE_BINS] over [0, wide_top]
    wide_top: float = 0.0

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    def observe_range(self, values: np.ndarray) -> None:
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))

    def observe(self, values: np.ndarray, histogram: bool) -> bool:
        """One-pass calibration: the exact range and (``histogram``) a growing histogram of a subsample of |x|.

        The histogram cannot wait for the final range, so it covers ``[0, wide_top]`` with WIDE_BINS bins and,
        when a value beyond ``wide_top`` arrives, ``wide_top`` doubles (``k`` times) and every ``2^k`` neighbouring
        bins merge into one: exact, no count moves across a value boundary. ``wide_top`` starts at the first
        absmax, so at the end ``absmax > wide_top / 2`` and the bins are no wider than ``absmax / HISTOGRAM_BINS``:
        ``finish`` redistributes them onto the observers' HISTOGRAM_BINS bins over ``[0, absmax]`` (counts split
        in proportion to overlap). Returns False when ``values`` holds a NaN or an infinity (min/max propagate them).
        """
        lo, hi = float(values.min()), float(values.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return False
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        if not histogram:
            return True
        flat = values.ravel()
        if flat.size > ONE_PASS_SAMPLES:
            flat = flat[::(flat.size // ONE_PASS_SAMPLES) | 1]  # odd stride, as observe_histogram
        top = self.absmax
        if self.wide is None:
            self.wide, self.wide_top = np.zeros(WIDE_BINS, np.int64), top
        elif top > self.wide_top:
            if self.wide_top == 0:  # so far only zeros, all in bin 0 whatever the width
                self.wide_top = top
            else:
                factor = 2 ** math.ceil(math.log2(top / self.wide_top))
                while self.wide_top * factor < top:  # log2 rounding
                    factor *= 2
                merged = np.zeros(WIDE_BINS, np.int64)
                if factor >= WIDE_BINS:
                    merged[0] = self.wide.sum()
                else:
                    merged[:WIDE_BINS // factor] = self.wide.reshape(-1, factor).sum(axis=1)
                self.wide, self.wide_top = merged, self.wide_top * factor
        if self.wide_top <= 0:
            self.wide[0] += flat.size
            return True
        index = np.minimum((np.abs(flat) * np.float32(WIDE_BINS / self.wide_top)).astype(np.int64), WIDE_BINS - 1)
        self.wide += np.bincount(index, minlength=WIDE_BINS)
        return True

    def finish(self) -> None:
        """One pass: the growing histogram onto HISTOGRAM_BINS bins over [0, absmax] (see ``observe``)."""
        if self.wide is None:
            return
        total = float(self.wide.sum())
        top = self.absmax
        if top <= 0 or self.wide_top <= 0:
            self.histogram = np.zeros(HISTOGRAM_BINS)
            self.histogram[0] = total
            return
        cumulative = np.concatenate([[0.0], np.cumsum(self.wide, dtype=np.float64)])
        old_edges = self.wide_top * np.arange(WIDE_BINS + 1) / WIDE_BINS
        at = np.interp(top * np.arange(HISTOGRAM_BINS + 1) / HISTOGRAM_BINS, old_edges, cumulative)
        self.histogram = np.diff(at)
        self.histogram[-1] += total - at[-1]  # the values at absmax itself (its wide bin reaches past absmax)

    def observe_histogram(self, values: np.ndarray) -> None:
        """Add ``|values|`` to the histogram over [0, absmax] fixed by the first pass.

        Large tensors are subsampled with a fixed stride to at most ``HISTOGRAM_SAMPLES`` values per
        image: the histogram is a distribution estimate (2048 bins), and binning every value of every
        640x640 activation made the histogram pass 4-5x slower than the inference it observes. The
        exact extremes still come from the range pass, which sees every value.
        """
        if self.histogram is None:
            self.histogram = np.zeros(HISTOGRAM_BINS, np.int64)
        top = self.absmax
        flat = values.ravel()
        if flat.size > HISTOGRAM_SAMPLES:
            # an odd stride, so the samples do not lock onto channel or row periods (powers of two)
            stride = (flat.size // HISTOGRAM_SAMPLES) | 1
            flat = flat[::stride]
        if top <= 0:
            self.histogram[0] += flat.size
            return
        index = np.minimum((np.abs(flat) * (HISTOGRAM_BINS / top)).astype(np.int64), HISTOGRAM_BINS - 1)
        self.histogram += np.bincount(index, minlength=HISTOGRAM_BINS)


def minmax(stats: TensorStats) -> tuple[float, float]:
    return stats.lo, stats.hi


def _clip(stats: TensorStats, threshold: float) -> tuple[float, float]:
    return max(stats.lo, -threshold), min(stats.hi, threshold)


def _require_histogram(stats: TensorStats) -> np.ndarray:
    if stats.histogram is None:
        raise CalibrationError("observer needs a histogram pass; the collector did not run it")
    return stats.histogram


def percentile_threshold(stats: TensorStats, percentile: float = DEFAULT_PERCENTILE) -> float:
    """The ``percentile``-th percentile of |x| (upper edge of the bin where the cumulative count crosses it)."""
    histogram = _require_histogram(stats)
    total = histogram.sum()
    if total == 0 or stats.absmax == 0:
        return stats.absmax
    cumulative = np.cumsum(histogram)
    index = int(np.searchsorted(cumulative, total * percentile / 100.0, side="left"))
    return stats.absmax * (index + 1) / HISTOGRAM_BINS


def entropy_threshold(stats: TensorStats) -> float:
    """TensorRT-style KL threshold (see the module docstring)."""
    histogram = _require_histogram(stats).astype(np.float64)
    top = stats.absmax
    if top == 0 or histogram.sum() == 0:
        return top
    best_kl, best_i = math.inf, HISTOGRAM_BINS
    tail = np.cumsum(histogram[::-1])[::-1]  # tail[i] = sum(histogram[i:])
    for i in range(QUANT_LEVELS, HISTOGRAM_BINS + 1):
        reference = histogram[:i].copy()
        if i < HISTOGRAM_BINS:
            reference[i - 1] += tail[i]
        if reference.sum() == 0:
            continue
        # quantise histogram[:i] (without the folded tail, as TensorRT does) into QUANT_LEVELS levels
        edges = np.linspace(0, i, QUANT_LEVELS + 1).astype(np.int64)
        sliced = histogram[:i]
        nonzero = sliced > 0
        merged = np.add.reduceat(sliced, edges[:-1])
        counts = np.add.reduceat(nonzero.astype(np.float64), edges[:-1])
        per_bin = np.divide(merged, counts, out=np.zeros_like(merged), where=counts > 0)
        expanded = np.repeat(per_bin, np.diff(edges)) * nonzero
        p = reference / reference.sum()
        q_sum = expanded.sum()
        if q_sum == 0:
            continue
        q = expanded / q_sum
        mask = p > 0
        # a P bin with Q = 0 (possible only in the folded last bin) is smoothed like TensorRT's epsilon
        q_masked = np.where(q[mask] > 0, q[mask], 1e-12)
        kl = float(np.sum(p[mask] * np.log(p[mask] / q_masked)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return top * best_i / HISTOGRAM_BINS


def mse_threshold(stats: TensorStats, candidates: int = 256) -> float:
    """Threshold minimising the expected symmetric-int8 squared error (see the module docstring).

    All candidates at once: with ``k(T)`` the first bin whose centre exceeds ``T`` and suffix sums
    ``N = Σ_{b>=k} n_b``, ``S1 = Σ n_b x_b``, ``S2 = Σ n_b x_b²``, the saturation term is
    ``S2 - 2 T S1 + T² N`` and the rounding term ``(total - N) Δ² / 12``; the first minimum wins.
    """
    histogram = _require_histogram(stats).astype(np.float64)
    top = stats.absmax
    if top == 0 or histogram.sum() == 0:
        return top
    centres = (np.arange(HISTOGRAM_BINS) + 0.5) * (top / HISTOGRAM_BINS)
    thresholds = top * np.arange(1, candidates + 1) / candidates

    def suffix(values: np.ndarray) -> np.ndarray:  # suffix[k] = Σ values[k:], suffix[HISTOGRAM_BINS] = 0
        return np.concatenate([np.cumsum(values[::-1])[::-1], [0.0]])

    count, first, second = suffix(histogram), suffix(histogram * centres), suffix(histogram * centres ** 2)
    k = np.searchsorted(centres, thresholds, side="right")  # first bin with centre > T
    step = thresholds / (QUANT_LEVELS - 1)
    saturated = np.maximum(second[k] - 2 * thresholds * first[k] + thresholds ** 2 * count[k], 0.0)
    error = (count[0] - count[k]) * step * step / 12.0 + saturated
    return float(thresholds[int(np.argmin(error))])


Observer = Callable[[TensorStats], tuple[float, float]]


def make_observer(method: str, percentile: float = DEFAULT_PERCENTILE) -> Observer:
    """The observer for ``method`` (minmax | percentile | entropy | mse)."""
    if method == "minmax":
        return minmax
    if method == "percentile":
        if not 0 < percentile <= 100:
            raise CalibrationError(f"--percentile {percentile}: expected a value in (0, 100]")
        return lambda stats: _clip(stats, percentile_threshold(stats, percentile))
    if method == "entropy":
        return lambda stats: _clip(stats, entropy_threshold(stats))
    if method == "mse":
        return lambda stats: _clip(stats, mse_threshold(stats))
    raise CalibrationError(f"--calib-method {method!r}: expected one of {', '.join(METHODS)}")


METHODS = ("entropy", "minmax", "percentile", "mse")


def needs_histogram(method: str) -> bool:
    return method != "minmax"
