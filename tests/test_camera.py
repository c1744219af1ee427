"""Camera geometry against independent references: P built from known K, R, t;
hand-written C-arm geometry (scipy rotations in the LPS patient frame); pinhole formulas."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from taichi_xray.camera import Camera, rq_decomposition

MIRROR = np.diag([-1.0, 1.0, 1.0])  # flips the camera's x axis: det(R) = -1


def random_krt(rng, mirrored=False):
    fx, fy = rng.uniform(100, 3000, 2)
    K = np.array([[fx, rng.uniform(-30, 30), rng.uniform(-200, 1200)],
                  [0.0, fy, rng.uniform(-200, 1200)],
                  [0.0, 0.0, 1.0]])
    R = Rotation.random(random_state=rng).as_matrix()
    if mirrored:
        R = MIRROR @ R
    t = rng.uniform(-500, 500, 3)
    return K, R, t


def build_P(K, R, t):
    return K @ np.hstack([R, np.asarray(t, float)[:, None]])


def c_arm(**kw):
    args = dict(sid=600.0, sdd=1000.0, width=64, height=48, pixel_spacing=0.5)
    args.update(kw)
    return Camera.c_arm(**args)


def source_reference(lao, cran, sid, iso=(0.0, 0.0, 0.0)):
    """Source position: posterior at rest, primary angle about +z (LAO toward the
    patient's left for the detector), secondary about the rotated lateral axis."""
    rot = Rotation.from_euler("ZX", [lao, -cran], degrees=True)
    return np.asarray(iso, float) + sid * rot.apply([0.0, 1.0, 0.0])


# ------------------------------------------------------------------ decomposition
@pytest.mark.parametrize("mirrored", [False, True])
def test_round_trip_random_cameras(rng, mirrored):
    for _ in range(40):
        K, R, t = random_krt(rng, mirrored)
        cam = Camera.from_projection_matrix(build_P(K, R, t), 640, 480)
        np.testing.assert_allclose(cam.K, K, rtol=1e-9, atol=1e-9 * K[0, 0])
        np.testing.assert_allclose(cam.R, R, atol=1e-10)
        np.testing.assert_allclose(cam.t, t, atol=1e-7)
        assert cam.K[2, 2] == pytest.approx(1.0, abs=1e-12)
        assert np.all(np.diag(cam.K) > 0)
        np.testing.assert_allclose(np.tril(cam.K, -1), 0, atol=1e-12)
        np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(cam.R) == pytest.approx(-1.0 if mirrored else 1.0, abs=1e-12)
        assert cam.mirrored is mirrored
        # camera centre: C = -R^T t, and P @ [C, 1] = 0
        C = -R.T @ t
        np.testing.assert_allclose(cam.source, C, atol=1e-7)
        h = cam.P @ np.append(cam.source, 1.0)
        assert np.abs(h).max() < 1e-9 * np.abs(cam.P).max() * np.abs(C).max()
        np.testing.assert_allclose(cam.view_direction, R[2], atol=1e-12)
        assert cam.principal_point == pytest.approx((K[0, 2], K[1, 2]), rel=1e-9)
        assert cam.focal_length_px == pytest.approx(0.5 * (K[0, 0] + K[1, 1]), rel=1e-9)
        np.testing.assert_allclose(cam.M_inv @ cam.P[:, :3], np.eye(3), atol=1e-10)


def test_from_intrinsics_equals_projection_matrix(rng):
    K, R, t = random_krt(rng)
    a = Camera.from_intrinsics(K, R, t, 100, 80, pixel_spacing=0.3)
    b = Camera.from_projection_matrix(5.0 * build_P(K, R, t), 100, 80, pixel_spacing=0.3)
    np.testing.assert_allclose(a.P, b.P, rtol=1e-12, atol=1e-12)
    assert a.detector_distance == pytest.approx(0.3 * 0.5 * (K[0, 0] + K[1, 1]))
    assert Camera.from_projection_matrix(build_P(K, R, t), 100, 80).detector_distance is None


@pytest.mark.parametrize("scale", [1e-9, 1e-4, 0.37, 1.0, 13.0, 1e7])
def test_positive_scale_gives_same_camera(rng, scale):
    K, R, t = random_krt(rng)
    P = build_P(K, R, t)
    ref = Camera.from_projection_matrix(P, 320, 240)
    cam = Camera.from_projection_matrix(scale * P, 320, 240)
    np.testing.assert_allclose(cam.P, ref.P, rtol=1e-12, atol=1e-12 * np.abs(ref.P).max())
    np.testing.assert_allclose(cam.K, K, rtol=1e-9, atol=1e-9 * K[0, 0])
    np.testing.assert_allclose(cam.R, R, atol=1e-10)
    np.testing.assert_allclose(cam.t, t, atol=1e-7)
    np.testing.assert_allclose(cam.source, ref.source, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(cam.P[2, :3]), 1.0, rtol=1e-14)


def test_rq_decomposition_signs(rng):
    for _ in range(30):
        M = rng.normal(size=(3, 3))
        K, R = rq_decomposition(M)
        np.testing.assert_allclose(K @ R, M, atol=1e-12)
        assert np.all(np.diag(K) > 0)
        np.testing.assert_allclose(np.tril(K, -1), 0, atol=1e-14)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.sign(np.linalg.det(R)) == np.sign(np.linalg.det(M))


def test_cached_arrays_are_read_only(rng):
    cam = Camera.from_projection_matrix(build_P(*random_krt(rng)), 10, 10)
    for arr in (cam.P, cam.K, cam.R, cam.t, cam.M_inv):
        with pytest.raises(ValueError):
            arr[0] = 0.0


def test_input_matrix_is_copied(rng):
    P = build_P(*random_krt(rng))
    P0 = P.copy()
    cam = Camera.from_projection_matrix(P, 10, 10)
    P[:] = 0.0
    np.testing.assert_allclose(cam.P, P0 / np.linalg.norm(P0[2, :3]))


# ------------------------------------------------------------------ OpenCV pixels
def test_pixel_centre_convention_and_depth(rng):
    for mirrored in (False, True):
        K, R, t = random_krt(rng, mirrored)
        W, H = 37, 23
        cam = Camera.from_projection_matrix(build_P(K, R, t), W, H)
        C = -R.T @ t
        rays = cam.pixel_rays()
        raw = cam.pixel_rays(normalize=False)
        for r, c in [(0, 0), (0, W - 1), (H - 1, 0), (H - 1, W - 1), (11, 17)]:
            # independent ray of pixel centre (u=c, v=r): R^T K^-1 (c, r, 1)
            d = R.T @ np.linalg.solve(K, [c, r, 1.0])
            np.testing.assert_allclose(rays[r, c], d / np.linalg.norm(d), atol=1e-12)
            np.testing.assert_allclose(raw[r, c], d, rtol=1e-10)  # advances w by 1 mm per unit
            for depth in (1.0, 250.0, 4000.0):
                X = C + depth * d
                uv, w = cam.project(X[None])
                np.testing.assert_allclose(uv[0], [c, r], atol=1e-8)
                assert w[0] == pytest.approx(depth, rel=1e-10)
        np.testing.assert_allclose(np.linalg.norm(rays, axis=-1), 1.0, atol=1e-14)
        assert rays.shape == (H, W, 3)
        # w is the depth along the principal axis, whatever the lateral offset
        lateral = np.cross(cam.view_direction, rng.normal(size=3))
        X = C + 300.0 * cam.view_direction + lateral
        assert cam.project(X[None])[1][0] == pytest.approx(300.0, rel=1e-10)
        assert cam.project((C - 5.0 * cam.view_direction)[None])[1][0] < 0  # behind the source


def test_project_many_points_matches_plain_formula(rng):
    K, R, t = random_krt(rng)
    cam = Camera.from_projection_matrix(build_P(K, R, t), 64, 64)
    X = rng.normal(scale=100, size=(50, 3))
    Xc = X @ R.T + t
    uvw = Xc @ K.T
    uv, w = cam.project(X)
    np.testing.assert_allclose(uv, uvw[:, :2] / uvw[:, 2:], rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(w, Xc[:, 2], atol=1e-9)
    assert uv.shape == (50, 2) and w.shape == (50,)


# ------------------------------------------------------------------ C-arm
def test_c_arm_at_rest():
    iso = np.array([10.0, -20.0, 35.0])
    cam = c_arm(isocenter=iso)
    np.testing.assert_allclose(cam.source, iso + [0, 600.0, 0], atol=1e-9)  # posterior
    np.testing.assert_allclose(cam.view_direction, [0, -1, 0], atol=1e-12)
    uv, w = cam.project(iso[None])
    np.testing.assert_allclose(uv[0], [31.5, 23.5], atol=1e-9)  # detector centre
    assert cam.principal_point == pytest.approx((31.5, 23.5))
    assert w[0] == pytest.approx(600.0)
    assert cam.detector_distance == pytest.approx(1000.0)
    assert cam.focal_length_px == pytest.approx(2000.0)
    assert cam.mirrored


def test_c_arm_display_orientation():
    pts = np.array([[0, 0, 0], [-10.0, 0, 0], [10.0, 0, 0], [0, 0, 10.0], [0, 0, -10.0]])
    rad, _ = c_arm(radiological=True).project(pts)
    src, _ = c_arm(radiological=False).project(pts)
    # radiological: patient's right (-x) on the image's left, head (+z) at the top
    assert rad[1, 0] < rad[0, 0] < rad[2, 0]
    assert rad[3, 1] < rad[0, 1] < rad[4, 1]
    np.testing.assert_allclose(rad[[1, 2], 1], rad[0, 1])  # x moves along rows only
    np.testing.assert_allclose(rad[[3, 4], 0], rad[0, 0])
    # the source's view flips left/right only
    assert src[1, 0] > src[0, 0] > src[2, 0]
    np.testing.assert_allclose(src[:, 1], rad[:, 1], atol=1e-9)
    np.testing.assert_allclose(src[:, 0], 2 * 31.5 - rad[:, 0], atol=1e-9)
    assert not c_arm(radiological=False).mirrored
    assert np.linalg.det(c_arm(radiological=False).R) == pytest.approx(1.0)
    assert np.linalg.det(c_arm(radiological=True).R) == pytest.approx(-1.0)


def test_c_arm_lao_and_cran_directions():
    lao90 = c_arm(lao=90.0)
    np.testing.assert_allclose(lao90.source, [-600.0, 0, 0], atol=1e-9)  # source on the patient's right
    np.testing.assert_allclose(lao90.view_direction, [1, 0, 0], atol=1e-12)  # detector to the left
    rao90 = c_arm(lao=-90.0)
    np.testing.assert_allclose(rao90.source, [600.0, 0, 0], atol=1e-9)
    cran = c_arm(cran=30.0)
    s = cran.source
    assert s[2] == pytest.approx(-600.0 * np.sin(np.radians(30)))  # source toward the feet
    assert s[1] == pytest.approx(600.0 * np.cos(np.radians(30)))
    detector_centre = s + 1000.0 * cran.view_direction
    assert detector_centre[2] > 0  # detector toward the head
    caud = c_arm(cran=-30.0)
    assert caud.source[2] > 0


@settings(max_examples=40, deadline=None)
@given(lao=st.floats(-180, 180), cran=st.floats(-80, 80),
       iso=st.tuples(*[st.floats(-300, 300)] * 3), radiological=st.booleans())
def test_c_arm_matches_reference_geometry(lao, cran, iso, radiological):
    sid, sdd, ps = 700.0, 1100.0, 0.4
    cam = c_arm(sid=sid, sdd=sdd, pixel_spacing=ps, lao=lao, cran=cran, isocenter=iso,
                radiological=radiological)
    S = source_reference(lao, cran, sid, iso)
    np.testing.assert_allclose(cam.source, S, atol=1e-8)
    np.testing.assert_allclose(cam.view_direction, (np.asarray(iso) - S) / sid, atol=1e-12)
    uv, w = cam.project(np.asarray(iso, float)[None])
    np.testing.assert_allclose(uv[0], cam.principal_point, atol=1e-8)
    assert w[0] == pytest.approx(sid)
    assert cam.detector_distance == pytest.approx(sdd)
    assert cam.mirrored is radiological
    # head up: a point displaced toward the head (in the plane through the isocentre
    # parallel to the detector) appears higher in the image
    up = np.array([0.0, 0.0, 1.0])
    up -= cam.view_direction * (up @ cam.view_direction)
    if np.linalg.norm(up) > 1e-3:
        uv2, _ = cam.project((np.asarray(iso) + 20 * up / np.linalg.norm(up))[None])
        assert uv2[0, 1] < uv[0, 1]


@pytest.mark.parametrize("lao,cran", [(0, 0), (35, -20), (-120, 40)])
def test_c_arm_magnification(lao, cran):
    sid, sdd, ps = 500.0, 900.0, 0.25
    cam = c_arm(sid=sid, sdd=sdd, pixel_spacing=ps, lao=lao, cran=cran, width=200, height=150)
    # a segment of size s at the isocentre, parallel to the detector
    e = cam.R[0] if abs(cam.R[0] @ cam.view_direction) < 1e-12 else None
    assert e is not None
    s = 12.0
    uv, _ = cam.project(np.stack([-0.5 * s * e, 0.5 * s * e]))
    assert np.linalg.norm(uv[1] - uv[0]) == pytest.approx(s * sdd / sid / ps, rel=1e-10)


def test_c_arm_principal_point_and_ray_lengths():
    sid, sdd, ps = 600.0, 1000.0, 0.5
    cam = c_arm(sid=sid, sdd=sdd, pixel_spacing=ps, width=40, height=30, principal_point=(12.0, 20.0),
                lao=25.0, cran=-15.0)
    assert cam.principal_point == pytest.approx((12.0, 20.0))
    uv, _ = cam.project(np.zeros((1, 3)))
    np.testing.assert_allclose(uv[0], [12.0, 20.0], atol=1e-9)
    L = cam.ray_lengths()
    assert L.shape == (30, 40)
    assert L[20, 12] == pytest.approx(sdd, rel=1e-12)
    v, u = np.mgrid[0:30, 0:40]
    r_mm = ps * np.hypot(u - 12.0, v - 20.0)
    np.testing.assert_allclose(L, np.sqrt(sdd**2 + r_mm**2), rtol=1e-12)
    # the pixel centre lies on the detector plane: depth sdd along the principal axis
    P = cam.source + L[..., None] * cam.pixel_rays()
    _, w = cam.project(P.reshape(-1, 3))
    np.testing.assert_allclose(w, sdd, rtol=1e-12)


def test_ray_lengths_needs_pixel_spacing(rng):
    cam = Camera.from_projection_matrix(build_P(*random_krt(rng)), 8, 8)
    with pytest.raises(ValueError, match="pixel_spacing"):
        cam.ray_lengths()


def test_repr_mentions_size():
    assert "64x48" in repr(c_arm())


# ------------------------------------------------------------------ bad input
def test_bad_projection_matrices(rng):
    P = build_P(*random_krt(rng))
    with pytest.raises(ValueError, match="shape"):
        Camera.from_projection_matrix(P[:, :3], 10, 10)
    with pytest.raises(ValueError, match="shape"):
        Camera.from_projection_matrix(P.ravel(), 10, 10)
    bad = P.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Camera.from_projection_matrix(bad, 10, 10)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        Camera.from_projection_matrix(bad, 10, 10)
    sing = P.copy()
    sing[1, :3] = 2.0 * sing[0, :3]
    with pytest.raises(ValueError, match="singular"):
        Camera.from_projection_matrix(sing, 10, 10)
    zero_row = P.copy()
    zero_row[2, :3] = 0.0
    with pytest.raises(ValueError, match="singular"):
        Camera.from_projection_matrix(zero_row, 10, 10)
    with pytest.raises(TypeError, match="P must be a numeric"):
        Camera.from_projection_matrix("not a matrix", 10, 10)
    with pytest.raises(TypeError, match="P must be a numeric"):
        Camera.from_projection_matrix([[1, 2, 3, 4], [1, 2], [1]], 10, 10)


@pytest.mark.parametrize("width,height", [(0, 10), (10, -1), (10.0, 10), (10, 2.5), (True, 10), ("10", 10)])
def test_bad_detector_size(rng, width, height):
    P = build_P(*random_krt(rng))
    with pytest.raises(ValueError, match="width|height"):
        Camera.from_projection_matrix(P, width, height)


@pytest.mark.parametrize("ps", [0.0, -0.5, np.nan, np.inf])
def test_bad_pixel_spacing(rng, ps):
    P = build_P(*random_krt(rng))
    with pytest.raises(ValueError, match="pixel_spacing"):
        Camera.from_projection_matrix(P, 10, 10, pixel_spacing=ps)
    with pytest.raises(ValueError, match="pixel_spacing"):
        c_arm(pixel_spacing=ps)
    with pytest.raises(TypeError, match="pixel_spacing"):
        Camera.from_projection_matrix(P, 10, 10, pixel_spacing="half a mm")


def test_bad_intrinsics(rng):
    K, R, t = random_krt(rng)
    with pytest.raises(ValueError, match="orthogonal"):
        Camera.from_intrinsics(K, 1.1 * R, t, 10, 10)
    with pytest.raises(ValueError, match="shape"):
        Camera.from_intrinsics(K[:2], R, t, 10, 10)
    with pytest.raises(ValueError, match="shape"):
        Camera.from_intrinsics(K, R, t[:2], 10, 10)
    with pytest.raises(ValueError, match="NaN"):
        Camera.from_intrinsics(K, R, [0, np.nan, 1], 10, 10)
    Ks = K.copy()
    Ks[1, 1] = 0.0
    with pytest.raises(ValueError, match="singular"):
        Camera.from_intrinsics(Ks, R, t, 10, 10)


@pytest.mark.parametrize("kw,match", [
    (dict(sid=1000.0, sdd=1000.0), "sid < sdd"),
    (dict(sid=1200.0, sdd=1000.0), "sid < sdd"),
    (dict(sid=0.0), "sid"),
    (dict(sid=-5.0), "sid"),
    (dict(sid=np.nan), "sid"),
    (dict(sdd=np.inf), "sdd"),
    (dict(width=0), "width"),
    (dict(height=12.5), "height"),
    (dict(lao=np.nan), "lao"),
    (dict(cran=np.inf), "cran"),
    (dict(cran=90.0), "cran"),
    (dict(isocenter=(0.0, 1.0)), "isocenter"),
    (dict(isocenter=(0.0, np.nan, 1.0)), "isocenter"),
    (dict(principal_point=(1.0, 2.0, 3.0)), "principal_point"),
    (dict(principal_point=(np.nan, 2.0)), "principal_point"),
])
def test_bad_c_arm(kw, match):
    with pytest.raises(ValueError, match=match):
        c_arm(**kw)


def test_project_bad_shape(rng):
    cam = c_arm()
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        cam.project(np.zeros(3))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        cam.project(np.zeros((4, 2)))
