"""Pulmonary vessel trees: tapering tubes that fan out from the hilum into a lung.

A tree is grown from a few roots (the ends of the hilar arteries and veins).  Each path
marches outward (a random walk biased away from the hilum), its radius decaying
exponentially with length; every 12-22 mm it gives off a side branch about 0.7 times its
radius at 30-60 degrees.  A path stops when it would come closer than ``margin`` to the
lung surface or closer than ``gap`` to any other vessel, or when its radius falls below
``r_min``.  Side branches start just outside their parent's wall, so the tubes of a tree
are disjoint closed meshes (one object, several components) and the tree lies inside its
lung.  Calibre: lobar vessels 8-12 mm, segmental 4-6 mm, subsegmental 2-3 mm in diameter
(Singhal et al., Circ. Res. 33:190, 1973; Huang et al., J. Appl. Physiol. 80:1654, 1996).
"""
from __future__ import annotations

import numpy as np

from .. import primitives as P


STATS = {}


def _perp(d, rng):
    v = rng.normal(size=3)
    v -= d * (v @ d)
    return v / np.linalg.norm(v)


def _rotate_toward(d, u, ang):
    return np.cos(ang) * d + np.sin(ang) * u


class _Segments:
    """Capsules (a, b, ra, rb) already placed, for clearance checks."""

    def __init__(self):
        self.a, self.b, self.r = np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
        self._a, self._b, self._r = [], [], []

    def add(self, a, b, r):
        self._a.append(a), self._b.append(b), self._r.append(r)

    def flush(self):
        if self._a:
            self.a = np.concatenate([self.a, np.array(self._a)])
            self.b = np.concatenate([self.b, np.array(self._b)])
            self.r = np.concatenate([self.r, np.array(self._r)])
            self._a, self._b, self._r = [], [], []

    def clearance(self, a, b, r, skip=()):
        """Smallest surface gap between capsule (a, b, r) and the stored ones."""
        self.flush()
        if np.linalg.norm(b - a) < 1e-6:         # a ball: avoid a degenerate segment
            b = a + np.array([1e-3, 0.0, 0.0])
        if len(self.r) == 0:
            return np.inf
        lo = np.minimum(a, b) - r - self.r.max() - 5
        hi = np.maximum(a, b) + r + self.r.max() + 5
        m = np.all((np.maximum(self.a, self.b) >= lo) & (np.minimum(self.a, self.b) <= hi), axis=1)
        if skip:
            m[list(skip)] = False
        if not m.any():
            return np.inf
        d = P._seg_seg_dist(np.broadcast_to(a, (int(m.sum()), 3)), np.broadcast_to(b, (int(m.sum()), 3)),
                            self.a[m], self.b[m])
        return float((d - self.r[m] - r).min())

    def __len__(self):
        self.flush()
        return len(self.r)


def grow_tree(inside, roots, centre, seed=0, r_min=0.7, gap=1.2, margin=2.5, decay=110.0, max_paths=120):
    """Vessel tree inside a lung.

    inside(p): signed distance-like function of points (N, 3), negative inside the lung.
    roots: list of (start (3,), direction (3,), radius mm).  centre: (3,) hilum centre
    (paths are pushed away from it).  Returns a list of (points (K, 3), radii (K,)).
    """
    rng = np.random.default_rng(seed)
    segs = _Segments()
    paths = []
    queue = []
    for p0, d0, r0 in roots:
        p0, d0 = np.asarray(p0, float), np.asarray(d0, float) / np.linalg.norm(d0)
        for _ in range(60):                           # walk into the lung
            if inside(p0[None])[0] < -(r0 + margin + 1.0):
                break
            p0 = p0 + 1.5 * d0
        else:
            continue
        queue.append((p0, d0, float(r0), 0, None))
    while queue and len(paths) < max_paths:
        p, d, r, depth, parent = queue.pop(0)
        if segs.clearance(p, p, r) < gap:
            STATS["clear"] = STATS.get("clear", 0) + 1
            continue
        if inside(p[None])[0] > -(r + margin):
            STATS["inside"] = STATS.get("inside", 0) + 1
            continue
        pts, rs = [p], [r]
        first_seg = len(segs)
        next_branch = rng.uniform(10.0, 16.0)
        travelled = 0.0
        side = 1.0
        while r > r_min and len(pts) < 80:
            step = float(np.clip(2.6 * r, 3.0, 10.0))
            out = p - centre
            out /= max(np.linalg.norm(out), 1e-9)
            d = d + 0.10 * _perp(d, rng) + 0.06 * out
            d /= np.linalg.norm(d)
            rq = r * np.exp(-step / decay)
            need = -(max(r, rq) + margin)
            # steer away from the lung surface when the straight step would leave it
            g = None
            q = None
            for w in (0.0, 0.3, 0.6):
                dd = d
                if w > 0:
                    if g is None:
                        e = 0.5
                        f0 = inside(p[None])[0]
                        g = np.array([(inside((p + e * np.eye(3)[i])[None])[0] - f0) / e for i in range(3)])
                        g /= max(np.linalg.norm(g), 1e-9)
                    dd = d - w * g
                    dd /= np.linalg.norm(dd)
                cand = p + step * dd
                if inside(np.array([cand, 0.5 * (p + cand)])).max() <= need:
                    q, d = cand, dd
                    break
            if q is None:
                break
            n_own = len(pts) - 1            # this path's segments stored so far: skip the last few
            skip = tuple(range(len(segs) - min(n_own, 4), len(segs)))
            if segs.clearance(p, q, max(r, rq), skip) < gap:
                break
            segs.add(p, q, max(r, rq))
            pts.append(q)
            rs.append(rq)
            p, r = q, rq
            travelled += step
            if travelled >= next_branch and depth < 6 and r > 1.6 * r_min:
                next_branch = travelled + rng.uniform(10.0, 18.0)
                rb = 0.7 * r
                for _ in range(6):            # a few tries for a branch that fits in the lung
                    u = _perp(d, rng)
                    if rng.random() < 0.6:    # prefer branching away from the hilum
                        u2 = out - d * (out @ d)
                        if np.linalg.norm(u2) > 1e-6:
                            u = 0.6 * u + 0.8 * side * u2 / np.linalg.norm(u2)
                            u /= np.linalg.norm(u)
                    ang = np.deg2rad(rng.uniform(30.0, 60.0))
                    db = _rotate_toward(d, u, ang)
                    start = p + u * (rs[-2] + gap + rb + 0.5)
                    if inside(start[None])[0] <= -(rb + margin) and segs.clearance(start, start, rb) >= gap:
                        queue.append((start, db, rb, depth + 1, len(paths)))
                        r *= 0.9              # the parent narrows past a branch
                        side = -side
                        break
        if len(pts) >= 3:
            paths.append((np.array(pts), np.array(rs)))
        else:                                          # too short: drop its segments
            segs.flush()
            keep = first_seg + 0
            segs.a, segs.b, segs.r = segs.a[:keep], segs.b[:keep], segs.r[:keep]
    return paths


def inside_mesh(paths, mesh, clearance):
    """The paths whose tubes lie inside the closed mesh (V, F) at least ``clearance`` mm from
    its surface (checked at the path points and segment midpoints; the lung mesh deviates a
    little from the implicit surface the trees were grown in)."""
    from ._meshcheck import distance_to_mesh

    V, F = mesh
    keep = []
    for pts, rs in paths:
        q = np.concatenate([pts, 0.5 * (pts[1:] + pts[:-1])])
        r = np.concatenate([rs, np.maximum(rs[1:], rs[:-1])])
        d = distance_to_mesh(V, F, q, k=12)
        if (d > r + clearance).all() and P.points_inside(V, F, pts[:1]).all():
            keep.append((pts, rs))
    return keep


def tree_mesh(paths, n_sides=6):
    """One closed mesh (several components) of round-capped tubes along the paths."""
    meshes = []
    for pts, rs in paths:
        meshes.append(P.tube(pts, rs, n_sides, caps="round", n_cap=2))
    return P.concatenate(meshes)
