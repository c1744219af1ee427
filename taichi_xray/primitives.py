"""Watertight triangle-mesh primitives and small mesh utilities (pure numpy).

Every generator returns ``(vertices, faces)``:

* ``vertices``: float64 array, shape (N, 3), in mm;
* ``faces``: int64 array, shape (M, 3), counter-clockwise seen from outside,
  so the right-hand-rule normal points outward and :func:`mesh_volume` is > 0.

All generated surfaces are closed 2-manifolds: every undirected edge is used by
exactly two faces, once in each direction (see :func:`is_watertight`).

Generators: :func:`icosphere`, :func:`uv_sphere`, :func:`ellipsoid`,
:func:`superellipsoid`, :func:`box`, :func:`cylinder`, :func:`capsule`,
:func:`torus`, :func:`tube` (swept along a polyline with rotation-minimising
frames), :func:`sweep` (superelliptic section swept along a polyline with frames that
follow given normals, e.g. a rib's flat side along the chest wall), and the building blocks :func:`loft` (a stack of rings closed by two
pole vertices) and :func:`revolve` (surface of revolution of a profile).

Utilities: :func:`rotation_matrix`, :func:`transform`, :func:`mirror`,
:func:`concatenate`, :func:`mesh_volume`, :func:`is_watertight`,
:func:`points_inside` (generalised winding number),
:func:`point_triangle_distance`, :func:`triangle_triangle_distance` and
:func:`surface_distance` (exact distance between two surfaces, 0 if they cross).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gamma as _gamma

import numpy as np

__all__ = [
    "rotation_matrix", "transform", "mirror", "concatenate", "mesh_volume",
    "is_watertight", "WatertightReport", "points_inside", "point_triangle_distance",
    "surface_distance", "triangle_triangle_distance", "winding_number", "loft", "revolve", "icosphere", "uv_sphere",
    "ellipsoid", "superellipsoid", "superellipsoid_volume", "box", "cylinder",
    "capsule", "torus", "tube", "sweep",
]

_CHUNK = 2_000_000  # max number of point x triangle pairs evaluated at once


# ----------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------
def _vec3(x, name):
    a = np.asarray(x, dtype=np.float64)
    if a.shape == ():
        a = np.full(3, float(a))
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a finite scalar or 3-vector, got {x!r}")
    return a


def _positive(x, name):
    x = float(x)
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {x!r}")
    return x


def _count(n, name, minimum):
    if isinstance(n, bool) or int(n) != n or int(n) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


def _check_mesh(V, F):
    V = np.asarray(V, dtype=np.float64)
    F = np.asarray(F)
    if V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"vertices must have shape (N, 3), got {V.shape}")
    if F.ndim != 2 or F.shape[1] != 3:
        raise ValueError(f"faces must have shape (M, 3), got {F.shape}")
    if not np.issubdtype(F.dtype, np.integer):
        raise TypeError(f"faces must be an integer array, got dtype {F.dtype}")
    F = F.astype(np.int64)
    if F.size and (F.min() < 0 or F.max() >= len(V)):
        raise ValueError(f"faces index vertices outside [0, {len(V)})")
    return V, F


def rotation_matrix(axis, angle_deg):
    """Right-handed rotation by ``angle_deg`` degrees about ``axis`` (3-vector or 'x'/'y'/'z').

    Returns a float64 array of shape (3, 3) acting on column vectors (``R @ v``).
    """
    if isinstance(axis, str):
        if axis not in ("x", "y", "z"):
            raise ValueError(f"axis must be 'x', 'y', 'z' or a 3-vector, got {axis!r}")
        axis = np.eye(3)["xyz".index(axis)]
    k = _vec3(axis, "axis")
    n = np.linalg.norm(k)
    if n == 0:
        raise ValueError("axis must be non-zero")
    k = k / n
    a = np.deg2rad(float(angle_deg))
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def transform(vertices, R=None, t=None):
    """Return ``vertices @ R.T + t``.

    vertices: (N, 3) float; R: (3, 3) linear map with det > 0 (rotation, possibly
    with positive scaling) or None; t: (3,) translation in mm or None.
    A map with det <= 0 would turn the mesh inside out: use :func:`mirror` for reflections.
    """
    V = np.asarray(vertices, dtype=np.float64)
    if V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"vertices must have shape (N, 3), got {V.shape}")
    if R is not None:
        R = np.asarray(R, dtype=np.float64)
        if R.shape != (3, 3):
            raise ValueError(f"R must have shape (3, 3), got {R.shape}")
        if np.linalg.det(R) <= 0:
            raise ValueError("R must have a positive determinant (use mirror() for reflections)")
        V = V @ R.T
    if t is not None:
        V = V + _vec3(t, "t")
    return V


def mirror(vertices, faces, axis=0):
    """Reflect a mesh in the plane ``x[axis] = 0`` and reverse the faces so it stays outward.

    Returns (vertices (N, 3) float64, faces (M, 3) int64).
    """
    V, F = _check_mesh(vertices, faces)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    V = V.copy()
    V[:, axis] *= -1
    return V, F[:, ::-1].copy()


def concatenate(meshes):
    """Merge a sequence of (vertices, faces) pairs into one (vertices, faces) pair (no welding)."""
    meshes = list(meshes)
    if not meshes:
        raise ValueError("concatenate needs at least one mesh")
    Vs, Fs, off = [], [], 0
    for V, F in meshes:
        V, F = _check_mesh(V, F)
        Vs.append(V)
        Fs.append(F + off)
        off += len(V)
    return np.concatenate(Vs), np.concatenate(Fs)


def mesh_volume(vertices, faces):
    """Signed enclosed volume in mm^3 (divergence theorem); > 0 for outward faces."""
    V, F = _check_mesh(vertices, faces)
    a, b, c = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


@dataclass(frozen=True)
class WatertightReport:
    """Result of :func:`is_watertight`; truthy when ``ok``. Unpacks as ``ok, reason``."""

    ok: bool
    reason: str

    def __bool__(self):
        return self.ok

    def __iter__(self):
        return iter((self.ok, self.reason))


def is_watertight(vertices, faces, check_orientation=True):
    """Check that a mesh is a closed, consistently oriented (and outward) surface.

    Tests: faces index valid vertices, no face repeats a vertex, no zero-area
    face, every directed edge occurs exactly once and its reverse exactly once
    (closed 2-manifold edges, consistent orientation), and, if
    ``check_orientation``, a positive enclosed volume (outward normals).  Self-intersection
    is not tested (the generators avoid it by construction).
    Returns a :class:`WatertightReport` (``ok, reason = is_watertight(V, F)``).
    """
    try:
        V, F = _check_mesh(vertices, faces)
    except (ValueError, TypeError) as e:
        return WatertightReport(False, str(e))
    if len(F) < 4:
        return WatertightReport(False, f"only {len(F)} faces; a closed surface needs >= 4")
    if not np.all(np.isfinite(V)):
        return WatertightReport(False, "non-finite vertex coordinates")
    rep = (F[:, 0] == F[:, 1]) | (F[:, 1] == F[:, 2]) | (F[:, 0] == F[:, 2])
    if rep.any():
        return WatertightReport(False, f"{int(rep.sum())} faces repeat a vertex, e.g. face {int(np.argmax(rep))}")
    area2 = np.linalg.norm(np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]]), axis=1)
    scale = max(np.ptp(V, axis=0).max(), 1e-300)
    if (area2 <= 1e-14 * scale**2).any():
        return WatertightReport(False, f"{int((area2 <= 1e-14 * scale**2).sum())} faces have zero area")
    e = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
    n = len(V)
    key = e[:, 0] * n + e[:, 1]
    uniq, counts = np.unique(key, return_counts=True)
    if (counts > 1).any():
        k = uniq[counts > 1][0]
        return WatertightReport(False, f"directed edge ({k // n}, {k % n}) used by {counts.max()} faces "
                                       "(inconsistent orientation or non-manifold edge)")
    rkey = e[:, 1] * n + e[:, 0]
    missing = ~np.isin(rkey, uniq)
    if missing.any():
        i = int(np.argmax(missing))
        return WatertightReport(False, f"{int(missing.sum())} boundary/unpaired edges, e.g. ({e[i, 0]}, {e[i, 1]})")
    if check_orientation:
        vol = mesh_volume(V, F)
        if vol <= 0:
            return WatertightReport(False, f"enclosed volume {vol:.6g} mm^3 <= 0: faces point inward")
    return WatertightReport(True, "closed, consistently oriented" + (", outward" if check_orientation else ""))


def points_inside(vertices, faces, points, threshold=0.5):
    """Generalised winding number test (van Oosterom-Strackee solid angles).

    vertices (N, 3), faces (M, 3): a closed outward mesh; points (P, 3) in mm.
    Returns a bool array (P,), True where the winding number exceeds ``threshold``.
    Exact (up to rounding) for points not on the surface; O(P * M) work.
    """
    V, F = _check_mesh(vertices, faces)
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3:
        raise ValueError(f"points must have shape (P, 3), got {P.shape}")
    return winding_number(V, F, P) > threshold


def winding_number(vertices, faces, points):
    """Generalised winding number (P,) float64 of points (P, 3) w.r.t. a mesh: 1 inside, 0 outside."""
    V, F = _check_mesh(vertices, faces)
    P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    A, B, C = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    out = np.zeros(len(P))
    step = max(1, _CHUNK // max(len(F), 1))
    for s in range(0, len(P), step):
        p = P[s:s + step, None, :]
        a, b, c = A[None] - p, B[None] - p, C[None] - p
        la, lb, lc = (np.linalg.norm(x, axis=2) for x in (a, b, c))
        num = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        den = (la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc
               + np.einsum("pfi,pfi->pf", b, c) * la + np.einsum("pfi,pfi->pf", c, a) * lb)
        out[s:s + step] = np.arctan2(num, den).sum(axis=1) / (2 * np.pi)
    return out


def _seg_dist2(p, a, b):
    ab = b - a
    t = np.einsum("...i,...i->...", p - a, ab) / np.maximum(np.einsum("...i,...i->...", ab, ab), 1e-300)
    t = np.clip(t, 0.0, 1.0)
    d = p - (a + t[..., None] * ab)
    return np.einsum("...i,...i->...", d, d)


def point_triangle_distance(points, tri_a, tri_b, tri_c):
    """Euclidean distance (P, T) from points (P, 3) to triangles given by corners (T, 3) each."""
    p = np.asarray(points, dtype=np.float64)[:, None, :]
    a, b, c = (np.asarray(x, dtype=np.float64)[None] for x in (tri_a, tri_b, tri_c))
    ab, ac, ap = b - a, c - a, p - a
    n = np.cross(ab, ac)
    nn = np.einsum("...i,...i->...", n, n)
    # barycentric coordinates of the projection onto the plane
    w_b = np.einsum("...i,...i->...", np.cross(ap, ac), n) / nn
    w_c = np.einsum("...i,...i->...", np.cross(ab, ap), n) / nn
    inside = (w_b >= 0) & (w_c >= 0) & (w_b + w_c <= 1)
    dplane2 = np.einsum("...i,...i->...", ap, n) ** 2 / nn
    dedge2 = np.minimum(np.minimum(_seg_dist2(p, a, b), _seg_dist2(p, b, c)), _seg_dist2(p, c, a))
    return np.sqrt(np.where(inside, dplane2, dedge2))


def _dot(a, b):
    return np.einsum("...i,...i->...", a, b)


def _seg_seg_dist(p1, q1, p2, q2):
    """Distance between segments [p1, q1] and [p2, q2] (all (..., 3), non-degenerate); Ericson 5.1.9."""
    d1, d2, r = q1 - p1, q2 - p2, p1 - p2
    a, e, f = _dot(d1, d1), _dot(d2, d2), _dot(d2, r)
    c, b = _dot(d1, r), _dot(d1, d2)
    den = a * e - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(den > 1e-12 * a * e, np.clip((b * f - c * e) / den, 0.0, 1.0), 0.0)
        t = (b * s + f) / e
        s = np.where(t < 0, np.clip(-c / a, 0.0, 1.0), np.where(t > 1, np.clip((b - c) / a, 0.0, 1.0), s))
    t = np.clip(t, 0.0, 1.0)
    return np.linalg.norm(p1 + d1 * s[..., None] - p2 - d2 * t[..., None], axis=-1)


def _seg_hits_tri(p, q, a, b, c):
    """Whether segments [p, q] (..., 3) cross triangles (a, b, c) (..., 3) (Moller-Trumbore)."""
    d, e1, e2 = q - p, b - a, c - a
    h = np.cross(d, e2)
    det = _dot(e1, h)
    ok = np.abs(det) > 1e-14 * np.linalg.norm(d, axis=-1) * np.linalg.norm(e1, axis=-1) * np.linalg.norm(e2, axis=-1)
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
    sv = p - a
    u = _dot(sv, h) * inv
    qv = np.cross(sv, e1)
    v = _dot(d, qv) * inv
    t = _dot(e2, qv) * inv
    return ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t >= 0) & (t <= 1)


def triangle_triangle_distance(ta, tb):
    """Exact distances (K,) between triangle pairs ta[k], tb[k], each (K, 3, 3) corner arrays.

    0 where they intersect; otherwise the minimum of the 6 vertex-triangle and 9 edge-edge
    distances (for disjoint triangles the closest pair is one of these)."""
    ta, tb = np.asarray(ta, np.float64), np.asarray(tb, np.float64)
    K = len(ta)
    d = np.full(K, np.inf)
    for i in range(3):   # vertex - triangle (done pairwise: diagonal of point_triangle_distance)
        d = np.minimum(d, _point_tri_pairwise(ta[:, i], tb))
        d = np.minimum(d, _point_tri_pairwise(tb[:, i], ta))
    hit = np.zeros(K, bool)
    for i in range(3):
        j = (i + 1) % 3
        hit |= _seg_hits_tri(ta[:, i], ta[:, j], tb[:, 0], tb[:, 1], tb[:, 2])
        hit |= _seg_hits_tri(tb[:, i], tb[:, j], ta[:, 0], ta[:, 1], ta[:, 2])
        for k in range(3):
            m = (k + 1) % 3
            d = np.minimum(d, _seg_seg_dist(ta[:, i], ta[:, j], tb[:, k], tb[:, m]))
    return np.where(hit, 0.0, d)


def _point_tri_pairwise(p, t):
    a, b, c = t[:, 0], t[:, 1], t[:, 2]
    ab, ac, ap = b - a, c - a, p - a
    n = np.cross(ab, ac)
    nn = _dot(n, n)
    w_b = _dot(np.cross(ap, ac), n) / nn
    w_c = _dot(np.cross(ab, ap), n) / nn
    inside = (w_b >= 0) & (w_c >= 0) & (w_b + w_c <= 1)
    dplane2 = _dot(ap, n) ** 2 / nn
    dedge2 = np.minimum(np.minimum(_seg_dist2(p, a, b), _seg_dist2(p, b, c)), _seg_dist2(p, c, a))
    return np.sqrt(np.where(inside, dplane2, dedge2))


def surface_distance(va, fa, vb, fb, cap=np.inf):
    """Exact minimum distance (mm) between the surfaces of two triangle meshes, or ``cap``
    if it is larger; 0 where the surfaces touch or cross.

    Triangle pairs are pruned by the distance between their bounding boxes (a lower
    bound of their distance) and visited closest-box-first, so the search stops once
    the remaining boxes are farther than the best distance found (branch and bound).
    Memory is O(M_a * M_b) booleans for the box test.
    """
    va, fa = _check_mesh(va, fa)
    vb, fb = _check_mesh(vb, fb)
    ta, tb = va[fa], vb[fb]
    best = float(cap)
    amin, amax, bmin, bmax = ta.min(1), ta.max(1), tb.min(1), tb.max(1)
    # drop triangles farther than cap from the other mesh's box
    if np.isfinite(best):
        ka = np.linalg.norm(np.maximum(np.maximum(bmin.min(0) - amax, amin - bmax.max(0)), 0), axis=1) <= best
        kb = np.linalg.norm(np.maximum(np.maximum(amin.min(0) - bmax, bmin - amax.max(0)), 0), axis=1) <= best
        ta, amin, amax = ta[ka], amin[ka], amax[ka]
        tb, bmin, bmax = tb[kb], bmin[kb], bmax[kb]
    if len(ta) == 0 or len(tb) == 0:
        return best
    # the closest vertex pair is an upper bound of the surface distance: tightens the pruning
    pa, pb = np.unique(ta.reshape(-1, 3), axis=0), np.unique(tb.reshape(-1, 3), axis=0)
    step_v = max(1, _CHUNK // (4 * len(pb)))
    for s in range(0, len(pa), step_v):
        best = min(best, float(np.linalg.norm(pa[s:s + step_v, None] - pb[None], axis=2).min()))
    step_a = max(1, _CHUNK // (4 * len(tb)))
    pi, pj, pd = [], [], []
    for s in range(0, len(ta), step_a):
        g = np.maximum(np.maximum(bmin[None] - amax[s:s + step_a, None], amin[s:s + step_a, None] - bmax[None]), 0)
        bd = np.linalg.norm(g, axis=2)
        i, j = np.nonzero(bd <= best)
        pi.append(i + s), pj.append(j), pd.append(bd[i, j])
    pi, pj, pd = np.concatenate(pi), np.concatenate(pj), np.concatenate(pd)
    order = np.argsort(pd, kind="stable")
    pi, pj, pd = pi[order], pj[order], pd[order]
    step = 100_000
    for s in range(0, len(pi), step):
        if pd[s] > best:
            break
        d = triangle_triangle_distance(ta[pi[s:s + step]], tb[pj[s:s + step]])
        best = min(best, float(d.min()))
    return best


# ----------------------------------------------------------------------------------------
# ring-stack topology
# ----------------------------------------------------------------------------------------
def _ring_faces(n_rings, n):
    """Faces for [start pole, n_rings rings of n vertices, end pole], rings CCW about the stack axis."""
    idx = 1 + np.arange(n_rings * n).reshape(n_rings, n)
    nxt = np.roll(idx, -1, axis=1)
    end = 1 + n_rings * n
    f = [np.stack([np.zeros(n, np.int64), nxt[0], idx[0]], 1)]
    a, b, c, d = idx[:-1], nxt[:-1], idx[1:], nxt[1:]
    f.append(np.stack([a, b, d], -1).reshape(-1, 3))
    f.append(np.stack([a, d, c], -1).reshape(-1, 3))
    f.append(np.stack([np.full(n, end), idx[-1], nxt[-1]], 1))
    return np.concatenate(f).astype(np.int64)


def loft(rings, start, end):
    """Closed surface through a stack of rings, capped by two pole vertices.

    rings: (R, n, 3) float, R >= 1 rings of n >= 3 points each (same count, matching
    order); start, end: (3,) pole points before the first and after the last ring.
    Each ring must be a simple closed curve and consecutive rings must not cross.
    The orientation is fixed by the sign of the enclosed volume, so rings may run
    either way round.  Returns (vertices (1 + R n + 1, 3), faces (2 R n, 3)).
    """
    rings = np.asarray(rings, dtype=np.float64)
    if rings.ndim != 3 or rings.shape[2] != 3 or rings.shape[1] < 3 or rings.shape[0] < 1:
        raise ValueError(f"rings must have shape (R>=1, n>=3, 3), got {rings.shape}")
    V = np.concatenate([_vec3(start, "start")[None], rings.reshape(-1, 3), _vec3(end, "end")[None]])
    F = _ring_faces(rings.shape[0], rings.shape[1])
    if mesh_volume(V, F) < 0:
        F = F[:, ::-1].copy()
    return V, F


def revolve(r, z, n_lon=32):
    """Surface of revolution about the z axis of the profile (r[i], z[i]).

    r, z: 1-D arrays of equal length >= 3 with r[0] = r[-1] = 0 (the poles) and
    r > 0 in between.  Returns (vertices, faces) with 2 n_lon (len(r) - 2) faces.
    """
    r, z = np.asarray(r, dtype=np.float64), np.asarray(z, dtype=np.float64)
    if r.ndim != 1 or r.shape != z.shape or len(r) < 3:
        raise ValueError("r and z must be 1-D arrays of equal length >= 3")
    if r[0] != 0 or r[-1] != 0 or np.any(r[1:-1] <= 0):
        raise ValueError("profile needs r[0] = r[-1] = 0 and r > 0 in between")
    n_lon = _count(n_lon, "n_lon", 3)
    w = 2 * np.pi * np.arange(n_lon) / n_lon
    rings = np.stack([r[1:-1, None] * np.cos(w), r[1:-1, None] * np.sin(w),
                      np.broadcast_to(z[1:-1, None], (len(r) - 2, n_lon))], -1)
    return loft(rings, (0, 0, z[0]), (0, 0, z[-1]))


def _place(V, F, rotation, centre):
    R = None if rotation is None else np.asarray(rotation, dtype=np.float64)
    return transform(V, R, _vec3(centre, "centre")), F


# ----------------------------------------------------------------------------------------
# primitives
# ----------------------------------------------------------------------------------------
def icosphere(radius=1.0, subdivisions=2, centre=(0.0, 0.0, 0.0)):
    """Geodesic sphere: icosahedron split ``subdivisions`` times (20 * 4**s faces)."""
    radius = _positive(radius, "radius")
    s = _count(subdivisions, "subdivisions", 0)
    t = (1 + 5 ** 0.5) / 2
    V = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t),
         (0, -1, -t), (0, 1, -t), (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]
    F = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
         (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
         (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    V = [np.array(v, float) / np.linalg.norm(v) for v in V]
    for _ in range(s):
        cache, F2 = {}, []

        def mid(i, j):
            k = (min(i, j), max(i, j))
            if k not in cache:
                m = V[i] + V[j]
                V.append(m / np.linalg.norm(m))
                cache[k] = len(V) - 1
            return cache[k]

        for a, b, c in F:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            F2 += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        F = F2
    V, F = np.array(V) * radius, np.array(F, dtype=np.int64)
    if mesh_volume(V, F) < 0:
        F = F[:, ::-1].copy()
    return _place(V, F, None, centre)


def ellipsoid(radii=(1.0, 1.0, 1.0), centre=(0.0, 0.0, 0.0), n_lat=16, n_lon=32, rotation=None):
    """Latitude/longitude ellipsoid with semi-axes ``radii`` (mm) along the local x, y, z.

    n_lat latitude bands (n_lat - 1 rings), n_lon points per ring: 2 n_lon (n_lat - 1) faces.
    rotation: (3, 3) rotation applied before translating to ``centre``.
    """
    return superellipsoid(radii, (1.0, 1.0), centre, n_lat, n_lon, rotation)


def uv_sphere(radius=1.0, centre=(0.0, 0.0, 0.0), n_lat=16, n_lon=32):
    """Latitude/longitude sphere (see :func:`ellipsoid`)."""
    r = _positive(radius, "radius")
    return ellipsoid((r, r, r), centre, n_lat, n_lon)


def _spow(x, e):
    return np.sign(x) * np.abs(x) ** e


def superellipsoid(radii=(1.0, 1.0, 1.0), exponents=(1.0, 1.0), centre=(0.0, 0.0, 0.0),
                   n_lat=16, n_lon=32, rotation=None):
    """Superellipsoid (Barr): ``(|x/a|^(2/e2) + |y/b|^(2/e2))^(e2/e1) + |z/c|^(2/e1) = 1``.

    exponents (e1, e2) in (0, 2]: e1 shapes the vertical profile, e2 the horizontal
    section; 1 gives an ellipsoid, small values a rounded box. Same mesh layout as
    :func:`ellipsoid`. Analytic volume: :func:`superellipsoid_volume`.
    """
    a, b, c = (_positive(x, "radii") for x in _vec3(radii, "radii"))
    e1, e2 = (float(e) for e in exponents)
    if not (0 < e1 <= 2 and 0 < e2 <= 2):
        raise ValueError(f"exponents must lie in (0, 2], got {exponents!r}")
    n_lat, n_lon = _count(n_lat, "n_lat", 2), _count(n_lon, "n_lon", 3)
    eta = -np.pi / 2 + np.pi * np.arange(1, n_lat) / n_lat
    w = 2 * np.pi * np.arange(n_lon) / n_lon
    ce, se = _spow(np.cos(eta), e1)[:, None], _spow(np.sin(eta), e1)[:, None]
    rings = np.stack([a * ce * _spow(np.cos(w), e2), b * ce * _spow(np.sin(w), e2),
                      np.broadcast_to(c * se, (n_lat - 1, n_lon))], -1)
    V, F = loft(rings, (0, 0, -c), (0, 0, c))
    return _place(V, F, rotation, centre)


def superellipsoid_volume(radii, exponents):
    """Analytic volume (mm^3) of :func:`superellipsoid` (Jaklic et al. 2000)."""
    a, b, c = _vec3(radii, "radii")
    e1, e2 = exponents
    beta = lambda x, y: _gamma(x) * _gamma(y) / _gamma(x + y)
    return float(2 * a * b * c * e1 * e2 * beta(e1 / 2 + 1, e1) * beta(e2 / 2, e2 / 2))


def box(size=(1.0, 1.0, 1.0), centre=(0.0, 0.0, 0.0), rotation=None):
    """Axis-aligned (before ``rotation``) box with edge lengths ``size`` (mm): 8 vertices, 12 faces."""
    s = np.array([_positive(x, "size") for x in _vec3(size, "size")]) / 2
    V = np.array([[x, y, z] for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)], float) * s
    F = np.array([[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6], [0, 1, 4], [1, 5, 4],
                  [2, 6, 3], [3, 6, 7], [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5]], np.int64)
    return _place(V, F, rotation, centre)


def _axis_rotation(axis):
    """Rotation taking +z to the unit vector ``axis``."""
    d = _vec3(axis, "axis")
    n = np.linalg.norm(d)
    if n == 0:
        raise ValueError("axis must be non-zero")
    d = d / n
    c = float(np.clip(d[2], -1, 1))
    if c > 1 - 1e-12:
        return np.eye(3)
    if c < -1 + 1e-12:
        return rotation_matrix("x", 180)
    return rotation_matrix(np.cross([0, 0, 1], d), np.rad2deg(np.arccos(c)))


def cylinder(radius=1.0, height=1.0, n=32, centre=(0.0, 0.0, 0.0), axis=(0, 0, 1)):
    """Closed circular cylinder along ``axis`` through ``centre``: 4 n faces."""
    r, h = _positive(radius, "radius"), _positive(height, "height")
    V, F = revolve([0, r, r, 0], [-h / 2, -h / 2, h / 2, h / 2], _count(n, "n", 3))
    return _place(V, F, _axis_rotation(axis), centre)


def capsule(radius=1.0, length=1.0, n_lat=8, n_lon=32, centre=(0.0, 0.0, 0.0), axis=(0, 0, 1)):
    """Cylinder of ``length`` (between the hemisphere centres) with hemispherical ends.

    n_lat: latitude bands per hemisphere.  Faces: 4 n_lat n_lon (length > 0).
    """
    r, L = _positive(radius, "radius"), float(length)
    if not L >= 0:
        raise ValueError(f"length must be >= 0, got {length!r}")
    n_lat = _count(n_lat, "n_lat", 1)
    a = -np.pi / 2 + np.pi / 2 * np.arange(0, n_lat + 1) / n_lat   # -90 .. 0 deg
    rr = np.concatenate([r * np.cos(a), r * np.cos(a[::-1])])
    zz = np.concatenate([-L / 2 + r * np.sin(a), L / 2 - r * np.sin(a[::-1])])
    if L == 0:   # drop the duplicated equator
        rr, zz = np.delete(rr, n_lat), np.delete(zz, n_lat)
    rr[0] = rr[-1] = 0.0
    V, F = revolve(rr, zz, n_lon)
    return _place(V, F, _axis_rotation(axis), centre)


def torus(R=2.0, r=0.5, n=48, m=16, centre=(0.0, 0.0, 0.0), rotation=None, radii_scale=(1.0, 1.0)):
    """Ring torus about the local z axis: major radius R, tube radius r < R (mm).

    n segments round the ring, m round the tube: 2 n m faces.  ``radii_scale``
    (sx, sy) > 0 stretches the local x and y (elliptic ring). Volume 2 pi^2 R r^2 sx sy.
    """
    R, r = _positive(R, "R"), _positive(r, "r")
    if r >= R:
        raise ValueError(f"torus needs r < R, got R={R}, r={r}")
    n, m = _count(n, "n", 3), _count(m, "m", 3)
    u = 2 * np.pi * np.arange(n) / n
    v = 2 * np.pi * np.arange(m) / m
    U, W = np.meshgrid(u, v, indexing="ij")
    sx, sy = (_positive(s, "radii_scale") for s in radii_scale)
    V = np.stack([sx * (R + r * np.cos(W)) * np.cos(U), sy * (R + r * np.cos(W)) * np.sin(U),
                  r * np.sin(W)], -1).reshape(-1, 3)
    idx = np.arange(n * m).reshape(n, m)
    a, b = idx, np.roll(idx, -1, axis=0)
    c, d = np.roll(idx, -1, axis=1), np.roll(b, -1, axis=1)
    F = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return _place(V, F.astype(np.int64), rotation, centre)


def _rmf(P, n0=None):
    """Rotation-minimising frames (double reflection, Wang et al. 2008) along polyline P (K, 3)."""
    seg = np.diff(P, axis=0)
    ls = np.linalg.norm(seg, axis=1)
    if np.any(ls <= 0):
        raise ValueError("tube path has repeated consecutive points")
    ts = seg / ls[:, None]
    T = np.empty_like(P)
    T[0], T[-1] = ts[0], ts[-1]
    T[1:-1] = ts[:-1] + ts[1:]
    nt = np.linalg.norm(T, axis=1)
    if np.any(nt < 1e-9):
        raise ValueError("tube path folds back on itself")
    T /= nt[:, None]
    if n0 is None:
        h = np.eye(3)[np.argmin(np.abs(T[0]))]
    else:
        h = _vec3(n0, "normal0")
    N0 = h - T[0] * (h @ T[0])
    if np.linalg.norm(N0) < 1e-9:
        raise ValueError("normal0 is parallel to the first tangent")
    N = np.empty_like(P)
    N[0] = N0 / np.linalg.norm(N0)
    for i in range(len(P) - 1):
        v1 = P[i + 1] - P[i]
        c1 = v1 @ v1
        rL = N[i] - (2 / c1) * (v1 @ N[i]) * v1
        tL = T[i] - (2 / c1) * (v1 @ T[i]) * v1
        v2 = T[i + 1] - tL
        c2 = v2 @ v2
        N[i + 1] = rL if c2 < 1e-30 else rL - (2 / c2) * (v2 @ rL) * v2
        N[i + 1] -= T[i + 1] * (N[i + 1] @ T[i + 1])
        N[i + 1] /= np.linalg.norm(N[i + 1])
    return T, N, np.cross(T, N)


def tube(points, radius, n_sides=12, caps="flat", normal0=None, n_cap=4):
    """Closed tube swept along a polyline with rotation-minimising frames.

    points: (K, 3) path in mm, K >= 2.  radius: scalar, (K,) per point, or (K, 2)
    semi-axes of an elliptic section along the frame normal N and binormal B.
    caps: "flat" (a centre vertex at each end) or "round" (half-ellipsoid caps of
    ``n_cap`` bands).  normal0: (3,) direction of the first frame normal (projected
    perpendicular to the first tangent).  The caller must keep the radius below the
    path's radius of curvature (rings must not cross).  Returns (vertices, faces).
    """
    P = np.asarray(points, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 3 or len(P) < 2:
        raise ValueError(f"points must have shape (K>=2, 3), got {P.shape}")
    r = np.asarray(radius, dtype=np.float64)
    if r.ndim == 0:
        r = np.full((len(P), 2), float(r))
    elif r.shape == (len(P),):
        r = np.stack([r, r], 1)
    elif r.shape != (len(P), 2):
        raise ValueError(f"radius must be a scalar, (K,) or (K, 2) with K={len(P)}, got {r.shape}")
    if np.any(~(r > 0)):
        raise ValueError("radius must be positive")
    if caps not in ("flat", "round"):
        raise ValueError(f"caps must be 'flat' or 'round', got {caps!r}")
    n_sides = _count(n_sides, "n_sides", 3)
    T, N, B = _rmf(P, normal0)
    th = 2 * np.pi * np.arange(n_sides) / n_sides
    ct, st = np.cos(th)[None, :, None], np.sin(th)[None, :, None]
    rings = P[:, None] + r[:, None, 0:1] * ct * N[:, None] + r[:, None, 1:2] * st * B[:, None]
    start, end = P[0], P[-1]
    if caps == "round":
        n_cap = _count(n_cap, "n_cap", 1)
        ang = np.pi / 2 * np.arange(1, n_cap) / n_cap      # exclude 0 (the end ring) and 90 deg (pole)
        cap_len = r.mean(axis=1)

        def cap(i, sgn):
            off = (rings[i] - P[i])[None] * np.cos(ang)[:, None, None]
            return P[i] + off + sgn * cap_len[i] * np.sin(ang)[:, None, None] * T[i]

        rings = np.concatenate([cap(0, -1.0)[::-1], rings, cap(-1, 1.0)])
        start, end = P[0] - cap_len[0] * T[0], P[-1] + cap_len[-1] * T[-1]
    return loft(rings, start, end)


def sweep(points, normals, radii, n_sides=12, exponent=1.0, n_cap=3):
    """Closed tube with a superelliptic section swept along a polyline, round-capped.

    points: (K, 3) path in mm, K >= 2.  normals: (K, 3) or (3,) direction of each
    section's first semi-axis (projected perpendicular to the path tangent, so the frame
    follows e.g. a surface normal instead of rotation-minimising frames).  radii: (K, 2)
    semi-axes along that normal N and along B = T x N (mm, > 0), or (K,) for round sections.
    exponent: superellipse exponent of the section (1: ellipse, < 1: squarer).
    The ends are half-ellipsoids of ``n_cap`` bands whose length is the mean semi-axis.
    The caller keeps the section smaller than the path's radius of curvature.
    Returns (vertices (N, 3) float64, faces (M, 3) int64), outward.
    """
    Pp = np.asarray(points, dtype=np.float64)
    if Pp.ndim != 2 or Pp.shape[1] != 3 or len(Pp) < 2:
        raise ValueError(f"points must have shape (K>=2, 3), got {Pp.shape}")
    r = np.asarray(radii, dtype=np.float64)
    if r.shape == (len(Pp),):
        r = np.stack([r, r], 1)
    if r.shape != (len(Pp), 2) or np.any(~(r > 0)):
        raise ValueError(f"radii must be positive, shape (K,) or (K, 2) with K={len(Pp)}, got {r.shape}")
    nrm = np.broadcast_to(np.asarray(normals, dtype=np.float64), Pp.shape)
    n_sides = _count(n_sides, "n_sides", 3)
    n_cap = _count(n_cap, "n_cap", 1)
    e = float(exponent)
    if not 0 < e <= 2:
        raise ValueError(f"exponent must lie in (0, 2], got {exponent!r}")
    seg = np.diff(Pp, axis=0)
    if np.any(np.linalg.norm(seg, axis=1) <= 0):
        raise ValueError("sweep path has repeated consecutive points")
    ts = seg / np.linalg.norm(seg, axis=1)[:, None]
    T = np.empty_like(Pp)
    T[0], T[-1] = ts[0], ts[-1]
    T[1:-1] = ts[:-1] + ts[1:]
    nt = np.linalg.norm(T, axis=1)
    if np.any(nt < 1e-9):
        raise ValueError("sweep path folds back on itself")
    T /= nt[:, None]
    N = nrm - T * np.einsum("ij,ij->i", nrm, T)[:, None]
    nn = np.linalg.norm(N, axis=1)
    if np.any(nn < 1e-9):
        raise ValueError("a normal is parallel to the path tangent")
    N /= nn[:, None]
    B = np.cross(T, N)
    th = 2 * np.pi * np.arange(n_sides) / n_sides
    ct, st = _spow(np.cos(th), e)[None, :, None], _spow(np.sin(th), e)[None, :, None]
    rings = Pp[:, None] + r[:, None, 0:1] * ct * N[:, None] + r[:, None, 1:2] * st * B[:, None]
    ang = np.pi / 2 * np.arange(1, n_cap) / n_cap
    cap_len = r.mean(axis=1)

    def cap(i, sgn):
        off = (rings[i] - Pp[i])[None] * np.cos(ang)[:, None, None]
        return Pp[i] + off + sgn * cap_len[i] * np.sin(ang)[:, None, None] * T[i]

    rings = np.concatenate([cap(0, -1.0)[::-1], rings, cap(-1, 1.0)])
    return loft(rings, Pp[0] - cap_len[0] * T[0], Pp[-1] + cap_len[-1] * T[-1])
