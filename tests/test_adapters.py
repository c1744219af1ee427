"""Geometry adapters: round trips and reference numbers from the peers' own code.

Round trips (Camera -> theirs -> Camera): the same normalised P to 1e-9 relative and the
same projections of random 3-D points to 1e-6 px.

Reference numbers were computed once with the peers' code and are stored here, so these
tests do not need the peers:

* OpenCV 5.1.0 (``opencv-python-headless`` wheel, unpacked in a scratch folder):
  ``cv2.projectPoints(X, rvec, tvec, K, zeros(5))`` and ``cv2.Rodrigues(rvec)``.
* DiffDRR 0.6.1: ``Detector(1020, 4, 5, 2.0, 2.0, 3.0, -1.5, reorient, reverse_x_axis=...)``
  (float64), ``pose = convert([[0.1, -0.2, 0.3]], [[5, 800, -10]], parameterization=
  "euler_angles", convention="ZXY")``, ``source, target = detector(pose, None)``.
* nanodrr 0.1.7: ``make_k_inv(1020, 0.5, 0.6, 2.0, -3.0, 4, 5)``, ``make_rt_inv([[20, -10, 5]],
  [[10, 850, -20]], "AP", [3, 4, 5])``, targets ``rt_inv @ _make_tgt(k_inv, 1020, 4, 5)``.
* DeepDRR (arcadelab/deepdrr cb2cb3a, killeengeo 0.0.5): ``MobileCArm(**kw).get_camera_projection()
  .index_from_world`` (DeepDRR computes in float32), loaded with a stub for ``deepdrr.utils``'s
  ``radians`` and without pyvista.
* DeepFluoro: the projection formula of the dataset authors' example
  (rg2/DeepFluoroLabeling-IPCAI2020 ``examples_dataset/full_res_3d_viz.py``:
  ``proj = intrinsic @ (extrinsic @ inv(cam_to_pelvis_vol) @ X)[:3]; proj /= proj[2]``) and the
  180 deg rotation of ``make_full_res_overlays.py`` (``u -> cols - 1 - u``), written out in
  numpy below; the intrinsic (-5257.73 px, 767.5) is the one quoted for this dataset in DeepDRR's
  ``MobileCArm`` docstring, spacing 0.194 mm.
"""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from taichi_xray.camera import Camera
from taichi_xray.geometry.adapters import (
    LPS_FROM_RAS,
    affine_ras_to_lps,
    axcodes,
    camera_from_matrices,
    camera_from_deepdrr,
    camera_from_deepdrr_carm,
    camera_from_deepfluoro,
    camera_from_diffdrr,
    camera_from_nanodrr,
    deepdrr_from_camera,
    deepfluoro_from_camera,
    deepfluoro_landmarks,
    deepfluoro_volume,
    diffdrr_from_camera,
    diffdrr_pose_matrix,
    diffdrr_pose_parameters,
    extrinsic_matrix,
    flip_columns,
    flip_rows,
    from_opencv,
    lps_to_ras,
    nanodrr_from_camera,
    nanodrr_rt_inv,
    pixel_transform,
    ras_to_lps,
    relative_difference,
    rotate_180,
    shift_pixels,
    to_opencv,
    transform_ras_to_lps,
    volume_center,
)

S = np.array([-1.0, -1.0, 1.0])  # RAS <-> LPS


# ------------------------------------------------------------------------------------ helpers
def random_camera(rng, mirrored=False, pixel_spacing=0.5, skew=0.0):
    R = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    if mirrored:
        R = np.diag([-1.0, 1.0, 1.0]) @ R
    fx, fy = rng.uniform(900, 1600), rng.uniform(900, 1600)
    W, H = int(rng.integers(40, 300)), int(rng.integers(40, 300))
    K = np.array([[fx, skew, rng.uniform(0.3, 0.7) * W], [0, fy, rng.uniform(0.3, 0.7) * H], [0, 0, 1]])
    t = rng.uniform(-50, 50, 3) + [0, 0, 800]
    return Camera.from_intrinsics(K, R, t, W, H, pixel_spacing)


def points_in_front(cam, rng, n=50):
    """World points at depths 300..900 mm inside the field of view."""
    u = rng.uniform(0, cam.width - 1, n)
    v = rng.uniform(0, cam.height - 1, n)
    w = rng.uniform(300, 900, n)
    return cam.source + w[:, None] * (np.stack([u, v, np.ones(n)], 1) @ cam.M_inv.T)


def assert_same_camera(a, b, rng, rtol=1e-9):
    assert (a.width, a.height) == (b.width, b.height)
    assert relative_difference(a, b) < rtol
    X = points_in_front(a, rng)
    np.testing.assert_allclose(a.project(X)[0], b.project(X)[0], atol=1e-6)


# ------------------------------------------------------------------------------------- frames
def test_ras_lps_points_affines_and_transforms(rng):
    p = rng.normal(size=(7, 3)) * 100
    np.testing.assert_array_equal(ras_to_lps(p), p * S)
    np.testing.assert_array_equal(lps_to_ras(ras_to_lps(p)), p)
    A = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 3.0, 0, 5], [0, 0, 0, 1]])  # RAS affine
    ijk = rng.uniform(0, 20, size=(5, 3))
    ras = ijk @ A[:3, :3].T + A[:3, 3]
    B = affine_ras_to_lps(A)
    np.testing.assert_allclose(ijk @ B[:3, :3].T + B[:3, 3], ras * S)
    # a transform acting on RAS points, rewritten for LPS points, commutes with the change of frame
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    T[:3, 3] = [4, -5, 6]
    TL = transform_ras_to_lps(T)
    np.testing.assert_allclose((ras * S) @ TL[:3, :3].T + TL[:3, 3], (ras @ T[:3, :3].T + T[:3, 3]) * S)
    # orientation codes (nibabel): identity LPS -> L, P, S; identity RAS -> R, A, S; A above
    assert axcodes(np.eye(4), "LPS") == ("L", "P", "S")
    assert axcodes(np.eye(4), "RAS") == ("R", "A", "S")
    assert axcodes(A, "RAS") == ("P", "S", "R")  # columns: -1.5 y (posterior), +3 z, +2 x (right)
    assert axcodes(B, "LPS") == ("P", "S", "R")
    np.testing.assert_array_equal(LPS_FROM_RAS @ LPS_FROM_RAS, np.eye(4))


def test_volume_center_is_torchio_get_center():
    # torchio: apply_affine(affine, (shape - 1) / 2), RAS; by hand for this affine:
    A = np.diag([2.0, 3.0, 4.0, 1.0])
    A[:3, 3] = [10, 20, 30]
    c_ras = np.array([10 + 2 * 4.5, 20 + 3 * 2.0, 30 + 4 * 7.5])  # shape (10, 5, 16)
    np.testing.assert_allclose(volume_center(A, (10, 5, 16), "RAS"), c_ras * S)
    np.testing.assert_allclose(volume_center(A, (10, 5, 16), "LPS"), c_ras)


def test_image_flips_move_pixels(rng):
    cam = random_camera(rng)
    X = points_in_front(cam, rng)
    uv = cam.project(X)[0]
    W, H = cam.width, cam.height
    np.testing.assert_allclose(flip_columns(cam).project(X)[0], np.c_[W - 1 - uv[:, 0], uv[:, 1]], atol=1e-8)
    np.testing.assert_allclose(flip_rows(cam).project(X)[0], np.c_[uv[:, 0], H - 1 - uv[:, 1]], atol=1e-8)
    np.testing.assert_allclose(rotate_180(cam).project(X)[0], np.c_[W - 1 - uv[:, 0], H - 1 - uv[:, 1]],
                               atol=1e-8)
    np.testing.assert_allclose(shift_pixels(cam, 0.5, 0.5).project(X)[0], uv + 0.5, atol=1e-8)
    assert flip_columns(cam).mirrored and not rotate_180(cam).mirrored
    assert_same_camera(flip_columns(flip_columns(cam)), cam, rng)


def test_camera_from_matrices_round_trip(rng):
    for mirrored in (False, True):
        cam = random_camera(rng, mirrored=mirrored)
        E = extrinsic_matrix(cam)
        assert np.linalg.det(E[:3, :3]) == pytest.approx(-1.0 if mirrored else 1.0)
        assert_same_camera(camera_from_matrices(cam.K, E, cam.width, cam.height, cam.pixel_spacing), cam, rng)
    with pytest.raises(ValueError, match="last row"):
        pixel_transform(np.ones((3, 3)), cam)
    with pytest.raises(ValueError, match="last row"):
        camera_from_matrices(cam.K, np.ones((4, 4)), 10, 10)


def test_dicom_carm_angle_signs():
    """Camera.c_arm's angles have DICOM's positioner signs: LAO+ puts the detector on the patient's
    left (+x), CRAN+ toward the head (+z); at 0/0 the beam runs posterior -> anterior (-y)."""
    base = dict(sid=800, sdd=1200, width=8, height=8, pixel_spacing=1.0)
    np.testing.assert_allclose(Camera.c_arm(**base).view_direction, [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(Camera.c_arm(lao=90, **base).view_direction, [1, 0, 0], atol=1e-12)
    assert Camera.c_arm(cran=30, **base).view_direction[2] > 0.49


# ------------------------------------------------------------------------------------- OpenCV
CV_K = np.array([[1200.0, 0.0, 250.5], [0.0, 1150.0, 180.25], [0.0, 0.0, 1.0]])
CV_RVEC = np.array([0.3, -0.4, 0.25])
CV_TVEC = np.array([12.0, -30.0, 900.0])
CV_X = np.array([[0.0, 0.0, 0.0], [50.0, -20.0, 30.0], [-80.0, 60.0, -40.0], [120.0, 90.0, 10.0]])
CV_R = np.array([[0.8916171247461534, -0.2956347955004572, -0.3429562224961156],
                 [0.1787274244401283, 0.9257151079720827, -0.33332873657282164],
                 [0.4160233294088212, 0.23590592735588087, 0.8782214884788241]])
CV_UV = np.array([[266.5, 141.91666666666666], [316.97269187325173, 119.75268923099222],
                  [160.6157278661778, 213.66975072552842], [359.43443418436993, 264.0744251174367]])


def test_opencv_reference_numbers():
    cam = from_opencv(CV_K, CV_RVEC, CV_TVEC, 500, 360)
    np.testing.assert_allclose(cam.project(CV_X)[0], CV_UV, atol=1e-9)
    np.testing.assert_allclose(cam.R, CV_R, atol=1e-12)  # Rodrigues
    cv = to_opencv(cam)
    np.testing.assert_allclose(cv.rvec, CV_RVEC, atol=1e-12)
    np.testing.assert_allclose(cv.project(CV_X), CV_UV, atol=1e-9)
    np.testing.assert_allclose(cv.K, CV_K, atol=1e-9)


def test_opencv_round_trip(rng):
    for _ in range(5):
        cam = random_camera(rng)
        cv = to_opencv(cam)
        assert not cv.flip_columns
        assert_same_camera(from_opencv(cv.K, cv.R, cv.t, cv.width, cv.height, cv.pixel_spacing), cam, rng)
        assert_same_camera(from_opencv(cv.K, cv.rvec, cv.tvec, cv.width, cv.height), cam, rng)
        X = points_in_front(cam, rng)
        np.testing.assert_allclose(cv.project(X), cam.project(X)[0], atol=1e-6)


def test_opencv_mirrored_cameras(rng):
    cam = random_camera(rng, mirrored=True)
    with pytest.raises(ValueError, match="mirrored"):
        to_opencv(cam)
    cv = to_opencv(cam, mirrored="flip_columns")
    assert cv.flip_columns and np.linalg.det(cv.R) > 0
    X = points_in_front(cam, rng)
    uv = cam.project(X)[0]
    np.testing.assert_allclose(cv.project(X), np.c_[cam.width - 1 - uv[:, 0], uv[:, 1]], atol=1e-6)
    back = from_opencv(cv.K, cv.R, cv.t, cv.width, cv.height, cv.pixel_spacing, flip_columns=True)
    assert back.mirrored
    assert_same_camera(back, cam, rng)
    # the radiological C-arm default is mirrored
    assert Camera.c_arm(sid=800, sdd=1200, width=8, height=8, pixel_spacing=1.0).mirrored


def test_opencv_refuses_what_it_cannot_express(rng):
    with pytest.raises(ValueError, match="skew"):
        to_opencv(random_camera(rng, skew=25.0))
    with pytest.raises(ValueError, match="distortion"):
        from_opencv(CV_K, CV_RVEC, CV_TVEC, 500, 360, dist=[0.1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="det -1"):
        from_opencv(CV_K, np.diag([-1.0, 1.0, 1.0]), CV_TVEC, 500, 360)
    with pytest.raises(ValueError, match="K must be"):
        from_opencv(np.eye(3) * 2, CV_RVEC, CV_TVEC, 500, 360)


# ------------------------------------------------------------------------------------ DiffDRR
DD_POSE = np.array([[9.5642508584923247e-01, -9.7843395007255710e-02, 2.7509584731824371e-01, -7.6243549049740835e+01],
                    [3.6957013524625076e-02, 9.7517032720181596e-01, 2.1835066314633442e-01, 7.7813754019761245e+02],
                    [-2.8962947762551555e-01, -1.9866933079506122e-01, 9.3629336358419923e-01, -1.6974654566001854e+02],
                    [0.0, 0.0, 0.0, 1.0]])
DD_SOURCE = np.array([-76.24354904974084, 778.1375401976125, -169.74654566001854])
DD_PIXELS = [(0, 0), (0, 4), (3, 0), (3, 4), (2, 1)]  # (row, column)
DD_TARGETS = {
    ("AP", True): np.array([[30.664333229581985, -215.94996845884793, 32.273205452941596],
                            [23.01293254278812, -216.24562456704496, 34.59024127394571],
                            [29.01375814567251, -217.26007243772597, 26.655445271436378],
                            [21.362357458878662, -217.55572854592288, 28.972481092440518],
                            [27.65109966861054, -216.89728513848252, 29.107290953855824]]),
    ("PA", False): np.array([[-176.58759327201352, 1773.1018429246596, -370.69519354797916],
                             [-168.93619258521966, 1773.3974990328566, -373.0122293689833],
                             [-178.238168355923, 1771.7917389457816, -376.3129537294843],
                             [-170.58676766912913, 1772.0873950539785, -378.6299895504885],
                             [-175.77512648958805, 1772.3023542991236, -375.019625957567]]),
}


def test_diffdrr_pose_matrix_matches_convert():
    np.testing.assert_allclose(diffdrr_pose_matrix([0.1, -0.2, 0.3], [5, 800, -10], "euler_angles", "ZXY"),
                               DD_POSE, atol=1e-12)


@pytest.mark.parametrize("orientation, reverse", list(DD_TARGETS))
def test_diffdrr_reference_rays(orientation, reverse):
    cam = camera_from_diffdrr(DD_POSE, sdd=1020.0, height=4, width=5, delx=2.0, dely=2.0, x0=3.0, y0=-1.5,
                              reverse_x_axis=reverse, orientation=orientation, center=(0, 0, 0))
    np.testing.assert_allclose(cam.source, DD_SOURCE * S, atol=1e-9)
    uv, w = cam.project(DD_TARGETS[orientation, reverse] * S)
    np.testing.assert_allclose(uv, [(c, r) for r, c in DD_PIXELS], atol=1e-9)
    np.testing.assert_allclose(w, 1020.0, atol=1e-9)  # DiffDRR's detector plane is at depth sdd
    assert cam.mirrored == (orientation == "PA") ^ (not reverse)


@pytest.mark.parametrize("orientation", ["AP", "PA", None])
@pytest.mark.parametrize("mirrored", [False, True])
def test_diffdrr_round_trip(rng, orientation, mirrored):
    cam = random_camera(rng, mirrored=mirrored)
    center = rng.uniform(-100, 100, 3)
    g = diffdrr_from_camera(cam, orientation=orientation, center=center)
    assert np.linalg.det(g.pose[:3, :3]) > 0
    back = camera_from_diffdrr(g.pose, orientation=orientation, center=center, **g.drr_kwargs())
    assert_same_camera(back, cam, rng)
    assert back.detector_distance == pytest.approx(cam.detector_distance, rel=1e-12)
    for par, conv in (("euler_angles", "ZXY"), ("euler_angles", "XYZ"), ("axis_angle", None),
                      ("quaternion", None), ("rotation_6d", None), ("matrix", None)):
        rot, tr = g.pose_parameters(par, conv, degrees=True)
        np.testing.assert_allclose(diffdrr_pose_matrix(rot, tr, par, conv, degrees=True), g.pose, atol=1e-9)


def test_diffdrr_default_drr_is_not_mirrored():
    """DRR's defaults (reverse_x_axis=True, read(orientation="AP")) give an unmirrored view from an
    anterior source (AP): the patient's right (-x LPS) on the image's left."""
    pose = diffdrr_pose_matrix([0, 0, 0], [0, 850, 0], "euler_angles", "ZXY")
    cam = camera_from_diffdrr(pose, sdd=1020, height=100, delx=2.0)
    assert not cam.mirrored
    np.testing.assert_allclose(cam.source, [0, -850, 0], atol=1e-9)  # anterior = -y in LPS
    assert cam.project(np.array([[-50.0, 0, 0]]))[0][0, 0] < 49.5  # patient's right -> left half


def test_diffdrr_needs_sdd_without_pixel_spacing(rng):
    cam = random_camera(rng, pixel_spacing=None)
    with pytest.raises(ValueError, match="sdd"):
        diffdrr_from_camera(cam)
    g = diffdrr_from_camera(cam, sdd=1000.0)
    assert_same_camera(camera_from_diffdrr(g.pose, **g.drr_kwargs()), cam, rng)
    with pytest.raises(ValueError, match="orientation"):
        diffdrr_from_camera(cam, sdd=1000.0, orientation="LR")
    with pytest.raises(ValueError, match="reflection"):
        diffdrr_pose_parameters(np.diag([-1.0, 1, 1, 1]))
    with pytest.raises(ValueError, match="skew"):
        diffdrr_from_camera(random_camera(rng, skew=20.0))
    with pytest.raises(ValueError, match="skew"):
        nanodrr_from_camera(random_camera(rng, skew=20.0))


# ------------------------------------------------------------------------------------ nanodrr
NANO_RT_INV = np.array([[-9.4129308859898808e-01, -2.2734435055296320e-02, 3.3682408883346510e-01, -2.7434223332356140e+02],
                        [-3.2649693568536481e-01, -1.9236399718660080e-01, -9.2541657839832336e-01, 7.9002178105169651e+02],
                        [8.5831651177431287e-02, -9.8106026219040687e-01, 1.7364817766693036e-01, -1.6308047277247326e+02],
                        [0.0, 0.0, 0.0, 1.0]])
NANO_TARGETS = np.array([[71.99447423875381, -153.32760250162914, 11.722946943663572],
                         [70.11188806155587, -153.9805963729998, 11.89461024601843],
                         [71.9535522556543, -153.67385769656494, 9.957038471720836],
                         [70.07096607845631, -154.3268515679357, 10.128701774075694],
                         [71.49654637238797, -153.72168776609567, 10.588590454623784]])


def test_nanodrr_reference_numbers():
    rt = nanodrr_rt_inv([20.0, -10.0, 5.0], [10.0, 850.0, -20.0], "AP", [3.0, 4.0, 5.0])
    np.testing.assert_allclose(rt, NANO_RT_INV, atol=1e-12)
    cam = camera_from_nanodrr(rt, sdd=1020.0, delx=0.5, dely=0.6, x0=2.0, y0=-3.0, height=4, width=5)
    uv, w = cam.project(NANO_TARGETS * S)
    np.testing.assert_allclose(uv, [(c, r) for r, c in DD_PIXELS], atol=1e-9)
    np.testing.assert_allclose(w, 1020.0, atol=1e-9)
    np.testing.assert_allclose(cam.source, NANO_RT_INV[:3, 3] * S, atol=1e-9)
    assert cam.detector_distance == pytest.approx(1020.0, rel=1e-12)


@pytest.mark.parametrize("mirrored", [False, True])
def test_nanodrr_round_trip(rng, mirrored):
    cam = random_camera(rng, mirrored=mirrored)
    iso = rng.uniform(-50, 50, 3)
    g = nanodrr_from_camera(cam, isocenter=iso)
    assert g.orientation == ("PA" if mirrored else "AP")
    assert_same_camera(camera_from_nanodrr(g.rt_inv, **g.intrinsics_kwargs()), cam, rng)
    rt = nanodrr_rt_inv(g.rotation, g.translation, g.orientation, iso)
    assert_same_camera(camera_from_nanodrr(rt, **g.intrinsics_kwargs()), cam, rng)
    with pytest.raises(ValueError, match="orientation"):
        nanodrr_from_camera(cam, orientation="AP" if mirrored else "PA")


# ------------------------------------------------------------------------------------- DeepDRR
DEEPDRR_CASES = [
    (dict(), np.array([[1.1674510099965452e-12, -5.2577319335937500e+03, 7.6800000000000000e+02, 4.0704000000000000e+05],
                       [5.2577319335937500e+03, 1.1674510099965452e-12, 7.6800000000000000e+02, 4.0704000000000000e+05],
                       [0.0, 0.0, 1.0, 5.3000000000000000e+02]])),
    (dict(alpha=30, beta=-15, isocenter=[10.0, -20.0, 5.0]),
     np.array([[5.0825808715820312e+02, -4.9373295898437500e+03, -1.8968449707031250e+03, 3.1269503125000000e+05],
               [4.9064365234375000e+03, -3.8399996948242188e+02, 2.0032457275390625e+03, 3.4027940625000000e+05],
               [-2.2414386272430420e-01, -5.0000000000000000e-01, 8.3651632070541382e-01, 5.1805883789062500e+02]])),
    (dict(alpha=-20, beta=40, gamma=10, source_to_isocenter_horizontal_offset=9.0, sensor_width=300,
          sensor_height=200, pixel_size=0.5, source_to_detector_distance=1100.0,
          source_to_isocenter_vertical_distance=600.0, rotate_camera_left=False),
     np.array([[1.8342847900390625e+03, -3.0768399047851562e+02, -1.1845802001953125e+03, 9.3438234375000000e+04],
               [-1.2326283264160156e+02, 2.0701184082031250e+03, -7.4122576904296875e+02, 4.0500804687500000e+04],
               [6.0402280092239380e-01, 3.4202012419700623e-01, 7.1984630823135376e-01, 6.0000000000000000e+02]])),
]


@pytest.mark.parametrize("kw, index_from_world", DEEPDRR_CASES)
def test_deepdrr_mobile_carm_reference(kw, index_from_world):
    cam = camera_from_deepdrr_carm(world="LPS", **kw)
    half = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])  # DeepDRR pixel centres at c + 0.5
    ref = Camera.from_projection_matrix(half @ index_from_world, cam.width, cam.height)
    assert relative_difference(cam, ref) < 2e-7  # DeepDRR works in float32
    # world="RAS": the same device seen from an LPS world
    cam_ras = camera_from_deepdrr_carm(world="RAS", **kw)
    np.testing.assert_allclose(cam_ras.source, cam.source * S, atol=1e-9)


@pytest.mark.parametrize("mirrored", [False, True])
def test_deepdrr_round_trip(rng, mirrored):
    cam = random_camera(rng, mirrored=mirrored)
    for world in ("RAS", "LPS", np.array([[0, 1.0, 0, 5], [-1, 0, 0, 6], [0, 0, 1, 7], [0, 0, 0, 1]])):
        d = deepdrr_from_camera(cam, world=world)
        assert np.linalg.det(d["camera3d_from_world"][:3, :3]) > 0  # a rigid FrameTransform
        back = camera_from_deepdrr(d["intrinsic"], d["camera3d_from_world"], d["sensor_width"],
                                   d["sensor_height"], world=world, pixel_size=d["pixel_size"])
        assert_same_camera(back, cam, rng)
    with pytest.raises(ValueError, match="world"):
        deepdrr_from_camera(cam, world="XYZ")


# ---------------------------------------------------------------------------------- DeepFluoro
DF_K = np.array([[-5257.73, 0.0, 767.5], [0.0, -5257.73, 767.5], [0.0, 0.0, 1.0]])


def _deepfluoro_layout(rng):
    """A small synthetic file in the ipcai_2020_full_res_data.h5 layout (nested dict)."""
    ext = np.eye(4)
    ext[:3, :3] = Rotation.from_rotvec([0.02, -0.01, 0.03]).as_matrix()
    ext[:3, 3] = [5.0, -3.0, 2.0]
    # a camera world -> pelvis volume pose that puts the volume ~600 mm from the source
    vol_from_camworld = np.eye(4)
    vol_from_camworld[:3, :3] = Rotation.from_rotvec([1.4, 0.2, -0.1]).as_matrix()
    vol_from_camworld[:3, 3] = [30.0, -700.0, 60.0]
    lands3d = {"FH-l": np.array([95.0, -20.0, -40.0]), "FH-r": np.array([-90.0, -25.0, -42.0]),
               "ASIS-l": np.array([110.0, -80.0, 30.0])}
    projs = {}
    for idx, (T, rot) in enumerate([(vol_from_camworld, 0), (vol_from_camworld, 1)]):
        # Grupp's example: land_2d = intrinsic @ (extrinsic @ inv(cam_to_pelvis_vol) @ X)[:3], / z
        M = DF_K @ (ext @ np.linalg.inv(T))[:3]
        gt = {}
        for k, X in lands3d.items():
            p = M @ np.append(X, 1.0)
            gt[k] = (p[:2] / p[2]).reshape(2, 1)
        projs[f"{idx:03d}"] = {"image": {"pixels": np.zeros((4, 4), np.float32)},
                               "gt-poses": {"cam-to-pelvis-vol": T}, "rot-180-for-up": np.int64(rot),
                               "gt-landmarks": gt}
    hu = rng.normal(size=(6, 5, 4)).astype(np.float32)  # stored (Z, Y, X)
    return {
        "proj-params": {"intrinsic": DF_K, "extrinsic": ext, "num-cols": np.int64(1536),
                        "num-rows": np.int64(1536), "pixel-col-spacing": 0.194, "pixel-row-spacing": 0.194},
        "17-1882": {
            "vol": {"pixels": hu, "origin": np.array([[-120.0], [-300.0], [-900.0]]),
                    "spacing": np.array([[1.0], [1.0], [1.0]]), "dir-mat": np.eye(3)},
            "vol-landmarks": {k: v.reshape(3, 1) for k, v in lands3d.items()},
            "projections": projs,
        },
    }


def _write_h5(group, tree):
    for k, v in tree.items():
        if isinstance(v, dict):
            _write_h5(group.create_group(k), v)
        else:
            group.create_dataset(k, data=v)


def test_deepfluoro_camera_matches_authors_projection(rng):
    layout = _deepfluoro_layout(rng)
    cam = camera_from_deepfluoro(layout, 0)
    assert cam.mirrored and (cam.width, cam.height) == (1536, 1536)
    assert cam.pixel_spacing == pytest.approx(0.194)
    assert cam.detector_distance == pytest.approx(5257.73 * 0.194, rel=1e-12)  # 1020 mm
    lands3d = deepfluoro_landmarks(layout)
    lands2d = deepfluoro_landmarks(layout, projection_index=0)
    names = sorted(lands3d)
    uv, w = cam.project(np.array([lands3d[k] for k in names]))
    np.testing.assert_allclose(uv, np.array([lands2d[k] for k in names]), atol=1e-9)
    assert np.all(w > 0) and np.all(w < 1020)  # between source and detector
    # rot-180-for-up (projection 1): the rotated image's camera, (u, v) -> (W - 1 - u, H - 1 - v)
    up = camera_from_deepfluoro(layout, 1, rotate_for_up=True)
    uv_up = up.project(np.array([lands3d[k] for k in names]))[0]
    np.testing.assert_allclose(uv_up, 1535 - uv, atol=1e-9)
    assert relative_difference(camera_from_deepfluoro(layout, 1), cam) < 1e-12  # flag ignored by default
    assert relative_difference(camera_from_deepfluoro(layout, 0, rotate_for_up=True), cam) < 1e-12  # flag 0
    # xreg's texture correction shifts the volume by -0.5 mm on each axis
    xr = camera_from_deepfluoro(layout, 0, xreg_texture_correction=True)
    X = np.array([lands3d[k] for k in names])
    np.testing.assert_allclose(xr.project(X - 0.5)[0], uv, atol=1e-9)


def test_deepfluoro_h5_file_round_trip(rng, tmp_path):
    h5py = pytest.importorskip("h5py")
    layout = _deepfluoro_layout(rng)
    path = tmp_path / "ipcai_2020_full_res_data.h5"
    with h5py.File(path, "w") as f:
        _write_h5(f, layout)
    cam = camera_from_deepfluoro(path, 0, specimen="17-1882")
    assert relative_difference(cam, camera_from_deepfluoro(layout, 0)) < 1e-14
    with h5py.File(path, "r") as f:
        assert relative_difference(camera_from_deepfluoro(f, "000", specimen=1), cam) < 1e-14
    # volume: pixels stored (Z, Y, X) -> hu (X, Y, Z); affine index -> LPS
    hu, A = deepfluoro_volume(path)
    pix = layout["17-1882"]["vol"]["pixels"]
    assert hu.shape == (4, 5, 6) and hu[3, 1, 2] == pix[2, 1, 3]
    np.testing.assert_allclose(A[:3, :] @ [3, 1, 2, 1], [-117.0, -299.0, -898.0])
    # Camera -> DeepFluoro fields -> a file -> Camera
    d = deepfluoro_from_camera(cam, extrinsic=layout["proj-params"]["extrinsic"])
    np.testing.assert_allclose(d["proj-params"]["intrinsic"], DF_K, atol=1e-9)
    np.testing.assert_allclose(d["gt-poses"]["cam-to-pelvis-vol"],
                               layout["17-1882"]["projections"]["000"]["gt-poses"]["cam-to-pelvis-vol"], atol=1e-9)
    tree = {"proj-params": d["proj-params"], "X": {"projections": {"007": {
        "gt-poses": d["gt-poses"], "rot-180-for-up": d["rot-180-for-up"]}}}}
    path2 = tmp_path / "mine.h5"
    with h5py.File(path2, "w") as f:
        _write_h5(f, tree)
    assert_same_camera(camera_from_deepfluoro(path2, 7), cam, rng)


def test_deepfluoro_round_trip_random(rng):
    for _ in range(3):
        cam = random_camera(rng, mirrored=True, pixel_spacing=0.3)
        d = deepfluoro_from_camera(cam)
        tree = {"proj-params": d["proj-params"], "s": {"projections": {"000": {"gt-poses": d["gt-poses"]}}}}
        assert_same_camera(camera_from_deepfluoro(tree, 0), cam, rng)
    with pytest.raises(ValueError, match="not mirrored"):
        deepfluoro_from_camera(random_camera(rng))


def test_deepfluoro_errors(rng, tmp_path):
    layout = _deepfluoro_layout(rng)
    with pytest.raises(FileNotFoundError):
        camera_from_deepfluoro(tmp_path / "missing.h5", 0)
    with pytest.raises(KeyError, match="017"):
        camera_from_deepfluoro(layout, 17)
    layout["18-1109"] = layout["17-1882"]
    with pytest.raises(ValueError, match="several specimens"):
        camera_from_deepfluoro(layout, 0)
    with pytest.raises(ValueError, match="1..6"):
        camera_from_deepfluoro(layout, 0, specimen=9)


# -------------------------------------------------------------------------------------- docs
def test_docs_examples_run(tmp_path, monkeypatch):
    """Every ```python block of docs/conventions.md runs as written (blocks starting with
    '# requires: NAME' only when NAME is importable)."""
    import importlib.util
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "conventions.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 7
    monkeypatch.chdir(tmp_path)
    ran = 0
    for code in blocks:
        first = code.splitlines()[0]
        if first.startswith("# requires:"):
            if any(importlib.util.find_spec(m.strip()) is None for m in first.split(":", 1)[1].split(",")):
                continue
        exec(compile(code, "docs/conventions.md", "exec"), {"__name__": "docs_example"})
        ran += 1
    assert ran >= 7
    assert (tmp_path / "geometry.png").exists()
