"""Parallel edge-collapse simplification of closed triangle meshes (numpy only).

Marching cubes spends as many triangles on a flat wall as on a sharp edge.  Here edges are
collapsed in rounds.  An edge (a, b) may collapse to the best of its midpoint and its two
end points, scored by the quadric error of Garland & Heckbert (SIGGRAPH 1997): the mean
squared distance to the planes of the original faces merged into a and b.  A collapse is
allowed when

1. the RMS distance is below ``tol`` mm and the edge is shorter than ``max_len``;
2. the link condition holds: a and b share exactly the two vertices opposite the edge
   and neither has valence 3, so the mesh stays a closed 2-manifold (Dey et al.,
   "Topology preserving edge contraction", 1999);
3. no remaining face around a or b turns by more than 60 degrees or becomes a sliver.

In one round every allowed edge whose cost is the strict minimum over all edges within
two rings of its end points collapses; such edges have disjoint neighbourhoods, so their
checks stay valid when they are applied together.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix

_DEBUG = False


def _ring_min(A, m):
    """min of m over each vertex and its neighbours (A: adjacency CSR without diagonal)."""
    deg = np.diff(A.indptr)
    rows = np.nonzero(deg > 0)[0]
    nb = np.full(len(m), np.inf)
    if len(rows):
        nb[rows] = np.minimum.reduceat(m[A.indices], A.indptr[rows])
    return np.minimum(m, nb)


def _checks(V, F, vf, ea, eb, pos, f, tol):
    """For collapses (ea[i], eb[i]) -> pos[i]: True where no remaining face around them
    turns by more than 60 degrees or becomes a sliver, and (with f) the new faces stay
    within tol of f = 0 at their centres and edge midpoints."""
    ia, ib = vf[ea].tocoo(), vf[eb].tocoo()
    pe = np.concatenate([ia.row, ib.row])
    pf = np.concatenate([ia.col, ib.col])
    key = np.unique(pe * len(F) + pf)
    pe, pf = key // len(F), key % len(F)
    tri = F[pf]
    a, b = ea[pe], eb[pe]
    moved = (tri == a[:, None]) | (tri == b[:, None])
    vanish = moved.sum(1) == 2
    old = V[tri]
    new = np.where(moved[:, :, None], pos[pe][:, None, :], old)
    n0 = np.cross(old[:, 1] - old[:, 0], old[:, 2] - old[:, 0])
    n1 = np.cross(new[:, 1] - new[:, 0], new[:, 2] - new[:, 0])
    a0, a1 = np.linalg.norm(n0, axis=1), np.linalg.norm(n1, axis=1)
    cosang = np.einsum("ij,ij->i", n0, n1) / np.maximum(a0 * a1, 1e-300)
    e1, e2 = new[:, 1] - new[:, 0], new[:, 2] - new[:, 0]
    lmax2 = np.max(np.stack([np.einsum("ij,ij->i", e1, e1), np.einsum("ij,ij->i", e2, e2),
                             np.einsum("ij,ij->i", e2 - e1, e2 - e1)]), axis=0)
    good = vanish | ((cosang > 0.5) & (a1 / np.maximum(lmax2, 1e-300) > 0.03))
    if f is not None:      # never worse than max(tol, the error of the faces replaced)
        def face_err(t):
            pts = np.concatenate([t.mean(1), 0.5 * (t[:, 0] + t[:, 1]), 0.5 * (t[:, 1] + t[:, 2]),
                                  0.5 * (t[:, 2] + t[:, 0])])
            return np.abs(f(pts)).reshape(4, -1).max(0) if len(pts) else np.zeros(0)

        e_old = face_err(old)
        lim = np.full(len(ea), tol)
        np.maximum.at(lim, pe, e_old)
        nv = ~vanish
        good[nv] &= face_err(new[nv]) <= lim[pe[nv]]
    ok = np.ones(len(ea), bool)
    np.logical_and.at(ok, pe, good)
    return ok


def decimate(V, F, tol, max_len, f=None, rounds=25, min_gain=0.01, locked=None, return_map=False):
    """Simplified (vertices, faces) of a closed outward 2-manifold mesh (see module doc).

    V (N, 3) float mm, F (M, 3) int.  tol: RMS plane distance allowed (mm); with f (the
    implicit surface the mesh lies on, f(points (K, 3)) -> (K,)) the new faces must also
    stay within tol of f = 0 at their centres and edge midpoints.  locked: (N,) bool,
    vertices that must not move or merge.  With ``return_map`` also returns, for each
    input vertex, the index of the output vertex it merged into.
    """
    V = np.array(V, float)
    F = np.array(F, np.int64)
    n_in = len(V)
    rep = np.arange(n_in)
    locked = np.zeros(n_in, bool) if locked is None else np.asarray(locked, bool).copy()
    rejected = np.zeros(0, np.int64)
    # plane quadrics of the original faces, accumulated per vertex, with plane counts
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
    pl = np.concatenate([n, -np.einsum("ij,ij->i", n, V[F[:, 0]])[:, None]], 1)
    K = pl[:, :, None] * pl[:, None, :]
    Q = np.zeros((n_in, 4, 4))
    cnt = np.zeros(n_in)
    for j in range(3):
        np.add.at(Q, F[:, j], K)
        np.add.at(cnt, F[:, j], 1.0)
    for _ in range(rounds):
        # each undirected edge of a closed manifold is the half-edge with a < b exactly once
        H = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
        E = H[H[:, 0] < H[:, 1]]
        ea, eb = E[:, 0], E[:, 1]
        L = np.linalg.norm(V[ea] - V[eb], axis=1)
        pre = np.nonzero((L < max_len) & ~locked[ea] & ~locked[eb])[0]
        if len(rejected):
            pre = pre[~np.isin(ea[pre] * n_in + eb[pre], rejected)]
        if len(pre) == 0:
            break
        # candidate positions (midpoint or an end point) and their quadric cost
        Qe = Q[ea[pre]] + Q[eb[pre]]
        ce = cnt[ea[pre]] + cnt[eb[pre]]
        cands = np.stack([0.5 * (V[ea[pre]] + V[eb[pre]]), V[ea[pre]], V[eb[pre]]], 1)
        hh = np.concatenate([cands, np.ones(cands.shape[:2] + (1,))], 2)
        cc = np.einsum("eki,eij,ekj->ek", hh, Qe, hh) / ce[:, None]
        best = np.argmin(cc, 1)
        cost = np.full(len(E), np.inf)
        cost[pre] = np.maximum(cc[np.arange(len(pre)), best], 0.0)
        pos = np.zeros((len(E), 3))
        pos[pre] = cands[np.arange(len(pre)), best]
        ok = cost < tol * tol
        if not ok.any():
            break
        nV = len(V)
        A = coo_matrix((np.ones(len(H)), (H[:, 0], H[:, 1])), shape=(nV, nV)).tocsr()
        A = (A + A.T).tocsr()
        A.data[:] = 1.0
        A.sort_indices()
        deg = np.diff(A.indptr)
        idx = np.nonzero(ok)[0]
        common = np.asarray(A[ea[idx]].multiply(A[eb[idx]]).sum(axis=1)).ravel()
        ok[idx] = (common == 2) & (deg[ea[idx]] > 3) & (deg[eb[idx]] > 3)
        if not ok.any():
            break
        # independent set (Luby-style, cheapest first): an edge wins when its cost is the
        # strict minimum within two rings of its end points among the edges still open;
        # edges within two rings of a winner close; repeat until none is open
        c = np.where(ok, cost + 1e-12 * np.arange(len(E)) / len(E), np.inf)
        open_ = ok.copy()
        win = np.zeros(len(E), bool)
        for _ in range(12):
            cc_ = np.where(open_, c, np.inf)
            m1 = np.full(nV, np.inf)
            np.minimum.at(m1, ea, cc_)
            np.minimum.at(m1, eb, cc_)
            m3 = _ring_min(A, _ring_min(A, m1))
            w = open_ & (cc_ <= m3[ea]) & (cc_ <= m3[eb])
            if not w.any():
                break
            win |= w
            mark = np.zeros(nV)
            mark[ea[w]] = -1.0
            mark[eb[w]] = -1.0
            mark = _ring_min(A, _ring_min(A, mark)) < 0
            open_ &= ~(mark[ea] | mark[eb])
            if not open_.any():
                break
        wi = np.nonzero(win)[0]
        vf = csr_matrix((np.ones(3 * len(F)), (F.reshape(-1), np.repeat(np.arange(len(F)), 3))), shape=(nV, len(F)))
        good = _checks(V, F, vf, ea[wi], eb[wi], pos[wi], f, tol)
        rejected = np.concatenate([rejected, ea[wi[~good]] * n_in + eb[wi[~good]]])
        wi = wi[good]
        if _DEBUG:
            print("round", len(F), "ok", int(ok.sum()), "win", int(win.sum()), "accepted", len(wi))
        if len(wi) == 0:
            continue
        wa, wb = ea[wi], eb[wi]
        V[wa] = pos[wi]
        Q[wa] += Q[wb]
        cnt[wa] += cnt[wb]
        remap = np.arange(nV)
        remap[wb] = wa
        F = remap[F]
        rep = remap[rep]
        F = F[(F[:, 0] != F[:, 1]) & (F[:, 1] != F[:, 2]) & (F[:, 2] != F[:, 0])]
        if len(wi) < max(2, min_gain * len(F)):
            break
    used = np.unique(F)
    remap = np.full(len(V), -1)
    remap[used] = np.arange(len(used))
    if return_map:
        return V[used], remap[F], remap[rep]
    return V[used], remap[F]
