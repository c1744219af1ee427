"""``taichi-xray register`` and the scene-level API under it (taichi_xray.fit.scene_register), the
collimator detection and the fluoroscopy degradation (taichi_xray.fit.degrade).

A small scene (a soft-tissue ellipsoid around a tilted bone torus and a bone ellipsoid, 64 x 64 px)
is rendered with the bones moved by a known transform and written as DICOM; the command must
recover the transform from the scene as given. The references are the transform we set, scipy's
rotations and plain numpy geometry.
"""
import json

import numpy as np
import pytest
import tomli_w
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from taichi_xray.cli import main
from taichi_xray.fit.degrade import degrade, rectangle_field, wire_line_integral
from taichi_xray.fit.metrics import rotation_error_deg
from taichi_xray.fit.register import render_posed
from taichi_xray.fit.scene_register import (Target, _renderer, collimator_mask, default_schedule, euler_from_matrix,
                                            matrix_from_euler, parse_schedule, register_scene, rigid_matrix,
                                            select_objects)
from taichi_xray.io import write_dicom
from taichi_xray.mesh import Mesh
from taichi_xray.primitives import ellipsoid, rotation_matrix, torus
from taichi_xray.scene import _rotation, load_scene

T_TRUE = np.array([4.0, -3.0, 2.5])
E_TRUE = np.array([2.0, -3.0, 1.5])  # degrees about x, y, z (R = Rz Ry Rx)
FAST = "2:40:1.0,1:40:0.3"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    Mesh(*ellipsoid((85.0, 60.0, 95.0), n_lat=14, n_lon=28)).save(d / "body.stl", binary=True)
    Mesh(*torus(R=32.0, r=9.0, n=32, m=12, rotation=rotation_matrix((1, 0, 0), 60.0))).save(d / "ring.stl",
                                                                                           binary=True)
    Mesh(*ellipsoid((22.0, 13.0, 11.0), centre=(30.0, 8.0, 38.0), n_lat=10, n_lon=20)).save(d / "knob.stl",
                                                                                          binary=True)
    scene = {"camera": {"sid": 600.0, "sdd": 1000.0, "detector": [64, 64], "pixel_spacing": 3.0},
             "spectrum": {"kvp": 80, "bin_width": 5.0},
             "object": [{"name": "body", "mesh": "body.stl", "material": "soft_tissue"},
                        {"name": "bone_ring", "mesh": "ring.stl", "material": "cortical_bone", "parent": "body"},
                        {"name": "bone_knob", "mesh": "knob.stl", "material": "cortical_bone", "parent": "body"}]}
    p = d / "small.toml"
    p.write_text(tomli_w.dumps(scene))
    sc = load_scene(p)
    moving = select_objects(sc, "bone_*")
    verts = [np.asarray(m.vertices, np.float64) for m in sc.meshes]
    centre = np.concatenate([verts[i] for i in moving]).mean(0)
    cams = [sc.camera_spec.build(lao=a, cran=0.0) for a in (0.0, 90.0)]
    r = _renderer(sc, cams)
    rv = Rotation.from_matrix(matrix_from_euler(E_TRUE)).as_rotvec(degrees=True)
    moved = render_posed(r, verts, rv, T_TRUE, centre, moving=moving).to(torch.float64).numpy()
    return dict(path=p, scene=sc, moving=moving, centre=centre, cams=cams, moved=moved, dir=d, verts=verts)


def _errors_one_view(result, centre, cam):
    """(in-plane translation error, depth translation error, rotation error): with one view the
    translation along the ray through the objects is weakly determined (its image is a small
    change of magnification), the other two components and the rotation are not."""
    e = np.asarray(result["translation_mm"]) - T_TRUE
    d = np.asarray(centre) - np.asarray(cam.source)
    d /= np.linalg.norm(d)
    depth = float(abs(e @ d))
    R = np.asarray(result["transform"])[:3, :3]
    return float(np.linalg.norm(e - (e @ d) * d)), depth, rotation_error_deg(R, matrix_from_euler(E_TRUE))


def _run(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _errors(result, centre):
    R = np.asarray(result["transform"])[:3, :3]
    return (float(np.linalg.norm(np.asarray(result["translation_mm"]) - T_TRUE)),
            rotation_error_deg(R, matrix_from_euler(E_TRUE)))


# ----------------------------------------------------------------------------- conventions
def test_euler_convention_matches_scene_and_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.uniform(-80, 80, 3)
        R = matrix_from_euler(a)
        np.testing.assert_allclose(R, _rotation(a), atol=1e-12)  # the scene file's rotate_deg
        # extrinsic x, then y, then z == intrinsic Z-Y-X: R = Rz Ry Rx
        np.testing.assert_allclose(R, Rotation.from_euler("xyz", a, degrees=True).as_matrix(), atol=1e-12)
        np.testing.assert_allclose(euler_from_matrix(R), a, atol=1e-9)
    T = rigid_matrix(matrix_from_euler([10, 20, 30]), [1, 2, 3], [5, -5, 7])
    p = np.array([[1.0, 2.0, 3.0], [-4.0, 0.5, 9.0]])
    ref = (p - [5, -5, 7]) @ matrix_from_euler([10, 20, 30]).T + [5, -5, 7] + [1, 2, 3]
    np.testing.assert_allclose(p @ T[:3, :3].T + T[:3, 3], ref, atol=1e-12)
    assert parse_schedule("4:60:2, 2:30:1") == [(4, 60, 2.0), (2, 30, 1.0)]
    with pytest.raises(ValueError, match="FACTOR:ITERATIONS:LR"):
        parse_schedule("4:60")
    assert default_schedule(1024, 1024) == [(16, 60, 2.0), (8, 60, 1.0), (4, 40, 0.3)]
    assert default_schedule(64, 64)[0][0] == 4


# ----------------------------------------------------------------------------- the command
def test_register_dicom_end_to_end(small, tmp_path, capsys):
    paths = []
    for v, (L, cam) in enumerate(zip(small["moved"], small["cams"])):
        p = tmp_path / f"view{v}.dcm"
        if v == 0:
            write_dicom(p, L, cam)  # XA, MONOCHROME2, LOG
        else:
            write_dicom(p, L, cam, modality="DX", photometric="MONOCHROME1", log_stored=False)
        paths.append(p)
    out = tmp_path / "out"
    rc, _, err = _run(["register", small["path"], *paths, "--objects", "bone_*", "-o", out, "--schedule", FAST,
                       "--no-progress"], capsys)
    assert rc == 0, err
    assert "registered bone_ring, bone_knob" in err and "wrote" in err
    res = json.loads((out / "result.json").read_text())
    for key in ("rotation_deg", "translation_mm", "transform", "centre_mm", "loss", "level_losses", "time_s",
                "objects", "targets", "loss_history"):
        assert key in res
    assert res["objects"] == ["bone_ring", "bone_knob"] and len(res["level_losses"]) == 2
    np.testing.assert_allclose(res["centre_mm"], small["centre"], atol=1e-9)
    T = np.asarray(res["transform"])
    np.testing.assert_allclose(T, rigid_matrix(matrix_from_euler(res["rotation_deg"]), res["translation_mm"],
                                               res["centre_mm"]), atol=1e-9)
    dt, dr = _errors(res, small["centre"])
    assert dt < 1.0 and dr < 0.5, (dt, dr)
    # meshes: the scene's vertices moved by T (float32 STL)
    for i, name in zip(small["moving"], res["objects"]):
        m = Mesh.load(out / "meshes" / f"{name}.stl", merge_vertices=False)
        v = small["verts"][i] @ T[:3, :3].T + T[:3, 3]
        d = np.abs(m.vertices[:, None, :] - v[None, :, :]).max(-1).min(1)  # each STL vertex is a moved vertex
        assert d.max() < 1e-3
    fig = out / "registration.png"
    assert fig.stat().st_size > 10000
    # nothing is overwritten without --force
    rc, _, err = _run(["register", small["path"], *paths, "--objects", "bone_*", "-o", out, "--schedule", "2:2:1",
                       "--no-progress"], capsys)
    assert rc == 2 and "exist" in err and "--force" in err
    assert json.loads((out / "result.json").read_text()) == res
    rc, _, err = _run(["register", small["path"], *paths, "--objects", "bone_*", "-o", out, "--schedule", "2:2:1",
                       "--no-progress", "--no-figure", "--force"], capsys)
    assert rc == 0, err


def test_single_view_with_init_and_shutter_tags(small, tmp_path, capsys):
    """One view, blades outside the field written as a DICOM Display Shutter, --init near the truth."""
    L = small["moved"][0].copy()
    field = rectangle_field(L.shape, 0.7, angle_deg=10.0) > 0.5
    L[~field] = L.max() + 5.0
    p = tmp_path / "shuttered.dcm"
    with pytest.warns(UserWarning, match="POLYGONAL"):  # a rotated rectangle: a polygon on the pixel grid
        write_dicom(p, L, small["cams"][0], mask=field)
    out = tmp_path / "o1"
    rc, _, err = _run(["register", small["path"], p, "--objects", "bone_ring,bone_knob", "-o", out, "--no-progress",
                       "--schedule", FAST, "--init", "3,-2,1,1,-2,1"], capsys)
    assert rc == 0, err
    res = json.loads((out / "result.json").read_text())
    assert res["targets"][0]["mask_source"].startswith("tags")
    assert res["init_translation_mm"] == [3.0, -2.0, 1.0]
    dp, dd, dr = _errors_one_view(res, small["centre"], small["cams"][0])
    assert dp < 1.0 and dd < 5.0 and dr < 1.0, (dp, dd, dr)  # one 64 px view: depth is weakly determined
    # --no-mask: every pixel, recorded as such
    rc, _, err = _run(["register", small["path"], p, "--objects", "bone_*", "-o", tmp_path / "o2", "--no-progress",
                       "--schedule", "2:2:1", "--no-mask", "--no-figure"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "o2" / "result.json").read_text())["targets"][0]["mask_source"].startswith("none")


def test_bad_input(small, tmp_path, capsys):
    p = tmp_path / "t.dcm"
    write_dicom(p, small["moved"][0], small["cams"][0])
    base = ["register", small["path"], p, "-o", tmp_path / "o", "--no-progress"]
    cases = [
        (["--objects", "bone_rnig"], "no object named 'bone_rnig'"),
        (["--objects", "bone_*", "--init", "1,2,3"], "--init must be 6"),
        (["--objects", "bone_*", "--schedule", "2:x:1"], "--schedule"),
        (["--objects", "bone_*", "--loss", "nope"], "unknown loss"),
        (["--objects", "bone_*", "--views", "0:0,90:0"], "--views gives 2 views for 1 targets"),
    ]
    for extra, msg in cases:
        rc, _, err = _run(base + extra, capsys)
        assert rc == 2 and msg in err, (extra, err)
    rc, _, err = _run(["register", small["path"], tmp_path / "missing.dcm", "--objects", "bone_*", "-o",
                       tmp_path / "o"], capsys)
    assert rc == 2 and "missing.dcm" in err
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a dicom file at all" * 10)
    rc, _, err = _run(["register", small["path"], junk, "--objects", "bone_*", "-o", tmp_path / "o",
                       "--no-progress"], capsys)
    assert rc == 2 and "junk.dcm" in err
    # two images without geometry would both use the scene's camera
    for k in range(2):
        np.save(tmp_path / f"a{k}.npy", small["moved"][k])
    rc, _, err = _run(["register", small["path"], tmp_path / "a0.npy", tmp_path / "a1.npy", "--objects", "bone_*",
                       "-o", tmp_path / "o", "--no-progress"], capsys)
    assert rc == 2 and "--views" in err
    assert not (tmp_path / "o").exists()
    # the API: targets of different sizes
    with pytest.raises(ValueError, match="different sizes"):
        register_scene(small["scene"], [np.zeros((64, 64)), np.zeros((32, 32))], "bone_*", progress=False)


# ----------------------------------------------------------------------------- polarity
def test_polarity_detection_and_override(small, tmp_path, capsys):
    L = small["moved"][0]
    # an image without geometry, a log image stored "dense dark" (larger value = more intensity)
    raw = np.round(5000 * (L.max() + 0.5 - L)).astype(np.uint16)
    np.save(tmp_path / "dark.npy", raw)
    out = tmp_path / "pol"
    rc, _, err = _run(["register", small["path"], tmp_path / "dark.npy", "--objects", "bone_*", "-o", out,
                       "--no-progress", "--schedule", FAST, "--no-figure", "--init", "0,0,0,0,0,0"], capsys)
    assert rc == 0, err
    res = json.loads((out / "result.json").read_text())
    t = res["targets"][0]
    assert t["polarity"] == "dense_dark" and t["geometry_source"].startswith("the scene's camera")
    dp, dd, dr = _errors_one_view(res, small["centre"], small["cams"][0])
    assert dp < 1.0 and dd < 5.0 and dr < 1.0, (dp, dd, dr)  # one 64 px view: depth is weakly determined
    # set the wrong polarity explicitly: kept as given (no flip), recorded
    rc, _, err = _run(["register", small["path"], tmp_path / "dark.npy", "--objects", "bone_*", "-o", tmp_path / "p2",
                       "--no-progress", "--schedule", "2:2:1", "--no-figure", "--polarity", "dense-bright"], capsys)
    assert rc == 0, err
    t2 = json.loads((tmp_path / "p2" / "result.json").read_text())["targets"][0]
    assert t2["polarity"] == "dense_bright" and t2["polarity_source"] == "argument" and not t2["polarity_flipped"]
    # an inverted target given in memory is flipped by the NGC check, with a note
    with pytest.warns(UserWarning, match="other polarity"):
        reg = register_scene(small["scene"], [Target(-L, None, small["cams"][0])], "bone_*", schedule=FAST,
                             progress=False)
    assert reg.targets[0].meta["polarity_flipped"] and reg.notes
    e = np.asarray(reg.translation_mm) - T_TRUE
    d = small["centre"] - small["cams"][0].source
    d = d / np.linalg.norm(d)
    assert np.linalg.norm(e - (e @ d) * d) < 1.0 and abs(e @ d) < 5.0, e  # one view: depth weakly determined


# ----------------------------------------------------------------------------- collimator and degradation
def _blobs(shape, seed):
    """A line integral like a radiograph: 1.5-4 of smooth 'soft tissue' plus dense elliptic 'bones'."""
    r = np.random.default_rng(seed)
    g = ndimage.gaussian_filter(r.uniform(size=shape), 8.0)
    img = 1.5 + 2.0 * (g - g.min()) / (g.max() - g.min())
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    for _ in range(6):
        c, s = r.uniform(20, shape[0] - 20, 2), r.uniform(5, 15, 2)
        img += 0.8 * (((yy - c[0]) / s[0]) ** 2 + ((xx - c[1]) / s[1]) ** 2 < 1)
    return img


def test_collimator_mask_finds_rotated_blades():
    for seed, angle in ((0, 0.0), (1, 12.0), (2, -25.0)):
        L = _blobs((128, 128), seed)
        d = degrade(L, spr=0.7, photons=3000, blur_px=1.0, field_fraction=0.75, shutter_angle_deg=angle,
                    wire=True, seed=seed)
        m, info = collimator_mask(d.line_integral, return_info=True)
        true = d.field
        iou = (m & true).sum() / (m | true).sum()
        assert info["found"] and iou > 0.95, (seed, iou)
        # nothing of the shadow more than 2 px beyond the field's edge
        assert not (m & ~ndimage.binary_dilation(true, iterations=2)).any()
    # no blades: all pixels
    m, info = collimator_mask(_blobs((128, 128), 5), return_info=True)
    assert m.all() and not info["found"]


def test_degrade_matches_its_definitions():
    H = W = 96
    L = np.full((H, W), 2.0)
    L[30:60, 20:80] += 1.0
    # scatter only: the median S/P behind the patient is the requested SPR
    d = degrade(L, spr=0.8, photons=None, blur_px=0.0, field_fraction=1.0, wire=False)
    T = np.exp(-L)
    S = np.exp(-d.line_integral) - T
    assert np.median(S / T) == pytest.approx(0.8, rel=1e-9)
    assert (S > 0).all() and d.field.all()
    # Poisson noise: a flat field, counts with mean = variance = photons
    flat = degrade(np.full((200, 200), 1.0), spr=0.0, photons=2000.0, blur_px=0.0, field_fraction=1.0,
                   wire=False, seed=3)
    n = np.exp(-flat.line_integral) * flat.params["photons_unattenuated"]
    assert abs(n.mean() - 2000.0) < 3 * np.sqrt(2000.0 / n.size) and abs(n.var() / 2000.0 - 1) < 0.05
    np.testing.assert_allclose(n, np.round(n), atol=1e-6)  # integer counts
    # collimator: the open fraction and the blades' transmission
    f = rectangle_field((H, W), 0.75, angle_deg=20.0)
    assert f.mean() == pytest.approx(0.75, abs=2e-3)
    dd = degrade(L, spr=0.0, photons=None, blur_px=0.0, field_fraction=0.75, shutter_angle_deg=20.0, wire=False,
                 shutter_shift=0.0, leakage=0.01)
    inner = ndimage.binary_erosion(dd.field, iterations=2)
    outer = ~ndimage.binary_dilation(dd.field, iterations=2)
    np.testing.assert_allclose(dd.line_integral[inner], L[inner], atol=1e-12)
    np.testing.assert_allclose(dd.line_integral[outer], L[outer] - np.log(0.01), atol=1e-12)
    # the wire: a chord profile of the requested peak and width
    w = wire_line_integral((200, 200), width_px=3.0, peak=1.0, seed=4, n_sub=8)
    assert 0.9 < w.max() <= 1.0 and 2.0 < (w > 0.05).sum() / (200 * 1.0) < 5.0
    with pytest.raises(ValueError, match="photons"):
        degrade(L, photons=-1.0)
    with pytest.raises(ValueError, match="line_integral"):
        degrade(np.full((4, 4), np.nan))


def test_shape_model_through_the_command(small, tmp_path, capsys):
    from taichi_xray.fit.ssm import ShapeModel, synthetic_population

    sc, moving = small["scene"], small["moving"]
    v = np.concatenate([small["verts"][i] for i in moving])
    f = np.concatenate([np.asarray(sc.meshes[i].faces) + off for i, off in
                        zip(moving, np.cumsum([0] + [len(small["verts"][i]) for i in moving])[:-1])])
    ssm = ShapeModel.fit(synthetic_population(v, f, n=8, seed=2, scale_sd=0.05, displacement_mm=2.0), f,
                         n_components=2)
    ssm.save(tmp_path / "ssm.npz")
    p = tmp_path / "t.dcm"
    write_dicom(p, small["moved"][0], small["cams"][0])
    rc, _, err = _run(["register", small["path"], p, "--objects", "bone_*", "-o", tmp_path / "o", "--no-progress",
                       "--schedule", "2:5:1", "--no-figure", "--shape-model", tmp_path / "ssm.npz",
                       "--init=-1,0,0,0,0,0"], capsys)
    assert rc == 0, err
    res = json.loads((tmp_path / "o" / "result.json").read_text())
    assert len(res["beta"]) == 2 and res["init_translation_mm"] == [-1.0, 0.0, 0.0]
    # the written meshes are the shape model's instance moved by T
    T = np.asarray(res["transform"])
    inst = ssm.vertices(np.asarray(res["beta"]))[: len(small["verts"][moving[0]])]
    m = Mesh.load(tmp_path / "o" / "meshes" / "bone_ring.stl", merge_vertices=False)
    d = np.abs(m.vertices[:, None, :] - (inst @ T[:3, :3].T + T[:3, 3])[None]).max(-1).min(1)
    assert d.max() < 1e-3
    # a model of the wrong size is refused
    bad = ShapeModel.fit(synthetic_population(small["verts"][1], np.asarray(sc.meshes[1].faces), n=6, seed=1),
                         np.asarray(sc.meshes[1].faces), n_components=1)
    bad.save(tmp_path / "bad.npz")
    rc, _, err = _run(["register", small["path"], p, "--objects", "bone_*", "-o", tmp_path / "o2", "--no-progress",
                       "--shape-model", tmp_path / "bad.npz"], capsys)
    assert rc == 2 and "shape model has" in err


def test_isocentre_of_standard_tag_dicom_comes_from_the_scene(small, tmp_path):
    import pydicom

    from taichi_xray.fit.scene_register import load_target

    import tomllib

    cfg = tomllib.loads(small["path"].read_text())
    cfg["camera"]["isocenter"] = [0.0, 0.0, 10.0]  # on the AP beam axis nearest the origin, as write_dicom records it
    for o in cfg["object"]:
        o["mesh"] = str(small["dir"] / o["mesh"])
    p = tmp_path / "iso.toml"
    p.write_text(tomli_w.dumps(cfg))
    sc = load_scene(p)
    cam = sc.camera
    f = tmp_path / "iso.dcm"
    with pytest.warns(UserWarning, match="isocentre"):
        write_dicom(f, small["moved"][0], cam)
    ds = pydicom.dcmread(f)
    ds.remove_private_tags()  # standard tags only: no tag holds the isocentre
    ds.save_as(f)

    def same(P, Q):
        return np.allclose(P / np.linalg.norm(P), Q / np.linalg.norm(Q), atol=1e-9)

    t = load_target(f, sc)
    assert t.meta["isocenter_source"].startswith("the scene") and same(t.camera.P, cam.P)
    assert not same(load_target(f, None).camera.P, cam.P)  # read_xray's default: the origin
    t2 = load_target(f, sc, isocenter=[0.0, 0.0, 10.0])
    assert t2.meta["isocenter_source"] == "argument" and same(t2.camera.P, cam.P)
