"""Tests for taichi_xray.fit.metrics against analytic values and brute force."""
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from taichi_xray.fit.metrics import (
    landmark_error,
    point_mesh_distance,
    point_triangle_distance,
    pose_errors,
    rotation_error_deg,
    sample_surface_grid,
    surface_distances,
    target_registration_error,
)

RNG = np.random.default_rng(42)


from taichi_xray.primitives import icosphere  # noqa: E402


def cube(side=10.0):
    h = side / 2
    v = np.array([[x, y, z] for x in (-h, h) for y in (-h, h) for z in (-h, h)], float)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=np.int64)
    return v, f


def _inradius(v, f):
    """Smallest distance from the origin to a face plane (convex mesh around the origin)."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return np.abs((n * a).sum(1)).min()


def test_point_triangle_distance_vs_dense_brute_force():
    tri = RNG.normal(size=(30, 3, 3)) * 5
    p = RNG.normal(size=(30, 3)) * 8
    d = point_triangle_distance(p, tri[:, 0], tri[:, 1], tri[:, 2])
    k = 300
    i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
    keep = i + j <= k
    u, w = i[keep] / k, j[keep] / k
    for n in range(30):
        a, b, c = tri[n]
        q = a + u[:, None] * (b - a) + w[:, None] * (c - a)
        brute = np.linalg.norm(q - p[n], axis=1).min()
        edge = max(np.linalg.norm(b - a), np.linalg.norm(c - a), np.linalg.norm(c - b))
        assert d[n] <= brute + 1e-12
        assert brute - d[n] <= edge / k


def test_point_triangle_distance_analytic():
    a, b, c = np.array([0.0, 0, 0]), np.array([4.0, 0, 0]), np.array([0.0, 4, 0])
    pts = np.array([[1, 1, 3], [-3, -4, 0], [6, 0, 0], [2, 2, 0], [3, 3, 0], [-1, 2, 0], [1, 1, 0]], float)
    expected = [3, 5, 2, 0, math.sqrt(2), 1, 0]
    np.testing.assert_allclose(point_triangle_distance(pts, a, b, c), expected, atol=1e-12)


def test_point_mesh_distance_matches_all_triangles():
    v, f = icosphere(10, 2)
    v = v * [1.0, 0.7, 1.3]
    pts = RNG.normal(size=(200, 3)) * 12
    d = point_mesh_distance(pts, v, f, k=4)
    brute = point_triangle_distance(pts[:, None], v[f[:, 0]][None], v[f[:, 1]][None], v[f[:, 2]][None]).min(1)
    np.testing.assert_allclose(d, brute, atol=1e-12)


def test_sample_surface_grid_area_and_bound():
    v, f = cube(10.0)
    pts, w, err = sample_surface_grid(v, f, 1.0)
    np.testing.assert_allclose(w.sum(), 600.0)
    assert err <= 1.0
    assert np.all(np.abs(pts).max(1) >= 5 - 1e-9)  # all samples on the surface


def test_concentric_spheres():
    r1, r2 = 10.0, 12.5
    inner, outer = icosphere(r1, 3), icosphere(r2, 3)
    lo = _inradius(*outer) - r1  # analytic bounds from the polyhedral approximation
    hi = r2 - _inradius(*inner)
    assert hi - lo < 0.12
    res = surface_distances(inner, outer, spacing=0.5)
    for key in ("hausdorff", "hausdorff_ab", "hausdorff_ba", "mean", "mean_ab", "mean_ba", "rms"):
        assert lo - 1e-9 <= res[key] <= hi + 1e-9, (key, res[key], lo, hi)
    assert res["error_bound"] <= 0.5


def test_translated_cube_hausdorff_equals_shift():
    v, f = cube(10.0)
    for shift in ([2.0, 0, 0], [0, -1.5, 0], [0, 0, 3.0]):
        res = surface_distances((v, f), (v + shift, f), spacing=1.0)
        np.testing.assert_allclose(res["hausdorff"], np.linalg.norm(shift), atol=1e-9)
        np.testing.assert_allclose(res["hausdorff_ab"], res["hausdorff_ba"], atol=1e-9)
        assert 0 < res["mean"] < res["hausdorff"]
    # a translated sphere: Hausdorff = shift (up to the polyhedral approximation)
    s = icosphere(20.0, 3)
    res = surface_distances(s, (s[0] + [0, 0, 1.0], s[1]), spacing=0.5)
    assert abs(res["hausdorff"] - 1.0) < 0.01


def test_identical_meshes_zero():
    v, f = icosphere(5.0, 2)
    res = surface_distances((v, f), (v.copy(), f))
    assert res["hausdorff"] < 1e-9 and res["mean"] < 1e-9


def test_mesh_validation():
    v, f = cube()
    with pytest.raises(ValueError, match="faces"):
        surface_distances((v, f), (v, f + 100))
    with pytest.raises(ValueError, match="vertices"):
        surface_distances((v[:, :2], f), (v, f))
    with pytest.raises(TypeError):
        surface_distances(v, (v, f))


def test_rotation_error_known_angle():
    axis = RNG.normal(size=3)
    axis /= np.linalg.norm(axis)
    R_true = Rotation.from_rotvec(RNG.normal(size=3)).as_matrix()
    for ang in (0.0, 1e-4, 0.5, 37.0, 120.0, 179.9):
        R_err = Rotation.from_rotvec(axis * math.radians(ang)).as_matrix()
        np.testing.assert_allclose(rotation_error_deg(R_err @ R_true, R_true), ang, atol=1e-6)
    assert rotation_error_deg(np.zeros(3), axis * math.radians(10)) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="rotation"):
        rotation_error_deg(np.eye(3) * 2, np.eye(3))


def test_pose_errors_and_tre():
    R_true = Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix()
    R_est = Rotation.from_rotvec([0, 0, math.radians(5)]).as_matrix() @ R_true
    e = pose_errors(R_est, [1, 2, 3], R_true, [1, 2, 7])
    assert e["translation_mm"] == pytest.approx(4.0)
    assert e["rotation_deg"] == pytest.approx(5.0)
    # pure translation error -> TRE = |dt|
    pts = RNG.normal(size=(50, 3)) * 30
    assert target_registration_error(pts, R_true, [3, 4, 0], R_true, [0, 0, 0]) == pytest.approx(5.0)
    # pure rotation error theta about z through the centre, points at radius r in the xy plane:
    # TRE = 2 r sin(theta/2)
    c = np.array([5.0, -2.0, 1.0])
    phi = RNG.uniform(0, 2 * math.pi, 40)
    r = 50.0
    pts = c + np.stack([r * np.cos(phi), r * np.sin(phi), np.zeros_like(phi)], 1)
    Rz = Rotation.from_rotvec([0, 0, math.radians(4)]).as_matrix()
    mean, each = target_registration_error(pts, Rz, [0, 0, 0], np.eye(3), [0, 0, 0], centre=c, return_all=True)
    np.testing.assert_allclose(each, 2 * r * math.sin(math.radians(2)), rtol=1e-12)
    assert mean == pytest.approx(2 * r * math.sin(math.radians(2)))


def test_landmark_error():
    t = RNG.normal(size=(6, 3))
    d = RNG.normal(size=(6, 3))
    mean, each = landmark_error(t + d, t)
    np.testing.assert_allclose(each, np.linalg.norm(d, axis=1))
    assert mean == pytest.approx(np.linalg.norm(d, axis=1).mean())
    with pytest.raises(ValueError, match="rows"):
        landmark_error(t[:5], t)
