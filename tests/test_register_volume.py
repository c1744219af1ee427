"""Registration of CT volumes (issue 11, item 5): ``register`` / ``register_scene`` / ``taichi-xray
register`` pose a volume, meshes inside a volume, or both as one rigid body.

A synthetic HU volume (40 x 36 x 30 voxels of 3 mm: a water ellipsoid with a bone block, off the
box centre) is written as .npz into a scene with ``[[volume]]``; a titanium sphere ("screw") lies
inside it. Targets are rendered from a second scene file whose ``transform`` keys move the volume
(and the screw) by a known transform -- the scene loader's ``Volume.transformed``, not the
registration's pose conversion -- and the registration starts from the unmoved scene.
References: the transform we set, scipy's rotations, and the moved affine rendered without
``volume_poses``.
"""
import json

import numpy as np
import pytest
import tomli_w
import torch
from scipy.spatial.transform import Rotation

from taichi_xray.cli import main
from taichi_xray.fit.register import default_centre, render_posed, volume_centroid, volume_pose
from taichi_xray.fit.scene_register import Target, _renderer, matrix_from_euler, register_scene, select_objects
from taichi_xray.io import write_dicom
from taichi_xray.mesh import Mesh
from taichi_xray.objects.volume import Volume
from taichi_xray.pipeline import VolumeObject
from taichi_xray.primitives import icosphere
from taichi_xray.scene import load_scene
from taichi_xray.torch import XRayRenderer

E_TRUE = np.array([2.0, -3.0, 2.5])  # degrees about x, y, z (R = Rz Ry Rx)
T_TRUE = np.array([4.0, -5.0, 3.0])  # mm
C_TRUE = np.array([10.0, -20.0, 15.0])  # the true transform's centre (any point: errors are compared as matrices)
VIEWS = ((20.0, 10.0), (110.0, -10.0))
FAST = dict(schedule="2:40:1,1:90:0.3", loss="ngc", patience=None, progress=False)


def _volume():
    n, sp = (40, 36, 30), 3.0
    A = np.diag([sp, sp, sp, 1.0])
    A[:3, 3] = -sp * (np.array(n) - 1) / 2 + np.array([4.0, -6.0, 5.0])
    x = np.stack(np.meshgrid(*[np.arange(m) for m in n], indexing="ij"), -1) * sp
    hu = np.full(n, -1000.0, np.float32)
    hu[(((x - [60.0, 50.0, 45.0]) / [50.0, 40.0, 38.0]) ** 2).sum(-1) <= 1] = 0.0  # water ellipsoid, off centre
    hu[18:28, 10:18, 8:22] = 1200.0  # bone block
    return Volume(hu, A, name="ct")


def _scene_dict(screw: bool, moved: bool):
    tf = {"transform": {"rotate_deg": E_TRUE.tolist(), "translate": T_TRUE.tolist(), "centre": C_TRUE.tolist()}} \
        if moved else {}
    d = {"camera": {"sid": 600.0, "sdd": 1000.0, "detector": [80, 80], "pixel_spacing": 3.0, "lao": 20.0,
                    "cran": 10.0},
         "spectrum": {"monochromatic": 60.0},
         "volume": [dict({"name": "ct", "path": "ct.npz"}, **tf)]}
    if screw:
        d["object"] = [dict({"name": "screw", "mesh": "screw.stl", "material": "Ti", "parent": "ct"}, **tf)]
    return d


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("volscene")
    vol = _volume()
    vol.save(d / "ct.npz")
    Mesh(*icosphere(7.0, 2, centre=tuple(vol.index_to_world([12.0, 24.0, 18.0]))), "screw").save(d / "screw.stl",
                                                                                                 binary=True)
    paths = {}
    for screw in (False, True):
        for moved in (False, True):
            p = d / f"{'screw' if screw else 'vol'}_{'moved' if moved else 'given'}.toml"
            p.write_text(tomli_w.dumps(_scene_dict(screw, moved)))
            paths[screw, moved] = p
    return dict(dir=d, vol=vol, paths=paths)


def _targets(path, cams):
    """Line-integral targets of a scene file in the given views, as Targets."""
    sc = load_scene(path)
    r = _renderer(sc, cams)
    with torch.no_grad():
        img = r([torch.as_tensor(np.asarray(m.vertices, np.float32)) for m in sc.meshes]).to(torch.float64).numpy()
    assert np.isfinite(img).all() and img.max() > 1.0
    return [Target(img[v], None, cams[v], f"view {v}", None, {}) for v in range(len(cams))]


def _cams(scene):
    return [scene.camera_spec.build(lao=a, cran=c) for a, c in VIEWS]


def _errors(reg):
    """(translation error mm at the registration's centre, rotation error deg) against the truth."""
    R = matrix_from_euler(E_TRUE)
    T_true = np.eye(4)
    T_true[:3, :3], T_true[:3, 3] = R, C_TRUE + T_TRUE - R @ C_TRUE
    c = reg.centre_mm
    d_t = np.linalg.norm((reg.transform[:3, :3] @ c + reg.transform[:3, 3]) - (R @ c + T_true[:3, 3]))
    d_r = np.rad2deg(np.linalg.norm(Rotation.from_matrix(reg.transform[:3, :3] @ R.T).as_rotvec()))
    return d_t, d_r


def test_volume_alone_is_recovered(case):
    sc = load_scene(case["paths"][False, False])
    targets = _targets(case["paths"][False, True], _cams(sc))
    reg = register_scene(sc, targets, "ct", **FAST)
    assert reg.objects == ["ct"] and reg.moving == [0] and reg.moving_volumes == [0]
    # the default centre is the body centroid (voxels above -500 HU), not the box centre
    np.testing.assert_allclose(reg.centre_mm, volume_centroid(case["vol"]))
    assert np.linalg.norm(reg.centre_mm - case["vol"].centre) > 1.0
    d_t, d_r = _errors(reg)
    print(f"volume alone: translation error {d_t:.4f} mm, rotation error {d_r:.4f} deg, {reg.time_s:.1f} s")
    assert d_t < 0.5 and d_r < 0.3


def test_volume_with_a_screw_inside_moves_as_one_body(case):
    sc = load_scene(case["paths"][True, False])
    assert select_objects(sc, "ct") == [0, 1]  # the screw (object 0) follows its volume (index P + 0 = 1)
    targets = _targets(case["paths"][True, True], _cams(sc))
    reg = register_scene(sc, targets, "ct", **FAST)
    assert reg.objects == ["screw", "ct"]
    d_t, d_r = _errors(reg)
    print(f"volume + screw: translation error {d_t:.4f} mm, rotation error {d_r:.4f} deg, {reg.time_s:.1f} s")
    assert d_t < 0.5 and d_r < 0.3
    # the fitted screw lies where the moved scene puts it
    moved = load_scene(case["paths"][True, True]).meshes[0].vertices
    assert np.abs(reg.posed_meshes()["screw"].vertices - moved).max() < 0.6


def test_screw_alone_in_a_fixed_volume(case):
    """Meshes inside a volume, the volume fixed: the volume is rendered (it is the background) and the
    screw's position is recovered (a sphere: its rotation is not observable, so only positions count)."""
    sc = load_scene(case["paths"][True, False])
    cams = _cams(sc)
    r = _renderer(sc, cams)
    verts = [np.asarray(sc.meshes[0].vertices, np.float64)]
    c = verts[0].mean(0)
    shift = np.array([3.0, -2.0, 2.5])
    tgt = render_posed(r, verts, np.zeros(3), shift, c, moving=["screw"]).to(torch.float64).numpy()
    with torch.no_grad():
        zero = r([torch.as_tensor(verts[0] + shift, dtype=torch.float32)], volume_poses={"ct": torch.zeros(6)})
    np.testing.assert_allclose(tgt, zero.to(torch.float64).numpy(), atol=1e-6)  # the volume, unmoved, is rendered
    assert (tgt > 1.0).mean() > 0.1  # the water of the volume around the screw (the screw covers < 1 %)
    targets = [Target(tgt[v], None, cams[v], f"view {v}", None, {}) for v in range(2)]
    reg = register_scene(sc, targets, "screw", schedule="1:60:0.5", loss="ngc", patience=None, progress=False)
    assert reg.objects == ["screw"] and reg.moving_volumes == []
    np.testing.assert_allclose(reg.centre_mm, c)
    err = np.linalg.norm(reg.transform[:3, :3] @ c + reg.transform[:3, 3] - (c + shift))
    print(f"screw alone: position error {err:.4f} mm")
    assert err < 0.5


def test_volume_pose_conversion_equals_the_moved_affine(case):
    """t_v = t + (R - I)(c_v - c): the volume posed by register's conversion renders exactly as the
    volume whose affine was moved by Volume.transformed, with the screw moved alike (float64)."""
    vol = case["vol"]
    screw = Mesh.load(case["dir"] / "screw.stl")
    R = matrix_from_euler([4.0, -2.0, 7.0])
    t, c = np.array([6.0, -3.0, 4.0]), np.array([-15.0, 25.0, 10.0])
    rv = Rotation.from_matrix(R).as_rotvec()
    # the conversion itself, on points
    pose = volume_pose(torch.as_tensor(rv), torch.as_tensor(t), c, vol.centre).numpy()
    x = np.random.default_rng(0).normal(size=(20, 3)) * 50
    R_v = Rotation.from_rotvec(pose[:3]).as_matrix()
    np.testing.assert_allclose((x - vol.centre) @ R_v.T + vol.centre + pose[3:], (x - c) @ R.T + c + t, atol=1e-10)
    # gradients reach the rotation and translation (float64 gradcheck of the conversion)
    assert torch.autograd.gradcheck(lambda a, b: volume_pose(a, b, c, vol.centre),
                                    (torch.tensor(rv, requires_grad=True), torch.tensor(t, requires_grad=True)))
    cams = [Camera_build(a, cr) for a, cr in VIEWS]
    kw = dict(materials=["Ti"], parents=[1], overlap="allow", names=["screw"], dtype=torch.float64)
    posed = XRayRenderer([screw], cams, volumes=[VolumeObject(vol)], **kw)
    moved_vol = vol.transformed(R, t, c, name="ct")
    moved = XRayRenderer([screw], cams, volumes=[VolumeObject(moved_vol)], **kw)
    v_moved = torch.as_tensor((np.asarray(screw.vertices) - c) @ R.T + c + t)
    for s in (1, 2):  # full size and a coarse level (at_scale keeps the volumes)
        a = render_posed(posed.at_scale(s), [screw.vertices], np.rad2deg(rv), t, c, moving=["screw", "ct"],
                         dtype=torch.float64).numpy()
        with torch.no_grad():
            b = moved.at_scale(s)([v_moved]).numpy()
        assert a.shape == (2, 80 // s, 80 // s) and b.max() > 1.0
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9 * b.max())
    assert posed.at_scale(2).volume_names == ["ct"]
    # through the renderer, the image's gradient reaches all six parameters
    p = torch.tensor(np.r_[rv, t], requires_grad=True)
    vp = volume_pose(p[:3], p[3:], c, vol.centre)
    Rm = torch.as_tensor(R)
    img = posed([(torch.as_tensor(np.array(screw.vertices, np.float64)) - torch.as_tensor(c)) @ Rm.T + torch.as_tensor(c) + p[3:]],
                volume_poses={"ct": vp})
    (img * torch.linspace(0, 1, 80, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(p.grad).all() and bool((p.grad.abs() > 0).all())


def Camera_build(lao, cran):
    from taichi_xray.camera import Camera

    return Camera.c_arm(sid=600.0, sdd=1000.0, width=80, height=80, pixel_spacing=3.0, lao=lao, cran=cran)


def test_cli_registers_a_volume(case, tmp_path, capsys):
    sc = load_scene(case["paths"][True, False])
    cams = _cams(sc)
    files = []
    for v, t in enumerate(_targets(case["paths"][True, True], cams)):
        files.append(tmp_path / f"view{v}.dcm")
        write_dicom(files[-1], t.line_integral, cams[v])
    out = tmp_path / "reg"
    rc = main(["register", str(case["paths"][True, False]), *map(str, files), "--objects", "ct", "-o", str(out),
               "--schedule", "2:40:1,1:90:0.3", "--loss", "ngc", "--no-mask", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "result.json").read_text())
    assert res["objects"] == ["screw", "ct"]
    assert (out / "meshes" / "screw.stl").exists() and (out / "registration.png").exists()

    class R:  # the result.json fields _errors reads
        transform = np.array(res["transform"])
        centre_mm = np.array(res["centre_mm"])

    T = R.transform
    np.testing.assert_allclose(T[:3, :3], matrix_from_euler(res["rotation_deg"]), atol=1e-9)
    c = R.centre_mm
    np.testing.assert_allclose(T[:3, 3], c + np.array(res["translation_mm"]) - T[:3, :3] @ c, atol=1e-9)
    d_t, d_r = _errors(R)
    print(f"CLI: translation error {d_t:.4f} mm, rotation error {d_r:.4f} deg")
    assert d_t < 0.5 and d_r < 0.3


def test_bad_names_are_one_line_errors(case, tmp_path, capsys):
    sc = load_scene(case["paths"][True, False])
    with pytest.raises(ValueError, match=r"no object or volume named 'cts'.*did you mean 'ct'.*volumes: ct"):
        select_objects(sc, "cts")
    target = tmp_path / "t.npy"
    np.save(target, np.zeros((80, 80)))
    rc = main(["register", str(case["paths"][True, False]), str(target), "--objects", "bone_*", "-o",
               str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "'bone_*'" in err and "objects: screw" in err and "volumes: ct" in err
    assert not (tmp_path / "o").exists()
    r = _renderer(sc, _cams(sc))
    with pytest.raises(ValueError, match="volume_poses: no volume named 'cx'"):
        r([torch.as_tensor(np.asarray(sc.meshes[0].vertices, np.float32))], volume_poses={"cx": torch.zeros(6)})
    # the default centre of a volume is its body centroid: an independent per-voxel mean
    vol = case["vol"]
    ijk = np.argwhere(vol.values > -500).mean(0)
    np.testing.assert_allclose(default_centre([], [VolumeObject(vol)], [0]), vol.index_to_world(ijk), atol=1e-9)
