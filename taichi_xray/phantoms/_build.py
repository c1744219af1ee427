"""Shared machinery for assembling a phantom from implicit and swept parts."""
from __future__ import annotations

import numpy as np

from .. import primitives as P
from . import _sdf as S
from ._base import Phantom, PhantomObject
from ._meshcheck import nesting_deficit as _nesting_deficit


_DEBUG = False


class Part:
    """An implicit shape f (negative inside) with a bounding box [lo, hi] (mm)."""

    def __init__(self, f, lo, hi):
        self.f, self.lo, self.hi = f, np.asarray(lo, float), np.asarray(hi, float)

    def near(self, p, pad):
        return np.all((p >= self.lo - pad) & (p <= self.hi + pad), axis=1)

    def __call__(self, p):
        return self.f(p)


def carve(part, obstacles, gap, k=2.0):
    """Part minus every obstacle grown by ``gap`` mm: f' = smax(f, gap - g, k) (>= the
    sharp difference, so the gap is kept; k rounds the notch's edges)."""
    obstacles = [o for o in obstacles if np.all(o.lo - gap <= part.hi) and np.all(part.lo <= o.hi + gap)]
    if not obstacles:
        return part

    def f(p):
        v = part.f(p)
        for o in obstacles:
            m = o.near(p, gap + k + 1.0) & (v < gap + k + 5.0)
            if m.any():
                v[m] = S.smax(v[m], gap - o.f(p[m]), k)
        return v

    return Part(f, part.lo, part.hi)


def bounded(f, pad=None):
    """Wrap f so that it is only evaluated where cheap bounds say it may be negative."""
    return f


def tube_part(points, radii, step=1.0):
    """Implicit stand-in of a swept tube: a round-cone chain with the larger semi-axis."""
    return tubes_part([(points, radii)], step)


def tubes_part(tubes, step=1.0):
    """Implicit stand-in of several swept tubes [(points (K, 3), radii (K,) or (K, 2)), ...]."""
    tt = []
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for pts, radii in tubes:
        r = np.asarray(radii, float)
        r = r.max(axis=1) if r.ndim == 2 else r
        pts = np.asarray(pts, float)
        tt.append((pts, r))
        lo = np.minimum(lo, pts.min(0) - r.max() - 1)
        hi = np.maximum(hi, pts.max(0) + r.max() + 1)
    return Part(S.polylines(tt, step), lo, hi)


class Assembly:
    """Objects in the order they are added, with their implicit parts for later carving."""

    def __init__(self, res):
        self.res = res
        self.objs = {}
        self.parts = {}
        self.order = []

    def add(self, name, VF, material, parent="body", part=None):
        if VF is None:
            raise RuntimeError(f"phantom object {name!r} came out empty")
        self.objs[name] = PhantomObject(name, VF[0], VF[1], material, parent)
        self.order.append(name)
        if part is not None:
            self.parts[name] = part

    def mesh(self, name, part, h, material, parent="body", level=0.0, min_volume=20.0, project=2, h_max=None,
             tol=None):
        """Mesh ``part`` with grid spacing ``h`` mm at "default" resolution (at most h_max),
        simplified to ``tol`` mm (default 0.06 h)."""
        hh = self.res.h(h) if h_max is None else min(self.res.h(h), h_max)
        VF = S.mesh_sdf(part.f, part.lo, part.hi, hh, level=level, min_volume=min_volume,
                        project=project, name=name, tol=0.06 * hh if tol is None else tol)
        self.add(name, VF, material, parent, part if level == 0.0 else None)
        return VF

    def bone(self, name, part, h, cortex, parent="body", core_material="trabecular_bone", h_max=None, tol=0.15,
             margin=0.4):
        """Cortical shell ``name`` and trabecular core ``name + '_core'``: the level sets 0
        and -cortex of the part (cortex: mm, or a function t(p) of points (N, 3)).  Where
        the two meshes come closer than ``margin`` mm, the core level is lowered locally
        (Gaussian bumps of the cortex) and the core meshed again, so it always lies inside."""
        from scipy.spatial import cKDTree

        hh = self.res.h(h) if h_max is None else min(self.res.h(h), h_max)
        t_min = 0.3 * hh
        t_fn = cortex if callable(cortex) else (lambda p, c=float(cortex): np.full(len(p), c))
        grid = S.sample_grid(part.f, part.lo, part.hi, hh, (-8.0, 0.0))
        shell = S.mesh_grid(part.f, grid, hh, 0.0, 20.0, 2, name)
        fg = S.grid_function(grid, hh)
        shell = S._simplify(shell, tol, 6 * hh, name, fg)
        centres, amps = np.zeros((0, 3)), np.zeros(0)
        sigma = 1.5 * hh
        for attempt in range(8):
            tree = cKDTree(centres) if len(centres) else None

            def level(p, tree=tree, a=amps):
                t = np.maximum(t_fn(p), t_min)
                if tree is not None:
                    k = min(8, len(a))
                    d, j = tree.query(p, k=k, distance_upper_bound=3 * sigma)
                    d, j = d.reshape(len(p), k), j.reshape(len(p), k)
                    ok = np.isfinite(d)
                    bump = np.where(ok, np.append(a, 0.0)[j] * np.exp(-np.where(ok, d, 0.0) ** 2 / (2 * sigma ** 2)), 0.0)
                    t = t + bump.max(1)
                return t

            core = S.mesh_grid(part.f, grid, hh, level, max(20.0, 2 * hh ** 3), 2, name + "_core")
            if core is None:
                raise RuntimeError(f"{name}: no trabecular core at this resolution")
            core = S._simplify(core, tol, 6 * hh, name + "_core", lambda p, lv=level: fg(p) + lv(p))
            q, deficit = _nesting_deficit(shell, core, margin)
            bad = deficit > 0
            if not bad.any() or (attempt >= 3 and deficit.max() < margin - 0.25):
                break
            # one bump per grid cell of violations, as deep as the worst one there
            cell = np.floor(q[bad] / sigma).astype(np.int64)
            _, first, inv = np.unique(cell, axis=0, return_index=True, return_inverse=True)
            worst = np.zeros(len(first))
            np.maximum.at(worst, inv.ravel(), deficit[bad])
            centres = np.concatenate([centres, q[bad][first]])
            amps = np.concatenate([amps, 2.0 * worst + 0.3])
            if _DEBUG:
                print(name, "attempt", attempt, "violations", int(bad.sum()), "worst %.2f" % deficit.max())
        else:
            raise RuntimeError(f"{name}: could not keep the trabecular core inside the cortical shell")
        self.add(name, shell, "cortical_bone", parent, part)
        self.add(name + "_core", core, core_material, name)

    def phantom(self, name, first="body"):
        names = [first] + [n for n in self.order if n != first]
        return Phantom(name, [self.objs[n] for n in names])

