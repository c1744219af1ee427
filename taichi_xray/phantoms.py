"""Procedural anatomy phantoms (adult thorax and pelvis) built from closed triangle meshes.

World coordinates are DICOM LPS, in mm, with the phantom centred at the origin:

* +x points to the patient's **left**,
* +y points **posterior** (toward the back),
* +z points **superior** (toward the head).

A :class:`Phantom` is an ordered list of :class:`PhantomObject` (name, vertices (N, 3)
float64 mm, faces (M, 3) int64 counter-clockwise seen from outside, material name,
parent name or None).  Every mesh is watertight and outward; every child lies inside its
parent and siblings are disjoint with clear gaps (a few mm), so a renderer that subtracts
each child's path length from its parent counts every tissue once.

The anatomy is schematic, sized like an adult: it is meant for testing the simulator and
for producing plausible radiographs, not for dosimetry.  Lungs, heart, liver and stomach
gas are first built on a flat "diaphragm" and then pushed up by one smooth map that is
monotone in z (so it keeps them disjoint), which turns the lung bases into domes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from . import primitives as P

__all__ = ["MATERIALS", "PhantomObject", "Phantom", "thorax", "pelvis", "write_phantom"]

MATERIALS = ("soft_tissue", "lung", "adipose", "blood", "cortical_bone", "trabecular_bone",
             "skeletal_muscle", "air")

_RES = {"low": 0.25, "default": 1.0, "high": 2.0}


@dataclass
class PhantomObject:
    """One closed mesh: vertices (N, 3) float64 mm, faces (M, 3) int64 outward, a material
    name from :data:`MATERIALS`, and the name of the containing object (None: top level)."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    material: str
    parent: str | None = None

    def __post_init__(self):
        if self.material not in MATERIALS:
            raise ValueError(f"object {self.name!r}: unknown material {self.material!r}; "
                             f"expected one of {MATERIALS}")
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"object {self.name!r}: vertices must be (N, 3), got {self.vertices.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"object {self.name!r}: faces must be (M, 3), got {self.faces.shape}")


@dataclass
class Phantom:
    """Ordered list of :class:`PhantomObject`; parents come before their children."""

    name: str
    objects: list = field(default_factory=list)

    def __post_init__(self):
        seen = set()
        for o in self.objects:
            if o.name in seen:
                raise ValueError(f"duplicate object name {o.name!r}")
            if o.parent is not None and o.parent not in seen:
                raise ValueError(f"object {o.name!r}: parent {o.parent!r} must be listed before it")
            seen.add(o.name)

    def __iter__(self):
        return iter(self.objects)

    def __len__(self):
        return len(self.objects)

    def __getitem__(self, name):
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"no object named {name!r} in phantom {self.name!r}")

    @property
    def names(self):
        return [o.name for o in self.objects]

    def children(self, name):
        """Objects whose parent is ``name`` (None: the top-level objects)."""
        return [o for o in self.objects if o.parent == name]

    @property
    def n_faces(self):
        return sum(len(o.faces) for o in self.objects)

    def to_meshes(self):
        """Ordered dict name -> (vertices (N, 3) float64 mm, faces (M, 3) int64)."""
        return {o.name: (o.vertices, o.faces) for o in self.objects}


def write_phantom(phantom, directory, fmt="stl", overwrite=False, manifest=True):
    """Write one mesh file per object, ``<directory>/<name>.<fmt>``, with meshio.

    fmt: a meshio file extension such as "stl" (binary), "obj", "ply", "vtk".  With
    ``manifest`` also writes ``<directory>/<phantom.name>.json`` listing, in order, each
    object's name, file, material and parent.  The directory is created if needed.
    Existing files are only replaced when ``overwrite=True``; otherwise FileExistsError
    names the first existing path and nothing is written.
    Returns the list of written mesh paths, in the phantom's order.
    """
    import json

    import meshio

    if not isinstance(phantom, Phantom):
        raise TypeError(f"phantom must be a Phantom, got {type(phantom).__name__}")
    fmt = str(fmt).lstrip(".").lower()
    if not fmt.isalnum():
        raise ValueError(f"bad file format {fmt!r}")
    directory = os.fspath(directory)
    paths = [os.path.join(directory, f"{o.name}.{fmt}") for o in phantom]
    man = os.path.join(directory, f"{phantom.name}.json")
    if not overwrite:
        for p in paths + ([man] if manifest else []):
            if os.path.exists(p):
                raise FileExistsError(f"{p} exists (pass overwrite=True to replace it)")
    os.makedirs(directory, exist_ok=True)
    for o, p in zip(phantom, paths):
        meshio.write(p, meshio.Mesh(o.vertices, [("triangle", o.faces)]),
                     **({"binary": True} if fmt == "stl" else {}))
    if manifest:
        entries = [{"name": o.name, "file": os.path.basename(p), "material": o.material, "parent": o.parent}
                   for o, p in zip(phantom, paths)]
        with open(man, "w") as f:
            json.dump({"phantom": phantom.name, "units": "mm", "frame": "LPS", "objects": entries}, f, indent=1)
    return paths


def _scale(resolution):
    if resolution not in _RES:
        raise ValueError(f"resolution must be one of {tuple(_RES)}, got {resolution!r}")
    f = _RES[resolution]
    return lambda n, lo=3: max(lo, int(round(n * f)))


# ----------------------------------------------------------------------------------------
# shared building blocks
# ----------------------------------------------------------------------------------------
def _rounded_cylinder(a, b, h2, rho, n_lon, n_round, n_wall=3, squareness=2.5, centre=(0, 0, 0)):
    """Elliptic-ish cylinder (superellipse section, semi-axes a, b) of half height h2 whose
    top and bottom edges are rounded with radius rho."""
    w = 2 * np.pi * np.arange(n_lon) / n_lon
    e = 2.0 / squareness
    cx, sy = P._spow(np.cos(w), e), P._spow(np.sin(w), e)
    phi = np.pi / 2 * np.arange(n_round + 1) / n_round
    z_lo, d_lo = -h2 + rho - rho * np.cos(phi), rho - rho * np.sin(phi)
    z_w = np.linspace(-h2 + rho, h2 - rho, n_wall + 2)[1:-1]
    zs = np.concatenate([z_lo, z_w, -z_lo[::-1]])
    ds = np.concatenate([d_lo, np.zeros(len(z_w)), d_lo[::-1]])
    rings = np.stack([(a - ds)[:, None] * cx, (b - ds)[:, None] * sy,
                      np.broadcast_to(zs[:, None], (len(zs), n_lon))], -1)
    V, F = P.loft(rings, (0, 0, -h2), (0, 0, h2))
    return V + np.asarray(centre, float), F


def _star_rings(inside, centre_xy, zs, shrink, n_ang, r_max=220.0, step=0.5):
    """Rings of a star-shaped solid: at height zs[k], ray from centre_xy[k] at n_ang angles to
    the first point where ``inside(x, y, z)`` (vectorised, bool) fails (last inside sample
    kept).  The radii are then eroded (minimum over the 3 x 3 neighbourhood of level and
    angle) so that no chord or quad spans from a near hit to a far one past an obstacle,
    and scaled by shrink[k] in [0, 1].  Every ring point lies inside the region."""
    a = 2 * np.pi * np.arange(n_ang) / n_ang
    t = np.arange(0.0, r_max, step)
    d = np.stack([np.cos(a), np.sin(a)], -1)
    radii = []
    for c, z in zip(centre_xy, zs):
        x = c[0] + d[:, None, 0] * t
        y = c[1] + d[:, None, 1] * t
        ok = inside(x, y, np.full_like(x, z))
        if not ok[:, 0].all():
            raise RuntimeError(f"ring centre {c} at z={z} is outside its region")
        first_out = np.where(ok.all(1), len(t), np.argmin(ok, axis=1))
        radii.append(t[np.maximum(first_out - 1, 0)])
    r = np.array(radii)
    r = np.minimum(np.minimum(r, np.roll(r, 1, axis=1)), np.roll(r, -1, axis=1))
    r = np.minimum(r, np.minimum(np.concatenate([r[:1], r[:-1]]), np.concatenate([r[1:], r[-1:]])))
    r = r * np.asarray(shrink)[:, None]
    c = np.asarray(centre_xy)
    return np.stack([c[:, None, 0] + r * d[:, 0], c[:, None, 1] + r * d[:, 1],
                     np.broadcast_to(np.asarray(zs)[:, None], r.shape)], -1)


def _cap_levels(z0, z1, rho0, rho1, n0, n1, n_mid):
    """z levels between poles z0 < z1 with round (quarter-circle) ends of heights rho0/rho1.

    Returns (zs, shrink) excluding the poles themselves."""
    a0 = np.pi / 2 * np.arange(1, n0 + 1) / n0
    zb = z0 + rho0 * (1 - np.cos(a0))
    sb = np.sin(a0)
    zm = np.linspace(z0 + rho0, z1 - rho1, n_mid + 2)[1:-1]
    a1 = np.pi / 2 * np.arange(n1, 0, -1) / n1
    zt = z1 - rho1 * (1 - np.cos(a1))
    st = np.sin(a1)
    return np.concatenate([zb, zm, zt]), np.concatenate([sb, np.ones(len(zm)), st])


def _star_solid(inside, centre_fn, z0, z1, rho0, rho1, n_ang, n0, n1, n_mid):
    zs, sh = _cap_levels(z0, z1, rho0, rho1, n0, n1, n_mid)
    cs = np.array([centre_fn(z) for z in zs])
    rings = _star_rings(inside, cs, zs, sh, n_ang)
    c0, c1 = centre_fn(z0), centre_fn(z1)
    return P.loft(rings, (c0[0], c0[1], z0), (c1[0], c1[1], z1))


def _in_ellipsoid(x, y, z, centre, radii, R=None, grow=0.0):
    p = np.stack([x - centre[0], y - centre[1], z - centre[2]], -1)
    if R is not None:
        p = p @ np.asarray(R)  # R^T p for row vectors
    r = np.asarray(radii, float) + grow
    return ((p / r) ** 2).sum(-1) < 1.0


# ----------------------------------------------------------------------------------------
# thorax
# ----------------------------------------------------------------------------------------
_T_W, _T_D, _T_H = 170.0, 115.0, 150.0        # body half width (x), half depth (y), half height (z)
_RIB_A, _RIB_B, _RIB_YC = 145.0, 95.0, 5.0    # rib-cage centre-line ellipse below z = 20
_CAVITY_MARGIN = 13.0                         # rib centre line -> cavity wall (mm)
_Z_TAPER = 20.0
_SPINE_C, _SPINE_R = (0.0, 58.0), (21.0, 17.0)
_HEART_C, _HEART_R = np.array([22.0, -25.0, -52.0]), np.array([56.0, 44.0, 50.0])
_HEART_ROT = P.rotation_matrix("y", 25.0) @ P.rotation_matrix("z", -20.0)
_Z_DIAPH = -108.0                             # flat lung base before the dome map
_GAP = 8.0                                    # clearance used when carving organs


def _rib_ab(z):
    u = np.clip((np.asarray(z, float) - _Z_TAPER) / 110.0, 0.0, None)
    return _RIB_A * (1 - 0.42 * u ** 2), _RIB_B * (1 - 0.30 * u ** 2)


def _in_cavity(x, y, z, margin=_CAVITY_MARGIN):
    a, b = _rib_ab(z)
    return (x / (a - margin)) ** 2 + ((y - _RIB_YC) / (b - margin)) ** 2 < 1.0


def _outside_spine(x, y, grow=_GAP):
    return ((x - _SPINE_C[0]) / (_SPINE_R[0] + grow)) ** 2 + ((y - _SPINE_C[1]) / (_SPINE_R[1] + grow)) ** 2 > 1.0


def _dome_map(V):
    """Push the organs near the flat diaphragm up into two domes (monotone in z)."""
    x, y, z = V[:, 0], V[:, 1], V[:, 2]
    D = 44.0 - 5.0 * np.tanh(x / 20.0)                 # right dome (x < 0) higher
    phi = np.exp(-((np.abs(x) - 55.0) / 45.0) ** 2 - ((y + 5.0) / 75.0) ** 2)
    zb, zlo, zhi = _Z_DIAPH - 6.0, -150.0, 10.0

    def smooth(u):
        u = np.clip(u, 0.0, 1.0)
        return u * u * (3 - 2 * u)

    w = np.where(z < zb, smooth((z - zlo) / (zb - zlo)), smooth((zhi - z) / (zhi - zb)))
    out = V.copy()
    out[:, 2] = z + D * phi * w
    return out


def thorax(resolution="default"):
    """Adult thorax phantom (LPS, mm), about 340 x 230 x 300 mm, centred at the origin.

    Objects (parent: body unless noted): body (soft tissue), lung_right/left (lung),
    heart (blood), liver (soft tissue), stomach_gas (air), trachea (air), sternum
    (cortical bone), vertebra_T01..T11 (cortical bone) each with a trabecular core child
    (vertebra_T01_core...) and a spinous process (spinous_T01...), rib_R01..R10 and
    rib_L01..L10 (cortical bone, closed elliptic tubes).
    Heart, lungs, liver and stomach gas share the diaphragm dome map (see module doc).
    resolution: "low" (~7k faces), "default" (~54k) or "high" (~216k).
    """
    n = _scale(resolution)
    objs = []
    add = lambda name, VF, mat, parent="body": objs.append(PhantomObject(name, VF[0], VF[1], mat, parent))

    add("body", _rounded_cylinder(_T_W, _T_D, _T_H, 25.0, n(96, 24), n(6, 3), 3), "soft_tissue", None)

    # --- organs on the flat diaphragm, then the dome map --------------------------------
    def heart_ok(x, y, z):
        return ~_in_ellipsoid(x, y, z, _HEART_C, _HEART_R, _HEART_ROT, grow=_GAP)

    n_ang, n_lv = n(64, 24), n(30, 6)
    for side, tag in ((-1, "right"), (1, "left")):
        def inside(x, y, z, side=side):
            return _in_cavity(x, y, z) & (side * x > 20.0) & _outside_spine(x, y) & heart_ok(x, y, z)

        def centre(z, side=side):
            a, _ = _rib_ab(z)
            return np.array([side * (20.0 + a - _CAVITY_MARGIN) / 2.0, 30.0])

        VF = _star_solid(inside, centre, _Z_DIAPH, 128.0 if side < 0 else 126.0, 12.0, 60.0,
                         n_ang, n(4, 2), n(10, 4), n_lv)
        add(f"lung_{tag}", (_dome_map(VF[0]), VF[1]), "lung")

    hv, hf = P.ellipsoid(_HEART_R, _HEART_C, n(24, 8), n(48, 16), _HEART_ROT)
    add("heart", (_dome_map(hv), hf), "blood")

    def liver_in(x, y, z):
        return _in_cavity(x, y, z) & (x < 45.0) & _outside_spine(x, y)

    VF = _star_solid(liver_in, lambda z: np.array([-50.0, 0.0]), -146.0, _Z_DIAPH - 12.0, 8.0, 8.0,
                     n_ang, n(3, 2), n(3, 2), n(6, 2))
    add("liver", (_dome_map(VF[0]), VF[1]), "soft_tissue")
    sv, sf = P.ellipsoid((26.0, 24.0, 9.0), (82.0, 0.0, -131.0), n(12, 6), n(32, 12))
    add("stomach_gas", (_dome_map(sv), sf), "air")

    add("trachea", P.capsule(9.0, 90.0, n(6, 2), n(24, 10), (0.0, 10.0, 85.0)), "air")
    add("sternum", P.superellipsoid((15.0, 6.0, 85.0), (0.4, 0.6), (0.0, -97.0, 22.0), n(16, 8), n(32, 12)),
        "cortical_bone")

    # --- spine: vertebral bodies with trabecular cores, spinous processes --------------
    for k in range(11):
        zc = 135.0 - 27.0 * k
        name = f"vertebra_T{k + 1:02d}"
        add(name, P.superellipsoid((_SPINE_R[0], _SPINE_R[1], 10.5), (0.35, 0.8), (*_SPINE_C, zc),
                                   n(10, 4), n(32, 10)), "cortical_bone")
        add(name + "_core", P.superellipsoid((_SPINE_R[0] - 3, _SPINE_R[1] - 3, 8.0), (0.35, 0.8),
                                             (*_SPINE_C, zc), n(10, 4), n(32, 10)), "trabecular_bone", name)
        add(f"spinous_T{k + 1:02d}", P.superellipsoid((5.0, 9.0, 7.0), (0.6, 0.6), (0.0, 95.0, zc + 2.0),
                                                      n(8, 3), n(16, 6), P.rotation_matrix("x", -20.0)),
            "cortical_bone")

    # --- ribs: elliptic tubes on the rib-cage surface, posterior end higher ------------
    n_path, n_side = n(36, 10), n(12, 6)
    th0, th1 = np.deg2rad(22.0), np.deg2rad(150.0)
    u = np.linspace(0.0, 1.0, n_path)
    th = th0 + (th1 - th0) * u
    for side, tag in ((-1, "R"), (1, "L")):
        for i in range(10):
            z = 112.0 - 22.0 * i - (30.0 + 1.5 * i) * u ** 1.5
            a, b = _rib_ab(z)
            pts = np.stack([side * a * np.sin(th), _RIB_YC + b * np.cos(th), z], -1)
            radial = np.array([side * np.sin(th0), np.cos(th0), 0.0])
            radii = np.stack([np.full(n_path, 4.0), np.full(n_path, 6.0)], -1)
            radii[[0, -1]] *= 0.8
            add(f"rib_{tag}{i + 1:02d}", P.tube(pts, radii, n_side, caps="round", normal0=radial, n_cap=2),
                "cortical_bone")
    return Phantom("thorax", objs)


# ----------------------------------------------------------------------------------------
# pelvis
# ----------------------------------------------------------------------------------------
def _bend(V, radius):
    """Bend a plate lying along local x onto a cylinder of the given radius about the local z
    axis through (0, radius): x -> arc length, y -> radial offset (inward for y > 0)."""
    ang = V[:, 0] / radius
    rr = radius - V[:, 1]
    return np.stack([rr * np.sin(ang), radius - rr * np.cos(ang), V[:, 2]], -1)


def _femur_path(side, n_neck, n_bend, n_shaft):
    head = np.array([side * 92.0, -10.0, -12.0])
    d_neck = np.array([side * np.cos(np.deg2rad(40)), 0.15, -np.sin(np.deg2rad(40))])
    d_neck /= np.linalg.norm(d_neck)
    p_neck_end = head + 40.0 * d_neck
    # circular arc turning the neck direction to straight down (radius 35 mm)
    down = np.array([0.0, 0.0, -1.0])
    axis = np.cross(d_neck, down)
    ang = np.arccos(np.clip(d_neck @ down, -1, 1))
    rad = 30.0
    k = axis / np.linalg.norm(axis)
    perp = np.cross(k, d_neck)                       # toward the centre of the bend
    ctr = p_neck_end + rad * perp
    arc = []
    for t in np.linspace(0, ang, n_bend + 1)[1:]:
        R = P.rotation_matrix(k, np.rad2deg(t))
        arc.append(ctr + R @ (p_neck_end - ctr))
    arc = np.array(arc)
    shaft_end = np.array([arc[-1, 0] - side * 14.0, arc[-1, 1], -108.0])
    neck = head + np.linspace(0, 40.0, n_neck)[:, None] * d_neck
    shaft = arc[-1] + np.linspace(0, 1, n_shaft + 1)[1:, None] * (shaft_end - arc[-1])
    return head, d_neck, np.concatenate([neck, arc, shaft])


def _hip_parts(n):
    """Left hip bone pieces and femur: list of (name, (V, F), material, parent-or-None)."""
    out = []
    # ilium wing: thin plate bent round a vertical axis, posterior end near the sacrum
    # (fan shaped: narrower toward the acetabulum), iliac fossa facing antero-medially
    iv, iff = P.superellipsoid((58.0, 5.5, 44.0), (0.5, 0.5), (0, 0, 0), n(16, 8), n(48, 16))
    iv[:, 0] *= 0.6 + 0.4 * (iv[:, 2] + 44.0) / 88.0
    iv = _bend(iv, 110.0)
    out.append(("ilium", (P.transform(iv, P.rotation_matrix("y", 18.0) @ P.rotation_matrix("z", 129.0),
                                            (104.0, 10.0, 69.0)), iff),
                "cortical_bone", None))

    head, d_neck, path = _femur_path(1, n(8, 4), n(8, 4), n(8, 3))
    # acetabulum: cup round the femoral head (radius 24) opening along the neck direction
    r_in, r_out, cover = 28.0, 34.0, np.deg2rad(75.0)
    a_out = np.linspace(0, cover, n(8, 4) + 1)
    rr = np.concatenate([r_out * np.sin(a_out), r_in * np.sin(a_out[::-1])])
    zz = np.concatenate([-r_out * np.cos(a_out), -r_in * np.cos(a_out[::-1])])
    cv, cf = P.revolve(rr, zz, n(32, 12))
    out.append(("acetabulum", (P.transform(cv, P._axis_rotation(d_neck), head), cf), "cortical_bone", None))
    # pubic + ischial rami round the obturator foramen: an elliptic torus below the cup
    pv, pf = P.torus(26.0, 7.0, n(48, 16), n(12, 6), (0, 0, 0), None, (1.2, 0.85))
    pv = P.transform(pv, P.rotation_matrix("z", 35.0) @ P.rotation_matrix("x", 90.0), (60.0, -38.0, -59.0))
    out.append(("pubis", (pv, pf), "cortical_bone", None))
    # femur: head (sphere radius 24) + neck + trochanter bend + shaft, one round-capped tube
    s = np.linalg.norm(path - head, axis=1)
    r = np.where(s < 14.0, np.sqrt(np.maximum(24.0 ** 2 - s ** 2, 0.0)), 16.0)
    r = np.maximum(r, 16.0)
    out.append(("femur", P.tube(path, r, n(24, 10), caps="round", n_cap=n(6, 3)), "cortical_bone", None))
    out.append(("femur_core", P.tube(path[1:], 0.6 * r[1:], n(24, 10), caps="round", n_cap=n(4, 2)),
                "trabecular_bone", "femur"))
    return out


def pelvis(resolution="default"):
    """Adult pelvis phantom (LPS, mm), about 350 x 240 x 260 mm, centred at the origin.

    Objects (parent: body unless noted): body (soft tissue); vertebra_L4, vertebra_L5
    (cortical bone) with trabecular children vertebra_L4_core, vertebra_L5_core; sacrum
    (trabecular bone, tapered tilted wedge); per side S in L, R: ilium_S (fan-shaped
    bent plate, cortical), acetabulum_S (hemispherical cup round the femoral head with a
    ~4 mm joint space, cortical), pubis_S (elliptic torus: pubic and ischial rami round
    the obturator foramen, cortical), femur_S (head, neck, trochanter bend and shaft as
    one round-capped tube, cortical) with the trabecular child femur_core_S; bladder
    (soft tissue) and rectal_gas (air).  The right side is the mirror image of the left.
    The hip bone is several separate closed pieces with small gaps between them.
    resolution: "low" (~4k faces), "default" (~21k) or "high" (~84k).
    """
    n = _scale(resolution)
    objs = []
    add = lambda name, VF, mat, parent="body": objs.append(PhantomObject(name, VF[0], VF[1], mat, parent))
    add("body", _rounded_cylinder(175.0, 120.0, 130.0, 30.0, n(96, 24), n(6, 3), 3), "soft_tissue", None)

    for k, (zc, lab) in enumerate(((104.0, "L4"), (72.0, "L5"))):
        name = f"vertebra_{lab}"
        add(name, P.superellipsoid((25.0, 19.0, 13.0), (0.35, 0.8), (0.0, 45.0, zc), n(10, 6), n(32, 12)),
            "cortical_bone")
        add(name + "_core", P.superellipsoid((22.0, 16.0, 10.5), (0.35, 0.8), (0.0, 45.0, zc), n(10, 6),
                                             n(32, 12)), "trabecular_bone", name)
    # sacrum: a tapering wedge tilted with its top forward
    sv, sf = P.superellipsoid((48.0, 14.0, 50.0), (0.6, 0.6), (0, 0, 0), n(16, 8), n(32, 12))
    taper = 1.0 - 0.35 * (0.5 - 0.5 * sv[:, 2] / 50.0)          # narrower at the bottom
    sv = sv * np.stack([taper, np.ones_like(taper), np.ones_like(taper)], -1)
    add("sacrum", (P.transform(sv, P.rotation_matrix("x", -25.0), (0.0, 62.0, 12.0)), sf), "trabecular_bone")

    for tag, parts in (("L", _hip_parts(n)), ("R", None)):
        if parts is None:   # right side: mirror image of the left side in the plane x = 0
            parts = [(nm, P.mirror(V, F, 0), mat, par) for nm, (V, F), mat, par in _hip_parts(n)]
        for nm, VF, mat, par in parts:
            add(f"{nm}_{tag}", VF, mat, "body" if par is None else f"{par}_{tag}")

    add("bladder", P.ellipsoid((35.0, 30.0, 28.0), (0.0, -20.0, -32.0), n(12, 6), n(32, 12)), "soft_tissue")
    add("rectal_gas", P.ellipsoid((12.0, 10.0, 20.0), (0.0, 35.0, -75.0), n(10, 6), n(20, 10)), "air")
    return Phantom("pelvis", objs)
