"""Scene files with CT volumes (and a mesh inside one), tetrahedral meshes, a source and a detector model:
loaded, rendered by the CLI and equal to the same scene built in Python."""
import textwrap

import numpy as np
import pytest
import torch

import taichi_xray as tx
from scenes import TET_OBJECTS, write_tet_meshes
from taichi_xray.cli import main
from taichi_xray.objects import TetMesh, Volume
from taichi_xray.physics import Spectrum
from taichi_xray.physics.detector_model import DetectorModel, MTF
from taichi_xray.physics.imaging import Imaging
from taichi_xray.pipeline import Pipeline, VolumeObject
from taichi_xray.primitives import icosphere
from taichi_xray.render import render
from taichi_xray.scene import SceneError, load_scene


CAMERA = """
[camera]
sid = 400.0
sdd = 700.0
detector = [40, 32]
pixel_spacing = 3.0
lao = 20.0
"""


def write_volume(folder, n=20, sp=3.0):
    A = np.eye(4)
    A[:3, :3] *= sp
    A[:3, 3] = -sp * (n - 1) / 2
    rng = np.random.default_rng(0)
    hu = rng.uniform(-300, 800, (n, n, n)).astype(np.float32)
    np.save(folder / "ct.npy", hu)
    np.savetxt(folder / "ct.affine.txt", A)
    return Volume(hu, A, name="patient")


def test_volume_with_a_mesh_inside_source_and_detector_model(tmp_path):
    vol = write_volume(tmp_path)
    tx.Mesh(*icosphere(8.0, 2, centre=(3.0, 0.0, -2.0)), "screw").save(tmp_path / "screw.stl")
    (tmp_path / "s.toml").write_text(textwrap.dedent(CAMERA + """
        [spectrum]
        kvp = 80
        bin_width = 5.0
        [source]
        anode = "top"
        anode_angle_deg = 12.0
        heel = true
        [detector]
        kind = "energy"
        mtf = { gaussian_sigma_mm = 3.0 }
        [[volume]]
        name = "patient"
        path = "ct.npy"
        [[object]]
        name = "screw"
        mesh = "screw.stl"
        material = "Ti"
        parent = "patient"
        [output]
        kind = "line_integral"
        air = true
        """))
    sc = load_scene(tmp_path / "s.toml")
    assert [v.name for v in sc.volumes] == ["patient"] and sc.parents == [1]
    assert sc.imaging.heel and sc.imaging.detector is not None
    res = render(sc)
    cam = sc.camera
    pipe = Pipeline([tx.Mesh(*icosphere(8.0, 2, centre=(3.0, 0.0, -2.0)))], cam, materials=["Ti"], parents=[1],
                    volumes=[VolumeObject(vol)], spectrum=Spectrum.tungsten(80, bin_width=5.0), air=True,
                    detector=sc.detector, physics_dtype=torch.float64,
                    imaging=Imaging(heel=True, anode="top", anode_angle_deg=12.0, kvp=80.0,
                                    detector=DetectorModel(pixel_pitch_mm=3.0, mtf=MTF.gaussian(3.0))))
    ref = pipe.render(kind="line_integral")[0].numpy()
    np.testing.assert_allclose(res.line_integral, ref, rtol=1e-6, atol=1e-7)
    assert res.line_integral.max() > 2.0
    out = tmp_path / "x.png"
    assert main(["render", str(tmp_path / "s.toml"), "-o", str(out)]) == 0 and out.exists()
    assert main(["info", str(tmp_path / "s.toml")]) == 0


def test_tetrahedral_object_in_a_scene(tmp_path):
    write_tet_meshes(tmp_path)
    (tmp_path / "t.toml").write_text(CAMERA + "[spectrum]\nmonochromatic = 60.0\n" + TET_OBJECTS)
    sc = load_scene(tmp_path / "t.toml")
    res = render(sc)
    loaded = TetMesh.load(tmp_path / "tets.vtu", name="bone_tets")
    pipe = Pipeline([tx.Mesh(*icosphere(60.0, 3)), loaded], sc.camera, materials=["soft_tissue", None],
                    parents=[-1, 0], spectrum=Spectrum.monochromatic(60.0), physics_dtype=torch.float64)
    np.testing.assert_allclose(res.line_integral, pipe.render()[0].numpy(), rtol=1e-6, atol=1e-7)
    assert main(["info", str(tmp_path / "t.toml")]) == 0


def test_scene_errors_name_the_section_and_key(tmp_path):
    write_volume(tmp_path)
    base = CAMERA + '[spectrum]\nmonochromatic = 60.0\n'
    cases = [
        ('[[volume]]\nname = "v"\npath = "missing.nii.gz"\n', r"\[\[volume\]\] #1 'v': key 'path': volume not found"),
        ('[[volume]]\nname = "v"\npath = "ct.npy"\nmethod = "nearest"\n', "key 'method'"),
        ('[source]\nanode = "up"\n', r"\[source\]: key 'anode'"),
        ('[detector]\nmtf = "carbon"\n', r"\[detector\]: key 'mtf'"),
        ('[detector]\nnoise = { method = "gaussian" }\n', "noise.seed"),
        ('[[object]]\nname = "t"\ntetmesh = "nope.vtu"\n', "key 'tetmesh'"),
    ]
    for extra, match in cases:
        (tmp_path / "e.toml").write_text(base + extra)
        with pytest.raises(SceneError, match=match):
            load_scene(tmp_path / "e.toml")


def test_scatter_section(tmp_path):
    tx.Mesh(*icosphere(80.0, 3), "body").save(tmp_path / "body.stl")
    text = CAMERA + """
        [spectrum]
        kvp = 80
        [[object]]
        name = "body"
        mesh = "body.stl"
        material = "water"
        [output]
        kind = "intensity"
        """
    (tmp_path / "a.toml").write_text(textwrap.dedent(text))
    (tmp_path / "b.toml").write_text(textwrap.dedent(text + """
        [scatter]
        model = "kernel"
        grid = { ratio = 10.0, lines_per_cm = 60.0 }
        """))
    sa, sb = load_scene(tmp_path / "a.toml"), load_scene(tmp_path / "b.toml")
    assert sa.imaging.scatter is None
    m = sb.imaging.scatter
    # auto air gap: the detector (sdd 700 along the central ray) minus the ball's far side (400 + 80)
    assert m.air_gap_mm == pytest.approx(700.0 - 480.0, abs=1.0) and m.grid is not None
    a, b = render(sa).intensity, render(sb).intensity
    assert (b >= a - 1e-9 * a.max()).all() and (b - a).max() > 0.01 * a.max()
    (tmp_path / "c.toml").write_text(textwrap.dedent(text + '\n[scatter]\ngrid = { ratio = 10.0, septa = 3 }\n'))
    with pytest.raises(SceneError, match=r"\[scatter\]: key 'grid'"):
        load_scene(tmp_path / "c.toml")
