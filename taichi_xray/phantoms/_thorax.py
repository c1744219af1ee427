"""Adult male thorax phantom (see docs/phantoms.md for the anatomy, sizes and sources)."""
from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from .. import primitives as P
from . import _cage as C
from . import _sdf as S
from . import _spine as SP
from ._build import Assembly, Part, carve, tube_part, tubes_part
from ._base import Res
from . import _vessels as V_

GAP = 2.5            # mm between carved siblings
SIDES = ((-1, "R"), (1, "L"))

# ---- spine course: body centre heights and depths (mm)
_T_SPACING = [21.0 + 0.6 * k for k in range(11)]
_Z = {"C5": 213.0, "C6": 196.0, "C7": 179.0, "T1": 160.0}
for _k in range(2, 13):
    _Z[f"T{_k}"] = _Z[f"T{_k - 1}"] - _T_SPACING[_k - 2]
_Z["L1"] = _Z["T12"] - 28.0
_Z["L2"] = _Z["L1"] - 30.0
_Z["L3"] = _Z["L2"] - 31.0
_SPINE_Y = PchipInterpolator([-240, -200, -162, -104, -50, 25, 100, 160, 179, 196, 240],
                             [12, 16, 23, 31, 37, 39, 35, 27, 23, 20, 16])
THORAX_LEVELS = SP.LEVELS[:18]        # C5 .. L3


# roots of the intrapulmonary vessel trees: (start, direction, radius mm) at the hila
_VESSEL_ROOTS = {
    "R": [((-62, 7, -10), (-0.35, 0.15, -1.0), 6.5), ((-52, -6, 48), (-0.5, -0.2, 0.9), 5.5),
          ((-48, 0, 30), (-1.0, -0.1, 0.15), 5.0), ((-52, -8, 22), (-1.0, -0.4, 0.2), 5.0),
          ((-55, 14, -18), (-1.0, 0.4, -0.5), 6.0), ((-60, 8, 5), (-0.8, 0.6, -0.2), 5.0),
          ((-58, -10, 5), (-0.7, -0.7, -0.3), 4.5), ((-56, 16, 30), (-0.6, 0.7, 0.4), 4.5)],
    "L": [((66, 16, -12), (0.35, 0.2, -1.0), 6.0), ((58, 8, 32), (0.5, -0.1, 0.9), 5.5),
          ((56, 0, 38), (1.0, -0.3, 0.3), 4.5), ((52, -2, 22), (1.0, -0.4, 0.1), 4.5),
          ((55, 18, -12), (1.0, 0.4, -0.5), 5.5), ((62, 12, 10), (0.8, 0.6, -0.1), 4.5),
          ((62, -8, 0), (0.7, -0.7, -0.3), 4.0), ((58, 18, 30), (0.6, 0.7, 0.4), 4.0)],
}


def _diaphragm_z(x, y):
    """Height (mm) of the upper surface of the diaphragm: right dome (x < 0) at -60, left at
    -78, both falling to the costophrenic sulci (lateral -130, posterior -165)."""
    yr = y + 10.0
    zr = -60.0 - np.where(x < -80, 0.024, 0.0042) * (x + 80.0) ** 2 - np.where(yr > 0, 0.0085, 0.0045) * yr ** 2
    zl = -78.0 - np.where(x > 85, 0.019, 0.001) * (x - 85.0) ** 2 - np.where(yr > 0, 0.0085, 0.0045) * yr ** 2
    return S.smax(zr, zl, 8.0)


def _heart_part():
    lv = ((40.0, -28.0, -44.0), (53.0, 41.0, 44.0), P.rotation_matrix("y", 22.0) @ P.rotation_matrix("z", -28.0))
    rv = ((2.0, -52.0, -52.0), (46.0, 27.0, 33.0), P.rotation_matrix("z", -10.0))
    ra = ((-22.0, -20.0, -36.0), (25.0, 29.0, 38.0), None)
    la = ((12.0, 0.0, -10.0), (34.0, 20.0, 21.0), None)

    def f(p):
        v = S.ellipsoid(p, *lv)
        for c, r, R in (rv, ra, la):
            v = S.smin(v, S.ellipsoid(p, c, r, R), 12.0)
        return S.smax(v, _diaphragm_z(p[:, 0], p[:, 1]) + 4.0 - p[:, 2], 6.0)

    return Part(f, (-55, -90, -100), (95, 40, 20))


def _pl(points, radii, k=0.0):
    pts = np.asarray(points, float)
    r = np.asarray(radii, float)
    return Part(S.polyline(pts, r), pts.min(0) - r.max() - 2, pts.max(0) + r.max() + 2)


def _union(parts, k):
    lo = np.min([p.lo for p in parts], axis=0)
    hi = np.max([p.hi for p in parts], axis=0)

    def f(p):
        v = parts[0].f(p)
        for q in parts[1:]:
            v = S.smin(v, q.f(p), k)
        return v

    return Part(f, lo, hi)


def build_thorax(resolution="default"):
    """Build the thorax phantom (see :func:`taichi_xray.phantoms.thorax`)."""
    res = Res(resolution)
    A = Assembly(res)
    # ------------------------------------------------------------------ spine parameters
    vp = {lv: SP.level_params(lv, _Z[lv], float(_SPINE_Y(_Z[lv]))) for lv in THORAX_LEVELS}
    # ------------------------------------------------------------------ ribs and cartilage
    ribs, rib_tubes, cart_tubes, cage_paths = {}, [], [], []
    n_side = res.n(8, 6)
    for side, tag in SIDES:
        above = None
        for k in range(1, 13):
            rb = C.rib_path(k, side, vp[f"T{k}"])
            n_path = res.n(26 if k > 1 else 18, 8)
            idx = np.unique(np.round(np.linspace(0, len(rb["u"]) - 1, n_path)).astype(int))
            pts, nrm, u = rb["points"][idx], rb["normal"][idx], rb["u"][idx]
            sec = C.rib_section(k, u)
            name = f"rib_{tag}{k:02d}"
            A.add(name, P.sweep(pts, nrm, sec, n_side, n_cap=2), "cortical_bone")
            cortex = np.where(u > 0.6, 0.8, 1.0)[:, None]
            A.add(name + "_core", P.sweep(pts, nrm, np.maximum(sec - cortex, 0.8), n_side, n_cap=2),
                  "trabecular_bone", name)
            rib_tubes.append((rb["points"][::4], C.rib_section(k, rb["u"][::4])))
            ribs[(tag, k)] = rb
            path = rb["points"]
            if k <= 10:
                cp, cn = C.cartilage_path(k, rb, above if k >= 8 else None)
                above = (cp, cn)
                ct, cw = C.CART_SECTION[k]
                csec = np.tile([ct, cw], (len(cp), 1))
                csec[:, 1] *= np.linspace(1.0, 0.85, len(cp))
                m = res.n(14, 6)
                ci = np.unique(np.round(np.linspace(0, len(cp) - 1, m)).astype(int))
                A.add(f"costal_cartilage_{tag}{k:02d}", P.sweep(cp[ci], cn[ci], csec[ci], res.n(8, 5), n_cap=2),
                      "soft_tissue")
                cart_tubes.append((cp, csec))
                path = np.concatenate([path, cp])
            cage_paths.append(path)
    cage = C.CageSurface(cage_paths)
    rib_parts, cart_parts = [tubes_part(rib_tubes)], [tubes_part(cart_tubes)]
    hb = 3.0                                            # bone grid spacing (mm) at "default"
    # ------------------------------------------------------------------ sternum
    sf, slo, shi = C.sternum_sdf()
    sternum = carve(Part(sf, slo, shi), cart_parts, GAP)
    # ------------------------------------------------------------------ shoulder girdle
    clav_parts, girdle = [], {}
    for side, tag in SIDES:
        girdle[tag] = _shoulder(side, cage)
        clav_parts.append(girdle[tag]["clavicle_part"])
    sternum = carve(sternum, clav_parts, GAP)
    A.bone("sternum", sternum, hb, 1.0)
    for side, tag in SIDES:
        g = girdle[tag]
        A.add(f"clavicle_{tag}", g["clavicle"], "cortical_bone")
        A.add(f"clavicle_{tag}_core", g["clavicle_core"], "trabecular_bone", f"clavicle_{tag}")
        scap = carve(g["scapula"], rib_parts + [g["clavicle_part"], g["head_part"]], GAP)
        # mostly a thin plate of compact bone with marrow only in its thick borders: one
        # object of spongiosa density approximates both (see docs/phantoms.md)
        A.mesh(f"scapula_{tag}", scap, 2.5, "trabecular_bone", h_max=3.0)
        A.bone(f"humerus_{tag}", g["humerus"], 2.5, g["humerus_cortex"], tol=0.25)
    # ------------------------------------------------------------------ spine
    vparts = []
    for lv in THORAX_LEVELS:
        f, lo, hi = SP.vertebra_sdf(vp[lv])
        part = carve(Part(f, lo, hi), rib_parts + vparts[-1:], 2.0)
        vparts.append(part)
        A.bone(f"vertebra_{lv[0]}{int(lv[1:]):02d}", part, 2.5, 0.7, h_max=3.5, tol=0.25)
    # ------------------------------------------------------------------ mediastinum
    airway = _union([
        _pl([(-1, -24, 248), (-1, -18, 200), (-2, -12, 150), (-4, -7, 112), (-3, -5, 92)], [8.5, 9, 9, 9, 8.5]),
        _pl([(-3, -5, 92), (-14, -3, 80), (-26, -1, 66), (-32, 1, 44)], [8.0, 7.5, 6.5, 5.5]),
        _pl([(-26, -1, 66), (-40, -3, 72)], [5.0, 4.5]),
        _pl([(-3, -5, 92), (12, -3, 80), (30, 1, 62), (38, 6, 42)], [7.5, 6.5, 5.5, 4.5]),
        _pl([(30, 1, 62), (42, -4, 66)], [4.5, 4.0]),
    ], 2.0)
    airway = carve(airway, vparts, GAP)
    A.mesh("trachea", airway, 2.0, "air")
    aorta = _pl([(4, -24, -20), (-4, -28, 10), (-9, -27, 45), (-5, -22, 75), (8, -12, 97), (24, 2, 100),
                 (33, 14, 88), (32, 17, 65), (28, 15, 30), (24, 12, -20), (18, 8, -80), (12, 0, -130),
                 (8, -10, -180), (6, -16, -208)],
                [13, 15, 15, 14, 13, 12.5, 12, 12, 12, 11.5, 11, 11, 10.5, 10])
    aorta = carve(aorta, vparts + [airway] + rib_parts, GAP)
    A.mesh("aorta", aorta, 3.0, "blood")
    svc = carve(_pl([(-30, -12, 130), (-33, -14, 90), (-32, -16, 50), (-28, -17, 12)], [9, 10, 10.5, 11]),
                [aorta, airway], GAP)
    A.mesh("vena_cava_superior", svc, 3.0, "blood")
    pa = _union([
        _pl([(10, -50, -8), (16, -40, 14), (16, -26, 34)], [13, 13.5, 13]),
        _pl([(16, -26, 34), (30, -14, 46), (46, -2, 44), (56, 8, 32), (62, 14, 12), (66, 16, -12)],
            [12, 11, 10.5, 9.5, 8, 7]),
        _pl([(16, -26, 34), (0, -12, 40), (-22, -5, 38), (-44, 0, 30), (-56, 4, 14), (-62, 7, -10)],
            [12, 10, 10, 9.5, 8.5, 7.5]),
        _pl([(-44, 0, 30), (-52, -6, 48)], [6.5, 5.5]),
    ], 4.0)
    pa = carve(pa, [airway, aorta, svc] + vparts, GAP)
    A.mesh("pulmonary_arteries", pa, 2.5, "blood")
    heart = carve(_heart_part(), [aorta, svc, pa, airway] + vparts, GAP)
    A.mesh("heart", heart, 4.0, "blood")
    veins = _union([
        _pl([(-52, -8, 22), (-30, -2, 8), (-18, 4, -4)], [7, 7.5, 8]),
        _pl([(-55, 14, -18), (-30, 14, -14), (-18, 12, -12)], [7, 7.5, 8]),
        _pl([(52, -2, 22), (38, 4, 8), (30, 8, 0)], [6.5, 7, 7.5]),
        _pl([(55, 18, -12), (38, 16, -10), (30, 14, -10)], [6.5, 7, 7.5]),
    ], 0.0)
    veins = carve(veins, [heart, pa, airway, aorta, svc] + vparts, GAP)
    A.mesh("pulmonary_veins", veins, 2.5, "blood")
    # ------------------------------------------------------------------ abdomen under the diaphragm
    gas = Part(lambda p: S.smax(S.smax(S.ellipsoid(p, (70, 2, -112), (38, 32, 26)), -(p[:, 2] + 122.0), 3.0),
                                p[:, 2] - (_diaphragm_z(p[:, 0], p[:, 1]) - 7.0), 3.0),
               (25, -35, -125), (115, 40, -80))
    gas = carve(gas, rib_parts + [aorta, heart], GAP)
    A.mesh("stomach_gas", gas, 3.0, "air")

    def liver_f(p):
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        th, r = cage.polar(p)
        v = S.smax(z - (_diaphragm_z(x, y) - 5.0), r - (cage.rho(th, z) - 10.0), 4.0)
        v = S.smax(v, x - (40.0 - 0.5 * np.clip(z + 100.0, 0, None)), 10.0)
        return S.smax(v, (-205.0 + 0.25 * (x + 100.0)) - z, 6.0)

    liver = carve(Part(liver_f, (-150, -110, -215), (60, 100, -40)), vparts + [aorta, gas, heart] + rib_parts, 2 * GAP)
    A.mesh("liver", liver, 7.0, "soft_tissue", h_max=8.0)
    # ------------------------------------------------------------------ lungs
    obstacles = vparts + rib_parts + cart_parts + clav_parts + [sternum, airway, aorta, svc, pa, heart, veins]

    def med_f(p):
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        w_sup = np.interp(z, [70.0, 110.0, 150.0, 180.0], [8.0, 30.0, 26.0, 20.0])
        w_post = 16.0 * np.clip((y + 5.0) / 10.0, 0, 1)
        return np.abs(x - 2.0) - np.maximum(np.maximum(w_sup, w_post), 8.0)

    for side, tag, name in ((-1, "R", "lung_right"), (1, "L", "lung_left")):
        def lung_f(p, side=side):
            x, y, z = p[:, 0], p[:, 1], p[:, 2]
            th, r = cage.polar(p)
            v = S.smax(r - (cage.rho(th, z) - 9.0), _diaphragm_z(x, y) + 3.0 - z, 6.0)
            apex = z - (165.0 - 0.006 * ((np.abs(x) - 45.0) ** 2 + (y - 15.0) ** 2))
            v = S.smax(v, apex, 8.0)
            v = S.smax(v, GAP - med_f(p), 4.0)
            return S.smax(v, 4.0 - side * x, 2.0)

        lo = (-150, -105, -175) if side < 0 else (0, -105, -175)
        hi = (0, 100, 172) if side < 0 else (150, 100, 172)
        lung = carve(Part(lung_f, lo, hi), obstacles, GAP + 0.5)
        lung_mesh = A.mesh(name, lung, 5.0, "lung", h_max=7.0)
        paths = V_.grow_tree(lung.f, _VESSEL_ROOTS[tag], np.array([side * 50.0, 5.0, 15.0]),
                             seed=11 if side < 0 else 12, max_paths=res.n(180, 60))
        paths = V_.inside_mesh(paths, lung_mesh, clearance=0.6)
        A.add(f"vessels_{'right' if side < 0 else 'left'}", V_.tree_mesh(paths, 5), "blood", name)
    # ------------------------------------------------------------------ body
    near_skin = rib_parts + cart_parts + clav_parts + [A.parts[n] for n in A.order if n in A.parts]
    body = _body(near_skin, [girdle[t]["c_h"] for _, t in SIDES])
    A.mesh("body", body, 9.0, "soft_tissue", parent=None, project=2, h_max=12.0)
    return A.phantom("thorax")


_TRUNK_Z = [-240, -200, -150, -100, -50, 0, 50, 100, 140, 165, 190]
_TRUNK_W = PchipInterpolator(_TRUNK_Z, [150, 150, 152, 158, 165, 170, 172, 172, 160, 120, 70])
_TRUNK_D = PchipInterpolator(_TRUNK_Z, [108, 108, 110, 112, 115, 117, 116, 112, 104, 88, 62])
_TRUNK_Y = PchipInterpolator(_TRUNK_Z, [0, 0, 0, 2, 3, 3, 3, 3, 5, 10, 14])


def _body(near_skin, heads):
    """Skin surface: trunk (superelliptic sections), neck, shoulders (trapezius, deltoids),
    upper arms, cut at z = -230 and +262; grown to keep 7 mm of tissue over the bones."""
    n_exp = 2.2

    def f(p):
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        zc = np.clip(z, -240, 190)
        W, D, y0 = _TRUNK_W(zc), _TRUNK_D(zc), _TRUNK_Y(zc)
        rho = (np.abs(x / W) ** n_exp + np.abs((y - y0) / D) ** n_exp) ** (1 / n_exp)
        v = S.smax((rho - 1.0) * np.minimum(W, D), z - 195.0, 30.0)
        v = S.smin(v, S.round_cone(p, np.array([0.0, 14.0, 170.0]), np.array([0.0, 16.0, 290.0]), 62.0, 56.0), 25.0)
        for c in heads:
            sd = np.sign(c[0])
            v = S.smin(v, S.round_cone(p, np.array([0.0, 16.0, 196.0]), c + np.array([-sd * 8.0, 18.0, 22.0]),
                                       58.0, 36.0), 20.0)
            v = S.smin(v, S.sphere(p, c + np.array([sd * 8.0, 6.0, -2.0]), 46.0), 25.0)
            v = S.smin(v, S.round_cone(p, c + np.array([sd * 12.0, 10.0, -30.0]),
                                       np.array([sd * 220.0, 40.0, -245.0]), 44.0, 40.0), 12.0)
        bones = np.full(len(p), 1e9)
        for q in near_skin:
            m = q.near(p, 10.0)
            if m.any():
                bones[m] = np.minimum(bones[m], q.f(p[m]))
        v = S.smin(v, bones - 7.0, 4.0)
        return S.smax(v, np.maximum(-230.0 - z, z - 262.0), 6.0)

    return Part(f, (-275, -140, -232), (275, 150, 264))


def _shoulder(side, cage):
    """Clavicle (swept), scapula and humerus (implicit) of one side."""
    sx = np.array([side, 1.0, 1.0])
    # clavicle: S-shaped, medial end at the sternoclavicular joint
    cpts = np.array([(38, -74, 137), (60, -76, 142), (90, -68, 146), (118, -50, 150), (140, -28, 155),
                     (155, -8, 159), (163, 6, 161)], float)
    from scipy.interpolate import CubicSpline
    s = np.concatenate([[0], np.cumsum(np.linalg.norm(np.diff(cpts, axis=0), axis=1))])
    cs = CubicSpline(s, cpts)
    t = np.linspace(0, s[-1], 28)
    cl = cs(t) * sx
    u = t / t[-1]
    # semi-axes [vertical, antero-posterior] (mm): the sternal end and the medial third are
    # thick and prismatic (about 20 x 22 mm at the end, 15-17 mm over the medial third), the
    # shaft 12-13 mm, the acromial end flat (about 9 x 20 mm); the shaft has a thick cortex
    # (2.5-3 mm) around a narrow medullary canal, the ends are spongy under a thin cortex
    # (Andermahr et al., J Anat 210:96, 2007; Gray's Anatomy, 42nd ed., ch. 47)
    csec = np.stack([np.interp(u, [0, 0.1, 0.3, 0.5, 0.85, 1], [10.0, 8.8, 7.6, 6.2, 5.0, 4.5]),
                     np.interp(u, [0, 0.1, 0.3, 0.5, 0.85, 1], [11.0, 9.2, 7.8, 6.5, 9.0, 10.0])], 1)
    up = np.tile([0.0, 0.0, 1.0], (len(cl), 1))
    clav = P.sweep(cl, up, csec, 12, n_cap=3)
    clav_core = P.sweep(cl, up, csec - np.interp(u, [0, 0.1, 0.3, 0.5, 0.7, 0.85, 1],
                                                 [1.3, 2.2, 2.8, 2.8, 2.5, 1.6, 1.2])[:, None], 8, n_cap=2)
    clav_part = tube_part(cl, csec)
    # scapula blade: a plate following the chest wall, in (theta, z) with offset w
    dth = 14.0      # PA position: shoulders rolled forward, scapulae rotated out of the lung fields
    outline = np.array([(88, 122), (78, 140), (55, 150), (53, 128), (56, 60), (63, 14), (76, 40), (84, 80)], float)
    outline[:, 0] += dth
    R_ref, d_off = 110.0, 20.0
    poly = np.stack([np.deg2rad(outline[:, 0]) * R_ref, outline[:, 1]], 1)
    lat_border = poly[[0, 7, 6, 5]]

    def blade_coords(p):
        th, r = cage.polar(p)
        w = r - (cage.rho(th, np.minimum(p[:, 2], 100.0)) + d_off)
        return th * R_ref, p[:, 2], w

    def blade_point(th_deg, z, w=0.0):
        th = np.deg2rad(th_deg + dth)
        r = cage.rho(np.array([th]), np.array([min(z, 100.0)]))[0] + d_off + w
        return np.array([side * r * np.sin(th), r * np.cos(th), z])

    def blade_f(p):
        u, v, w = blade_coords(p)
        d2 = _polygon2(u, v, poly)
        dl = _polyline2(u, v, lat_border)
        tau = 2.4 + 2.6 * np.exp(-(dl / 7.0) ** 2)
        return np.hypot(np.maximum(d2 + tau, 0.0), w) - tau

    L = blade_point(88, 122)
    u_g = np.array([side * 0.9, -0.42, 0.0])
    u_g /= np.linalg.norm(u_g)
    g_c = L + np.array([side * 10.0, 2.0, 10.0])
    r_h = 23.0
    c_h = g_c + u_g * (r_h + 4.0 + 8.0)
    spine_pts = np.array([blade_point(54, 128, 3), blade_point(66, 134, 10), blade_point(77, 141, 17),
                          blade_point(85, 149, 21)])
    acro_c = c_h + np.array([side * 6.0, 10.0, r_h + 13.0])
    spine_pts = np.concatenate([spine_pts, [acro_c + np.array([-side * 16.0, 10.0, 0.0])]])
    spine = S.polyline(spine_pts, [3.0, 4.0, 5.0, 5.5, 5.0])
    web = S.polyline((spine_pts[:-1] + np.array([blade_point(54, 128), blade_point(66, 134),
                                                  blade_point(77, 141), blade_point(85, 149)])) / 2,
                     [2.5, 3.0, 3.0, 3.0])
    R_ac = P.rotation_matrix("z", side * -25.0) @ P.rotation_matrix("y", side * 10.0)
    cor0 = blade_point(80, 137, -3)
    cor_pts = np.array([cor0, c_h + np.array([-side * 22.0, -26.0, 20.0]), c_h + np.array([-side * 8.0, -36.0, 13.0])])
    coracoid = S.polyline(cor_pts, [6.5, 6.0, 5.0])
    head_grow = r_h + 4.0

    def scap_f(p):
        v = blade_f(p)
        v = S.smin(v, S.ellipsoid(p, g_c, (9.0, 14.0, 19.0), _frame(u_g)), 6.0)
        v = S.smin(v, spine(p), 3.0)
        v = S.smin(v, web(p), 3.0)
        v = S.smin(v, S.ellipsoid(p, acro_c, (24.0, 15.0, 4.5), R_ac), 5.0)
        v = S.smin(v, coracoid(p), 4.0)
        return S.smax(v, head_grow - np.linalg.norm(p - c_h, axis=1), 1.0)

    pts_all = np.concatenate([cor_pts, spine_pts, [g_c, c_h, acro_c, blade_point(63, 14), blade_point(55, 150),
                                                   blade_point(53, 128)]])
    lo, hi = pts_all.min(0) - 30, pts_all.max(0) + 30
    # humerus: head, tubercles, neck and shaft (hands-on-hips position: shaft down, out, back)
    d_sh = np.array([side * 0.12, 0.09, -1.0])
    d_sh /= np.linalg.norm(d_sh)
    n0 = c_h + np.array([side * 16.0, 6.0, -45.0])
    n1 = n0 + d_sh * ((n0[2] + 205.0) / -d_sh[2])

    def hum_f(p):
        v = S.sphere(p, c_h, r_h)
        v = S.smin(v, S.ellipsoid(p, c_h + np.array([side * 14.0, -2.0, 6.0]), (12.0, 14.0, 16.0)), 5.0)
        v = S.smin(v, S.ellipsoid(p, c_h + np.array([side * 2.0, -20.0, -4.0]), (6.0, 6.0, 8.0)), 4.0)
        v = S.smin(v, S.round_cone(p, c_h + np.array([side * 6.0, 2.0, -10.0]), n0, 16.0, 12.5), 6.0)
        return S.smin(v, S.round_cone(p, n0, n1, 12.5, 11.0), 4.0)

    def hum_cortex(p):
        return 1.2 + 2.3 * np.clip((c_h[2] - 40.0 - p[:, 2]) / 40.0, 0, 1)

    hlo = np.minimum(c_h, n1) - 30
    hhi = np.maximum(c_h, n1) + 30
    return {"clavicle": clav, "clavicle_core": clav_core, "clavicle_part": clav_part,
            "scapula": Part(scap_f, lo, hi), "humerus": Part(hum_f, hlo, hhi), "humerus_cortex": hum_cortex,
            "head_part": Part(lambda p: S.sphere(p, c_h, r_h), c_h - r_h, c_h + r_h), "c_h": c_h}


def _frame(u):
    """Rotation whose first column is the unit vector u (second horizontal)."""
    u = np.asarray(u, float) / np.linalg.norm(u)
    v = np.cross([0.0, 0.0, 1.0], u)
    v = v / np.linalg.norm(v) if np.linalg.norm(v) > 1e-9 else np.array([0.0, 1.0, 0.0])
    return np.stack([u, v, np.cross(u, v)], 1)


def _polyline2(x, y, pts):
    """Distance from points (x, y) to a 2-D polyline pts (K, 2)."""
    d = np.full(np.shape(x), np.inf)
    for a, b in zip(pts[:-1], pts[1:]):
        ab = b - a
        t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / (ab @ ab), 0, 1)
        d = np.minimum(d, np.hypot(x - a[0] - t * ab[0], y - a[1] - t * ab[1]))
    return d


def _polygon2(x, y, pts):
    """Signed distance to a closed 2-D polygon pts (K, 2) (Quilez's sdPolygon), negative inside."""
    d = (x - pts[0, 0]) ** 2 + (y - pts[0, 1]) ** 2
    s = np.ones(np.shape(x))
    n = len(pts)
    for i in range(n):
        a, b = pts[i], pts[i - 1]
        e = b - a
        wx, wy = x - a[0], y - a[1]
        t = np.clip((wx * e[0] + wy * e[1]) / (e @ e), 0, 1)
        bx, by = wx - e[0] * t, wy - e[1] * t
        d = np.minimum(d, bx * bx + by * by)
        c1 = y >= a[1]
        c2 = y < b[1]
        c3 = e[0] * wy > e[1] * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        s = np.where(flip, -s, s)
    return s * np.sqrt(d)
