"""Self-intersection search for triangle meshes (used to repair generated meshes)."""
from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .. import primitives as P


def _candidate_pairs(c, rad):
    """Pairs (i < j) of faces whose bounding spheres (centres c, radii rad) overlap."""
    tree = cKDTree(c)
    r_small = float(np.percentile(rad, 98))
    pairs = [tree.query_pairs(2.0 * r_small + 1e-9, output_type="ndarray")]
    big = np.nonzero(rad > r_small)[0]
    rmax = float(rad.max())
    for i, js in zip(big, tree.query_ball_point(c[big], rad[big] + rmax + 1e-9)):
        js = np.asarray(js, np.int64)
        js = js[(js != i) & ((rad[js] <= r_small) | (js > i))]
        js = js[np.linalg.norm(c[js] - c[i], axis=1) <= rad[js] + rad[i]]
        if len(js):
            pairs.append(np.stack([np.minimum(i, js), np.maximum(i, js)], 1))
    p = np.concatenate(pairs).reshape(-1, 2).astype(np.int64)      # a few duplicates are harmless
    keep = np.linalg.norm(c[p[:, 0]] - c[p[:, 1]], axis=1) <= rad[p[:, 0]] + rad[p[:, 1]] + 1e-9
    return p[keep]


def intersecting_faces(V, F, chunk=200_000):
    """Indices of faces that cross another face with which they share no vertex.

    Broad phase: bounding spheres of the faces (k-d tree on the centres); narrow phase:
    the exact triangle-triangle test of :func:`taichi_xray.primitives.triangle_triangle_distance`.
    """
    T = V[F]
    c = T.mean(1)
    rad = np.linalg.norm(T - c[:, None], axis=2).max(1)
    pairs = _candidate_pairs(c, rad)
    if len(pairs) == 0:
        return np.zeros(0, np.int64)
    i, j = pairs[:, 0], pairs[:, 1]
    share = (F[i][:, :, None] == F[j][:, None, :]).any(axis=(1, 2))
    i, j = i[~share], j[~share]
    # cheap separating test first: the plane of one triangle has the other wholly on one side
    n = np.cross(T[:, 1] - T[:, 0], T[:, 2] - T[:, 0])
    di = np.einsum("kvj,kj->kv", T[j] - T[i][:, :1], n[i])
    dj = np.einsum("kvj,kj->kv", T[i] - T[j][:, :1], n[j])
    maybe = ~((di > 0).all(1) | (di < 0).all(1) | (dj > 0).all(1) | (dj < 0).all(1))
    i, j = i[maybe], j[maybe]
    hit = []
    for s in range(0, len(i), chunk):
        a, b = T[i[s:s + chunk]], T[j[s:s + chunk]]
        m = np.zeros(len(a), bool)
        for e in range(3):
            e2 = (e + 1) % 3
            m |= P._seg_hits_tri(a[:, e], a[:, e2], b[:, 0], b[:, 1], b[:, 2])
            m |= P._seg_hits_tri(b[:, e], b[:, e2], a[:, 0], a[:, 1], a[:, 2])
        hit += [i[s:s + chunk][m], j[s:s + chunk][m]]
    return np.unique(np.concatenate(hit)) if hit else np.zeros(0, np.int64)


def distance_to_mesh(V, F, q, k=8, return_face=False):
    """Distance (mm) from points q (N, 3) to the surface (V, F): the exact point-triangle
    distance to the k faces with the nearest centres (an upper bound, equal to the true
    distance unless a large face is closer than k smaller ones)."""
    T = V[F]
    tree = cKDTree(T.mean(1))
    k = min(k, len(F))
    _, idx = tree.query(q, k=k)
    idx = idx.reshape(len(q), k)
    d = P._point_tri_pairwise(np.repeat(q, k, axis=0), T[idx.ravel()]).reshape(len(q), k)
    j = np.argmin(d, 1)
    if return_face:
        return d[np.arange(len(q)), j], idx[np.arange(len(q)), j]
    return d[np.arange(len(q)), j]


def nesting_deficit(outer, inner, margin):
    """Sample points of ``inner`` (vertices, face centres, edge midpoints; (K, 3)) and how
    far each is from lying inside ``outer`` at least ``margin`` mm deep (> 0: violation)."""
    Vo, Fo = outer
    V, F = inner
    T = V[F]
    q = np.concatenate([V, T.mean(1), 0.5 * (T[:, 0] + T[:, 1]), 0.5 * (T[:, 1] + T[:, 2]),
                        0.5 * (T[:, 2] + T[:, 0])] + [0.6 * T[:, k] + 0.2 * (T.sum(1) - T[:, k]) for k in range(3)])
    d, face = distance_to_mesh(Vo, Fo, q, return_face=True)
    # side of the nearest face's plane (outward normals); ambiguous only at sharp edges
    T = Vo[Fo[face]]
    n = np.cross(T[:, 1] - T[:, 0], T[:, 2] - T[:, 0])
    outside = np.einsum("ij,ij->i", q - T[:, 0], n) > 0
    if outside.any():      # confirm with the winding number (the plane test errs at edges)
        outside[outside] = P.winding_number(Vo, Fo, q[outside]) < 0.5
    sd = np.where(outside, d, -d)
    return q, sd + margin



def folded_faces(V, F, cos_min=-0.8, delta=0.01):
    """Indices of faces that fold over a neighbour across a shared edge.

    Candidates are edge-sharing pairs whose unit normals point nearly opposite ways (dot <
    ``cos_min``: a thin fin, a thin slit, or a pair folded onto each other).  A face is
    bad when the winding number just behind it (``delta`` mm against its normal) is not 1
    or just in front of it is not 0: the fold has turned past the neighbour, so a ray
    through it meets the surface in the wrong order (entry, entry, exit, exit).
    :func:`intersecting_faces` skips faces that share a vertex and so misses these.
    """
    V = np.asarray(V, float)
    F = np.asarray(F, np.int64)
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
    a = F.reshape(-1)
    b = F[:, [1, 2, 0]].reshape(-1)
    key = np.minimum(a, b) * (int(F.max()) + 1) + np.maximum(a, b)
    face = np.repeat(np.arange(len(F)), 3)
    order = np.argsort(key, kind="stable")
    key, face = key[order], face[order]
    same = np.nonzero(key[1:] == key[:-1])[0]
    i, j = face[same], face[same + 1]
    cand = np.unique(np.concatenate([i, j])[np.tile(np.einsum("ij,ij->i", n[i], n[j]) < cos_min, 2)])
    if len(cand) == 0:
        return cand
    c = V[F[cand]].mean(1)
    w_in = P.winding_number(V, F, c - delta * n[cand])
    w_out = P.winding_number(V, F, c + delta * n[cand])
    return cand[(np.abs(w_in - 1.0) > 0.5) | (np.abs(w_out) > 0.5)]
