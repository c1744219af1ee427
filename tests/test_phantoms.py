"""Tests for taichi_xray.primitives and taichi_xray.phantoms.

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
    # swept elliptic section 2 x 1 mm with frames from a given normal, round caps: an
    # elliptic cylinder plus a (2, 1, 1.5) half-ellipsoid at each end
    "sweep": (lambda: P.sweep(_helix(), np.tile([0.0, 0.0, 1.0], (40, 1)), np.tile([2.0, 1.0], (40, 1)), 48,
                              n_cap=12),
              np.pi * 2 * _polyline_length(_helix()) + 4 / 3 * np.pi * 2 * 1 * 1.5, 0.01),
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
# phantoms: geometry
# ------------------------------------------------------------------------------------------
# The phantoms take tens of seconds to build; taichi_xray.phantoms keeps them in memory
# and on disk (see its docstring), so only a cold cache pays that once.
MIN_GAP = 0.1        # mm: certified clearance between siblings and between child and parent


@pytest.fixture(scope="module", params=["thorax", "pelvis"])
def phantom(request):
    return getattr(ph, request.param)("low")


def _boxes_overlap(a, b, grow):
    return bool(np.all(a.vertices.min(0) - grow <= b.vertices.max(0)) and
                np.all(b.vertices.min(0) - grow <= a.vertices.max(0)))


def test_phantom_objects_watertight_and_valid(phantom):
    assert phantom.objects[0].name == "body" and phantom.objects[0].parent is None
    for o in phantom:
        rep = P.is_watertight(o.vertices, o.faces)
        assert rep, f"{o.name}: {rep.reason}"
        assert o.material in ph.MATERIALS
    meshes = phantom.to_meshes()
    assert list(meshes) == phantom.names


def _crossing_pairs(V, F):
    """Number of pairs of faces sharing no vertex that touch or cross.  Broad phase:
    bounding spheres (a k-d tree of the face centres); narrow phase: the exact
    triangle-triangle distance (0 when they touch or cross)."""
    from scipy.spatial import cKDTree

    T = V[F]
    c = T.mean(1)
    rad = np.linalg.norm(T - c[:, None], axis=2).max(1)
    tree = cKDTree(c)
    i, j = [], []
    for a, js in enumerate(tree.query_ball_point(c, rad + rad.max())):
        js = np.asarray(js, np.int64)
        js = js[js > a]
        i.append(np.full(len(js), a)), j.append(js)
    i, j = np.concatenate(i), np.concatenate(j)
    keep = np.linalg.norm(c[i] - c[j], axis=1) <= rad[i] + rad[j]
    i, j = i[keep], j[keep]
    share = (F[i][:, :, None] == F[j][:, None, :]).any(axis=(1, 2))
    i, j = i[~share], j[~share]
    return int((P.triangle_triangle_distance(T[i], T[j]) == 0).sum()) if len(i) else 0


def test_crossing_pairs_detects_overlap():
    assert _crossing_pairs(*P.concatenate([P.icosphere(1, 2), P.icosphere(1, 2, (0.5, 0, 0))])) > 0
    assert _crossing_pairs(*P.concatenate([P.icosphere(1, 2), P.icosphere(1, 2, (2.5, 0, 0))])) == 0


def _folded_over(V, F):
    """Faces (sharing an edge with a face whose normal points nearly the opposite way) that
    are folded past that neighbour: the generalised winding number just behind the face is
    not 1 or just in front of it is not 0 (a ray there meets the surface out of order).
    _crossing_pairs skips faces that share a vertex, so it cannot see these."""
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    edges = {}
    for f, tri in enumerate(F):
        for a, b in ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0])):
            edges.setdefault((min(a, b), max(a, b)), []).append(f)
    cand = sorted({f for fs in edges.values() if len(fs) == 2 and n[fs[0]] @ n[fs[1]] < -0.8 for f in fs})
    if not cand:
        return 0
    c = V[F[cand]].mean(1)
    w_in = P.winding_number(V, F, c - 0.01 * n[cand])
    w_out = P.winding_number(V, F, c + 0.01 * n[cand])
    return int(((np.abs(w_in - 1) > 0.5) | (np.abs(w_out) > 0.5)).sum())


def test_folded_over_detects_a_fold():
    V, F = P.icosphere(10.0, 2)
    assert _folded_over(V, F) == 0
    # move the far corner d of a face (b, a, d) onto its neighbour (a, b, c), just above it:
    # the face folds over the neighbour across their shared edge (a, b)
    a, b, c = F[0]
    f2 = next(f for f in F if set(f) >= {a, b} and c not in f)
    d = next(v for v in f2 if v not in (a, b))
    V = V.copy()
    nrm = np.cross(V[b] - V[a], V[c] - V[a])
    V[d] = 0.6 * V[c] + 0.2 * (V[a] + V[b]) + 0.05 * nrm / np.linalg.norm(nrm)
    assert _folded_over(V, F) > 0


def test_phantom_meshes_do_not_self_intersect(phantom):
    for o in phantom:
        assert _crossing_pairs(o.vertices, o.faces) == 0, o.name
        assert _folded_over(o.vertices, o.faces) == 0, o.name


def _components(F):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = int(F.max()) + 1
    e = F[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    return connected_components(coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)), directed=False)[1]


def _one_vertex_per_component(o):
    lab = _components(o.faces)
    used = np.unique(o.faces)
    _, first = np.unique(lab[used], return_index=True)
    return o.vertices[used[first]]


def test_children_inside_parent(phantom):
    """Exact: the surfaces are at least MIN_GAP apart (triangle-triangle distances) and one
    vertex of every component of the child is inside the parent (winding number)."""
    for o in phantom:
        if o.parent is None:
            continue
        par = phantom[o.parent]
        d = P.surface_distance(o.vertices, o.faces, par.vertices, par.faces, cap=MIN_GAP)
        assert d >= MIN_GAP, f"{o.name} within {d:.3f} mm of its parent {par.name}"
        assert P.points_inside(par.vertices, par.faces, _one_vertex_per_component(o)).all(), o.name


def test_siblings_disjoint(phantom):
    checked = 0
    for parent in [None] + phantom.names:
        sib = phantom.children(parent)
        for i, a in enumerate(sib):
            for b in sib[i + 1:]:
                if not _boxes_overlap(a, b, MIN_GAP):
                    continue
                checked += 1
                d = P.surface_distance(a.vertices, a.faces, b.vertices, b.faces, cap=MIN_GAP)
                assert d >= MIN_GAP, f"{a.name} and {b.name}: gap only {d:.3f} mm"
                assert not P.points_inside(a.vertices, a.faces, _one_vertex_per_component(b)).any(), \
                    f"{b.name} inside {a.name}"
                assert not P.points_inside(b.vertices, b.faces, _one_vertex_per_component(a)).any(), \
                    f"{a.name} inside {b.name}"
    assert checked > 5


def test_nesting_from_many_angles(phantom):
    """The renderer's own check (taichi_xray.render.check_nesting) on path lengths of all
    objects from 8 C-arm angles: no child leaves its parent, no siblings overlap."""
    import taichi_xray as tx
    from taichi_xray.render import check_nesting

    meshes = [tx.Mesh(o.vertices, o.faces) for o in phantom]
    names = phantom.names
    parents = [names.index(o.parent) if o.parent else -1 for o in phantom]
    for lao, cran in ((0, 0), (90, 0), (-90, 0), (45, 20), (-30, -25), (135, 0), (180, 0), (20, 60)):
        cam = tx.Camera.c_arm(sid=1000, sdd=1500, width=160, height=160, pixel_spacing=3.2, lao=lao, cran=cran)
        L = np.asarray(tx.path_length(meshes, cam)).reshape(len(meshes), 160, 160)
        assert check_nesting(L, names, parents) == [], (lao, cran)


def _vol(phantom, name):
    o = phantom[name]
    return P.mesh_volume(o.vertices, o.faces) / 1e3   # cm^3 (mL)


def test_thorax_contents_and_volumes():
    t = ph.thorax("low")
    for side in "RL":
        assert [f"rib_{side}{k:02d}" for k in range(1, 13)] == [n for n in t.names if n.startswith(f"rib_{side}")
                                                                 and not n.endswith("_core")]
        assert all(f"costal_cartilage_{side}{k:02d}" in t.names for k in range(1, 11))
        for n in ("clavicle", "scapula", "humerus"):
            assert f"{n}_{side}" in t.names
    assert [n for n in t.names if n.startswith("vertebra_T") and not n.endswith("_core")] == \
        [f"vertebra_T{k:02d}" for k in range(1, 13)]
    for lung in ("lung_left", "lung_right"):          # ICRP 89 lungs 1.2 kg at 0.26 g/cm^3: ~4.6 L
        assert 1_500 < _vol(t, lung) < 3_000
    assert 3_500 < _vol(t, "lung_left") + _vol(t, "lung_right") < 5_500
    assert 400 < _vol(t, "heart") < 900
    assert t["vessels_right"].parent == "lung_right" and t["vessels_left"].parent == "lung_left"
    # patient's left is +x: the heart's bulk lies left, the liver right; the right dome is higher
    h = t["heart"].vertices
    assert h[:, 0].max() > 1.4 * -h[:, 0].min() > 0
    assert t["liver"].vertices[:, 0].mean() < 0 < t["stomach_gas"].vertices[:, 0].mean()
    lr, ll = t["lung_right"].vertices, t["lung_left"].vertices
    dome = lambda V: np.percentile(V[(np.abs(np.abs(V[:, 0]) - 80) < 15) & (np.abs(V[:, 1]) < 20), 2], 2)
    assert dome(lr) > dome(ll) + 8
    # spine posterior (+y), sternum anterior; ribs: posterior end (head) higher than the anterior end
    assert t["vertebra_T05"].vertices[:, 1].mean() > 20 > -70 > t["sternum"].vertices[:, 1].mean()
    for k in range(1, 11):
        V = t[f"rib_L{k:02d}"].vertices
        head, front = V[np.argmin(np.abs(V[:, 0]))], V[np.argmin(V[:, 1])]
        assert head[2] - front[2] > 25, k


def test_pelvis_contents_and_volumes():
    p = ph.pelvis("low")
    for s in "LR":
        assert 180 < _vol(p, f"femur_{s}") < 600
        assert 100 < _vol(p, f"hip_{s}") < 400
        assert f"femur_{s}_core" in p.names and p[f"femur_{s}_core"].parent == f"femur_{s}"
    assert _vol(p, "femur_L") == pytest.approx(_vol(p, "femur_R"), rel=0.03)
    assert 60 < _vol(p, "sacrum") < 300
    assert p["rectal_gas"].material == "air" and p["rectal_gas"].parent == "body"


def _fit_sphere(X):
    """Least-squares sphere (centre, radius) through points X (N, 3)."""
    A = np.c_[2 * X, np.ones(len(X))]
    sol = np.linalg.lstsq(A, (X ** 2).sum(1), rcond=None)[0]
    return sol[:3], float(np.sqrt(sol[3] + sol[:3] @ sol[:3]))


@pytest.mark.parametrize("side", ["L", "R"])
def test_femoral_neck_shaft_angle(side):
    """Measured on the mesh: head centre (sphere fit of the most medial part), neck axis
    (to the centroid of the bone between 30 and 38 mm from the head centre), shaft axis
    (line through the centres of horizontal slabs of the shaft's surface)."""
    p = ph.pelvis("low")
    o = p[f"femur_{side}"]
    V = o.vertices
    med = np.abs(V[:, 0]) < np.abs(V[:, 0]).min() + 16
    c, r = _fit_sphere(V[med])
    assert 20 < r < 28                                          # femoral head diameter 40-56 mm
    g = np.arange(-40.0, 40.1, 2.0)
    G = c + np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    dist = np.linalg.norm(G - c, axis=1)
    shell = G[(dist > 30) & (dist < 38)]
    neck = shell[P.points_inside(o.vertices, o.faces, shell)].mean(0)
    # the shaft is a tube: the mean of its surface vertices in a thin slab lies on its axis
    cents = np.array([V[np.abs(V[:, 2] - z) < 3.0].mean(0) for z in np.arange(-170, -100, 10)])
    u, s_, vt = np.linalg.svd(cents - cents.mean(0))
    down = vt[0] if vt[0][2] < 0 else -vt[0]
    to_head = (c - neck) / np.linalg.norm(c - neck)
    angle = np.degrees(np.arccos(np.clip(to_head @ down, -1, 1)))
    assert 120 <= angle <= 135, angle


def test_resolution_levels_and_errors():
    t, p = ph.thorax("default"), ph.pelvis("default")
    assert 60_000 <= t.n_faces <= 150_000
    assert 20_000 <= p.n_faces <= 150_000
    for phan in (t, p):
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
    with pytest.raises(ValueError, match="unknown phantom"):
        ph.build("skull")


def test_cache_round_trip_and_copies(tmp_path, monkeypatch):
    """A phantom read back from the on-disk cache equals the one built; callers get copies."""
    a = ph.pelvis("low")
    a.objects[1].vertices[:] = 0.0                 # modifying a copy must not leak
    b = ph.pelvis("low")
    assert np.ptp(b.objects[1].vertices) > 0
    monkeypatch.setenv("TAICHI_XRAY_CACHE", str(tmp_path))
    path = tmp_path / "phantom-x.npz"
    ph._save(b, path)
    c = ph._load(path)
    assert c.names == b.names and [o.material for o in c] == [o.material for o in b]
    assert [o.parent for o in c] == [o.parent for o in b]
    for o, q in zip(b, c):
        np.testing.assert_array_equal(o.vertices, q.vertices)
        np.testing.assert_array_equal(o.faces, q.faces)
    monkeypatch.setenv("TAICHI_XRAY_CACHE", "off")
    assert ph.cache_dir() is None


def test_write_phantom(tmp_path):
    meshio = pytest.importorskip("meshio")
    p = ph.pelvis("low")
    paths = ph.write_phantom(p, tmp_path / "pelvis")
    assert len(paths) == len(p)
    m = meshio.read(paths[0])
    assert len(m.cells_dict["triangle"]) == len(p.objects[0].faces)
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


# ------------------------------------------------------------------------------------------
# phantoms: anatomy measured on the rendered radiographs
# ------------------------------------------------------------------------------------------
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SIZE = 256


def _render(scene_name, resolution="low"):
    """Line-integral image (SIZE x SIZE) of scenes/<scene_name>.toml, its camera and phantom."""
    try:
        import tomllib
    except ImportError:              # Python 3.10
        import tomli as tomllib

    from taichi_xray.render import render
    from taichi_xray.scene import parse_scene

    path = ROOT / "scenes" / f"{scene_name}.toml"
    data = tomllib.loads(path.read_text())
    data["scene"]["phantom_resolution"] = resolution
    w, _ = data["camera"]["detector"]
    data["camera"]["pixel_spacing"] *= w / SIZE
    data["camera"]["detector"] = [SIZE, SIZE]
    r = render(parse_scene(data, path))           # raises NestingError if any object leaves its parent
    return r.line_integral, r.camera, getattr(ph, scene_name)(resolution)


@pytest.fixture(scope="module")
def chest():
    return _render("thorax")


@pytest.fixture(scope="module")
def pelvis_ap():
    return _render("pelvis")


def _mask(cam, objs):
    import taichi_xray as tx

    L = np.asarray(tx.path_length([tx.Mesh(o.vertices, o.faces) for o in objs], cam))
    return L.reshape(len(objs), SIZE, SIZE).sum(0) > 0.5


def _uv(cam, X):
    X = np.atleast_2d(X)
    h = cam.P @ np.c_[X, np.ones(len(X))].T
    return (h[:2] / h[2]).T


def _plen(cam, objs):
    import taichi_xray as tx

    L = np.asarray(tx.path_length([tx.Mesh(o.vertices, o.faces) for o in objs], cam))
    return L.reshape(len(objs), SIZE, SIZE).sum(0)


def test_chest_lungs_dark_mediastinum_spine(chest):
    li, cam, t = chest
    lung = _plen(cam, [t["lung_right"], t["lung_left"]])
    heart = _plen(cam, [t["heart"]])
    spine = _mask(cam, [o for o in t if o.name.startswith("vertebra_")])
    lung_px = li[(lung > 60) & (heart < 1)]
    med_px = li[(heart > 60) & (lung < 30) & ~spine]
    assert lung_px.size > 2000 and med_px.size > 100
    # lung fields clearly darker than the mediastinum (ratio of line integrals)
    assert np.median(lung_px) < 0.75 * np.median(med_px), (np.median(lung_px), np.median(med_px))
    # adequate penetration (the radiologist's criterion): the thoracic spine is seen through
    # the cardiac shadow.  In rows through the heart, pixels on the spine are brighter than
    # the cardiac shadow beside it by more than a vertebral body's worth of spongiosa alone
    # (25 mm x (mu_spongiosa - mu_soft) ~ 0.1 at 60-70 keV, ICRU 44/46 via xraylib).
    # (A primary line-integral image, like a DRR, has the spine column as the brightest
    # structure of almost every row; on real films it looks fainter only because of scatter
    # and image processing, so "something else is brighter" is not asked of this image.)
    card = (heart > 40) & (lung < 30)
    rows = np.nonzero((card & spine).sum(1) >= 3)[0]
    rows = [r for r in rows if (card[r] & ~spine[r]).sum() >= 3]
    assert len(rows) > 10
    excess = [li[r, card[r] & spine[r]].mean() - li[r, card[r] & ~spine[r]].mean() for r in rows]
    assert np.median(excess) > 0.1, np.median(excess)


def _heart_and_thorax_widths(li, c0, heart_rows, lung_row):
    """From the image only: (right, left) extent of the cardiac shadow from the midline column
    c0 (pixels brighter than 20 % of the way from the lateral lung level to the midline
    level of that row), and the widest span of the two dark lung fields (connected dark
    regions through the lateral lung zones of row lung_row)."""
    from scipy import ndimage

    n = li.shape[1]
    right = left = 0
    for r in heart_rows:
        row = li[r]
        lung = np.median(np.r_[row[int(0.18 * n):int(0.32 * n)], row[int(0.68 * n):int(0.82 * n)]])
        thr = lung + 0.2 * (np.median(row[c0 - 2:c0 + 3]) - lung)
        a = b = c0
        while a > 0 and row[a - 1] > thr:
            a -= 1
        while b < n - 1 and row[b + 1] > thr:
            b += 1
        right, left = max(right, c0 - a), max(left, b - c0)
    z = li[lung_row - 10:lung_row + 10]
    lung = np.median(np.r_[z[:, int(0.18 * n):int(0.32 * n)].ravel(), z[:, int(0.68 * n):int(0.82 * n)].ravel()])
    lab, _ = ndimage.label((li < lung + 0.25) & (li > 0.5))
    kr, kl = lab[lung_row, int(0.25 * n)], lab[lung_row, int(0.75 * n)]
    assert kr and kl and kr != kl, "the two lung fields are not separate dark regions"
    td = 0
    for r in range(li.shape[0]):
        cr, cl = np.nonzero(lab[r] == kr)[0], np.nonzero(lab[r] == kl)[0]
        if len(cr) and len(cl):
            td = max(td, cl.max() - cr.min())
    return right, left, td


def test_chest_cardiothoracic_ratio(chest):
    """CTR measured on the image (heart rows above the right dome, chosen from the meshes)."""
    li, cam, t = chest
    lung = _plen(cam, [t["lung_right"], t["lung_left"]])
    c0 = int(round(_uv(cam, [0.0, 0.0, 0.0])[0, 0]))
    h = t["heart"].vertices
    v_top = _uv(cam, [0, h[:, 1].mean(), h[:, 2].max()])[0, 1]
    v_bot = _uv(cam, [0, h[:, 1].mean(), h[:, 2].min()])[0, 1]
    dome_col = int(round(_uv(cam, [-80.0, 0.0, -60.0])[0, 0]))
    dome_row = np.nonzero(lung[:, dome_col] > 60)[0].max()
    rows = np.arange(int(v_top + 0.25 * (v_bot - v_top)), min(int(v_bot), dome_row - 3))
    right, left, td = _heart_and_thorax_widths(li, c0, rows, int(0.5 * (v_top + v_bot)) - 20)
    ctr = (right + left) / td
    assert 0.42 <= ctr <= 0.55, (right, left, td, ctr)
    # radiological view: the patient's left (the heart's bulk) is on the image's right
    assert left > 1.2 * right, (right, left)


def _column_profile_peaks(p, min_prom):
    """Local maxima of profile p that rise min_prom above the lower of the minima on both sides
    before a higher point (topographic prominence)."""
    peaks = []
    for i in range(1, len(p) - 1):
        if p[i] > p[i - 1] and p[i] >= p[i + 1]:
            l = i
            lmin = p[i]
            while l > 0 and p[l - 1] <= p[i]:
                l -= 1
                lmin = min(lmin, p[l])
            r = i
            rmin = p[i]
            while r < len(p) - 1 and p[r + 1] <= p[i]:
                r += 1
                rmin = min(rmin, p[r])
            if p[i] - max(lmin, rmin) >= min_prom:
                peaks.append(i)
    return peaks


@pytest.mark.parametrize("side", [-1, 1])
def test_chest_twelve_posterior_ribs(chest, side):
    """Count the posterior ribs crossing a paravertebral column (world x = +-50 mm, at the
    depth of the rib necks): 12 peaks, one on each rib (from the rib meshes' projections)."""
    li, cam, t = chest
    col = int(round(_uv(cam, [side * 50.0, 60.0, 0.0])[0, 0]))
    tag = "L" if side > 0 else "R"
    ribs = [t[f"rib_{tag}{k:02d}"] for k in range(1, 13)]
    masks = [_mask(cam, [r])[:, col] for r in ribs]
    rows = [np.nonzero(m)[0] for m in masks]
    assert all(len(r) for r in rows)
    r0, r1 = rows[0].min() - 3, rows[-1].max() + 4
    prof = li[r0:r1, col - 1:col + 2].mean(1)
    peaks = np.array(_column_profile_peaks(prof, 0.02)) + r0
    hit = [any(np.isin(peaks, np.arange(r.min() - 1, r.max() + 2))) for r in rows]
    assert all(hit), hit
    clav = _mask(cam, [t[f"clavicle_{tag}"], t[f"scapula_{tag}"]])[:, col]
    extra = [p for p in peaks if not any(p in range(r.min() - 1, r.max() + 2) for r in rows) and not clav[p]]
    assert len(peaks) - len(extra) >= 12 and len(extra) <= 2, (len(peaks), extra)


def test_chest_clavicles_cross_the_upper_lung_fields(chest):
    li, cam, t = chest
    lungs = _mask(cam, [t["lung_right"], t["lung_left"]])
    for tag, x in (("R", -60.0), ("L", 60.0)):
        col = int(round(_uv(cam, [x, -70.0, 150.0])[0, 0]))
        cm = _mask(cam, [t[f"clavicle_{tag}"]])[:, col]
        rows = np.nonzero(cm)[0]
        assert len(rows) >= 3
        lung_rows = np.nonzero(lungs[:, col])[0]
        # the band crosses the upper third of that column's lung field (the apex above it)
        assert lung_rows.min() + 3 <= rows.mean() <= lung_rows.min() + (lung_rows.max() - lung_rows.min()) / 3
        band = li[rows, col].mean()
        around = np.r_[li[rows.min() - 6:rows.min() - 2, col], li[rows.max() + 3:rows.max() + 7, col]]
        assert band > around.mean() + 0.15, (band, around)


def test_pelvis_obturator_foramina(pelvis_ap):
    """A hole in the projected hip bone below each femoral head (the obturator foramen),
    darker on the image than the bony ring around it."""
    from scipy import ndimage

    li, cam, p = pelvis_ap
    px_mm = cam.pixel_spacing * 1000.0 / 1150.0      # mm at the isocentre per pixel
    for tag, sx in (("R", -1), ("L", 1)):
        bone = _mask(cam, [p[f"hip_{tag}"]])
        holes, n = ndimage.label(ndimage.binary_fill_holes(bone) & ~bone)
        assert n >= 1
        head = _uv(cam, [sx * 88.0, 0.0, 0.0])[0]
        best = None
        for k in range(1, n + 1):
            rr, cc = np.nonzero(holes == k)
            if rr.mean() > head[1] and len(rr) * px_mm ** 2 > 400:
                best = k if best is None or len(rr) > (holes == best).sum() else best
        assert best is not None, "no obturator foramen below the femoral head"
        hole = holes == best
        area = hole.sum() * px_mm ** 2
        assert 500 < area < 3000, area          # ~ 45 x 30 mm in adults
        ring = ndimage.binary_dilation(hole, iterations=4) & bone
        assert li[hole].mean() < li[ring].mean() - 0.1
