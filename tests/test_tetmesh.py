"""Tetrahedral meshes with heterogeneous density: checks, face jumps, the per-face signed-depth
formula against brute-force per-tet integration and analytic integrals, building, I/O, CT
sampling, the shape-and-density model, and the rasterizer's channel weights."""
import importlib.util
import os
import warnings

from pathlib import Path

import numpy as np
import pytest
import torch

from reference_tet import face_integrals, kuhn_grid, rays_through, reference_jumps, tet_integrals, volumes
from taichi_xray.mesh import Mesh
from taichi_xray.objects.tetmesh import TetMesh, TetMeshWarning, linear_jumps
from taichi_xray.primitives import icosphere

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "pelvis-ct"))


def _module_jumps(tm, x_ref=None):
    J, x_ref, _ = tm.linear_jumps(x_ref)
    return J, x_ref


# ------------------------------------------------------------------------------ analytic
def test_single_tet_constant_and_linear_analytic():
    L = 30.0
    V = np.array([[0, 0, 0], [L, 0, 0], [0, L, 0], [0, 0, L]], float) + [5.0, -3.0, 2.0]
    X = np.array([[0, 1, 2, 3]])
    f = np.array([[0.2, 1.0], [0.5, 0.0], [1.1, 0.3], [2.0, 0.7]])  # per vertex, 2 basis materials
    xy = np.array([[3.0, 4.0], [10.0, 12.0], [1.0, 20.0]])
    s_list = [np.array([x + 5.0, y - 3.0, -100.0]) for x, y in xy]
    d = np.array([0.0, 0.0, 1.0])
    for (x, y), s in zip(xy, s_list):
        h = L - x - y  # chord along z
        # linear: rho = f0 + (f1 - f0) x/L + (f2 - f0) y/L + (f3 - f0) z/L
        want_lin = h * (f[0] + (f[1] - f[0]) * x / L + (f[2] - f[0]) * y / L) + (f[3] - f[0]) * h * h / (2 * L)
        tm = TetMesh(V, X, f, kind="linear")
        J, x_ref = _module_jumps(tm)
        got = face_integrals(tm.vertices, tm.faces, J, x_ref, s, d[None])[0]
        np.testing.assert_allclose(got, want_lin, rtol=1e-12)
        np.testing.assert_allclose(tet_integrals(V, X, f, "linear", s, d[None])[0], want_lin, rtol=1e-12)
        # constant
        tc = TetMesh(V, X, [[0.7, 0.1]])
        Jc, _ = tc.face_jumps()
        np.testing.assert_array_equal(Jc, np.tile([[0.7, 0.1]], (4, 1)))
        Jc4, xr, _ = tc.linear_jumps()
        got = face_integrals(tc.vertices, tc.faces, Jc4, xr, s, d[None])[0]
        np.testing.assert_allclose(got, [0.7 * h, 0.1 * h], rtol=1e-12)


def _box_chord(lo, hi, s, d):
    with np.errstate(divide="ignore"):
        t1 = (lo - s) / d
        t2 = (hi - s) / d
    return np.max(np.minimum(t1, t2)), np.min(np.maximum(t1, t2))


@pytest.mark.parametrize("jitter", [0.0, 0.12])
def test_box_of_tets_linear_density_analytic(jitter):
    rng = np.random.default_rng(5)
    lo, hi = np.array([-20.0, -15.0, -10.0]), np.array([20.0, 15.0, 12.0])
    V, X = kuhn_grid((3, 2, 2), (hi - lo) / [3, 2, 2], lo, jitter=jitter, rng=rng)
    a = np.array([0.8, 0.3])
    g = np.array([[0.01, -0.02, 0.005], [0.003, 0.004, -0.002]])  # (B, 3) per mm
    tm = TetMesh(V, X, a + V @ g.T, kind="linear")
    s, dirs = rays_through(rng, lo, hi, 25)
    want = []
    for d in dirs:
        t0, t1 = _box_chord(lo, hi, s, d)
        want.append(a * (t1 - t0) + (g @ s) * (t1 - t0) + (g @ d) * (t1**2 - t0**2) / 2)
    want = np.array(want)
    J, x_ref = _module_jumps(tm)
    np.testing.assert_allclose(face_integrals(tm.vertices, tm.faces, J, x_ref, s, dirs), want, rtol=1e-9)
    np.testing.assert_allclose(tet_integrals(V, X, tm.densities, "linear", s, dirs), want, rtol=1e-9)
    # a globally affine field is continuous with one gradient: interior faces have no jump
    assert np.abs(J[~tm.boundary_mask]).max() < 1e-12


# ------------------------------------------------------------------------------ brute force
def test_random_meshes_face_formula_equals_per_tet_integral():
    rng = np.random.default_rng(11)
    lo, hi = np.array([-25.0, -20.0, -15.0]), np.array([25.0, 20.0, 15.0])
    V, X = kuhn_grid((3, 3, 3), (hi - lo) / 3, lo, jitter=0.15, rng=rng)
    s, dirs = rays_through(rng, lo, hi, 40)
    Dc = rng.uniform(0, 2, (len(X), 2))
    Dc[rng.random(len(X)) < 0.3] = 0.0  # empty tets: holes inside the object
    Dl = rng.uniform(0, 2, (len(V), 2))
    for D, kind in ((Dc, "constant"), (Dl, "linear")):
        tm = TetMesh(V, X, D, kind=kind)
        ref = tet_integrals(V, X, D, kind, s, dirs)
        assert np.abs(ref).max() > 10  # the rays cross the object
        J, x_ref = _module_jumps(tm)
        np.testing.assert_allclose(J, reference_jumps(V, X, D, kind, tm.faces, tm.face_tets, x_ref), atol=1e-12)
        np.testing.assert_allclose(face_integrals(tm.vertices, tm.faces, J, x_ref, s, dirs), ref, rtol=1e-9,
                                   atol=1e-9)
        # any reference point gives the same sums (in float64)
        J2, x2 = _module_jumps(tm, x_ref=[300.0, -200.0, 100.0])
        np.testing.assert_allclose(face_integrals(tm.vertices, tm.faces, J2, x2, s, dirs), ref, rtol=1e-8, atol=1e-8)
    # the constant-density jumps: only faces between tets of different densities are active
    tm = TetMesh(V, X, Dc)
    J, active = tm.face_jumps()
    a, b = tm.face_tets.T
    same = (b >= 0) & np.all(Dc[a] == Dc[np.maximum(b, 0)], axis=1)
    np.testing.assert_array_equal(active, ~same & ~((b < 0) & np.all(Dc[a] == 0, axis=1)))


def test_float32_with_reference_point_near_the_object():
    """The face sums in float32 stay accurate when τ is measured from a point near the object."""
    rng = np.random.default_rng(3)
    lo, hi = np.array([-20.0] * 3), np.array([20.0] * 3)
    V, X = kuhn_grid((3, 3, 3), (hi - lo) / 3, lo, jitter=0.15, rng=rng)
    D = rng.uniform(0.5, 1.5, (len(V), 1))
    tm = TetMesh(V + [0.0, 0.0, 900.0], X, D, basis=("water",), kind="linear")  # far from the source
    s = np.array([0.0, 0.0, 0.0])
    tgt = rng.uniform(lo, hi, (30, 3)) + [0, 0, 900.0]
    dirs = (tgt - s) / np.linalg.norm(tgt - s, axis=1, keepdims=True)
    ref = tet_integrals(tm.vertices, X, D, "linear", s, dirs)[:, 0]
    J, x_ref = _module_jumps(tm)
    got32 = face_integrals(tm.vertices.astype(np.float32), tm.faces, J.astype(np.float32),
                           x_ref.astype(np.float32), s.astype(np.float32), dirs.astype(np.float32))[:, 0]
    assert got32.dtype == np.float32
    err_near = np.abs(got32 - ref).max()
    assert err_near < 1e-5 * np.abs(ref).max()  # measured 2e-6
    # measuring τ from the source instead (x_ref = source) loses ~70x more to cancellation
    J0, x0 = _module_jumps(tm, x_ref=s)
    got0 = face_integrals(tm.vertices.astype(np.float32), tm.faces, J0.astype(np.float32), x0.astype(np.float32),
                          s.astype(np.float32), dirs.astype(np.float32))[:, 0]
    assert np.abs(got0 - ref).max() > 10 * err_near


# ------------------------------------------------------------------------------ checks
def _two_tets():
    V = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [0, 0, -10]], float)
    return V, np.array([[0, 1, 2, 3], [0, 2, 1, 4]])


def test_two_tets_topology_and_boundary():
    V, X = _two_tets()
    tm = TetMesh(V, X, [[1.0, 0.0], [0.5, 0.25]])
    assert tm.n_faces == 7 and tm.report.n_boundary_faces == 6
    i = np.flatnonzero(~tm.boundary_mask)[0]
    a, b = tm.face_tets[i]
    n = np.cross(*(V[tm.faces[i, 1:]] - V[tm.faces[i, 0]]))
    # the shared face's normal points from tet a to tet b
    assert n @ (V[X[b]].mean(0) - V[X[a]].mean(0)) > 0
    J, active = tm.face_jumps()
    np.testing.assert_allclose(J[i], np.array([[1.0, 0.0], [0.5, 0.25]])[a] - np.array([[1.0, 0.0], [0.5, 0.25]])[b])
    surf = tm.boundary()
    rep = surf.check()
    assert rep.watertight and rep.outward and abs(rep.volume - tm.volume()) < 1e-9
    assert abs(tm.volume() - 2 * 1000 / 6) < 1e-9


def test_checks_raise_clear_errors():
    V, X = _two_tets()
    with pytest.raises(ValueError, match="NaN"):
        TetMesh(np.where(np.arange(15).reshape(5, 3) == 4, np.nan, V), X)
    with pytest.raises(ValueError, match=r"shape \(T, 4\)"):
        TetMesh(V, X[:, :3])
    with pytest.raises(ValueError, match="range"):
        TetMesh(V, X + 1)
    with pytest.raises(ValueError, match="vertex twice"):
        TetMesh(V, [[0, 1, 1, 3]])
    with pytest.raises(ValueError, match="used by no tet"):
        TetMesh(V, X[:1])
    with pytest.warns(TetMeshWarning, match="dropped 1"):
        assert len(TetMesh(V, X[:1], drop_unused=True).vertices) == 4
    # as many tets as vertices: 4 tets round the axis of an octahedron, one split at its centroid
    ang = np.arange(4) * np.pi / 2
    Vo = np.vstack([[[0, 0, -10], [0, 0, 10]], np.stack([10 * np.cos(ang), 10 * np.sin(ang), 0 * ang], 1)])
    Xo = [[0, 1, 2 + i, 2 + (i + 1) % 4] for i in range(4)]
    Vo = np.vstack([Vo, Vo[Xo[0]].mean(0)])
    Xo = Xo[1:] + [[6 if j == k else v for j, v in enumerate(Xo[0])] for k in range(4)]
    assert len(Vo) == len(Xo) == 7
    with pytest.raises(ValueError, match="ambiguous"):
        TetMesh(Vo, Xo, np.ones((7, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TetMeshWarning)  # some of these tets are inverted
        assert TetMesh(Vo, Xo, np.ones((7, 2)), kind="linear").kind == "linear"
    with pytest.raises(ValueError, match=">= 0"):
        TetMesh(V, X, [[1.0, -0.1], [0, 0]])
    with pytest.raises(ValueError, match="NaN"):
        TetMesh(V, X, [[1.0, np.nan], [0, 0]])
    with pytest.raises(ValueError, match="rows"):
        TetMesh(V, X, np.ones((3, 2)), kind="constant")
    # inverted: repaired with a warning, or an error
    Xi = X.copy()
    Xi[1] = Xi[1][[1, 0, 2, 3]]
    with pytest.warns(TetMeshWarning, match="1 of 2 tets were inverted"):
        tm = TetMesh(V, Xi)
    assert (volumes(tm.vertices, tm.tets) > 0).all()
    with pytest.raises(ValueError, match="inverted"):
        TetMesh(V, Xi, repair=False)
    # folded: two tets on the same side of their shared face
    Vf = np.vstack([V, [[1, 1, 5]]])
    with pytest.raises(ValueError, match="same side"), pytest.warns(TetMeshWarning, match="dropped"):
        TetMesh(Vf, [[0, 1, 2, 3], [0, 1, 2, 5]], drop_unused=True)
    # a triangle shared by three tets
    with pytest.raises(ValueError, match="more than two"):
        TetMesh(Vf, [[0, 1, 2, 3], [0, 2, 1, 4], [0, 1, 2, 5]])
    # hanging vertex: tet A's face (0, 1, 2) covered by two tets meeting at the midpoint of edge 1-2
    Vh = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10], [5, 5, 0], [2, 2, -10]], float)
    with pytest.raises(ValueError, match="partly covered"):
        TetMesh(Vh, [[0, 1, 2, 3], [0, 4, 1, 5], [0, 2, 4, 5]])
    # an interface triangulated differently on its two sides (diagonal AC above, BD below)
    Vp = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0], [5, 5, 8], [5, 5, -8]], float)
    Xp = np.array([[0, 1, 2, 4], [0, 2, 3, 4], [0, 1, 3, 5], [1, 2, 3, 5]])
    neg = volumes(Vp, Xp) < 0
    Xp[neg] = Xp[neg][:, [0, 1, 3, 2]]
    with pytest.raises(ValueError, match="triangulated differently"):
        TetMesh(Vp, Xp)
    # a linear mesh's constant jumps are refused with a hint
    with pytest.raises(ValueError, match="linear_jumps"):
        TetMesh(V, X, np.ones((5, 2))).face_jumps()


def test_degenerate_tet_is_rejected():
    V = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [3, 3, 1e-9]], float)
    with pytest.raises(ValueError, match="degenerate"):
        TetMesh(V, [[0, 1, 2, 3]])


def test_face_channels_and_parent():
    V, X = _two_tets()
    tm = TetMesh(V, X, [[1.0, 0.0], [1.0, 0.0]])
    ch, w, active = tm.face_channels(channels=[3, 5])
    assert ch.dtype == np.int32 and ch.shape == (7, 2)
    inner = ~tm.boundary_mask
    assert not active[inner].any() and (ch[inner] == -1).all()  # equal densities: no jump
    assert (ch[~inner, 0] == 3).all() and (ch[~inner, 1] == -1).all() and np.allclose(w[~inner, 0], 1.0)
    ch, w, active = tm.face_channels(parent_channel=7)
    assert ch.shape == (7, 3) and (ch[~inner, 2] == 7).all() and np.allclose(w[~inner, 2], -1.0)


def test_to_constant_and_mass():
    V, X = _two_tets()
    D = np.array([[1.0, 0], [2, 0], [3, 0], [4, 0], [5, 0]])
    tm = TetMesh(V, X, D, kind="linear")
    tc = tm.to_constant()
    np.testing.assert_allclose(tc.densities[:, 0], [D[X[0], 0].mean(), D[X[1], 0].mean()])
    np.testing.assert_allclose(tm.mass(), tc.mass())
    np.testing.assert_allclose(tc.mass()[0], (tc.densities[:, 0] * tc.volumes()).sum() * 1.0 / 1000)


# ------------------------------------------------------------------------------ torch
def test_linear_jumps_differentiable_in_torch():
    rng = np.random.default_rng(2)
    V, X = kuhn_grid((1, 1, 2), (10.0, 10.0, 10.0), jitter=0.0, rng=rng)
    tm = TetMesh(V, X, rng.uniform(0, 1, (len(V), 2)), kind="linear")
    J, x_ref, _ = tm.linear_jumps()
    Vt = torch.tensor(V, dtype=torch.float64, requires_grad=True)
    Dt = torch.tensor(tm.densities, dtype=torch.float64, requires_grad=True)
    Jt = linear_jumps(Vt, tm.tets, Dt, tm.face_tets, torch.tensor(x_ref))
    np.testing.assert_allclose(Jt.detach().numpy(), J, atol=1e-12)
    R = torch.tensor(rng.normal(size=J.shape))  # a random projection: one output, a full check of the VJP
    torch.autograd.gradcheck(lambda v, d: (linear_jumps(v, tm.tets, d, tm.face_tets, torch.tensor(x_ref)) * R).sum(),
                             (Vt, Dt), eps=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ I/O
def test_meshio_round_trip(tmp_path):
    import meshio

    rng = np.random.default_rng(4)
    V, X = kuhn_grid((2, 1, 1), (10.0, 10.0, 10.0), jitter=0.0, rng=rng)
    for kind, D in (("constant", rng.uniform(0, 1, (len(X), 2))), ("linear", rng.uniform(0, 1, (len(V), 2)))):
        tm = TetMesh(V, X, D, kind=kind, name="part")
        for ext in ("vtu", "vtk"):
            p = tmp_path / f"{kind}.{ext}"
            tm.save(p)
            back = TetMesh.load(p)
            assert back.kind == kind and back.basis == tm.basis
            np.testing.assert_allclose(back.vertices, tm.vertices)
            np.testing.assert_array_equal(back.tets, tm.tets)
            np.testing.assert_allclose(back.densities, tm.densities)
            with pytest.raises(FileExistsError):
                tm.save(p)
    # geometry-only formats: homogeneous on load
    p = tmp_path / "geo.msh"
    meshio.write(p, meshio.Mesh(V, [("tetra", X)]), file_format="gmsh22")
    back = TetMesh.load(p)
    assert back.n_tets == len(X) and np.allclose(back.densities, [1.0, 0.0])
    # no tetrahedra
    p = tmp_path / "tri.vtu"
    meshio.write(p, meshio.Mesh(V, [("triangle", X[:, :3])]))
    with pytest.raises(ValueError, match="no tetrahedra"):
        TetMesh.load(p)
    # mixed volume cells: keep tets, warn; a boundary triangle block is ignored silently
    p = tmp_path / "mixed.vtu"
    hexa = np.array([[0, 1, 3, 2, 6, 7, 9, 8]])
    meshio.write(p, meshio.Mesh(V, [("tetra", X), ("hexahedron", hexa), ("triangle", X[:2, :3])]))
    with pytest.warns(TetMeshWarning, match="1 hexahedron"):
        assert TetMesh.load(p).n_tets == len(X)
    with pytest.raises(FileNotFoundError):
        TetMesh.load(tmp_path / "missing.vtu")


# ------------------------------------------------------------------------------ building
def test_tetgen_sphere_keeps_the_surface():
    pytest.importorskip("tetgen")
    from taichi_xray.objects.tetbuild import tetrahedralize

    surf = Mesh(*icosphere(radius=20.0, subdivisions=2))
    tm = tetrahedralize(surf, max_volume=200.0, method="tetgen")
    assert tm.report.n_tets > surf.volume() / 200.0
    assert abs(tm.volume() - surf.volume()) <= 1e-6 * surf.volume()
    b = tm.boundary().check()
    assert b.watertight and b.outward and abs(b.volume - tm.volume()) < 1e-9 * tm.volume()


def test_ftetwild_sphere_is_valid_within_its_envelope(tmp_path, monkeypatch):
    if importlib.util.find_spec("pytetwild") is None:  # (import pytetwild itself needs PyVista)
        pytest.skip("pytetwild is not installed")
    from taichi_xray.objects.tetbuild import tetrahedralize

    surf = Mesh(*icosphere(radius=20.0, subdivisions=1))
    eps = 1e-3
    monkeypatch.chdir(tmp_path)
    tm = tetrahedralize(surf, max_volume=300.0, method="ftetwild", epsilon=eps, threads=1)
    assert list(tmp_path.iterdir()) == [] and Path.cwd() == tmp_path  # nothing written into the user's folder
    b = tm.boundary().check()
    assert b.watertight and b.outward and b.components == 1
    assert abs(b.volume - tm.volume()) < 1e-9 * tm.volume()  # the tets fill their boundary exactly
    # the boundary lies within eps * diagonal of the input surface, so |dV| <= eps * diagonal * area
    diag = np.linalg.norm(np.ptp(surf.vertices, axis=0))
    assert abs(tm.volume() - surf.volume()) <= eps * diag * surf.area()
    assert tm.build_info["method"] == "ftetwild" and tm.n_tets > 50
    # without fTetWild's optimisation the input surface is kept (the volume to rounding)
    raw = tetrahedralize(surf, max_volume=300.0, method="ftetwild", optimize=False, threads=1)
    assert abs(raw.volume() - surf.volume()) <= 1e-6 * surf.volume()
    assert raw.boundary().check().outward


# ------------------------------------------------------------------------------ CT sampling
def test_sample_ct_linear_hu_field_and_frames(tmp_path):
    nib = pytest.importorskip("nibabel")
    from taichi_xray.objects.tetbuild import sample_ct
    from taichi_xray.physics.hu import get_hu_conversion

    conv = get_hu_conversion("water_bone", hu_bone=1600.0)
    # HU affine in world (LPS) x, inside the water/bone mixing range: weights are affine too
    shape = (20, 16, 12)
    A_ras = np.array([[-2.0, 0, 0, 30.0], [0, -2.5, 0, 25.0], [0, 0, 3.0, -10.0], [0, 0, 0, 1]])  # RAS affine
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    lps = ijk @ A_ras[:3, :3].T + A_ras[:3, 3]
    lps[..., :2] *= -1  # RAS -> LPS
    hu = 800.0 + 10.0 * lps[..., 0] - 4.0 * lps[..., 1] + 6.0 * lps[..., 2]
    assert 0 < hu.min() and hu.max() < 1600
    p = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu.astype(np.float32), A_ras), p)
    lo = lps.reshape(-1, 3).min(0) + 3
    hi = lps.reshape(-1, 3).max(0) - 3
    V, X = kuhn_grid((2, 2, 2), (hi - lo) / 2, lo, jitter=0.1, rng=np.random.default_rng(0))
    tm = TetMesh(V, X).sample_ct(str(p), kind="linear", conversion=conv)
    assert tm.basis == ("water", "cortical_bone")
    want = conv(800.0 + V @ [10.0, -4.0, 6.0])
    np.testing.assert_allclose(tm.densities, want, atol=2e-5)
    tc = TetMesh(V, X).sample_ct(str(p), kind="constant", conversion=conv)
    np.testing.assert_allclose(tc.densities, conv(800.0 + tm.centroids() @ [10.0, -4.0, 6.0]), atol=2e-5)
    # line integrals through the linear mesh = analytic integral of the affine weights
    s, dirs = rays_through(np.random.default_rng(1), lo + 1, hi - 1, 5, distance=300.0)
    J, x_ref, _ = tm.linear_jumps()
    ref = tet_integrals(V, X, want, "linear", s, dirs)
    np.testing.assert_allclose(face_integrals(tm.vertices, tm.faces, J, x_ref, s, dirs), ref, rtol=1e-6, atol=1e-6)
    # outside the volume: zero with a warning, or an error
    with pytest.warns(TetMeshWarning, match="outside"):
        assert np.all(sample_ct(str(p), [[1000.0, 0, 0]], conversion=conv) == 0)
    with pytest.raises(ValueError, match="outside"):
        sample_ct(str(p), [[1000.0, 0, 0]], conversion=conv, outside="error")
    with pytest.raises(ValueError, match="does not match"):
        sample_ct(str(p), V, conversion=conv, basis=("water", "lead"))


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data/pelvis-ct is absent")
def test_sample_real_ct_at_voxel_centres():
    nib = pytest.importorskip("nibabel")
    from taichi_xray.objects.tetbuild import sample_ct
    from taichi_xray.physics.hu import get_hu_conversion

    img = nib.load(os.path.join(SHARED, "ct.nii.gz"))
    hu = np.asarray(img.dataobj)
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(1, n - 1, 50) for n in hu.shape], 1)
    ras = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    lps = ras * [-1, -1, 1]
    conv = get_hu_conversion("water_bone")
    got = sample_ct(os.path.join(SHARED, "ct.nii.gz"), lps, conversion=conv)
    np.testing.assert_allclose(got, conv(hu[tuple(ijk.T)]), atol=1e-5)


# ------------------------------------------------------------------------------ shape-and-density model
def test_tet_shape_density_model_reproduces_members(tmp_path):
    from taichi_xray.objects.tetssm import TetShapeDensityModel

    rng = np.random.default_rng(8)
    V0, X = kuhn_grid((2, 2, 2), (10.0, 10.0, 10.0), jitter=0.1, rng=rng)
    for kind, R in (("linear", len(V0)), ("constant", len(X))):
        members = []
        for _ in range(5):
            A = np.eye(3) + 0.05 * rng.normal(size=(3, 3))
            V = V0 @ A.T + 0.3 * np.sin(V0 / 7.0) + rng.normal(size=3)
            D = np.clip(rng.uniform(0.3, 1.2, (1, 2)) + 0.1 * rng.normal(size=(R, 2)), 0, None)
            members.append(TetMesh(V, X, D, kind=kind))
        model = TetShapeDensityModel.fit(members)
        assert model.n_components == 4 and model.kind == kind
        for m in members:
            beta = model.project(m.vertices, m.densities)
            np.testing.assert_allclose(model.vertices(beta), m.vertices, atol=1e-9)
            np.testing.assert_allclose(model.densities(beta), m.densities, atol=1e-9)
            tm = model.tetmesh(beta)
            np.testing.assert_allclose(tm.densities, m.densities, atol=1e-9)
        # differentiable: the jumps as a torch function of beta, against numpy per member
        beta = torch.tensor(model.project(members[1].vertices, members[1].densities), requires_grad=True)
        Jt = model.face_weights(beta)
        if kind == "linear":
            want = members[1].linear_jumps(model.reference_point)[0]
        else:
            want = members[1].face_jumps()[0]
        np.testing.assert_allclose(Jt.detach().numpy(), want, atol=1e-8)
        R = torch.tensor(rng.normal(size=Jt.shape))
        torch.autograd.gradcheck(lambda b: (model.face_weights(b) * R).sum(), (beta,), eps=1e-6, atol=1e-5)
        p = model.save(tmp_path / f"{kind}.npz")
        back = TetShapeDensityModel.load(p)
        np.testing.assert_allclose(back.vertices(np.ones(2)), model.vertices(np.ones(2)))
        np.testing.assert_allclose(back.densities(np.ones(2)), model.densities(np.ones(2)))
    with pytest.raises(ValueError, match="other tets"):
        TetShapeDensityModel.fit([members[0], TetMesh(V0, X[::-1].copy(), np.ones((len(X), 2)))])


# ------------------------------------------------------------------------------ the rasterizer
def _camera(size=48):
    from taichi_xray.camera import Camera

    return Camera.c_arm(sid=400.0, sdd=700.0, width=size, height=size, pixel_spacing=2.0, lao=23.0, cran=11.0)


def test_constant_density_equals_surface_path_length_times_density():
    from taichi_xray import path_length

    rng = np.random.default_rng(6)
    lo, hi = np.array([-30.0, -25.0, -20.0]), np.array([30.0, 25.0, 20.0])
    V, X = kuhn_grid((3, 3, 2), (hi - lo) / [3, 3, 2], lo, jitter=0.15, rng=rng)
    rho = np.array([0.8, 0.3])
    tm = TetMesh(V, X, np.tile(rho, (len(X), 1)))
    cam = _camera()
    L = path_length(tm.boundary(), cam, dtype=torch.float64)
    dirs = cam.pixel_rays().reshape(-1, 3)
    J, x_ref, _ = tm.linear_jumps()
    got = face_integrals(tm.vertices, tm.faces, J, x_ref, cam.source, dirs).reshape(cam.height, cam.width, 2)
    assert L.max() > 40
    np.testing.assert_allclose(got, L[..., None] * rho, atol=1e-8)


def test_rasterizer_channels_match_brute_force():
    """Heterogeneous constant densities through the rasterizer's per-face channel weights."""
    from taichi_xray.rasterize import Rasterizer
    from taichi_xray.runtime import torch_device

    rng = np.random.default_rng(7)
    lo, hi = np.array([-30.0, -25.0, -20.0]), np.array([30.0, 25.0, 20.0])
    V, X = kuhn_grid((3, 3, 2), (hi - lo) / [3, 3, 2], lo, jitter=0.15, rng=rng)
    D = rng.uniform(0, 2, (len(X), 2))
    D[rng.random(len(X)) < 0.25] = 0.0
    tm = TetMesh(V, X, D)
    ch, w, active = tm.face_channels()
    cam = _camera()
    ref = tet_integrals(V, X, D, "constant", cam.source, cam.pixel_rays().reshape(-1, 3))
    ref = ref.reshape(cam.height, cam.width, 2).transpose(2, 0, 1)
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 5e-4)):  # measured 1e-12, 9e-5
        F = tm.faces[active]
        rz = Rasterizer(F, np.zeros(len(F), np.int32), ch[active], w[active], 2, [cam], dtype=dtype)
        st = rz.forward(torch.as_tensor(np.array(tm.vertices), dtype=dtype, device=torch_device())[None].contiguous(),
                        keep_slots=False)
        got = st.L[0].cpu().numpy()
        assert ref.max() > 20
        np.testing.assert_allclose(got, ref, atol=tol)
