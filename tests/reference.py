"""Independent references for the rasterizer tests: brute-force numpy ray casting."""
import numpy as np


def icosphere(radius=1.0, subdivisions=2, centre=(0.0, 0.0, 0.0)):
    """Icosphere from the package's primitives (mesh generation is not what these tests check)."""
    from taichi_xray.primitives import icosphere as _ico

    return _ico(radius, subdivisions, centre)


def torus(R=30.0, r=10.0, n=48, m=24):
    i, j = np.meshgrid(np.arange(n), np.arange(m), indexing="ij")
    th, ph = 2 * np.pi * i / n, 2 * np.pi * j / m
    V = np.stack([(R + r * np.cos(ph)) * np.cos(th), (R + r * np.cos(ph)) * np.sin(th), r * np.sin(ph)], -1).reshape(-1, 3)
    idx = lambda a, b: (a % n) * m + (b % m)  # noqa: E731
    F = []
    for a in range(n):
        for b in range(m):
            F.append([idx(a, b), idx(a + 1, b), idx(a + 1, b + 1)])
            F.append([idx(a, b), idx(a + 1, b + 1), idx(a, b + 1)])
    return V, np.array(F)


def box(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    V = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    F = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return V, F


def signed_volume(V, F):
    v = V[F]
    return np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6


def brute_force(V, F, source, dirs):
    """Sum over all triangle crossings of sign * distance, by Moller-Trumbore in float64.

    dirs: (H, W, 3) ray directions (any length). Returns (L (H, W), hits (H, W)).
    Crossings at t <= 0 (behind the source) are ignored.
    """
    H, W, _ = dirs.shape
    d = dirs.reshape(-1, 3) / np.linalg.norm(dirs.reshape(-1, 3), axis=1)[:, None]
    v0, v1, v2 = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    e1, e2 = v1 - v0, v2 - v0
    n = np.cross(e1, e2)
    L = np.zeros(len(d))
    hits = np.zeros(len(d), dtype=np.int64)
    s = np.asarray(source, float)
    for k in range(0, len(d), 256):
        dd = d[k:k + 256][:, None, :]
        p = np.cross(dd, e2[None])
        det = np.einsum("rfk,fk->rf", p, e1)
        tvec = (s - v0)[None]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / det
            u = np.einsum("rfk,rfk->rf", tvec.repeat(len(dd), 0), p) * inv
            q = np.cross(tvec, e1[None])
            v = np.einsum("rfk,rfk->rf", dd.repeat(len(F), 1), q.repeat(len(dd), 0)) * inv
            t = np.einsum("fk,rfk->rf", e2, q.repeat(len(dd), 0)) * inv
        hit = (det != 0) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        sign = np.sign(np.einsum("rfk,fk->rf", dd.repeat(len(F), 1), n))
        L[k:k + 256] = np.where(hit, sign * t, 0).sum(1)
        hits[k:k + 256] = hit.sum(1)
    return L.reshape(H, W), hits.reshape(H, W)


def box_chord(lo, hi, source, dirs, A=None):
    """Analytic chord length of rays through a box (slab method).

    The box is axis-aligned in the frame x' = A x (A linear, default identity);
    lengths are measured in the world frame.
    """
    d = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    if A is not None:
        d = d @ np.asarray(A).T
        source = np.asarray(A) @ source
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (np.asarray(lo) - source) / d
        t2 = (np.asarray(hi) - source) / d
    tmin = np.nanmax(np.minimum(t1, t2), axis=-1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=-1)
    return np.maximum(tmax - np.maximum(tmin, 0), 0)


def scattered_icosphere(level, radius=1.0):
    """Unit icosphere subdivided all faces at once, times ``radius``: consecutive faces lie on
    different icosahedron faces, far apart in the vertex array (the order the rasterizer reorders)."""
    from taichi_xray.primitives import icosphere as _ico

    V, F = _ico(1.0, 0)
    for _ in range(level):
        e = F[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 3, 2)
        uniq, inv = np.unique(np.sort(e, axis=2).reshape(-1, 2), axis=0, return_inverse=True)
        inv = inv.reshape(-1, 3) + len(V)
        mid = V[uniq[:, 0]] + V[uniq[:, 1]]
        V = np.vstack([V, mid / np.linalg.norm(mid, axis=1, keepdims=True)])
        a, b, c = F[:, 0], F[:, 1], F[:, 2]
        ab, bc, ca = inv[:, 0], inv[:, 1], inv[:, 2]
        F = np.concatenate([np.stack(t, axis=1) for t in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    return V * radius, F


def hu_phantom(shape=(40, 36, 30), bone_block=False):
    """(shape) HU volume: a water-like ellipsoid (soft -60 HU) with a denser and a lighter smooth blob,
    air outside; with ``bone_block`` also a 1400 HU block with sharp edges. float64."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    c = (np.array(shape) - 1) / 2
    r = np.linalg.norm((idx - c) / (0.42 * np.array(shape)), axis=-1)
    hu = np.where(r < 1, -60.0, -1000.0)
    hu += 800.0 * np.exp(-np.sum(((idx - c - [5, -3, 2]) / [4.0, 6.0, 5.0]) ** 2, -1))
    hu -= 500.0 * np.exp(-np.sum(((idx - c + [6, 4, 0]) / [5.0, 3.0, 4.0]) ** 2, -1))
    if bone_block:
        block = (np.abs(idx - c - [-4, 6, -3]) < [3.5, 2.5, 5.5]).all(-1)
        hu[block] = 1400.0
    return np.clip(hu, -1000.0, 3000.0)


def ras_affine():
    """(4, 4) RAS affine with anisotropic voxels (2, 2.5, 3 mm), a small rotation and an offset."""
    from scipy.spatial.transform import Rotation

    A = np.eye(4)
    A[:3, :3] = Rotation.from_euler("xyz", [5, -8, 12], degrees=True).as_matrix() @ np.diag([2.0, 2.5, 3.0])
    A[:3, 3] = [-30.0, 12.0, 40.0]
    return A
