"""Implicit modelling for the phantoms: signed distance functions (SDF) and their meshing.

A shape is a function ``f(p)`` of points ``p`` (N, 3) float64 mm returning (N,) float64,
negative inside, about the signed distance in mm near the surface.  The primitives below
are exact or close to exact distances (Quilez, "distance functions",
iquilezles.org/articles/distfunctions); the smooth minimum is the polynomial one
(Quilez, "smooth minimum").  :func:`mesh_sdf` turns a shape into a closed outward triangle
mesh: marching cubes (Lewiner et al. 2003, ``skimage.measure.marching_cubes``) on a grid of
spacing ``h`` mm, the vertices then moved onto the exact zero level by Newton steps along
the gradient, so the surface is accurate well below the grid spacing for smooth shapes.
A bone's trabecular core is the same function's level ``-t`` (cortex thickness ``t``):
it exists only where the bone is thicker than ``2 t``, as in real bone.
"""
from __future__ import annotations

import numpy as np

from .. import primitives as P

__all__ = ["smin", "smax", "sphere", "ellipsoid", "capsule", "round_cone", "round_box", "polyline", "polylines",
           "segment_distance", "mesh_sdf", "MeshingError"]


class MeshingError(RuntimeError):
    """A generated surface is not a closed, outward 2-manifold (a bug in a phantom's design)."""


# ----------------------------------------------------------------------------------------
# combinators (arrays in, arrays out)
# ----------------------------------------------------------------------------------------
def smin(a, b, k):
    """Polynomial smooth minimum (union) with blend radius k mm; min(a, b) for k <= 0."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smax(a, b, k):
    """Smooth maximum (intersection, or subtraction with -b)."""
    return -smin(-a, -b, k)


# ----------------------------------------------------------------------------------------
# primitives: each returns f(p) for p (N, 3)
# ----------------------------------------------------------------------------------------
def _local(p, centre, R):
    q = p - np.asarray(centre, float)
    return q if R is None else q @ np.asarray(R, float)   # R^T q for row vectors


def sphere(p, centre, r):
    return np.linalg.norm(p - np.asarray(centre, float), axis=-1) - r


def ellipsoid(p, centre, radii, R=None):
    """Ellipsoid with semi-axes ``radii`` along the columns of rotation R (Quilez's bound)."""
    q = _local(p, centre, R)
    r = np.asarray(radii, float)
    k0 = np.linalg.norm(q / r, axis=-1)
    k1 = np.linalg.norm(q / (r * r), axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def segment_distance(p, a, b):
    """(distance (N,), parameter t in [0, 1] (N,)) from points to the segment a-b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(ab @ ab, 1e-300), 0.0, 1.0)
    return np.linalg.norm(p - a - t[:, None] * ab, axis=-1), t


def capsule(p, a, b, r):
    return segment_distance(p, a, b)[0] - r


def round_cone(p, a, b, ra, rb):
    """Exact SDF of the convex hull of two spheres (a, ra) and (b, rb) (Quilez's sdRoundCone).

    a, b: (3,) or per-point (N, 3); ra, rb: scalars or (N,)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    ba = b - a
    l2 = np.einsum("...i,...i->...", ba, ba)
    rr = ra - rb
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pa = p - a
    y = np.einsum("...i,...i->...", pa, ba)
    z = y - l2
    xv = pa * np.expand_dims(l2, -1) - y[..., None] * ba
    x2 = np.einsum("ij,ij->i", xv, xv)
    y2 = y * y * l2
    z2 = z * z * l2
    k = np.sign(rr) * rr * rr * x2
    out = (np.sqrt(np.maximum(x2 * a2 * il2, 0.0)) + y * rr) * il2 - ra
    m1 = np.sign(z) * a2 * z2 > k
    m2 = np.sign(y) * a2 * y2 < k
    out = np.where(m1, np.sqrt(x2 + z2) * il2 - rb, out)
    out = np.where(~m1 & m2, np.sqrt(x2 + y2) * il2 - ra, out)
    return out


def round_box(p, centre, half, r, R=None):
    """Box of half sizes ``half`` (mm) with edges rounded by r (exact SDF)."""
    q = np.abs(_local(p, centre, R)) - (np.asarray(half, float) - r)
    return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(-1), 0.0) - r


def polyline(points, radii, step=1.0):
    """SDF of a tube of varying radius along a polyline (union of round cones between
    consecutive points): returns f(p).  See :func:`polylines`."""
    return polylines([(points, radii)], step)


def polylines(tubes, step=1.0, reach=30.0):
    """SDF of the union of tubes [(points (K, 3), radii (K,) or scalar), ...], each the
    union of round cones between consecutive points.  A k-d tree over samples of all axes
    picks, for each point, the segments of its two nearest samples and their neighbours
    on the same tube, and only those round cones are evaluated (radii must vary slowly
    along a path).  Farther than ``reach`` mm from every axis the value is the constant
    ``reach`` (a lower bound of the distance: enough for meshing and carving)."""
    from scipy.spatial import cKDTree

    A, B, RA, RB, samp, lab, first, last = [], [], [], [], [], [], [], []
    nseg = 0
    for pts, radii in tubes:
        pts = np.asarray(pts, float)
        r = np.broadcast_to(np.asarray(radii, float), (len(pts),))
        m = len(pts) - 1
        A.append(pts[:-1]), B.append(pts[1:]), RA.append(r[:-1]), RB.append(r[1:])
        first.append(np.full(m, nseg)), last.append(np.full(m, nseg + m - 1))
        for i in range(m):
            L = np.linalg.norm(pts[i + 1] - pts[i])
            n = max(1, int(np.ceil(L / step)))
            t = np.arange(n + (1 if i == m - 1 else 0)) / n
            samp.append(pts[i] + t[:, None] * (pts[i + 1] - pts[i]))
            lab.append(np.full(len(t), nseg + i))
        nseg += m
    A, B, RA, RB = map(np.concatenate, (A, B, RA, RB))
    first, last = np.concatenate(first), np.concatenate(last)
    samp, lab = np.concatenate(samp), np.concatenate(lab)
    tree = cKDTree(samp)
    r_max = max(RA.max(), RB.max())
    far = r_max + reach

    def f(p):
        p = np.asarray(p, float)
        out = np.full(len(p), far - r_max)
        if len(p) == 0:
            return out
        d, idx = tree.query(p, k=2, distance_upper_bound=far)
        near = np.isfinite(d[:, 0])
        if not near.any():
            return out
        q, idx = p[near], idx[near]
        best = np.full(len(q), np.inf)
        for j in range(2):
            ok = idx[:, j] < len(samp)
            sj = lab[np.where(ok, idx[:, j], idx[:, 0])]
            for off in (-1, 0, 1):
                sg = np.clip(sj + off, first[sj], last[sj])
                best = np.minimum(best, round_cone(q, A[sg], B[sg], RA[sg], RB[sg]))
        out[near] = np.minimum(best, far - r_max)
        return out

    return f


# ----------------------------------------------------------------------------------------
# meshing
# ----------------------------------------------------------------------------------------
def _eval(f, pts, chunk=400_000):
    out = np.empty(len(pts))
    for s in range(0, len(pts), chunk):
        out[s:s + chunk] = f(pts[s:s + chunk])
    return out


def _gradient(f, V, eps, f0=None):
    """Forward-difference gradient (N, 3) of f at V (N, 3) (f0 = f(V) if known)."""
    f0 = f(V) if f0 is None else f0
    g = np.empty_like(V)
    for i in range(3):
        d = np.zeros(3)
        d[i] = eps
        g[:, i] = (f(V + d) - f0) / eps
    return g


def _components(F, n):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = F[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    A = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(A, directed=False)[1]


def _face_normals(V, F):
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)


def _up2(a):
    """Linear upsampling by 2 along every axis: shape m -> 2 m - 1."""
    for ax in range(3):
        a = np.moveaxis(a, ax, 0)
        out = np.empty((2 * a.shape[0] - 1,) + a.shape[1:])
        out[::2] = a
        out[1::2] = 0.5 * (a[:-1] + a[1:])
        a = np.moveaxis(out, 0, ax)
    return a


def sample_grid(f, lo, hi, h, band=(0.0, 0.0)):
    """Values of f on the grid lo + h * index covering [lo, hi] (box padded by 2 h).

    Only nodes near the levels of interest are evaluated exactly: f is first sampled at
    spacing 4 h and 2 h, and a finer node whose interpolated value lies more than 2.5
    coarse spacings outside ``band`` = (lowest level, highest level) keeps the
    interpolated value (its sign is right for any 1-Lipschitz f).
    Returns (origin (3,), values (nx, ny, nz)).
    """
    lo = np.asarray(lo, float) - 2 * h
    hi = np.asarray(hi, float) + 2 * h
    n = np.maximum(np.ceil((hi - lo) / h).astype(int) + 1, 3)
    n = n + (4 - (n - 1) % 4) % 4       # n - 1 divisible by 4: the coarse grids nest
    vals = None
    for step in (4, 2, 1):
        idx = [np.arange(0, n[i], step) for i in range(3)]
        G = np.stack(np.meshgrid(*[lo[i] + h * idx[i] for i in range(3)], indexing="ij"), -1).reshape(-1, 3)
        if vals is None:
            v = _eval(f, G)
        else:
            v = _up2(vals).reshape(-1)
            margin = 2.5 * 2 * step * h
            need = (v > band[0] - margin) & (v < band[1] + margin)
            if need.any():
                v[need] = _eval(f, G[need])
        vals = v.reshape(tuple(len(a) for a in idx))
    return lo, vals


def mesh_sdf(f, lo, hi, h, level=0.0, min_volume=None, project=2, name="shape", tol=None):
    """Closed outward triangle mesh of ``{p : f(p) < level}`` inside the box [lo, hi] (mm).

    See :func:`mesh_levels` (this is its one-level form)."""
    return mesh_levels(f, lo, hi, h, [level], min_volume, project, [name], tol)[0]


def mesh_levels(f, lo, hi, h, levels, min_volume=None, project=2, names=None, tol=None):
    """Meshes of ``{p : f(p) < level}`` for several levels, from one sampling of f.

    A level is a number (mm) or a function t(p) (the set f(p) + t(p) < 0, e.g. minus a
    varying cortex thickness).  h: grid spacing (mm); features thinner than about h may
    break up; the box is padded by 2 h and the surfaces are closed there.  Components
    (and cavities) of volume below ``min_volume`` mm^3 (default 2 h^3) are dropped.
    ``project`` Newton steps move each vertex onto its level along the numerical
    gradient (each step at most h / 3; a step that would turn a face by more than 60
    degrees is undone for its vertices).  Marching cubes is retried on a grid shifted by
    a fraction of h if it gives a defective surface.  With ``tol`` (mm) each mesh is then
    simplified by :func:`taichi_xray.phantoms._decimate.decimate` (RMS plane error tol,
    edges up to 6 h).
    Returns a list of (vertices (N, 3) float64, faces (M, 3) int64) or None (empty set).
    Raises MeshingError if a result is not a closed, outward 2-manifold.
    """
    names = names or [f"shape level {i}" for i in range(len(levels))]
    consts = [lv for lv in levels if not callable(lv)]
    band = (min(consts + [-6.0 if any(callable(x) for x in levels) else 0.0]), max(consts + [0.0]))
    out, grids = [], {}
    for level, name in zip(levels, names):
        err = None
        for shift in (0.0, 0.37, 0.71):
            if shift not in grids:
                grids[shift] = sample_grid(f, np.asarray(lo, float) - shift * h, hi, h, band)
            try:
                VF = _mesh_grid(f, grids[shift], h, level, min_volume, project, name)
                if VF is not None and tol:
                    fg = grid_function(grids[shift], h)
                    lf = (lambda q, lv=level: fg(q) + lv(q)) if callable(level) else (lambda q, lv=level: fg(q) - lv)
                    VF = _simplify(VF, tol, 6 * h, name, lf)
                out.append(VF)
                break
            except MeshingError as e:
                err = e
        else:
            raise err
    return out


def grid_function(grid, h):
    """Trilinear interpolation f(p) of sampled values grid = (origin, values (nx, ny, nz))."""
    from scipy.ndimage import map_coordinates

    lo, vals = grid

    def f(p):
        c = ((np.asarray(p, float) - lo) / h).T
        return map_coordinates(vals, c, order=1, mode="nearest")

    return f


def _simplify(VF, tol, max_len, name, f=None):
    """Decimate, then re-run with the vertices near any self-crossing locked."""
    from ._decimate import decimate
    from ._meshcheck import folded_faces, intersecting_faces

    V0, F0 = VF
    locked = np.zeros(len(V0), bool)
    for _ in range(4):
        V, F, keep = decimate(V0, F0, tol, max_len, f=f, locked=locked, return_map=True)
        bad = np.union1d(intersecting_faces(V, F), folded_faces(V, F))
        if len(bad) == 0:
            rep = P.is_watertight(V, F)
            if not rep.ok:
                raise MeshingError(f"{name}: simplification broke the surface: {rep.reason}")
            return V, F
        # lock the original vertices that ended up in or next to the crossing faces
        hit = np.zeros(len(V), bool)
        hit[np.unique(F[bad])] = True
        locked |= hit[keep]
        near = np.isin(F0, np.nonzero(locked)[0]).any(1)
        locked[np.unique(F0[near])] = True
    return VF


def mesh_grid(f, grid, h, level, min_volume, project, name):
    """:func:`_mesh_grid`, retried at levels nudged by a small fraction of h when marching
    cubes meets an ambiguous configuration that leaves a non-manifold edge."""
    err = None
    for nudge in (0.0, 0.011, -0.017, 0.023, -0.031):
        lv = level
        if nudge:
            lv = (lambda p, l0=level, d=nudge * h: l0(p) + d) if callable(level) else level - nudge * h
        try:
            return _mesh_grid(f, grid, h, lv, min_volume, project, name)
        except MeshingError as e:
            err = e
    raise err


def _mesh_grid(f, grid, h, level, min_volume, project, name):
    from skimage.measure import marching_cubes

    lo, vals = grid
    if callable(level):
        axes = [lo[i] + h * np.arange(vals.shape[i]) for i in range(3)]
        G = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        vol = vals + level(G).reshape(vals.shape)
        g_level = (lambda q: f(q) + level(q))
    else:
        vol = vals - level
        g_level = (lambda q: f(q) - level)
    vol = vol.copy()
    vol[[0, -1], :, :] = np.maximum(vol[[0, -1], :, :], h)
    vol[:, [0, -1], :] = np.maximum(vol[:, [0, -1], :], h)
    vol[:, :, [0, -1]] = np.maximum(vol[:, :, [0, -1]], h)
    if not (vol < 0).any():
        return None
    vol[vol == 0.0] = 1e-9
    V, F, _, _ = marching_cubes(vol, 0.0, spacing=(h, h, h), allow_degenerate=False)
    V = V.astype(np.float64) + lo
    F = F.astype(np.int64)
    if P.mesh_volume(V, F) < 0:
        F = F[:, ::-1].copy()
    # drop small components and cavities
    lab = _components(F, len(V))
    flab = lab[F[:, 0]]
    c0 = V.mean(0)
    a, b, c = V[F[:, 0]] - c0, V[F[:, 1]] - c0, V[F[:, 2]] - c0
    fv = np.einsum("ij,ij->i", a, np.cross(b, c)) / 6.0
    cvol = np.bincount(flab, weights=fv, minlength=lab.max() + 1)
    vmin = 2 * h ** 3 if min_volume is None else min_volume
    keep = cvol[flab] > vmin
    if not keep.any():
        return None
    F = F[keep]
    used = np.unique(F)
    remap = np.full(len(V), -1)
    remap[used] = np.arange(len(used))
    V, F = V[used], remap[F]
    V_mc = V.copy()
    n0 = _face_normals(V, F)
    for _ in range(project):
        fv = g_level(V)
        g = _gradient(g_level, V, 0.02 * h, fv)
        gn2 = np.maximum(np.einsum("ij,ij->i", g, g), 1e-12)
        step = fv[:, None] * g / gn2[:, None]
        sl = np.linalg.norm(step, axis=1)
        step *= np.minimum(1.0, (h / 3) / np.maximum(sl, 1e-300))[:, None]
        Vn = V - step
        for _ in range(5):
            bad = np.einsum("ij,ij->i", _face_normals(Vn, F), n0) < 0.5
            if not bad.any():
                break
            vb = np.unique(F[bad])
            Vn[vb] = V[vb]
        V = Vn
    from ._meshcheck import folded_faces, intersecting_faces
    for _ in range(4):          # marching cubes' own surface does not cross or fold over itself
        bad = np.union1d(intersecting_faces(V, F), folded_faces(V, F))
        if len(bad) == 0:
            break
        vb = np.unique(F[bad])
        V[vb] = V_mc[vb]
    else:
        raise MeshingError(f"{name}: the projected surface crosses or folds over itself")
    rep = P.is_watertight(V, F)
    if not rep.ok:
        raise MeshingError(f"{name}: marching cubes gave a defective surface: {rep.reason}")
    return V, F
