"""Validation helpers of dataset files: error classes and messages 'FILE: [TABLE]: key 'K': MSG'."""
from __future__ import annotations

import difflib
import fnmatch
import math

from .distributions import DIST_KINDS, Dist

__all__ = ["DatasetError", "DatasetFileNotFoundError", "DatasetTypeError", "Ctx", "expand_objects"]


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file, the table and the key."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A file named by a dataset (scene, shape model) does not exist."""


class DatasetTypeError(DatasetError, TypeError):
    """A dataset key has the wrong type."""


def _tname(v) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


def _is_num(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


class Ctx:
    """Builds messages 'FILE: [TABLE]: key 'K': MSG'."""

    def __init__(self, label: str, where: str):
        self.label, self.where = label, where

    def sub(self, where: str) -> "Ctx":
        return Ctx(self.label, where)

    def err(self, key, msg: str, cls=DatasetError) -> DatasetError:
        k = f"key '{key}': " if key else ""
        return cls(f"{self.label}: {self.where}: {k}{msg}")

    def table(self, d, key=None) -> dict:
        if not isinstance(d, dict):
            raise self.err(key, f"must be a table, got {_tname(d)} {d!r}", DatasetTypeError)
        return d

    def keys(self, d: dict, allowed, prefix: str = ""):
        for k in d:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.err(prefix + k, f"unknown key{hint} allowed: {', '.join(allowed)}")

    def number(self, d: dict, key: str, default=None, *, name=None, positive=False, nonneg=False):
        name = name or key
        if key not in d:
            return default
        v = d[key]
        if not _is_num(v):
            raise self.err(name, f"must be a number, got {_tname(v)} {v!r}", DatasetTypeError)
        v = float(v)
        if not math.isfinite(v):
            raise self.err(name, f"must be finite, got {v}")
        if positive and v <= 0:
            raise self.err(name, f"must be > 0, got {v:g}")
        if nonneg and v < 0:
            raise self.err(name, f"must be >= 0, got {v:g}")
        return v

    def integer(self, d: dict, key: str, default=None, *, lo=None, name=None):
        name = name or key
        if key not in d:
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(name, f"must be an integer, got {_tname(v)} {v!r}", DatasetTypeError)
        if lo is not None and v < lo:
            raise self.err(name, f"must be >= {lo}, got {v}")
        return v

    def boolean(self, d: dict, key: str, default: bool, name=None) -> bool:
        name = name or key
        if key not in d:
            return default
        v = d[key]
        if not isinstance(v, bool):
            raise self.err(name, f"must be true or false, got {_tname(v)} {v!r}", DatasetTypeError)
        return v

    def string(self, d: dict, key: str, default=None, *, required=False, choices=None, name=None):
        name = name or key
        if key not in d:
            if required:
                raise self.err(name, "missing (required)")
            return default
        v = d[key]
        if not isinstance(v, str):
            raise self.err(name, f"must be a string, got {_tname(v)} {v!r}", DatasetTypeError)
        if choices is not None and v not in choices:
            close = difflib.get_close_matches(v, choices, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise self.err(name, f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}{hint}")
        return v

    def strings(self, d: dict, key: str, *, required=False, name=None) -> tuple | None:
        name = name or key
        if key not in d:
            if required:
                raise self.err(name, "missing (required)")
            return None
        v = d[key]
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
            raise self.err(name, f"must be a non-empty list of names, got {v!r}", DatasetTypeError)
        return tuple(v)

    # -- distributions ------------------------------------------------------------------
    def dist(self, v, name: str) -> Dist:
        """A number (constant) or a distribution table."""
        if _is_num(v):
            if not math.isfinite(float(v)):
                raise self.err(name, f"must be finite, got {v!r}")
            return Dist.constant(float(v))
        if not isinstance(v, dict):
            raise self.err(name, f"must be a number or a distribution table such as "
                                 f"{{ dist = \"uniform\", low = 0, high = 1 }}, got {_tname(v)} {v!r}",
                           DatasetTypeError)
        if "dist" not in v:
            raise self.err(name, f"a distribution table needs 'dist' (one of {', '.join(DIST_KINDS)}), got keys "
                                 f"{', '.join(v) or 'none'}")
        kind = v["dist"]
        if not isinstance(kind, str) or kind not in DIST_KINDS:
            close = difflib.get_close_matches(str(kind), list(DIST_KINDS), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise self.err(name, f"unknown distribution {kind!r}{hint} known: {', '.join(DIST_KINDS)}")
        allowed = ("dist",) + DIST_KINDS[kind]
        for k in v:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.err(f"{name}.{k}", f"unknown key for a {kind} distribution{hint} allowed: "
                                              f"{', '.join(allowed)}")
        if kind == "choice":
            vals = v.get("values")
            if not isinstance(vals, list) or not vals or not all(_is_num(x) and math.isfinite(x) for x in vals):
                raise self.err(f"{name}.values", f"must be a non-empty list of finite numbers, got {vals!r}",
                               DatasetTypeError)
            w = v.get("weights")
            if w is not None:
                if (not isinstance(w, list) or len(w) != len(vals)
                        or not all(_is_num(x) and math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0):
                    raise self.err(f"{name}.weights", f"must be {len(vals)} non-negative numbers, not all 0, "
                                                      f"got {w!r}")
                w = tuple(float(x) for x in w)
            return Dist("choice", values=tuple(float(x) for x in vals), weights=w)
        p = {}
        for k in DIST_KINDS[kind]:
            if k not in v:
                raise self.err(f"{name}.{k}", f"missing (a {kind} distribution needs "
                                              f"{', '.join(DIST_KINDS[kind])})")
            p[k] = self.number(v, k, name=f"{name}.{k}")
        if "std" in p and p["std"] <= 0:
            raise self.err(f"{name}.std", f"must be > 0, got {p['std']:g}")
        if "low" in p and not p["high"] > p["low"]:
            raise self.err(f"{name}.high", f"must be > low ({p['low']:g}), got {p['high']:g}")
        if kind == "loguniform" and p["low"] <= 0:
            raise self.err(f"{name}.low", f"a loguniform distribution needs low > 0, got {p['low']:g}")
        return Dist(kind, **p)

    def vector_dist(self, v, name: str, n: int = 3) -> tuple:
        """One number/distribution for all n components (independent draws), or a list of n."""
        if isinstance(v, list):
            if len(v) != n:
                raise self.err(name, f"must be one number/distribution for all {n} components or a list of {n}, "
                                     f"got a list of {len(v)}")
            return tuple(self.dist(x, f"{name}[{i}]") for i, x in enumerate(v))
        return tuple([self.dist(v, name)] * n)

    def bounded(self, d: Dist, name: str, lo=None, hi=None, lo_open=False, hi_open=False, what=""):
        """The support of ``d`` must lie in [lo, hi] (open ends when asked)."""
        a, b = d.support()
        bad_lo = lo is not None and (a < lo or (lo_open and a <= lo))
        bad_hi = hi is not None and (b > hi or (hi_open and b >= hi))
        if bad_lo or bad_hi:
            rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else f'{lo:g}'}, "
                   f"{'inf' if hi is None else f'{hi:g}'}{')' if hi_open else ']'}")
            extra = (" (a normal distribution is unbounded: use truncnormal with low and high)"
                     if d.kind == "normal" else "")
            raise self.err(name, f"{what or 'values'} must stay within {rng}; this distribution gives "
                                 f"[{a:g}, {b:g}]{extra}")


def expand_objects(ctx: Ctx, key: str, patterns, names: list[str], scene_label: str) -> list[str]:
    """Object names matching ``patterns`` (exact names or fnmatch patterns like 'rib_*'),
    in scene order; every pattern must match something."""
    out = []
    for pat in patterns:
        if any(ch in pat for ch in "*?["):
            hit = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        else:
            hit = [pat] if pat in names else []
        if not hit:
            close = difflib.get_close_matches(pat, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ctx.err(key, f"no object {pat!r} in scene {scene_label}{hint}")
        out += [n for n in hit if n not in out]
    return [n for n in names if n in out]
