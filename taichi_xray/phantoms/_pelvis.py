"""Adult male pelvis phantom (see docs/phantoms.md for the anatomy, sizes and sources).

Frame: LPS mm, the hip joint centres at (+-88, 0, 0) (inter-hip distance 176 mm).
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from .. import primitives as P
from . import _sdf as S
from . import _spine as SP
from ._base import Res
from ._build import Assembly, Part, carve

GAP = 2.5
HIP_C = 88.0          # |x| of the hip joint centres
HEAD_R = 24.0         # femoral head radius (diameter 48 mm)
NSA = 127.0           # femoral neck-shaft angle (deg)
ANTEVERSION = 12.0    # femoral neck anteversion (deg)
SHAFT_TILT = 7.0      # anatomical shaft axis from vertical in the frontal plane (deg)
NECK_LEN = 52.0       # head centre to the neck base on the shaft axis (mm)


def femur_axes(side):
    """(head centre, unit neck axis toward the head, neck base point, unit shaft axis
    pointing distally) of the femur on side -1 (right) / +1 (left)."""
    c = np.array([side * HIP_C, 0.0, 0.0])
    t = np.deg2rad(SHAFT_TILT)
    s = np.array([-side * np.sin(t), 0.0, -np.cos(t)])
    # neck axis: the distal shaft direction turned by NSA toward the midline and up
    ang = np.deg2rad(NSA)
    m = np.array([-side, 0.0, 0.0])           # medial
    up = np.cross(np.cross(s, m), s)
    up /= np.linalg.norm(up)
    n = np.cos(ang) * s + np.sin(ang) * up
    # anteversion: the neck turned forward about the shaft axis
    n = P.rotation_matrix(s, -side * ANTEVERSION) @ n
    n /= np.linalg.norm(n)
    base = c - NECK_LEN * n
    return c, n, base, s


def _femur(side, z_end):
    c, n, base, s = femur_axes(side)
    lat = np.array([side, 0.0, 0.0])
    post = np.array([0.0, 1.0, 0.0])
    s0 = base + 28.0 * s                                    # top of the shaft
    s1 = s0 + s * ((s0[2] - z_end) / -s[2])                 # shaft end at z_end
    gt = base + 14.0 * lat + 6.0 * post + 20.0 * np.array([0, 0, 1.0])
    lt = base - 14.0 * lat + 14.0 * post - 30.0 * np.array([0, 0, 1.0])

    def f(p):
        v = S.sphere(p, c, HEAD_R)
        v = S.smin(v, S.round_cone(p, c - 12.0 * n, base, 15.5, 17.0), 4.0)
        v = S.smin(v, S.ellipsoid(p, gt, (11.0, 17.0, 20.0)), 6.0)
        v = S.smin(v, S.round_cone(p, base, s0, 19.0, 16.5), 6.0)
        v = S.smin(v, S.round_cone(p, base + 8.0 * lat + 4 * post, gt - 6.0 * np.array([0, 0, 1.0]), 15.0, 12.0), 5.0)
        v = S.smin(v, S.sphere(p, lt, 10.5), 5.0)
        return S.smin(v, S.round_cone(p, s0, s1, 16.5, 14.0), 6.0)

    def cortex(p):
        z = p[:, 2]
        return 1.3 + 4.2 * np.clip((lt[2] - 10.0 - z) / 40.0, 0, 1)

    pts = np.array([c, base, gt, lt, s0, s1])
    return Part(f, pts.min(0) - 30, pts.max(0) + 30), cortex


def _hip_bone(side):
    """Innominate bone: ilium (a fan-shaped wing on a flared cylinder, thick crest,
    iliac pillar and auricular part), acetabulum, pelvic brim (iliopectineal line),
    ischium and pubic rami round the obturator foramen."""
    from ._thorax import _polygon2, _polyline2

    X = np.array([side, 1.0, 1.0])
    c = np.array([side * HIP_C, 0.0, 0.0])
    # acetabular opening: 45 deg inclination, 20 deg anteversion
    o = np.array([side * np.cos(np.deg2rad(45)) * np.cos(np.deg2rad(20)), -np.sin(np.deg2rad(20)),
                  -np.sin(np.deg2rad(45))])
    o /= np.linalg.norm(o)
    r_in, r_out = HEAD_R + 3.5, HEAD_R + 13.0
    # wing: plate on a cylinder about the vertical axis through (+-60, 0), flaring upward
    axis = np.array([side * 60.0, 0.0])
    R_ref = 74.0
    outline = np.array([(-57, 42), (-40, 68), (-18, 88), (10, 100), (40, 101), (70, 92), (100, 78), (122, 62),
                        (130, 46), (124, 30), (100, 20), (60, 16), (20, 14), (-20, 17), (-50, 28)], float)
    crest = outline[:9]
    auricular = np.array([(112, 28), (118, 52)], float)

    def wing_f(p):
        dx, dy, z = (p[:, 0] - axis[0]) * side, p[:, 1] - axis[1], p[:, 2]
        phi = np.arctan2(dy, dx)                 # 0 lateral, + posterior (both sides)
        u, v = R_ref * phi, z
        R = 74.0 + 0.10 * (z - 30.0)
        w = np.hypot(dx, dy) - R
        d2 = _polygon2(u, v, outline)
        tau = (2.6 + 4.0 * np.exp(-(_polyline2(u, v, crest) / 8.0) ** 2)
               + 5.0 * np.exp(-(_polyline2(u, v, auricular) / 12.0) ** 2)
               + 3.5 * np.clip((30.0 - v) / 16.0, 0, 1))
        return np.hypot(np.maximum(d2 + tau, 0.0), w) - tau

    L = lambda *xyz: np.array(xyz, float) * X                 # left-side landmark, mirrored
    tubercle, asis, aiis = L(132, -16, 86), L(114, -50, 42), L(102, -38, 20)
    isch_t, isch_s = L(62, 22, -82), L(55, 42, -28)
    pub_b = L(17, -57, -40)
    foramen = L(47, -20, -54)
    R_obt = P.rotation_matrix("z", side * 38.0)
    prims = [
        ("cone", c + L(4, 12, 24), tubercle, 9.0, 6.0),            # iliac pillar
        ("cone", aiis, asis, 8.5, 7.5),
        ("cone", c + L(8, -20, 10), aiis, 11.0, 8.5),
        ("cone", c + L(-6, 20, 20), L(58, 58, 38), 16.0, 14.0),    # body to the auricular part
        ("cone", L(54, 46, 22), L(70, -14, 4), 7.0, 7.0),          # pelvic brim (arcuate line)
        ("cone", L(70, -14, 4), L(30, -52, -24), 7.0, 6.5),        # pecten pubis
        ("cone", c + L(-6, 24, -24), isch_t + L(0, 0, 12), 14.0, 12.0),   # ischial body
        ("cone", c + L(-14, 30, -10), isch_s, 9.0, 5.0),           # ischial spine
        ("ell", isch_t, (12.0, 16.0, 17.0)),
        ("cone", isch_t + L(-3, -10, -5), L(34, -22, -86), 8.5, 7.0),    # ischial ramus
        ("cone", L(34, -22, -86), pub_b + L(2, 6, -22), 7.0, 7.0),       # inferior pubic ramus
        ("cone", c + L(-16, -24, -12), pub_b + L(6, 0, 8), 11.5, 9.5),   # superior pubic ramus
        ("ell", pub_b, (10.0, 9.0, 21.0)),
    ]

    def f(p):
        q = p - c
        r = np.linalg.norm(q, axis=1)
        v = S.smax(np.maximum(r - r_out, r_in - r), q @ o - 9.0, 3.0)       # acetabular cup
        v = S.smin(v, wing_f(p), 8.0)
        for pr in prims:
            g = S.round_cone(p, pr[1], pr[2], pr[3], pr[4]) if pr[0] == "cone" else S.ellipsoid(p, pr[1], pr[2])
            v = S.smin(v, g, 5.0)
        v = S.smax(v, -S.ellipsoid(p, foramen, (17.0, 11.0, 23.0), R_obt), 3.0)     # obturator foramen
        v = S.smax(v, 2.5 - side * p[:, 0], 2.0)                                      # symphysis gap
        return S.smax(v, HEAD_R + 3.5 - r, 1.5)                                       # joint space

    lo = np.array([0.5, -85.0, -110.0]) if side > 0 else np.array([-175.0, -85.0, -110.0])
    hi = np.array([175.0, 95.0, 125.0]) if side > 0 else np.array([-0.5, 95.0, 125.0])
    return Part(f, lo, hi)


def _sacrum():
    """Sacrum: five fused segments along a curve concave forward, alae at S1, four pairs of
    anterior foramina, the sacral canal; tip (with coccyx) at z = -48."""
    cl = np.array([(0, 30, 50), (0, 44, 26), (0, 56, 4), (0, 67, -16), (0, 76, -34), (0, 82, -50)], float)
    hw = np.array([46.0, 40.0, 30.0, 22.0, 14.0, 7.0])
    hd = np.array([15.0, 12.0, 10.0, 8.0, 6.0, 4.0])
    fx = [15.0, 14.0, 13.0, 11.5]
    fr = [5.0, 4.5, 3.8, 3.0]

    def f(p):
        v = np.full(len(p), 1e9)
        for i in range(len(cl) - 1):
            a, b = cl[i], cl[i + 1]
            mid = 0.5 * (a + b)
            d = b - a
            L = np.linalg.norm(d)
            t = d / L
            nrm = np.cross(t, [1.0, 0, 0])
            R = np.stack([[1.0, 0, 0], nrm, t], 1)
            v = S.smin(v, S.round_box(p, mid, (0.5 * (hw[i] + hw[i + 1]), 0.5 * (hd[i] + hd[i + 1]), L / 2 + 3), 4.0, R), 6.0)
        # alae: S1 lateral masses reaching the sacroiliac joints
        for sd in (-1, 1):
            v = S.smin(v, S.ellipsoid(p, (sd * 42.0, 48.0, 36.0), (22.0, 20.0, 24.0),
                                      P.rotation_matrix("x", -20.0)), 8.0)
        for i in range(4):       # anterior sacral foramina, through the lateral parts
            a, b = cl[i + 1], cl[i]
            mid = 0.55 * a + 0.45 * b
            t = (b - a) / np.linalg.norm(b - a)
            nrm = np.cross(t, [1.0, 0, 0])
            for sd in (-1, 1):
                ctr = mid + np.array([sd * fx[i], 0, 0])
                v = S.smax(v, fr[i] - S.segment_distance(p, ctr - 25 * nrm, ctr + 25 * nrm)[0], 2.0)
        canal = S.polyline(cl + np.array([0, 6.0, 0]), [9.0, 8.0, 6.5, 5.0, 3.5, 2.0])
        return S.smax(v, -canal(p), 2.0)

    return Part(f, (-75, -5, -62), (75, 110, 78))


_BODY_Z = [-240, -160, -100, -40, 0, 40, 80, 120, 180]
_BODY_W = PchipInterpolator(_BODY_Z, [95, 110, 150, 178, 182, 175, 160, 150, 150])
_BODY_D = PchipInterpolator(_BODY_Z, [85, 95, 110, 118, 120, 118, 112, 110, 110])
_BODY_Y = PchipInterpolator(_BODY_Z, [0, 5, 8, 8, 6, 4, 2, 0, 0])


def _body(inner):
    """Skin: trunk (superelliptic sections, buttocks) narrowing into two thighs; 8 mm of
    tissue kept over every bone."""

    def f(p):
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        zc = np.clip(z, -240, 180)
        W, D, y0 = _BODY_W(zc), _BODY_D(zc), _BODY_Y(zc)
        n_exp = 2.4
        rho = (np.abs(x / W) ** n_exp + np.abs((y - y0) / D) ** n_exp) ** (1 / n_exp)
        trunk = S.smax((rho - 1.0) * np.minimum(W, D), -120.0 - z, 20.0)
        v = trunk
        for sd in (-1, 1):
            v = S.smin(v, S.round_cone(p, np.array([sd * 95.0, 8.0, -60.0]), np.array([sd * 88.0, 10.0, -260.0]),
                                       92.0, 78.0), 30.0)
        bones = np.full(len(p), 1e9)
        for q in inner:
            m = q.near(p, 12.0)
            if m.any():
                bones[m] = np.minimum(bones[m], q.f(p[m]))
        v = S.smin(v, bones - 8.0, 4.0)
        return S.smax(v, np.maximum(-225.0 - z, z - 175.0), 6.0)

    return Part(f, (-275, -145, -228), (275, 150, 178))


def build_pelvis(resolution="default"):
    """Build the pelvis phantom (see :func:`taichi_xray.phantoms.pelvis`)."""
    res = Res(resolution)
    A = Assembly(res)
    z_end = -205.0
    fem, hips = {}, {}
    for side, tag in ((-1, "R"), (1, "L")):
        fem[tag] = _femur(side, z_end)
    sac = _sacrum()
    for side, tag in ((-1, "R"), (1, "L")):
        hips[tag] = carve(_hip_bone(side), [fem[tag][0], sac], GAP)
    # lumbar spine above the sacrum (lordosis: L4 forward of L5)
    vp = {"L4": SP.level_params("L4", 112.0, 14.0), "L5": SP.level_params("L5", 80.0, 22.0)}
    l5 = Part(*SP.vertebra_sdf(vp["L5"]))
    l5 = carve(l5, [sac, hips["R"], hips["L"]], GAP)
    l4 = carve(Part(*SP.vertebra_sdf(vp["L4"])), [l5], 2.0)
    A.bone("vertebra_L4", l4, 2.5, 1.0)
    A.bone("vertebra_L5", l5, 2.5, 1.0)
    A.bone("sacrum", sac, 2.5, 1.0)
    for side, tag in ((-1, "R"), (1, "L")):
        A.bone(f"hip_{tag}", hips[tag], 3.0, 1.2, h_max=3.5)
        A.bone(f"femur_{tag}", fem[tag][0], 3.0, fem[tag][1])
    bladder = carve(Part(lambda p: S.ellipsoid(p, (0.0, -22.0, -22.0), (38.0, 30.0, 30.0)), (-45, -60, -60), (45, 15, 15)),
                    [hips["R"], hips["L"]], GAP)
    A.mesh("bladder", bladder, 4.0, "soft_tissue")
    gas = carve(Part(lambda p: S.ellipsoid(p, (0.0, 40.0, -70.0), (12.0, 10.0, 20.0)), (-15, 25, -95), (15, 55, -45)),
                [sac, hips["R"], hips["L"]], GAP)
    A.mesh("rectal_gas", gas, 2.5, "air")
    inner = [A.parts[n] for n in A.order if n in A.parts]
    A.mesh("body", _body(inner), 9.0, "soft_tissue", parent=None, h_max=12.0)
    return A.phantom("pelvis")
