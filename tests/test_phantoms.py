"""Tests for taichi_xray.primitives and taichi_xray.phantoms (pure numpy, a few seconds).

Geometry checks of the phantoms:

* every object is watertight and outward (``is_watertight``: every directed edge once,
  its reverse once, positive volume);
* every child's vertices are inside its parent (generalised winding number) AND the
  two surfaces are at least MIN_GAP apart (exact triangle-triangle distance, see below);
* siblings: no vertex of either lies inside the other (winding number both ways) AND
  their surfaces are at least MIN_GAP apart.  With disjoint surfaces and no vertex of
  one inside the other, the two solids are disjoint (each is one connected surface).

The surface distance is ``surface_distance``: the exact minimum over all triangle pairs
(edge-triangle crossing test, 6 vertex-triangle and 9 edge-edge distances per pair),
pairs pruned only by bounding-box distance, which is a lower bound, so the pruning is
exact.  The check is therefore not merely conservative: it is exact for the meshes as
built, up to float rounding (no sampling).  The vertex-containment part is what rules
out one solid lying wholly inside a sibling.  Pairs whose bounding boxes, grown by
MIN_GAP, do not overlap are disjoint outright.
"""
import numpy as np
import pytest

from taichi_xray import phantoms as ph
from taichi_xray import primitives as P

MIN_GAP = 2.0  # mm, certified clearance between siblings and between child and parent


# ------------------------------------------------------------------------------------------
# primitives
# ------------------------------------------------------------------------------------------
def _helix(n=40):
    t = np.linspace(0, np.pi, n)
    return np.stack([30 * np.cos(t), 30 * np.sin(t), 5 * t], 1)


def _polyline_length(p):
    return np.linalg.norm(np.diff(p, axis=0), axis=1).sum()


PRIMS = {
    "icosphere": (lambda: P.icosphere(10, 3, (1, 2, 3)), 4 / 3 * np.pi * 1000, 0.015),
    "uv_sphere": (lambda: P.uv_sphere(10, (1, 2, 3), 24, 48), 4 / 3 * np.pi * 1000, 0.01),
    "ellipsoid": (lambda: P.ellipsoid((10, 5, 3), (0, 1, 0), 24, 48, P.rotation_matrix("x", 30)),
                  4 / 3 * np.pi * 150, 0.01),
    "superellipsoid": (lambda: P.superellipsoid((10, 5, 3), (0.3, 0.5), n_lat=64, n_lon=128),
                       P.superellipsoid_volume((10, 5, 3), (0.3, 0.5)), 0.005),
    "box": (lambda: P.box((1, 2, 3), (5, 5, 5), P.rotation_matrix((1, 1, 1), 20)), 6.0, 1e-12),
    "cylinder": (lambda: P.cylinder(2, 5, 128, (1, 0, 0), axis=(1, 1, 0)), np.pi * 4 * 5, 0.002),
    "capsule": (lambda: P.capsule(2, 5, 16, 64, axis=(0, 1, 0)), np.pi * 4 * 5 + 4 / 3 * np.pi * 8, 0.005),
    "torus": (lambda: P.torus(5, 1, 96, 32), 2 * np.pi ** 2 * 5, 0.01),
    "elliptic_torus": (lambda: P.torus(5, 1, 96, 32, radii_scale=(1.5, 0.8)), 2 * np.pi ** 2 * 5 * 1.2, 0.01),
    "tube_flat": (lambda: P.tube(_helix(), 2.0, 32), np.pi * 4 * _polyline_length(_helix()), 0.01),
    "tube_round": (lambda: P.tube(_helix(), 2.0, 32, caps="round", n_cap=8),
                   np.pi * 4 * _polyline_length(_helix()) + 4 / 3 * np.pi * 8, 0.01),
    "tube_elliptic": (lambda: P.tube(_helix(), np.tile([2.0, 1.0], (40, 1)), 32),
                      np.pi * 2 * _polyline_length(_helix()), 0.01),
}


def _brute_force_closed(V, F):
    """Independent check: count undirected edges and directed edges with Python dicts."""
    und, dirs = {}, set()
    for f in F.tolist():
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            assert (a, b) not in dirs, f"directed edge {(a, b)} twice"
            dirs.add((a, b))
            k = (min(a, b), max(a, b))
            und[k] = und.get(k, 0) + 1
    assert all(c == 2 for c in und.values()), "edge not shared by exactly two faces"
    assert all((b, a) in dirs for a, b in dirs), "inconsistent orientation"
    # Euler characteristic of a closed orientable surface is even
    chi = len(np.unique(F)) - len(und) + len(F)
    assert chi % 2 == 0 and chi <= 2


@pytest.mark.parametrize("name", sorted(PRIMS))
def test_primitive_watertight_outward_volume(name):
    make, vol, rtol = PRIMS[name]
    V, F = make()
    assert V.dtype == np.float64 and F.dtype == np.int64 and V.shape[1] == 3 and F.shape[1] == 3
    _brute_force_closed(V, F)
    rep = P.is_watertight(V, F)
    assert rep, rep.reason
    v = P.mesh_volume(V, F)
    assert v > 0
    # inscribed polyhedra of convex shapes under-estimate slightly; tolerance per shape
    assert v == pytest.approx(vol, rel=rtol)
    # outward normals: the face normal points away from the solid at its centroid
    c = V[F].mean(axis=1)
    nrm = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    sel = np.random.default_rng(0).choice(len(F), min(50, len(F)), replace=False)
    eps = 1e-3 * np.ptp(V, axis=0).min()
    assert not P.points_inside(V, F, c[sel] + eps * nrm[sel]).any()
    assert P.points_inside(V, F, c[sel] - eps * nrm[sel]).all()


def test_is_watertight_reports_reasons():
    V, F = P.icosphere(1, 1)
    assert P.is_watertight(V, F).ok
    ok, reason = P.is_watertight(V, F[1:])
    assert not ok and "unpaired" in reason
    ok, reason = P.is_watertight(V, F[:, ::-1])
    assert not ok and "inward" in reason
    F2 = F.copy()
    F2[0] = F2[0, ::-1]
    ok, reason = P.is_watertight(V, F2)
    assert not ok and "directed edge" in reason


def test_points_inside_and_distance_against_analytic():
    V, F = P.icosphere(10, 4)
    rng = np.random.default_rng(1)
    pts = rng.uniform(-15, 15, (400, 3))
    r = np.linalg.norm(pts, axis=1)
    keep = np.abs(r - 10) > 0.2
    assert np.array_equal(P.points_inside(V, F, pts[keep]), r[keep] < 10)
    # torus: a point in the hole is outside
    tv, tf = P.torus(5, 1, 48, 16)
    assert list(P.points_inside(tv, tf, [[0, 0, 0], [5, 0, 0], [-5, 0, 0.5], [5, 0, 1.5]])) == \
        [False, True, True, False]
    # point-triangle distance: plane, edge and vertex regions
    a, b, c = np.array([[0., 0, 0]]), np.array([[1., 0, 0]]), np.array([[0., 1, 0]])
    d = P.point_triangle_distance(np.array([[0.2, 0.2, 3], [2, 0, 0], [-1, -1, 0], [0.5, -2, 1]]), a, b, c)
    np.testing.assert_allclose(d[:, 0], [3, 1, 2 ** 0.5, 5 ** 0.5])
    # distance between two icospheres inscribed in balls 3 mm apart
    s1, s2 = P.icosphere(5, 2, (0, 0, 0)), P.icosphere(5, 2, (13, 0, 0))
    d = P.surface_distance(*s1, *s2)
    # brute force: min distance between the two vertex sets bounds it from above,
    # spheres (outer balls) bound it from below
    vv = np.linalg.norm(s1[0][:, None] - s2[0][None], axis=2).min()
    assert 3.0 - 1e-9 <= d <= vv + 1e-9
    s3 = P.icosphere(5, 2, (9, 0, 0))   # overlapping spheres: surfaces cross
    assert P.surface_distance(*s1, *s3) == 0.0
    assert P.surface_distance(*s1, *s2, cap=1.0) == 1.0


def test_triangle_triangle_distance_against_sampling():
    rng = np.random.default_rng(2)
    ta = rng.normal(size=(60, 3, 3))
    tb = rng.normal(size=(60, 3, 3)) + rng.normal(scale=2.0, size=(60, 1, 3))
    d = P.triangle_triangle_distance(ta, tb)
    # dense barycentric sampling gives an upper bound that converges to the distance
    k = 40
    u, v = np.meshgrid(np.linspace(0, 1, k), np.linspace(0, 1, k))
    m = u + v <= 1
    w = np.stack([1 - u[m] - v[m], u[m], v[m]], 1)
    for i in range(len(ta)):
        pa, pb = w @ ta[i], w @ tb[i]
        ds = np.linalg.norm(pa[:, None] - pb[None], axis=2).min()
        assert d[i] <= ds + 1e-9
        # every point of a triangle is within (longest edge) / (k - 1) of a sample
        edges = lambda t: np.linalg.norm(t - np.roll(t, 1, axis=0), axis=1).max()
        assert ds - d[i] <= (edges(ta[i]) + edges(tb[i])) / (k - 1)
    # crossing triangles
    t1 = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0]]], float)
    t2 = np.array([[[0.2, 0.2, -1], [0.3, 0.2, 1], [0.2, 0.3, 1]]], float)
    assert P.triangle_triangle_distance(t1, t2)[0] == 0.0


def test_transform_mirror_concatenate_and_errors():
    V, F = P.box((1, 2, 3))
    with pytest.raises(ValueError, match="determinant"):
        P.transform(V, np.diag([1.0, 1.0, -1.0]))
    mv, mf = P.mirror(V + 5, F, 0)
    assert P.is_watertight(mv, mf) and mv[:, 0].max() < 0
    cv, cf = P.concatenate([(V, F), (V + 10, F)])
    assert P.mesh_volume(cv, cf) == pytest.approx(12.0) and P.is_watertight(cv, cf)
    with pytest.raises(ValueError, match="radius"):
        P.icosphere(-1)
    with pytest.raises(ValueError, match="r < R"):
        P.torus(1, 2)
    with pytest.raises(ValueError, match="radius"):
        P.tube(_helix(), np.ones(3))
    with pytest.raises(ValueError, match="caps"):
        P.tube(_helix(), 1.0, caps="square")


# ------------------------------------------------------------------------------------------
# phantoms
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["thorax", "pelvis"])
def phantom(request):
    return getattr(ph, request.param)("low")


def _boxes_overlap(a, b, grow):
    return bool(np.all(a.vertices.min(0) - grow <= b.vertices.max(0)) and
                np.all(b.vertices.min(0) - grow <= a.vertices.max(0)))


def test_phantom_objects_watertight_and_valid(phantom):
    assert len(phantom) >= 8
    assert phantom.objects[0].name == "body" and phantom.objects[0].parent is None
    for o in phantom:
        rep = P.is_watertight(o.vertices, o.faces)
        assert rep, f"{o.name}: {rep.reason}"
        assert o.material in ph.MATERIALS
    assert 1000 < phantom.n_faces < 10_000   # 'low': a few thousand faces
    meshes = phantom.to_meshes()
    assert list(meshes) == phantom.names


def _self_intersections(V, F):
    """Number of pairs of triangles sharing no vertex that touch or cross (exact test on
    all pairs with overlapping bounding boxes).  Folds between neighbours are not seen."""
    T = V[F]
    lo, hi = T.min(1), T.max(1)
    i, j = np.nonzero(np.triu(np.all((lo[:, None] <= hi[None]) & (lo[None] <= hi[:, None]), axis=2), 1))
    share = (F[i][:, :, None] == F[j][:, None, :]).any(axis=(1, 2))
    i, j = i[~share], j[~share]
    return int((P.triangle_triangle_distance(T[i], T[j]) == 0).sum()) if len(i) else 0


def test_phantom_meshes_do_not_self_intersect(phantom):
    assert _self_intersections(*P.concatenate([P.icosphere(1, 1), P.icosphere(1, 1, (0.5, 0, 0))])) > 0
    for o in phantom:
        assert _self_intersections(o.vertices, o.faces) == 0, o.name


def test_children_inside_parent(phantom):
    for o in phantom:
        if o.parent is None:
            continue
        par = phantom[o.parent]
        inside = P.points_inside(par.vertices, par.faces, o.vertices)
        assert inside.all(), f"{o.name}: {int((~inside).sum())} vertices outside {par.name}"
        d = P.surface_distance(o.vertices, o.faces, par.vertices, par.faces, cap=MIN_GAP)
        assert d >= MIN_GAP, f"{o.name} within {d:.2f} mm of parent {par.name}"


def test_siblings_disjoint(phantom):
    checked = 0
    for parent in [None] + phantom.names:
        sib = phantom.children(parent)
        for i, a in enumerate(sib):
            for b in sib[i + 1:]:
                if not _boxes_overlap(a, b, MIN_GAP):
                    continue
                checked += 1
                assert not P.points_inside(a.vertices, a.faces, b.vertices).any(), f"{b.name} inside {a.name}"
                assert not P.points_inside(b.vertices, b.faces, a.vertices).any(), f"{a.name} inside {b.name}"
                d = P.surface_distance(a.vertices, a.faces, b.vertices, b.faces, cap=MIN_GAP)
                assert d >= MIN_GAP, f"{a.name} and {b.name}: gap only {d:.2f} mm"
    assert checked > 5


def _vol(phantom, name):
    o = phantom[name]
    return P.mesh_volume(o.vertices, o.faces) / 1e3   # cm^3 (mL)


def test_thorax_volumes_and_extent():
    t = ph.thorax("low")
    lo, hi = t["body"].vertices.min(0), t["body"].vertices.max(0)
    np.testing.assert_allclose(hi - lo, [340, 230, 300], rtol=0.03)
    np.testing.assert_allclose((hi + lo) / 2, 0, atol=1e-6)
    assert 15_000 < _vol(t, "body") < 24_000          # 0.34 * 0.23 * 0.30 m box is 23.5 L
    for lung in ("lung_left", "lung_right"):
        assert 1_000 < _vol(t, lung) < 3_500          # adult lung 1.5-3 L each
    assert _vol(t, "lung_right") > _vol(t, "lung_left")
    assert 350 < _vol(t, "heart") < 900
    assert 450 < _vol(t, "liver") < 2_500          # only the dome of the liver is inside the box
    ribs = [o for o in t if o.name.startswith("rib_")]
    assert len(ribs) == 20
    assert all(4 < P.mesh_volume(o.vertices, o.faces) / 1e3 < 40 for o in ribs)
    # patient's left is +x: the heart leans left, the liver sits on the right
    assert t["heart"].vertices[:, 0].mean() > 0 > t["liver"].vertices[:, 0].mean()
    assert t["lung_left"].vertices[:, 0].min() > 0 > t["lung_right"].vertices[:, 0].max()
    # spine posterior (+y), sternum anterior
    assert t["vertebra_T05"].vertices[:, 1].mean() > 30 > -80 > t["sternum"].vertices[:, 1].mean()


def test_pelvis_volumes():
    p = ph.pelvis("low")
    assert 15_000 < _vol(p, "body") < 24_000
    for s in "LR":
        assert 100 < _vol(p, f"femur_{s}") < 400
        assert 20 < _vol(p, f"ilium_{s}") < 150
        assert 10 < _vol(p, f"acetabulum_{s}") < 100
    assert _vol(p, "femur_L") == pytest.approx(_vol(p, "femur_R"), rel=1e-9)
    assert 60 < _vol(p, "sacrum") < 300


def test_resolution_levels_and_errors():
    t, p = ph.thorax("default"), ph.pelvis("default")
    for phan in (t, p):
        assert 20_000 <= phan.n_faces <= 100_000
        assert phan.names == getattr(ph, phan.name)("low").names
        for o in phan:
            rep = P.is_watertight(o.vertices, o.faces)
            assert rep, f"{o.name}: {rep.reason}"
    with pytest.raises(ValueError, match="resolution"):
        ph.thorax("medium")
    with pytest.raises(ValueError, match="material"):
        ph.PhantomObject("x", *P.box(), material="bone")
    with pytest.raises(KeyError, match="nope"):
        t["nope"]


def test_write_phantom(tmp_path):
    meshio = pytest.importorskip("meshio")
    p = ph.pelvis("low")
    paths = ph.write_phantom(p, tmp_path / "pelvis")
    assert len(paths) == len(p)
    m = meshio.read(paths[0])
    assert len(m.cells_dict["triangle"]) == len(p.objects[0].faces)
    # STL re-indexes the (float32) vertices: compare the geometry, not the arrays
    tri = m.cells_dict["triangle"]
    assert P.is_watertight(m.points, tri)
    assert P.mesh_volume(m.points, tri) == pytest.approx(_vol(p, "body") * 1e3, rel=1e-5)
    import json
    man = json.loads((tmp_path / "pelvis" / "pelvis.json").read_text())
    assert [e["name"] for e in man["objects"]] == p.names
    assert man["objects"][1]["parent"] == "body" and man["objects"][0]["parent"] is None
    with pytest.raises(FileExistsError, match="body.stl"):
        ph.write_phantom(p, tmp_path / "pelvis")
    assert ph.write_phantom(p, tmp_path / "pelvis", overwrite=True) == paths
    with pytest.raises(TypeError, match="Phantom"):
        ph.write_phantom([], tmp_path / "x")
