"""Independent float64 references for tetrahedral meshes (plain numpy, no Taichi, no package code).

* :func:`tet_integrals`: brute force per tetrahedron. The ray ``s + t d`` is clipped by
  the four half-spaces of each tet (slab-of-4-planes clipping, planes from the tet's own
  vertices); the density is integrated exactly over the clipped interval: constant per
  tet, or linear by barycentric interpolation of the vertex values at the interval ends
  (trapezoid rule, exact for a linear function). Summed over all tets.
* :func:`face_integrals`: the per-face signed-depth formula,
  ``Σ_faces sign · [τ α + τ²/2 β]`` with the crossing depth τ measured from the point of
  the ray nearest ``x_ref``, ``α = c + Δg·(x0 − x_ref)``, ``β = Δg·d``; crossings by
  Moller-Trumbore, sign from the face normal. Jumps from :func:`reference_jumps`, which
  fits every tet's affine field by solving the 4x4 system ``[1, x_i] (a, g) = f_i``
  (another method than the package's edge-based solve).
* :func:`kuhn_grid`: a conforming tet mesh of a (jittered) box grid, 6 tets per cell
  (Kuhn/Freudenthal subdivision along the main diagonal), positively oriented.
"""
from itertools import permutations

import numpy as np

LOCAL = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])


def volumes(V, X):
    p = V[X]
    return np.einsum("ij,ij->i", p[:, 1] - p[:, 0], np.cross(p[:, 2] - p[:, 0], p[:, 3] - p[:, 0])) / 6.0


def kuhn_grid(n=(2, 2, 2), spacing=(10.0, 10.0, 10.0), origin=(0.0, 0.0, 0.0), jitter=0.0, rng=None):
    """Vertices ((n+1)^3, 3) and tets (6 n^3, 4) of a box grid; interior grid points jittered by
    ``jitter`` x spacing (uniform); tets reordered to positive volume."""
    n = np.asarray(n)
    h = np.asarray(spacing, float)
    idx = np.stack(np.meshgrid(*[np.arange(k + 1) for k in n], indexing="ij"), -1).reshape(-1, 3)
    V = np.asarray(origin, float) + idx * h
    if jitter:
        interior = ((idx > 0) & (idx < n)).all(axis=1)
        V[interior] += (rng.uniform(-1, 1, (int(interior.sum()), 3)) * jitter) * h

    def vid(i, j, k):
        return (i * (n[1] + 1) + j) * (n[2] + 1) + k

    tets = []
    for i in range(n[0]):
        for j in range(n[1]):
            for k in range(n[2]):
                for perm in permutations(range(3)):
                    c = np.array([i, j, k])
                    path = [c.copy()]
                    for ax in perm:
                        c = c.copy()
                        c[ax] += 1
                        path.append(c)
                    tets.append([vid(*p) for p in path])
    X = np.array(tets)
    neg = volumes(V, X) < 0
    X[neg] = X[neg][:, [0, 1, 3, 2]]
    assert (volumes(V, X) > 0).all()
    return V, X


def _clip(V, X, s, d):
    """Entry and exit parameters (T,) of the line s + t d through every tet (t0 >= t1: missed)."""
    p = V[X]  # (T, 4, 3)
    t0 = np.full(len(X), -np.inf)
    t1 = np.full(len(X), np.inf)
    for k, (a, b, c) in enumerate(LOCAL):
        n = np.cross(p[:, b] - p[:, a], p[:, c] - p[:, a])  # outward normal of the face opposite vertex k
        den = n @ d
        num = -np.einsum("ij,ij->i", n, s - p[:, a])  # n . (s + t d - q) <= 0  <=>  t den <= num
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / den
        enter = den < 0
        leave = den > 0
        t0 = np.where(enter, np.maximum(t0, t), t0)
        t1 = np.where(leave, np.minimum(t1, t), t1)
        parallel_out = (den == 0) & (num < 0)
        t1 = np.where(parallel_out, -np.inf, t1)
    return t0, t1


def _bary(P, Q):
    """Barycentric coordinates (T, 4) of points Q (T, 3) in tets P (T, 4, 3)."""
    A = np.concatenate([np.ones((len(P), 1, 4)), np.swapaxes(P, 1, 2)], axis=1)  # (T, 4, 4)
    rhs = np.concatenate([np.ones((len(P), 1)), Q], axis=1)
    return np.linalg.solve(A, rhs[..., None])[..., 0]


def tet_integrals(V, X, D, kind, s, dirs):
    """Line integrals (R, B) of densities D over the rays s + t dirs[r] (|dirs| = 1), t >= 0."""
    D = np.asarray(D, float).reshape(len(D), -1)
    out = np.zeros((len(dirs), D.shape[1]))
    for r, d in enumerate(dirs):
        t0, t1 = _clip(V, X, s, d)
        t0 = np.maximum(t0, 0.0)
        hit = t1 > t0
        if not hit.any():
            continue
        L = t1[hit] - t0[hit]
        if kind == "constant":
            out[r] = (L[:, None] * D[hit]).sum(0)  # D (T, B): one value per tet
        else:
            P = V[X[hit]]
            b0 = _bary(P, s + t0[hit, None] * d)
            b1 = _bary(P, s + t1[hit, None] * d)
            f = D[X[hit]]  # (h, 4, B)
            f0 = np.einsum("hk,hkb->hb", b0, f)
            f1 = np.einsum("hk,hkb->hb", b1, f)
            out[r] = (L[:, None] * 0.5 * (f0 + f1)).sum(0)
    return out


def reference_jumps(V, X, D, kind, faces, face_tets, x_ref):
    """Per-face (F, B, 4) jumps [c, g] of the tets' affine fields ρ = c + g·(x − x_ref)."""
    D = np.asarray(D, float)
    B = D.shape[1]
    if kind == "constant":
        cg = np.zeros((len(X), B, 4))
        cg[..., 0] = D
    else:
        A = np.concatenate([np.ones((len(X), 4, 1)), V[X] - x_ref], axis=2)  # rows [1, x_i - x_ref]
        sol = np.linalg.solve(A, D[X])  # (T, 4, B): c, gx, gy, gz
        cg = np.swapaxes(sol, 1, 2)
    a, b = face_tets[:, 0], face_tets[:, 1]
    return cg[a] - np.where((b >= 0)[:, None, None], cg[np.maximum(b, 0)], 0.0)


def face_integrals(V, faces, jumps, x_ref, s, dirs):
    """Σ_faces sign · [τ α + τ²/2 β] per ray (R, B); ``jumps`` (F, B, 4) = [c, g] jumps."""
    p0, p1, p2 = V[faces[:, 0]], V[faces[:, 1]], V[faces[:, 2]]
    e1, e2 = p1 - p0, p2 - p0
    n = np.cross(e1, e2)
    out = np.zeros((len(dirs), jumps.shape[1]), dtype=V.dtype)
    for r, d in enumerate(dirs):
        h = np.cross(d, e2)
        a = np.einsum("ij,ij->i", e1, h)
        with np.errstate(divide="ignore", invalid="ignore"):
            f = 1.0 / a
            q = s - p0
            u = f * np.einsum("ij,ij->i", q, h)
            qe = np.cross(q, e1)
            v = f * (qe @ d)
            t = f * np.einsum("ij,ij->i", e2, qe)
        hit = (a != 0) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        sign = np.sign(n[hit] @ d)
        t_ref = (x_ref - s) @ d
        x0 = s + t_ref * d
        tau = t[hit] - t_ref
        J = jumps[hit]
        alpha = J[..., 0] + J[..., 1:] @ (x0 - x_ref)
        beta = J[..., 1:] @ d
        out[r] = (sign[:, None] * (tau[:, None] * alpha + 0.5 * tau[:, None] ** 2 * beta)).sum(0)
    return out


def rays_through(rng, lo, hi, n, distance=400.0):
    """A source outside the box [lo, hi] and n unit rays from it to random points in the box."""
    c = 0.5 * (np.asarray(lo) + np.asarray(hi))
    u = rng.normal(size=3)
    s = c + distance * u / np.linalg.norm(u)
    targets = rng.uniform(lo, hi, size=(n, 3))
    d = targets - s
    return s, d / np.linalg.norm(d, axis=1, keepdims=True)
