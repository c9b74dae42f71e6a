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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.errors import CalibrationError

HISTOGRAM_BINS = 2048
#: int8 symmetric levels on one side (TensorRT's KL uses 128 target bins)
QUANT_LEVELS = 128
DEFAULT_PERCENTILE = 99.99
#: values per tensor and image that go into the two-pass histogram (see TensorStats.observe_histogram)
HISTOGRAM_SAMPLES = 1 << 16
#: the bins of OnePassStats' growing histograms (twice HISTOGRAM_BINS: see OnePassStats)
WIDE_BINS = 2 * HISTOGRAM_BINS


@dataclass
class TensorStats:
    """One tensor's statistics for the observers: exact min/max and the |x| histogram over [0, absmax].

    ``observe_range`` / ``observe_histogram`` build them in two passes over the values (the reference the one-pass
    ``OnePassStats`` is tested against); calibration builds them in one pass (``OnePassStats.finish``).
    """

    lo: float = math.inf
    hi: float = -math.inf
    histogram: np.ndarray | None = None  # [HISTOGRAM_BINS] over [0, absmax]: int64 (two passes), float64 (one pass)

    @property
    def absmax(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    def observe_range(self, values: np.ndarray) -> None:
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))

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


class OnePassStats:
    """One-pass statistics of N tensors at once, image by image: exact ranges and growing histograms of |x|.

    Per image each tensor gives its exact ``lo`` / ``hi`` and, for the histogram methods, a sample of its values
    (``quant.observation``: fixed-stride subsamples). The histogram cannot wait for the final range,
    so tensor ``k``'s covers ``[0, wide_top[k]]`` with WIDE_BINS bins and, when a value beyond ``wide_top[k]``
    arrives, ``wide_top[k]`` doubles (``j`` times) and every ``2^j`` neighbouring bins merge into one: exact, no
    count moves across a value boundary. ``wide_top`` starts at the first absmax, so at the end
    ``absmax > wide_top / 2`` and the bins are no wider than ``absmax / HISTOGRAM_BINS``: ``finish`` redistributes
    them onto the observers' HISTOGRAM_BINS bins over ``[0, absmax]`` (counts split in proportion to overlap).
    Each tensor is binned on its own: one ``bincount`` over all N tensors (tensor ``k``'s bins at offset
    ``k * WIDE_BINS``) was measured 1.6x slower alone and 2.5x slower beside the engine's threads (its arrays of
    every sample outgrow the cache; 150 samples of ~16k values do not).
    """

    def __init__(self, count: int, histogram: bool) -> None:
        self.lo = np.full(count, np.inf)
        self.hi = np.full(count, -np.inf)
        self.wide = np.zeros((count, WIDE_BINS), np.int64) if histogram else None
        self.wide_top = np.zeros(count)  # 0 until a tensor shows a non-zero value (then its first absmax)

    def observe(self, lo: np.ndarray, hi: np.ndarray, samples: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """Add one image: ``lo`` / ``hi`` [N] (each tensor's min and max on it) and, for the histogram, ``samples``
        (N float32 arrays, each tensor's sample of its values).

        Returns the [N] bool mask of tensors with a NaN or an infinity in their ``lo``, ``hi`` or sample, or with
        ``lo > hi`` (what an engine's min / max returned for a tensor of NaNs: +/-FLT_MAX, inverted); when any is
        set, nothing of the image is recorded.
        """
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        bad = ~(np.isfinite(lo) & np.isfinite(hi)) | (lo > hi)
        if self.wide is not None:
            if samples is None or len(samples) != len(lo):
                raise ValueError("histogram statistics need one sample per tensor")
            bad |= [not np.isfinite(sample).all() for sample in samples]
        if bad.any():
            return bad
        self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
        if self.wide is not None and samples is not None:
            self._bin(self.wide, samples)
        return bad

    def _bin(self, wide: np.ndarray, samples: Sequence[np.ndarray]) -> None:
        top = np.maximum(np.abs(self.lo), np.abs(self.hi))
        for k in np.flatnonzero(top > self.wide_top):
            if self.wide_top[k] == 0:  # the first image, or only zeros so far (all in bin 0 whatever the width)
                self.wide_top[k] = top[k]
                continue
            factor = 2 ** math.ceil(math.log2(top[k] / self.wide_top[k]))
            while self.wide_top[k] * factor < top[k]:  # log2 rounding
                factor *= 2
            merged = np.zeros(WIDE_BINS, np.int64)
            if factor >= WIDE_BINS:
                merged[0] = wide[k].sum()
            else:
                merged[:WIDE_BINS // factor] = wide[k].reshape(-1, factor).sum(axis=1)
            wide[k], self.wide_top[k] = merged, self.wide_top[k] * factor
        # a tensor that has been all zeros so far (wide_top 0) puts everything in bin 0
        scale = np.divide(WIDE_BINS, self.wide_top, out=np.zeros_like(self.wide_top), where=self.wide_top > 0)
        scale = scale.astype(np.float32)
        for row, sample in enumerate(samples):
            index = np.minimum((np.abs(sample) * scale[row]).astype(np.int64), WIDE_BINS - 1)
            wide[row] += np.bincount(index, minlength=WIDE_BINS)

    def finish(self) -> list[TensorStats]:
        """Each tensor's TensorStats: its range and (histogram) its histogram over [0, absmax]."""
        stats = []
        for k in range(len(self.lo)):
            tensor = TensorStats(lo=float(self.lo[k]), hi=float(self.hi[k]))
            if self.wide is not None:
                tensor.histogram = _final_histogram(self.wide[k], float(self.wide_top[k]), tensor.absmax)
            stats.append(tensor)
        return stats


def _final_histogram(wide: np.ndarray, wide_top: float, top: float) -> np.ndarray:
    """A growing histogram over [0, wide_top] onto HISTOGRAM_BINS bins over [0, top] (see OnePassStats)."""
    total = float(wide.sum())
    if top <= 0 or wide_top <= 0:
        histogram = np.zeros(HISTOGRAM_BINS)
        histogram[0] = total
        return histogram
    cumulative = np.concatenate([[0.0], np.cumsum(wide, dtype=np.float64)])
    old_edges = wide_top * np.arange(WIDE_BINS + 1) / WIDE_BINS
    at = np.interp(top * np.arange(HISTOGRAM_BINS + 1) / HISTOGRAM_BINS, old_edges, cumulative)
    histogram = np.diff(at)
    histogram[-1] += total - at[-1]  # the values at absmax itself (its wide bin reaches past absmax)
    return histogram


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
