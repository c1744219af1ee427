"""Vertebrae C5-L5 as implicit shapes (LPS mm): body, pedicles, laminae, spinous and
transverse processes, articular pillars, with the spinal canal cut out.

Dimensions interpolate between key levels, after Panjabi et al. (cervical: Spine 16:861,
1991; thoracic: Spine 16:888, 1991; lumbar: Spine 17:299, 1992): vertebral body width /
depth / height about 18/16/14 mm at C6, 28/17/15 at T1, 30/25/18 at T6, 40/30/23 at T12,
48/35/27 at L4 (rounded).  The spine's course (body centre y) follows a thoracic kyphosis
and cervical/lumbar lordoses.
"""
from __future__ import annotations

import numpy as np

from . import _sdf as S

LEVELS = ["C5", "C6", "C7"] + [f"T{i}" for i in range(1, 13)] + ["L1", "L2", "L3", "L4", "L5"]

# key level index -> parameter (linear interpolation over the level index)
_KEYS = [0, 2, 3, 8, 14, 17, 19]    # C5, C7, T1, T6, T12, L3, L5
_TAB = {
    "a":     [9.0, 11.0, 13.5, 15.0, 20.0, 23.0, 25.0],    # body half width
    "b":     [7.5, 8.0, 8.5, 12.5, 15.0, 17.0, 17.5],      # body half depth
    "c":     [6.5, 7.0, 7.5, 9.0, 11.5, 13.0, 13.0],       # body half height
    "crx":   [11.0, 10.0, 8.5, 8.0, 9.0, 11.0, 12.0],      # canal half width
    "cry":   [7.0, 7.5, 8.0, 8.0, 8.5, 8.5, 8.5],          # canal half depth
    "pw":    [2.5, 3.0, 3.5, 3.5, 4.5, 5.0, 6.0],          # pedicle half width
    "ph":    [3.5, 4.0, 5.0, 6.0, 7.0, 7.5, 7.5],          # pedicle half height
    "lr":    [2.8, 3.0, 3.3, 3.5, 4.0, 4.5, 4.5],          # lamina radius
    "sl":    [18.0, 30.0, 28.0, 34.0, 30.0, 30.0, 26.0],   # spinous process length
    "sang":  [15.0, 20.0, 35.0, 55.0, 25.0, 5.0, 5.0],     # its slope below horizontal, deg
    "sr":    [3.0, 3.5, 3.5, 3.5, 4.5, 5.0, 5.0],          # its radius
    "tx":    [24.0, 32.0, 40.0, 38.0, 30.0, 50.0, 44.0],   # transverse process tip |x|
    "ty":    [-10.0, -2.0, 10.0, 12.0, 10.0, 0.0, 2.0],    # tip y relative to the canal centre
    "tz":    [0.0, 0.0, 3.0, 4.0, 3.0, 0.0, 0.0],          # tip z relative to the body centre
    "tr":    [3.0, 3.5, 4.0, 4.0, 3.5, 4.0, 5.0],          # transverse process radius
    "fr":    [4.0, 4.0, 3.5, 3.5, 4.0, 4.5, 5.0],          # articular pillar radius
}


def _interp(name, i):
    return float(np.interp(i, _KEYS, _TAB[name]))


def level_params(level, z, y):
    """Dimensions of one vertebra (dict, mm) whose body centre is (0, y, z)."""
    i = LEVELS.index(level)
    d = {k: _interp(k, i) for k in _TAB}
    d.update(level=level, index=i, z=float(z), y=float(y))
    d["yc"] = d["b"] + d["cry"] + 0.5                       # canal centre, relative to the body centre
    d["px"] = d["crx"] + d["pw"] * 0.8                      # pedicle centre |x|
    return d


def _ellipse2(x, y, a, b):
    """Approximate signed distance to an ellipse with semi-axes a, b (Quilez's bound)."""
    k0 = np.hypot(x / a, y / b)
    k1 = np.hypot(x / (a * a), y / (b * b))
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)


def _extrude(d2, z, hz, r):
    """2-D distance d2 extruded over |z| < hz, edges rounded with radius r."""
    w1, w2 = d2 + r, np.abs(z) - hz + r
    return np.hypot(np.maximum(w1, 0), np.maximum(w2, 0)) + np.minimum(np.maximum(w1, w2), 0) - r


def vertebra_sdf(d):
    """f(p) for the vertebra described by ``d`` (see :func:`level_params`)."""
    a, b, c = d["a"], d["b"], d["c"]
    yc, px, pw, ph = d["yc"], d["px"], d["pw"], d["ph"]
    crx, cry = d["crx"], d["cry"]
    cen = np.array([0.0, d["y"], d["z"]])
    cerv = d["level"].startswith("C")
    lumb = d["level"].startswith("L")
    sang = np.deg2rad(d["sang"])
    back = yc + cry                        # back of the canal (lamina junction)
    sp0 = np.array([0.0, back + 1.0, 0.0])
    sp1 = sp0 + d["sl"] * np.array([0.0, np.cos(sang), -np.sin(sang)])
    tip = np.array([d["tx"], yc + d["ty"], d["tz"]])
    proc = []
    for s in (-1.0, 1.0):
        proc += [
            ("box", (s * px, (b + yc) / 2 + 1.0, 0.25 * c), (pw, (yc - b) / 2 + 3.0, ph), pw * 0.9, 0.0),
            ("cone", (s * px, yc + 0.3 * cry, 0.25 * c), (s * 2.5, back + 0.5, 0.25 * c - 1.0), d["lr"], d["lr"]),
            ("cone", (s * px, yc, 0.3 * c), tip * [s, 1, 1], d["tr"], d["tr"] * (0.8 if cerv else 1.1)),
            ("cone", (s * (px + 1.0), yc + 2.0, -0.75 * c), (s * (px + 1.0), yc + 2.0, 0.75 * c), d["fr"], d["fr"]),
        ]
    proc.append(("cone", sp0, sp1, d["sr"], d["sr"] * (0.8 if not lumb else 1.0)))
    if lumb:   # tall, blade-like lumbar spinous process
        proc.append(("cone", sp0 - [0, 0, 6.0], sp1 - [0, 0, 6.0], d["sr"] * 0.9, d["sr"] * 0.9))

    def f(p):
        q = p - cen
        x, y, z = q[:, 0], q[:, 1], q[:, 2]
        zz = np.clip(z / c, -1, 1)
        waist = 1.0 - 0.06 * (1 - zz * zz)
        body = _extrude(_ellipse2(x, y, a * waist, b), z, c, 2.0)
        arch = np.full(len(q), 1e9)
        for kind, u, v, r1, r2 in proc:
            if kind == "box":
                g = S.round_box(q, u, v, r1)
            else:
                g = S.round_cone(q, np.asarray(u, float), np.asarray(v, float), r1, r2)
            arch = S.smin(arch, g, 3.0)
        canal = _ellipse2(x, y - yc, crx, cry)
        arch = S.smax(arch, -canal, 2.5)
        return S.smin(body, arch, 3.5)

    lo = cen + np.array([-max(d["tx"], a) - 8, -b - 6, -c - 6 - d["sl"] * np.sin(sang)])
    hi = cen + np.array([max(d["tx"], a) + 8, max(sp1[1], yc + cry) + 8, c + 8])
    return f, lo, hi
