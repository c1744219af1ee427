"""Path-length rasterizer against independent references (brute-force ray casting, analytic chords)."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taichi_xray as tx
from taichi_xray.rasterize import KOverflowWarning

from reference import box, box_chord, brute_force, icosphere, signed_volume, torus

# a mesh warning is a failure here unless a test expects it (pytest.warns)
pytestmark = pytest.mark.filterwarnings("error::taichi_xray.mesh.MeshWarning")


def simple_camera(width=48, height=40, f=60.0, dist=200.0, cx=None, cy=None):
    """Source on the -z axis at `dist`, looking along +z; detector rows along +y."""
    cx = (width - 1) / 2 if cx is None else cx
    cy = (height - 1) / 2 if cy is None else cy
    K = np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])
    return tx.Camera.from_intrinsics(K, np.eye(3), [0, 0, dist], width, height)


def compare_brute(V, F, cam, atol=2e-3):
    L = tx.path_length(tx.Mesh(V, F), cam)
    ref, hits = brute_force(V, F, cam.source, cam.pixel_rays(normalize=False))
    r = tx.rasterize(tx.Mesh(V, F), cam)
    assert r.n_fixed.sum() == 0
    np.testing.assert_array_equal(r.count.numpy(), hits)
    np.testing.assert_allclose(L, ref, atol=atol)
    return L, ref


def test_sphere_matches_brute_force():
    V, F = icosphere(30.0, 2, centre=(3.0, -2.0, 5.0))
    L, ref = compare_brute(V, F, simple_camera())
    assert L.max() > 50  # the sphere is actually seen


def test_torus_four_crossings():
    V, F = torus(30.0, 10.0, 40, 20)
    R = np.array([[1, 0, 0], [0, np.cos(1.45), -np.sin(1.45)], [0, np.sin(1.45), np.cos(1.45)]])
    V = V @ R.T
    cam = simple_camera(64, 64, f=150.0)
    L, ref = compare_brute(V, F, cam)
    r = tx.rasterize(tx.Mesh(V, F), cam)
    assert (r.count.numpy() == 4).sum() > 200  # rays crossing both tubes


def test_box_with_vertices_and_edges_on_pixel_centres():
    """Corners project exactly onto pixel centres; every diagonal runs through pixel centres."""
    # front face at depth w=200 (f=100 -> 0.5 px/mm), back at w=400 (0.25 px/mm)
    cam = simple_camera(41, 41, f=100.0, dist=200.0, cx=20, cy=20)
    lo, hi = np.array([-24.0, -16.0, 0.0]), np.array([24.0, 32.0, 200.0])
    V, F = box(lo, hi)
    m = tx.Mesh(V, F)
    uv, _ = cam.project(V)
    assert np.all(uv == np.round(uv))
    r = tx.rasterize(m, cam)
    assert r.n_fixed.sum() == 0
    assert np.all(r.count.numpy() % 2 == 0)
    ref = box_chord(lo, hi, cam.source, cam.pixel_rays())
    np.testing.assert_allclose(r.numpy()[0], ref, atol=1e-3)


def test_box_rotated_45_degrees_about_view_axis():
    cam = simple_camera(41, 41, f=100.0, dist=200.0, cx=20, cy=20)
    V, F = box([-20, -20, 0.0], [20, 20, 200.0])
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    V = V @ R.T * np.array([np.sqrt(2) * 1.0, np.sqrt(2), 1.0])  # corners on the axes at +-40 mm
    V = np.round(V, 9)
    r = tx.rasterize(tx.Mesh(V, F), cam)
    assert r.n_fixed.sum() == 0
    uv, _ = cam.project(V)
    assert np.all(uv == np.round(uv))  # corners on pixel centres
    A = np.linalg.inv(R) / np.array([np.sqrt(2), np.sqrt(2), 1.0])  # world -> box frame
    ref = box_chord([-20, -20, 0.0], [20, 20, 200.0], cam.source, cam.pixel_rays(), A=A)
    assert np.all(r.count.numpy() % 2 == 0)
    np.testing.assert_allclose(r.numpy()[0], ref, atol=1e-3)


def test_grazing_vertex_fan_on_pixel_centre():
    """A pyramid apex projecting onto a pixel centre: the fan around it is counted once."""
    cam = simple_camera(21, 21, f=100.0, dist=200.0, cx=10, cy=10)
    V = np.array([[0, 0, 0.0], [-10, -10, 100], [10, -10, 100], [10, 10, 100], [-10, 10, 100]])
    F = np.array([[0, 2, 1], [0, 3, 2], [0, 4, 3], [0, 1, 4], [1, 2, 3], [1, 3, 4]])
    m = tx.Mesh(V, F).oriented(warn=False)
    r = tx.rasterize(m, cam)
    assert r.n_fixed.sum() == 0
    assert r.count.numpy()[10, 10] == 2  # apex pixel: one entry, one exit


def test_nested_shells_beyond_default_K():
    parts = [icosphere(5.0 + 4 * i, 2) for i in range(12)]  # 24 crossings at the centre > K=16
    V = np.concatenate([p[0] for p in parts])
    offs = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
    F = np.concatenate([p[1] + o for p, o in zip(parts, offs)])
    cam = simple_camera(32, 32, f=40.0)
    ref, hits = brute_force(V, F, cam.source, cam.pixel_rays(normalize=False))
    r = tx.rasterize(tx.Mesh(V, F), cam)
    assert r.K >= 24 and int(r.count.max()) == 24
    np.testing.assert_allclose(r.numpy()[0], ref, atol=3e-3)
    # the slots hold every crossing: their signed sum is the path length
    k = torch.arange(r.K)[None, None, :] < r.count[..., None]
    np.testing.assert_allclose(torch.where(k, r.slot_depth, 0).sum(-1).numpy(), ref, atol=3e-3)
    with pytest.warns(KOverflowWarning, match="overflowed on"):
        r8 = tx.rasterize(tx.Mesh(V, F), cam, K=8)
    np.testing.assert_allclose(r8.numpy()[0], ref, atol=3e-3)  # still exact
    assert r8.flags[0].numpy().sum() == (hits > 8).sum()


def test_open_mesh_fallback_flags_pixels():
    V, F = icosphere(30.0, 3)
    F_open = F[V[F].mean(1)[:, 2] > -29]  # cut a hole facing the source
    m = tx.Mesh(V, F_open)
    assert not m.check().watertight
    cam = simple_camera()
    with pytest.warns(tx.MeshWarning):
        r = tx.rasterize(m, cam)
    assert r.n_fixed[0] > 0
    assert r.flags.sum() == r.n_fixed.sum()
    ref_closed = tx.path_length(tx.Mesh(V, F), cam)
    L = r.numpy()[0]
    flagged = r.flags[0].numpy()
    assert np.all(L >= -1e-3)
    # every fixed value is the value of a balanced pixel in its nearest ring that has one
    for r_, c_ in zip(*np.nonzero(flagged)):
        for rad in range(1, 5):
            win = (slice(max(r_ - rad, 0), r_ + rad + 1), slice(max(c_ - rad, 0), c_ + rad + 1))
            ok = ~flagged[win]
            if ok.any():
                assert np.any(np.isclose(L[win][ok], L[r_, c_]))
                break
    # and the result is close to the closed sphere's chord there (small hole, smooth chords)
    assert np.abs(L[flagged] - ref_closed[flagged]).max() < 0.15 * ref_closed.max()


def test_ellipsoid_analytic_chord():
    V, F = icosphere(1.0, 4)
    radii = np.array([40.0, 25.0, 30.0])
    V = V * radii
    cam = simple_camera(64, 64, f=60.0, dist=250.0)
    L = tx.path_length(tx.Mesh(V, F), cam)
    d = cam.pixel_rays()
    s = cam.source / radii
    dd = d / radii
    a = (dd * dd).sum(-1)
    b = (dd * s).sum(-1)
    c = (s * s).sum() - 1
    disc = b * b - a * c
    chord = 2 * np.sqrt(np.maximum(disc, 0)) / a
    inner = chord > 0.3 * chord.max()  # away from the silhouette, where the chord is steep
    # icosphere level 4: max radial deviation 1 - cos(edge/2) ~ 0.3 %; chord error stays within ~1 mm
    assert np.abs(L - chord)[inner].max() < 1.0
    assert np.abs(L - chord)[inner].mean() < 0.3


def test_parallel_beam_volume_invariant():
    V, F = torus(30.0, 12.0, 48, 24)
    V = V @ np.array([[1, 0, 0], [0, 0.6, -0.8], [0, 0.8, 0.6]]).T
    dist, f, n = 1e6, 1e6 / 0.5, 200  # pixel pitch 0.5 mm at the object, nearly parallel rays
    cam = simple_camera(n, n, f=f, dist=dist)
    L = tx.path_length(tx.Mesh(V, F), cam, dtype=torch.float64)
    vol = signed_volume(V, F)
    assert abs(L.sum() * 0.5 ** 2 / vol - 1) < 2e-3


def test_several_meshes_one_call_equal_separate_calls():
    a = tx.Mesh(*icosphere(20.0, 2, centre=(-15, 0, 0)))
    b = tx.Mesh(*torus(20.0, 6.0, 32, 16))
    cam = simple_camera()
    both = tx.path_length([a, b], cam)
    assert both.shape == (2, cam.height, cam.width)
    np.testing.assert_allclose(both[0], tx.path_length(a, cam), atol=1e-5)
    np.testing.assert_allclose(both[1], tx.path_length(b, cam), atol=1e-5)


def test_several_cameras_stack():
    m = tx.Mesh(*icosphere(20.0, 2))
    cams = [tx.Camera.c_arm(sid=500, sdd=800, width=32, height=24, pixel_spacing=2.0, lao=a) for a in (0, 30, 60)]
    L = tx.path_length(m, cams)
    assert L.shape == (3, 24, 32)
    np.testing.assert_allclose(L[0], tx.path_length(m, cams[0]))


def test_mesh_behind_source_raises_and_straddling_raises():
    cam = simple_camera()
    behind = tx.Mesh(*icosphere(10.0, 1, centre=(0, 0, -400.0)), name="behind")
    with pytest.raises(tx.GeometryError, match="'behind' lies entirely behind the X-ray source"):
        tx.path_length(behind, cam)  # never an all-zero image in silence
    front = tx.Mesh(*icosphere(10.0, 1))
    with pytest.raises(tx.GeometryError, match="'behind'"):
        tx.path_length([front, behind], cam)
    # faces of a mesh partly behind the source (a second component) are culled
    Vf, Ff = icosphere(10.0, 1)
    Vb, Fb = icosphere(10.0, 1, centre=(0, 0, -400.0))
    two = tx.Mesh(np.vstack([Vf, Vb]), np.vstack([Ff, Fb + len(Vf)]))
    np.testing.assert_allclose(tx.path_length(two, cam), tx.path_length(front, cam), rtol=1e-5, atol=1e-4)
    around = tx.Mesh(*icosphere(30.0, 1, centre=(0, 0, -200.0)))  # contains the source
    with pytest.raises(tx.GeometryError, match="cross the plane through the X-ray source"):
        tx.path_length(around, cam)


def test_float64_matches_float32():
    m = tx.Mesh(*torus(30.0, 10.0, 32, 16))
    cam = simple_camera()
    L32 = tx.path_length(m, cam)
    L64 = tx.path_length(m, cam, dtype=torch.float64)
    assert L32.dtype == np.float32 and L64.dtype == np.float64
    np.testing.assert_allclose(L32, L64, atol=1e-3)


def test_inward_mesh_is_reoriented_with_warning():
    V, F = icosphere(20.0, 2)
    cam = simple_camera()
    with pytest.warns(tx.MeshWarning, match="reoriented"):
        L = tx.path_length(tx.Mesh(V, F[:, ::-1]), cam)
    np.testing.assert_allclose(L, tx.path_length(tx.Mesh(V, F), cam), atol=1e-5)


def test_bad_inputs():
    cam = simple_camera()
    V, F = icosphere(20.0, 1)
    with pytest.raises(ValueError, match="NaN"):
        tx.path_length((np.where(np.arange(len(V))[:, None] == 3, np.nan, V), F), cam)
    with pytest.raises(ValueError, match="shape"):
        tx.path_length((V[:, :2], F), cam)
    with pytest.raises(ValueError, match="out of range"):
        tx.path_length((V, F + 1000), cam)
    with pytest.raises(TypeError, match="camera"):
        tx.path_length(tx.Mesh(V, F), np.eye(3, 4))
    with pytest.raises(TypeError, match="dtype"):
        tx.rasterize(tx.Mesh(V, F), cam, dtype=torch.float16)
    with pytest.raises(ValueError, match="K must be"):
        tx.rasterize(tx.Mesh(V, F), cam, K=0)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lao=st.floats(-180, 180),
    cran=st.floats(-45, 45),
    rot=st.tuples(st.floats(-np.pi, np.pi), st.floats(-np.pi, np.pi), st.floats(-np.pi, np.pi)),
    shift=st.tuples(st.floats(-40, 40), st.floats(-40, 40), st.floats(-40, 40)),
    which=st.sampled_from(["sphere", "torus", "box"]),
)
def test_random_poses_and_cameras(lao, cran, rot, shift, which):
    from scipy.spatial.transform import Rotation

    V, F = {"sphere": lambda: icosphere(25.0, 2), "torus": lambda: torus(30.0, 9.0, 24, 12),
            "box": lambda: box([-20, -30, -10], [25, 15, 35])}[which]()
    m = tx.Mesh(V, F).transformed(Rotation.from_rotvec(rot).as_matrix(), shift)
    cam = tx.Camera.c_arm(sid=600, sdd=1000, width=40, height=32, pixel_spacing=4.0, lao=lao, cran=cran)
    r = tx.rasterize(m, cam)
    L = r.numpy()[0]
    assert np.all(np.isfinite(L))
    assert L.min() > -1e-3
    assert r.n_fixed.sum() == 0
    assert np.all(r.count.numpy() % 2 == 0)
    assert L.max() > 0


def test_out_reuses_buffers_and_gives_the_same_result():
    m = tx.Mesh(*torus(30.0, 10.0, 32, 16))
    cam = simple_camera()
    r1 = tx.rasterize(m, cam)
    L1 = r1.L.clone()
    ptr = r1.L.data_ptr()
    r2 = tx.rasterize(m, cam, out=r1)
    assert r2.L.data_ptr() == ptr  # storage reused
    assert torch.equal(r2.L, L1) or torch.allclose(r2.L, L1, atol=1e-5)
    # a different image size cannot reuse: new buffers, still correct
    cam2 = simple_camera(24, 20)
    r3 = tx.rasterize(m, cam2, out=r2)
    assert r3.L.shape == (1, 20, 24)
    np.testing.assert_allclose(r3.numpy(), tx.rasterize(m, cam2).numpy(), atol=1e-5)


def test_slot_depths_stay_within_the_face_and_match_the_plane():
    """Each slot's signed depth is the distance along the pixel's ray to its face's plane (float64
    reference), and the point lies within the depth range of the face's corners even where the face
    is seen almost edge-on (the silhouette of a sphere: 1/w is a convex combination of the corners'
    1/w with the barycentric weights normalised by their sum, not by a separately rounded area)."""
    V, F = icosphere(60.0, 4)
    rng = np.random.default_rng(11)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    V = V @ Q.T + np.array([3.1, -2.7, 1.3])
    cam = simple_camera(width=160, height=144, f=150.0, dist=400.0)
    r = tx.rasterize(tx.Mesh(V, F), cam)
    count, sf, sd = r.count.numpy(), r.slot_face.numpy(), r.slot_depth.numpy()  # slots >= count: unused
    rows, cols, k = np.nonzero(np.arange(sf.shape[-1])[None, None, :] < count[..., None])
    f = sf[rows, cols, k]
    d = cam.pixel_rays(normalize=False)[rows, cols]  # depth component 1
    w_px = np.abs(sd[rows, cols, k].astype(np.float64)) / np.linalg.norm(d, axis=1)  # the depth w of the crossing
    _, w = cam.project(V)
    wf = w[F[f]]  # (n, 3) corner depths
    tol = 1e-6 * wf.max()
    assert (w_px >= wf.min(1) - tol).all() and (w_px <= wf.max(1) + tol).all()
    v0, v1, v2 = V[F[f, 0]], V[F[f, 1]], V[F[f, 2]]
    n = np.cross(v1 - v0, v2 - v0)
    t = np.einsum("ij,ij->i", n, v0 - cam.source) / np.einsum("ij,ij->i", n, d)  # depth w of the plane
    grazing = np.abs(np.einsum("ij,ij->i", n, d / np.linalg.norm(d, axis=1)[:, None])) / np.linalg.norm(n, axis=1)
    assert (grazing < 0.1).sum() > 20  # the test does see nearly edge-on faces
    np.testing.assert_allclose(w_px[grazing >= 0.1], t[grazing >= 0.1], rtol=2e-6, atol=0)
    np.testing.assert_allclose(w_px, t, rtol=0, atol=0.05)
