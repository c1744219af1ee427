"""Rib cage of the thorax phantom: 12 rib pairs, costal cartilages, sternum (LPS mm).

Each rib runs on an inclined "hoop": in top view an ellipse (half axes A_k, B_k, centre
y = Yc_k) that it follows from its angle to its anterior end, preceded by the head and
neck (head beside the vertebral body, tubercle in front of the transverse process tip).
Along the rib the height drops from the head (near horizontal posterior arc) to the
anterior end, which lies 35-90 mm lower (Gray's Anatomy, 42nd ed., ch. 53; the anterior
end of rib k projects near posterior rib k+3 on a PA chest).  The section is a flattened
ellipse whose flat side follows the chest wall: about 9 x 8 mm near the head, 13 x 7 mm
at the angle and 16 x 6 mm anteriorly (thickness x width in the literature sense), with a
1 mm cortex over a trabecular core (Mohr et al., Bone 41:1060, 2007: rib cortex 0.5-2 mm).
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline, PchipInterpolator

# rib k (1..12): hoop half width A, half depth B, centre y, anterior end |x|, drop of the
# anterior end below the head (mm), last hoop angle (deg, None: from the anterior |x|)
RIBS = {
    1: (66, 52, -8, 54, 36, None),
    2: (100, 68, -6, 54, 52, None),
    3: (117, 77, -4, 66, 64, None),
    4: (124, 84, -3, 76, 72, None),
    5: (132, 90, -2, 84, 76, None),
    6: (137, 94, -1, 92, 82, None),
    7: (141, 97, 0, 100, 88, None),
    8: (143, 99, 0, 110, 84, None),
    9: (144, 99, 0, 118, 80, None),
    10: (142, 97, 0, 114, 92, None),
    11: (136, 92, 0, None, 64, 100.0),
    12: (124, 88, 0, None, 42, 75.0),
}
# sternal attachment heights of costal cartilages 1-7; 8-10 join the cartilage above
STERNAL_Z = {1: 117.0, 2: 85.0, 3: 63.0, 4: 43.0, 5: 23.0, 6: 3.0, 7: -17.0}


def sternum_centre_y(z):
    """y of the sternum's mid-plane at height z: the lower end is more anterior."""
    return -76.0 - 0.11 * (133.0 - np.asarray(z, float))


def sternum_half_width(z):
    """Half width (mm) of manubrium (z 85..133), body (-25..85) and xiphoid (< -25)."""
    zs = [-52, -40, -25, -10, 10, 30, 60, 85, 100, 120, 133]
    ws = [3.0, 6.0, 11.0, 15.0, 17.0, 16.0, 14.0, 13.0, 20.0, 26.0, 27.0]
    return np.interp(z, zs, ws)


def sternum_half_depth(z):
    zs = [-52, -25, 0, 85, 100, 133]
    ts = [2.8, 4.0, 5.5, 5.5, 7.0, 7.0]
    return np.interp(z, zs, ts)


def _resample(pts, step):
    """Points along the polyline pts at (about) equal arc-length steps."""
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    n = max(2, int(np.ceil(s[-1] / step)) + 1)
    t = np.linspace(0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, i]) for i in range(3)], 1)


def rib_path(k, side, vert, n_fine=400):
    """Centre line of rib k (1..12) on side -1 (right) / +1 (left).

    vert: dims dict of vertebra T_k (see _spine.level_params).  Returns a dict with
    ``points`` (n_fine, 3) mm, ``normal`` (n_fine, 3) (outward chest-wall direction, the
    section's thickness axis), ``u`` (n_fine,) in [0, 1] (head -> anterior end) and the
    hoop parameters.
    """
    A, B, Yc, x_end, drop, th_end = RIBS[k]
    zv, yv = vert["z"], vert["y"]
    z_head = zv + 0.35 * vert["c"]
    # head beside the posterolateral corner of the body, tubercle in front of the TP tip
    head = np.array([vert["a"] + 8.0, yv + 0.55 * vert["b"], z_head])
    tp_tip = np.array([vert["tx"], yv + vert["yc"] + vert["ty"], zv + vert["tz"]])
    tub = tp_tip + np.array([3.0, -(vert["tr"] * 1.1 + 9.0), -2.0])
    tub[2] = z_head - 1.5
    if th_end is None:
        th_end = 180.0 - np.rad2deg(np.arcsin(min(x_end / A, 0.99)))
    # the hoop starts at its point nearest a target just lateral to (and, below rib 1,
    # behind) the tubercle: the rib's angle
    target = tub[:2] + (np.array([10.0, -12.0]) if k == 1 else np.array([24.0, 14.0]))
    thg = np.deg2rad(np.arange(3.0, th_end - 30.0, 0.5))
    dist = np.hypot(A * np.sin(thg) - target[0], Yc + B * np.cos(thg) - target[1])
    th_a = np.rad2deg(thg[np.argmin(dist)])
    th = np.deg2rad(np.linspace(th_a, th_end, 60))
    uu = (th - th[0]) / (th[-1] - th[0])
    z_a = z_head - 4.0
    z_end = z_head - drop
    z = z_a - (z_a - z_end) * uu ** 1.35
    hoop = np.stack([A * np.sin(th), Yc + B * np.cos(th), z], 1)
    ctrl = np.concatenate([head[None], tub[None], hoop])
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
    cs = CubicSpline(s, ctrl, bc_type="natural")
    t = np.linspace(0, s[-1], n_fine)
    pts = cs(t)
    pts[:, 0] *= side
    # outward normal: horizontal direction away from the hoop centre, with the hoop's tilt
    tang = np.gradient(pts, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    radial = np.stack([pts[:, 0], pts[:, 1] - Yc, np.zeros(len(pts))], 1)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    # near the head the flat side faces backward/up; blend toward the radial direction
    w = np.clip(t / max(s[2], 1e-9), 0, 1)[:, None]
    back = np.array([0.0, 1.0, 0.35])
    back /= np.linalg.norm(back)
    nrm = (1 - w) * back + w * radial
    nrm -= tang * np.einsum("ij,ij->i", nrm, tang)[:, None]
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    return {"points": pts, "normal": nrm, "u": t / t[-1], "A": A, "B": B, "Yc": Yc, "k": k,
            "floating": k >= 11}


def rib_section(k, u):
    """Semi-axes (n, 2) mm of rib k's section: [along the chest-wall normal, along the wall]."""
    u = np.asarray(u, float)
    if k == 1:    # short, broad and flat
        t = np.interp(u, [0, 0.15, 1], [4.0, 3.5, 4.0])
        w = np.interp(u, [0, 0.15, 0.5, 1], [4.5, 6.0, 8.0, 9.0])
    elif k >= 11:
        t = np.interp(u, [0, 0.2, 1], [4.0, 3.5, 2.5])
        w = np.interp(u, [0, 0.2, 0.6, 1], [4.5, 6.0, 5.0, 3.5])
    else:
        t = np.interp(u, [0, 0.12, 0.3, 0.7, 1], [4.5, 4.0, 3.6, 3.2, 3.5])
        w = np.interp(u, [0, 0.12, 0.3, 0.7, 1], [4.5, 5.5, 6.5, 7.5, 8.0])
    return np.stack([t, w], 1)


class CageSurface:
    """Star-shaped chest-wall surface r = rho(theta, z) about the vertical axis x = y = 0,
    interpolated (monotone cubic in z, linear in theta) through the centre lines of the
    ribs continued by their cartilages (``paths``: list of (n, 3) polylines, one per rib).

    theta = atan2(|x|, y) in [0, pi] (0: posterior midline), the same on both sides.
    Outside the angles a path covers, the paths that do cover them are used; above the
    first rib and below the last, rho keeps the end value.
    """

    def __init__(self, paths, n_theta=181, dz=2.0):
        self.th = np.linspace(0, np.pi, n_theta)
        R, Z = [], []
        for p in paths:
            tp = np.arctan2(np.abs(p[:, 0]), p[:, 1])
            rp = np.hypot(p[:, 0], p[:, 1])
            order = np.argsort(tp)
            tp, rp, zp = tp[order], rp[order], p[order, 2]
            inside = (self.th >= tp[0]) & (self.th <= tp[-1])
            R.append(np.where(inside, np.interp(self.th, tp, rp), np.nan))
            Z.append(np.where(inside, np.interp(self.th, tp, zp), np.nan))
        R, Z = np.array(R), np.array(Z)
        zlo, zhi = np.nanmin(Z) - 60.0, np.nanmax(Z) + 60.0
        self.zg = np.arange(zlo, zhi + dz, dz)
        self.dz = dz
        tab = np.empty((len(self.zg), n_theta))
        for j in range(n_theta):
            ok = np.isfinite(Z[:, j])
            if ok.sum() == 0:     # no rib at this angle (posterior midline): nearest covered angle
                jj = np.nonzero(np.isfinite(Z).any(0))[0]
                ok_j = jj[np.argmin(np.abs(jj - j))]
                tab[:, j] = tab[:, ok_j] if ok_j < j else np.nan
                continue
            zs, rs = Z[ok, j], R[ok, j]
            order = np.argsort(zs)
            zs, rs = zs[order], rs[order]
            keep = np.concatenate([[True], np.diff(zs) > 1.0])
            zs, rs = zs[keep], rs[keep]
            if len(zs) == 1:
                tab[:, j] = rs[0]
                continue
            f = PchipInterpolator(zs, rs, extrapolate=False)
            tab[:, j] = f(np.clip(self.zg, zs[0], zs[-1]))
        # fill columns left undefined (leading angles) from the first defined one
        bad = np.isnan(tab).any(0)
        if bad.any():
            first = np.nonzero(~bad)[0][0]
            tab[:, bad & (np.arange(n_theta) < first)] = tab[:, [first]]
        self.tab = tab

    def rho(self, theta, z):
        """Chest-wall centre-line radius (mm) at angle theta (rad, (N,)) and height z (N,)."""
        ti = np.clip(theta / np.pi * (len(self.th) - 1), 0, len(self.th) - 1 - 1e-9)
        zi = np.clip((z - self.zg[0]) / self.dz, 0, len(self.zg) - 1 - 1e-9)
        i0, j0 = ti.astype(int), zi.astype(int)
        ft, fz = ti - i0, zi - j0
        t = self.tab
        return ((1 - fz) * ((1 - ft) * t[j0, i0] + ft * t[j0, i0 + 1])
                + fz * ((1 - ft) * t[j0 + 1, i0] + ft * t[j0 + 1, i0 + 1]))

    @staticmethod
    def polar(p):
        """(theta (N,), radius (N,)) of points p (N, 3) about the vertical axis."""
        return np.arctan2(np.abs(p[:, 0]), p[:, 1]), np.hypot(p[:, 0], p[:, 1])


def _bezier(p0, p1, p2, p3, n):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t ** 2 * p2 + t ** 3 * p3


CART_SECTION = {1: (4.0, 8.0), 2: (3.5, 6.5), 3: (3.5, 6.0), 4: (3.5, 6.0), 5: (3.5, 6.0), 6: (3.5, 6.0),
                7: (3.5, 6.0), 8: (3.0, 5.0), 9: (3.0, 4.5), 10: (2.8, 4.0)}


def cartilage_path(k, rib, above=None, gap=2.0, n=40):
    """Centre line (n, 3) and normals (n, 3) of costal cartilage k (1..10).

    It starts ``gap`` mm beyond the round end of the rib's path (the costochondral
    junction) along the rib's end tangent and ends ``gap`` mm short of the sternum's
    lateral edge (1..7) or of the lower edge of cartilage k-1 (8..10, ``above`` is that
    cartilage's (points, normals))."""
    pts, nrm = rib["points"], rib["normal"]
    side = np.sign(pts[-1, 0])
    t_end = pts[-1] - pts[-4]
    t_end /= np.linalg.norm(t_end)
    sec = rib_section(k, np.array([1.0]))[0]
    ct, cw = CART_SECTION[k]
    cap = 0.5 * (ct + cw)
    p0 = pts[-1] + t_end * (sec.mean() + gap + cap)
    if k <= 7:
        zs = STERNAL_Z[k]
        p3 = np.array([side * (sternum_half_width(zs) + gap + cap), sternum_centre_y(zs) - 1.0, zs])
        d3 = np.array([side * 1.0, 0.0, -0.15 if k < 6 else -0.5])
    else:
        ap, an = above
        m = int(0.55 * len(ap))
        cw_above = CART_SECTION[k - 1][1]
        p3 = ap[m] - np.array([0, 0, cw_above + gap + cap + 6.0])
        d3 = np.array([side * 0.8, 0.0, -0.6])
    d3 /= np.linalg.norm(d3)
    L = np.linalg.norm(p3 - p0)
    cp = _bezier(p0, p0 + t_end * L / 4, p3 + d3 * L / 3, p3, n)
    for _ in range(200):      # smooth until the bends are gentle enough for the section
        d1 = np.gradient(cp, axis=0)
        d2 = np.gradient(d1, axis=0)
        curv = np.linalg.norm(np.cross(d1, d2), axis=1) / np.linalg.norm(d1, axis=1) ** 3
        if 1.0 / curv.max() > 1.6 * cw:
            break
        cp[1:-1] = 0.5 * cp[1:-1] + 0.25 * (cp[:-2] + cp[2:])
    # normals: outward from the sternum's mid-line, horizontal
    radial = np.stack([cp[:, 0], cp[:, 1] + 40.0, np.zeros(n)], 1)
    radial /= np.linalg.norm(radial, axis=1, keepdims=True)
    w = np.linspace(0, 1, n)[:, None]
    front = np.array([0.0, -1.0, 0.0])
    nr = (1 - w) * nrm[-1] + w * front
    nr = 0.5 * nr + 0.5 * radial * (1 - w) + 0.5 * front * w
    return cp, nr / np.linalg.norm(nr, axis=1, keepdims=True)


def sternum_sdf():
    """f(p) of the sternum (manubrium, body, xiphoid) and its bounding box."""
    from ._spine import _extrude

    def f(p):
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        zc = np.clip(z, -52, 133)
        hw, hd = sternum_half_width(zc), sternum_half_depth(zc)
        r = np.minimum(hw, hd) * 0.95
        qx = np.abs(x) - hw + r
        qy = np.abs(y - sternum_centre_y(zc)) - hd + r
        d2 = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r
        return _extrude(d2, z - 40.5, 92.5, 2.5)

    return f, np.array([-30.0, -105.0, -55.0]), np.array([30.0, -60.0, 136.0])
