"""An online latency model per upstream: T(n) = a + b*n, fitted as batches complete.

Accelerators (and batched CPU inference) cost a fixed overhead per call plus a
small cost per row. The model is an exponentially weighted least-squares fit
with a weak pull of the slope towards zero, so that before it has seen more
than one batch size it predicts a flat cost (optimistic, which lets it try
larger batches and learn) rather than a proportional one. The prediction adds
a margin of 2.5 weighted mean absolute residuals (two standard deviations,
were the residuals normal): ``predict`` is
the pessimistic estimate (what a batch plans for), ``expected`` the fitted mean
without it (what a refusal is judged against: a refusal is final, while a call
that runs a little long may still be in time). The mean absolute residual,
not the standard deviation: on a shared CPU a few calls run tens of
milliseconds long, and squared residuals let those few set the margin for
every call (the batching bench saw a 23 ms standard deviation on calls of
20 to 40 ms), which refuses work a plain batcher serves in time.
"""

from __future__ import annotations

__all__ = ["LatencyModel"]


class LatencyModel:
    """Predicts the seconds an upstream call with ``n`` rows takes.

    ``observe(n, seconds)`` feeds one measurement; ``predict(n)`` returns the
    estimate with its margin and ``expected(n)`` the mean (both 0 before any
    observation: the batcher admits everything until it has measured
    something). ``half_life`` is in observations.
    """

    def __init__(self, half_life: float = 200.0, slope_prior_weight: float = 1e-3) -> None:
        self._decay = 0.5 ** (1.0 / half_life)
        self._prior = slope_prior_weight
        self._w = 0.0  # weighted sums: 1, n, n^2, t, n*t, t^2
        self._sn = 0.0
        self._snn = 0.0
        self._st = 0.0
        self._snt = 0.0
        self._stt = 0.0
        self._sabs = 0.0  # weighted sum of absolute residuals (against the fit at the time)
        self.observations = 0

    def observe(self, rows: int, seconds: float) -> None:
        """Record that a call with ``rows`` rows took ``seconds``."""
        d = self._decay
        n, t = float(rows), max(0.0, seconds)
        self._w = self._w * d + 1.0
        self._sn = self._sn * d + n
        self._snn = self._snn * d + n * n
        self._st = self._st * d + t
        self._snt = self._snt * d + n * t
        self._stt = self._stt * d + t * t
        a, b = self.coefficients()
        self._sabs = self._sabs * d + abs(t - a - b * n)
        self.observations += 1

    def coefficients(self) -> tuple[float, float]:
        """Return the fitted ``(a, b)`` in seconds and seconds per row (both >= 0)."""
        if self._w == 0.0:
            return 0.0, 0.0
        mean_n, mean_t = self._sn / self._w, self._st / self._w
        var_n = self._snn / self._w - mean_n * mean_n
        cov = self._snt / self._w - mean_n * mean_t
        b = max(0.0, cov / (var_n + self._prior)) if var_n > 0 else 0.0
        a = max(0.0, mean_t - b * mean_n)
        return a, b

    def predict(self, rows: int) -> float:
        """Return the predicted seconds for a call with ``rows`` rows, margin included."""
        a, b = self.coefficients()
        margin = 2.5 * self._sabs / self._w if self._w else 0.0
        return a + b * rows + margin

    def expected(self, rows: int) -> float:
        """Return the fitted mean seconds for a call with ``rows`` rows, without the margin."""
        a, b = self.coefficients()
        return a + b * rows
