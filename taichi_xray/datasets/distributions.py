"""Scalar distributions of dataset files (``{ dist = "uniform", low = 0, high = 1 }``, ...)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Dist", "DIST_KINDS"]

DIST_KINDS = {
    "uniform": ("low", "high"),
    "normal": ("mean", "std"),
    "truncnormal": ("mean", "std", "low", "high"),
    "loguniform": ("low", "high"),
    "choice": ("values", "weights"),
}


@dataclass(frozen=True)
class Dist:
    """A scalar distribution sampled per image.

    kind : "constant" (``value``), "uniform" [low, high), "normal" (mean, std),
    "truncnormal" (normal restricted to [low, high], sampled by the inverse CDF of one
    uniform number),
    "loguniform" (log of the value uniform in [log low, log high)), "choice" (one of
    ``values`` with probabilities proportional to ``weights``, default equal).
    A constant draws nothing from the random stream; every other kind draws exactly once
    per :meth:`sample` (so the streams of later parameters do not depend on values).
    """

    kind: str
    value: float = 0.0
    low: float = -math.inf
    high: float = math.inf
    mean: float = 0.0
    std: float = 1.0
    values: tuple = ()
    weights: tuple | None = None

    @property
    def random(self) -> bool:
        return self.kind != "constant"

    @classmethod
    def constant(cls, v: float) -> "Dist":
        return cls("constant", value=float(v), low=float(v), high=float(v))

    def support(self) -> tuple[float, float]:
        """(lowest, highest) value the distribution can give (inf for a normal)."""
        if self.kind == "constant":
            return self.value, self.value
        if self.kind == "normal":
            return -math.inf, math.inf
        if self.kind == "choice":
            return min(self.values), max(self.values)
        return self.low, self.high

    def sample(self, rng: np.random.Generator) -> float:
        """One value (float); draws from ``rng`` unless constant."""
        k = self.kind
        if k == "constant":
            return self.value
        if k == "uniform":
            return float(rng.uniform(self.low, self.high))
        if k == "normal":
            return float(self.mean + self.std * rng.standard_normal())
        if k == "truncnormal":
            return self._truncnormal(float(rng.random()))
        if k == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        if k == "choice":
            p = None
            if self.weights is not None:
                w = np.asarray(self.weights, dtype=np.float64)
                p = w / w.sum()
            return float(self.values[int(rng.choice(len(self.values), p=p))])
        raise AssertionError(k)  # pragma: no cover

    def _truncnormal(self, u: float) -> float:
        """Inverse CDF of the truncated normal at u in [0, 1): ``ndtri(Phi(a) + u (Phi(b) - Phi(a)))``,
        mirrored when both bounds lie above the mean (so Phi stays away from 1); far tails go
        through ``scipy.stats.truncnorm.ppf``."""
        from scipy.special import ndtr, ndtri

        a, b = (self.low - self.mean) / self.std, (self.high - self.mean) / self.std
        flip = a > 0
        if flip:
            a, b = -b, -a
        pa, pb = float(ndtr(a)), float(ndtr(b))
        if pb < 1e-10 or pb - pa < 1e-10 * pb:
            from scipy.stats import truncnorm

            z = float(truncnorm.ppf(u, a, b))
        else:
            z = float(ndtri(pa + u * (pb - pa)))
        z = -z if flip else z
        return min(max(self.mean + self.std * z, self.low), self.high)

    def describe(self) -> dict:
        """JSON-able description (manifest)."""
        if self.kind == "constant":
            return {"dist": "constant", "value": self.value}
        keys = DIST_KINDS[self.kind]
        out = {"dist": self.kind}
        for k in keys:
            v = getattr(self, k)
            if v is not None:
                out[k] = list(v) if isinstance(v, tuple) else v
        return out
