"""The geometry figure: it writes a PNG, plots what Camera.project says, and a wrong convention
shows as a mirrored overlay. Checks are on the plotted data, not on pixels."""
import numpy as np
import pytest
from matplotlib.collections import PathCollection

from taichi_xray.camera import Camera
from taichi_xray.geometry.figure import geometry_figure, silhouette_edges
from taichi_xray.geometry.frames import flip_columns
from taichi_xray.mesh import Mesh
from taichi_xray.primitives import box, icosphere

R_BALL = 30.0
C_BALL = np.array([35.0, 0.0, 15.0])  # on the patient's left, a bit superior: an asymmetric scene


def _scene():
    ball = Mesh(*icosphere(radius=R_BALL, subdivisions=3, centre=C_BALL), name="ball")
    brick = Mesh(*box(size=(30.0, 50.0, 80.0), centre=(-50.0, 10.0, -30.0)), name="brick")
    return [("ball", ball), ("brick", brick)]


def _camera(radiological=True):
    return Camera.c_arm(sid=700, sdd=1100, width=96, height=80, pixel_spacing=3.0, lao=10, cran=-5,
                        radiological=radiological)


def _ball_mask(cam):
    """Pixels whose ray hits the analytic ball (numpy ray-sphere test): an independent target image."""
    d = cam.pixel_rays()  # (H, W, 3) unit
    oc = cam.source - C_BALL
    b = d @ oc
    disc = b * b - (oc @ oc - R_BALL**2)
    return (disc > 0).astype(float)


def test_writes_png_and_never_overwrites(tmp_path):
    out = tmp_path / "geometry.png"
    cam = _camera()
    res = geometry_figure(_scene(), [_ball_mask(cam)], out=out, cameras=[cam])
    assert res.path == out
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    size = out.stat().st_size
    assert size > 10_000
    with pytest.raises(FileExistsError):
        geometry_figure(_scene(), out=out, cameras=[cam])
    assert out.stat().st_size == size
    geometry_figure(_scene(), out=out, cameras=[cam], overwrite=True)
    # the target is textured onto the detector: its pixel-corner grid projects back onto itself
    grid, uv = res.views[0].texture
    np.testing.assert_allclose(cam.project(grid.reshape(-1, 3))[0], uv.reshape(-1, 2), atol=1e-8)
    assert uv[0, 0].tolist() == [-0.5, -0.5] and uv[-1, -1].tolist() == [cam.width - 0.5, cam.height - 0.5]
    with pytest.raises(FileNotFoundError):
        geometry_figure(_scene(), out=tmp_path / "missing" / "g.png", cameras=[cam])


def test_plotted_points_are_camera_projections():
    c2 = Camera.c_arm(sid=600, sdd=1000, width=64, height=64, pixel_spacing=4.0, lao=70)
    cams = [_camera(True), c2, Camera.from_projection_matrix(c2.P, 64, 64)]  # the last: detector distance unknown
    scene = _scene()
    res = geometry_figure(scene, cameras=cams, max_points=200)
    meshes = dict(scene)
    for vd, cam in zip(res.views, cams):
        for name, mesh in meshes.items():
            X = vd.points3d[name]
            # every plotted 3-D point is a vertex of the mesh
            verts = {tuple(v) for v in np.asarray(mesh.vertices)}
            assert len(X) > 0 and all(tuple(x) in verts for x in X)
            np.testing.assert_allclose(vd.points2d[name], cam.project(X)[0], atol=1e-9)
        # the data inside the matplotlib artists is that data
        offsets = [np.asarray(c.get_offsets()) for c in vd.axes.collections if isinstance(c, PathCollection)]
        plotted = np.concatenate(offsets)
        expected = np.concatenate([vd.points2d[n] for n in meshes])
        assert plotted.shape == expected.shape
        np.testing.assert_allclose(np.sort(plotted, axis=0), np.sort(expected, axis=0), atol=1e-9)
        # 3-D: source, detector corners and central ray sit where the camera says
        np.testing.assert_allclose(vd.source, cam.source, atol=1e-9)
        uv, w = cam.project(vd.detector_corners)
        W, H = cam.width, cam.height
        np.testing.assert_allclose(uv, [[-0.5, -0.5], [W - 0.5, -0.5], [W - 0.5, H - 0.5], [-0.5, H - 0.5]],
                                   atol=1e-9)
        np.testing.assert_allclose(w, vd.detector_depth, rtol=1e-12)
        if cam.pixel_spacing is not None:
            assert vd.detector_depth == pytest.approx(cam.detector_distance, rel=1e-12)
        else:  # placed behind the scene
            depths = np.concatenate([cam.project(np.asarray(m.vertices))[1] for m in meshes.values()])
            assert vd.detector_depth > depths.max()
        np.testing.assert_allclose(cam.project(vd.central_ray[1:])[0], [[(W - 1) / 2, (H - 1) / 2]], atol=1e-9)
    assert {t.get_text() for t in res.axes3d.texts} >= {"L", "P", "S"}


def test_silhouette_follows_the_analytic_outline():
    """The ball's silhouette edges lie on the outline of its analytic projection (the pixels where
    rays graze the sphere), to within the faceting of a 3x subdivided icosphere."""
    cam = _camera()
    res = geometry_figure(_scene(), cameras=[cam])
    seg = res.views[0].silhouettes["ball"]
    assert len(seg) > 20
    # a silhouette edge's endpoints are grazing vertices: the ray from the source is ~tangent there
    pts = seg.reshape(-1, 2)
    rays = np.c_[pts, np.ones(len(pts))] @ cam.M_inv.T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    oc = C_BALL - cam.source
    dist = np.linalg.norm(np.cross(rays, oc), axis=1)  # distance from the ball's centre to each ray
    np.testing.assert_allclose(dist, R_BALL, rtol=0.02)
    # silhouette_edges on a closed convex mesh: a single closed loop (each vertex used twice)
    uv = cam.project(np.asarray(dict(_scene())["ball"].vertices))[0]
    e = silhouette_edges(uv, np.asarray(dict(_scene())["ball"].faces))
    assert np.all(np.bincount(e.ravel())[np.unique(e)] == 2)


def test_flipped_convention_gives_a_mirrored_overlay():
    cam = _camera()
    W = cam.width
    target = _ball_mask(cam)
    good = geometry_figure(_scene(), [target], cameras=[cam]).views[0]
    bad = geometry_figure(_scene(), [target], cameras=[flip_columns(cam)]).views[0]
    for name in ("ball", "brick"):
        np.testing.assert_allclose(bad.points2d[name][:, 0], W - 1 - good.points2d[name][:, 0], atol=1e-9)
        np.testing.assert_allclose(bad.points2d[name][:, 1], good.points2d[name][:, 1], atol=1e-9)

    def on_target(uv):
        c = np.clip(np.round(uv).astype(int), 0, [W - 1, cam.height - 1])
        return target[c[:, 1], c[:, 0]].mean()

    # the right convention puts the ball's points on the ball in the image, the flipped one misses it
    assert on_target(good.points2d["ball"]) > 0.9  # (silhouette vertices round to border pixels)
    assert on_target(bad.points2d["ball"]) < 0.2
    assert abs(good.points2d["ball"][:, 0].mean() - bad.points2d["ball"][:, 0].mean()) > 0.2 * W


def test_inputs_are_checked(tmp_path):
    cam = _camera()
    with pytest.raises(ValueError, match="no camera"):
        geometry_figure(_scene())
    with pytest.raises(ValueError, match="does not match"):
        geometry_figure(_scene(), [np.zeros((10, 10))], cameras=[cam])
    with pytest.raises(ValueError, match="not both"):
        geometry_figure(_scene(), [(np.zeros((80, 96)), cam)], cameras=[cam])
    with pytest.raises(ValueError, match="one target per camera"):
        geometry_figure(_scene(), [np.zeros((80, 96))] * 2, cameras=[cam])
    with pytest.raises(FileNotFoundError):
        geometry_figure(_scene(), [tmp_path / "nope.npy"], cameras=[cam])
    with pytest.raises(TypeError):
        geometry_figure(42, cameras=[cam])
    p = tmp_path / "t.npy"
    np.save(p, _ball_mask(cam))
    res = geometry_figure(_scene(), [(p, cam)])
    np.testing.assert_array_equal(res.views[0].target, _ball_mask(cam))


def test_scene_file(tmp_path):
    """A loaded TOML scene (its objects and camera) goes in as is."""
    from taichi_xray.scene import parse_scene

    obj = tmp_path / "ball.stl"
    import meshio

    V, F = icosphere(radius=30.0, subdivisions=2)
    meshio.write_points_cells(obj, V, [("triangle", F)])
    scene = parse_scene({
        "camera": {"sid": 700.0, "sdd": 1000.0, "detector": [40, 30], "pixel_spacing": 4.0},
        "spectrum": {"kvp": 80},
        "object": [{"name": "ball", "mesh": "ball.stl", "material": "cortical_bone"}],
    }, folder=tmp_path)
    res = geometry_figure(scene, out=tmp_path / "g.png")
    assert res.names == ["ball"] and res.views[0].camera is scene.camera
    assert (tmp_path / "g.png").exists()
