"""The taichi-xray command line: outputs, overwrite protection, sweeps, info, errors, and the
quick-start thorax scene end to end (anatomy distinguishable, not just "not blank")."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import taichi as ti
import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from reference import box, icosphere  # noqa: E402

import taichi_xray as tx  # noqa: E402
from taichi_xray.cli import is_user_error, main, parse_sweep  # noqa: E402
from taichi_xray.imageio import load_projection_matrix, read_png  # noqa: E402
from taichi_xray.mesh import Mesh  # noqa: E402
from taichi_xray.scene import load_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small(tmp_path):
    Mesh(*icosphere(30.0, 2)).save(tmp_path / "ball.obj")
    Mesh(*box((-6, -6, -6), (6, 6, 6))).save(tmp_path / "cube.obj")
    d = {"camera": {"sid": 500.0, "sdd": 800.0, "detector": [40, 32], "pixel_spacing": 2.5},
         "spectrum": {"kvp": 70, "bin_width": 5.0},
         "object": [{"name": "ball", "mesh": "ball.obj", "material": "water"},
                    {"name": "cube", "mesh": "cube.obj", "material": "bone", "parent": "ball"}]}
    p = tmp_path / "small.toml"
    p.write_text(tomli_w.dumps(d))
    return p


def run(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_render_writes_png_and_projection_matrix(small, tmp_path, capsys):
    out = tmp_path / "image.png"
    rc, _, err = run(["render", small, "-o", out, "--npy", tmp_path / "image.npy"], capsys)
    assert rc == 0, err
    img = read_png(out)
    assert img.shape == (32, 40) and img.dtype == np.uint8 and img.max() > img.min()
    P = load_projection_matrix(tmp_path / "image.P.txt")
    cam = tx.Camera.from_projection_matrix(P, 40, 32)
    uv, _ = cam.project(np.zeros((1, 3)))
    np.testing.assert_allclose(uv[0], [19.5, 15.5], atol=1e-9)  # the ball's centre at the detector centre
    li = np.load(tmp_path / "image.npy")
    assert li.shape == (32, 40) and li[16, 20] > li[0, 0]
    # default output: the one "wrote ..." line, no backend chatter
    assert err.startswith("wrote ") and len(err.strip().splitlines()) == 1, err
    assert "running on" not in err and "[Taichi]" not in err
    rc, _, err = run(["-v", "render", small, "-o", tmp_path / "v.png"], capsys)
    assert rc == 0 and f"Taichi {'.'.join(map(str, ti.__version__))}" in err and "kernels on cpu" in err


def test_render_refuses_to_overwrite_without_force(small, tmp_path, capsys):
    out = tmp_path / "image.png"
    out.write_bytes(b"precious")
    rc, _, err = run(["render", small, "-o", out], capsys)
    assert rc == 2 and str(out) in err and "--force" in err and "Traceback" not in err
    assert out.read_bytes() == b"precious" and not (tmp_path / "image.P.txt").exists()
    rc, _, err = run(["render", small, "-o", out, "--force"], capsys)
    assert rc == 0 and read_png(out).shape == (32, 40)


def test_render_checks_every_output_before_rendering(small, tmp_path, capsys):
    (tmp_path / "image.P.txt").write_text("old")
    rc, _, err = run(["render", small, "-o", tmp_path / "image.png"], capsys)
    assert rc == 2 and "image.P.txt exists" in err
    assert not (tmp_path / "image.png").exists()


def test_sweep_writes_numbered_series(small, tmp_path, capsys):
    rc, _, err = run(["render", small, "-o", tmp_path / "s.png", "--sweep", "lao=-20:20:10"], capsys)
    assert rc == 0, err
    pngs = sorted(p.name for p in tmp_path.glob("s_*.png"))
    assert pngs == [f"s_{i:03d}.png" for i in range(5)]
    assert len(list(tmp_path.glob("s_*.P.txt"))) == 5
    P0, P4 = (load_projection_matrix(tmp_path / f"s_{i:03d}.P.txt") for i in (0, 4))
    assert not np.allclose(P0, P4)
    assert parse_sweep("kvp=60:100:20") == ("kvp", [60.0, 80.0, 100.0])


def test_figure_and_tiff(small, tmp_path, capsys):
    rc, _, err = run(["render", small, "-o", tmp_path / "i.png", "--figure", tmp_path / "f.png",
                      "--tiff", tmp_path / "i.tiff", "--size", "20x16"], capsys)
    assert rc == 0, err
    assert read_png(tmp_path / "i.png").shape == (16, 20)
    assert (tmp_path / "f.png").stat().st_size > 10000
    import tifffile
    assert tifffile.imread(tmp_path / "i.tiff").shape == (16, 20)


def test_info_prints_materials_meshes_geometry_spectrum_memory(small, capsys):
    rc, out, err = run(["info", small], capsys)
    assert rc == 0, err
    for s in ("water", "cortical_bone", "mu 1/mm", "ball", "cube", "watertight", "magnification 1.600",
              "field of view", "70 kVp", "HVL1", "mean energy", "memory estimate", "source    (0.0, 500.0"):
        assert s in out, s


def test_bad_scene_exits_2_with_file_name(small, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(small.read_text().replace('"water"', '"watr"'))
    rc, _, err = run(["render", bad, "-o", tmp_path / "x.png"], capsys)
    assert rc == 2 and str(bad) in err and "unknown material 'watr'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = run(["info", tmp_path / "missing.toml"], capsys)
    assert rc == 2 and "missing.toml" in err


@pytest.mark.parametrize("args, text", [
    (["--size", "12by5"], "--size"), (["--sweep", "tilt=0:1:1"], "unknown parameter 'tilt'"),
    (["--sweep", "lao=0:10:-1"], "STEP"), (["--kvp", "20"], "kVp must be in")])
def test_bad_options_exit_2(small, tmp_path, capsys, args, text):
    rc, _, err = run(["render", small, "-o", tmp_path / "x.png", *args], capsys)
    assert rc == 2 and text in err and "Traceback" not in err


def test_thorax_quick_start_end_to_end(tmp_path):
    """The real entry point on the default scene at 128x128: lungs, spine and ribs distinguishable."""
    exe = Path(sys.executable).with_name("taichi-xray")
    env = dict(os.environ, TAICHI_XRAY_ARCH="cpu")
    out = tmp_path / "image.png"
    cmd = [str(exe), "render", str(ROOT / "scenes/thorax.toml"), "-o", str(out), "--size", "128x128",
           "--npy", str(tmp_path / "li.npy")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert read_png(out).shape == (128, 128) and (tmp_path / "image.P.txt").exists()
    li = np.load(tmp_path / "li.npy")
    # where the anatomy projects, from the scene's own meshes and the written camera
    scene = load_scene(ROOT / "scenes/thorax.toml")
    cam = tx.Camera.from_projection_matrix(load_projection_matrix(tmp_path / "image.P.txt"), 128, 128)

    def mask(prefix):
        ms = [o.mesh for o in scene.objects if o.name.startswith(prefix)]
        return tx.path_length(ms, cam).sum(0) > 1.0

    ribs, spine, heart = mask("rib_"), mask("vertebra_"), mask("heart")
    lungs = [tx.path_length(scene.objects[scene.names.index(f"lung_{s}")].mesh, cam) > 60 for s in ("right", "left")]
    lung = (lungs[0] | lungs[1]) & ~ribs & ~spine & ~heart
    mediastinum = heart & ~lungs[0] & ~lungs[1] & ~spine
    assert lung.sum() > 300 and mediastinum.sum() > 50 and spine.sum() > 100
    m_lung, m_med, m_spine = li[lung].mean(), li[mediastinum].mean(), li[spine].mean()
    assert m_lung + 0.3 < m_med < m_spine, (m_lung, m_med, m_spine)
    # ribs: local maxima of a vertical profile through the right lung (image left, radiological view)
    cols = np.nonzero(lungs[0].any(0))[0]
    col = int(np.median(cols))
    rows = np.nonzero(lungs[0][:, col])[0]
    prof, rib_rows = li[rows, col], ribs[rows, col]
    peaks = [i for i in range(1, len(prof) - 1) if prof[i] > prof[i - 1] and prof[i] >= prof[i + 1]]
    assert len(peaks) >= 4, prof
    on_rib = [rib_rows[max(i - 1, 0):i + 2].any() for i in peaks]
    assert np.mean(on_rib) >= 0.8, (peaks, np.nonzero(rib_rows)[0])
    assert prof[rib_rows].mean() > prof[~rib_rows].mean() + 0.1


# ----------------------------------------------------------------------------------------
# quiet and honest
# ----------------------------------------------------------------------------------------
EXE = Path(sys.executable).with_name("taichi-xray")


def _vulkan_ok():
    from taichi_xray.viewer import vulkan_status

    return vulkan_status()[0]


def _exe(args, cwd, arch="cpu"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAICHI_XRAY_ARCH")}
    if arch:
        env["TAICHI_XRAY_ARCH"] = arch
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def test_executable_prints_nothing_from_taichi(small, tmp_path):
    """render (backend auto: the fallback reasons are -v only), info and view --offscreen through the
    installed entry point: no Taichi banner or start-up line, only the command's own output; the
    viewer leaves no imgui.ini in the working directory."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    r = _exe(["render", small, "-o", "img.png"], cwd, arch=None)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr.startswith("wrote img.png") and len(r.stderr.splitlines()) == 1, r.stderr
    r = _exe(["info", small], cwd)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("scene ") and "[Taichi]" not in r.stdout and "running on" not in r.stdout
    if not _vulkan_ok():
        pytest.skip("no Vulkan for the viewer's off-screen mode")
    r = _exe(["view", small, "--offscreen", "--frames", "2", "--out", "frames"], cwd)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("taichi-xray view: wrote 2 frames to frames")
    assert sorted(p.name for p in cwd.iterdir()) == ["frames", "img.P.txt", "img.png"]  # no imgui.ini


def test_viewer_leaves_no_imgui_ini(small, tmp_path, monkeypatch):
    """In process: a hidden window that draws and is closed writes no imgui.ini into the working
    directory (imgui saves it when a window is destroyed)."""
    if not _vulkan_ok():
        pytest.skip("no Vulkan for GGUI")
    from taichi_xray.viewer import Viewer

    cwd = tmp_path / "cwd"
    (cwd / "keep").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    v = Viewer(load_scene(small), show=False, controls=True)
    v.frame(interactive=False)
    assert v.read_window().shape[:2] == (v.win_h, v.win_w)
    v.close()
    v.close()  # twice is harmless
    assert sorted(p.name for p in cwd.iterdir()) == ["keep"]
    assert Path.cwd() == cwd


def test_view_without_display_is_one_line(small, tmp_path, monkeypatch, capsys):
    if sys.platform == "darwin" or os.name == "nt":
        pytest.skip("no $DISPLAY there")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc, out, err = run(["view", small, "--save-dir", tmp_path], capsys)
    assert rc == 2 and out == ""
    msg = ("taichi-xray: error: no display for the viewer window; use --offscreen --out DIR to render "
           "frames without one\n")
    assert err == msg
    import ctypes.util

    if ctypes.util.find_library("X11") and not Path("/tmp/.X11-unix/X987").exists():
        monkeypatch.setenv("DISPLAY", ":987")  # an X server that is not there (GLFW would end the process)
        rc, out, err = run(["view", small, "--save-dir", tmp_path], capsys)
        assert rc == 2 and err == msg


def test_user_error_traceback_only_with_verbose(small, tmp_path, capsys):
    out = tmp_path / "image.png"
    out.write_bytes(b"x")
    rc, _, err = run(["render", small, "-o", out], capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    rc, _, err = run(["-v", "render", small, "-o", out], capsys)
    assert rc == 2 and "Traceback" in err and "FileExistsError" in err
    assert err.strip().splitlines()[-1] == f"taichi-xray: error: {out} exists; use --force to overwrite it"


def test_a_bug_is_not_a_user_error(small, monkeypatch):
    """A TypeError that no validation raised (here: from a broken scene loader) propagates with its
    traceback instead of being turned into a one-line 'error'."""
    import taichi_xray.scene as scene_mod

    def broken(path):
        return None + 1  # a bug, not a `raise` in taichi_xray

    monkeypatch.setattr(scene_mod, "load_scene", broken)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["info", str(small)])
    try:
        broken(small)
    except TypeError as exc:
        assert not is_user_error(exc)
    try:
        parse_sweep("tilt=0:1:1")
    except ValueError as exc:
        assert is_user_error(exc)


def _scene_with(tmp_path, mesh_file, name="s.toml", **camera):
    cam = {"sid": 500.0, "sdd": 800.0, "detector": [40, 32], "pixel_spacing": 2.5}
    cam.update(camera)
    d = {"camera": cam, "spectrum": {"monochromatic": 60.0},
         "object": [{"name": "thing", "mesh": str(mesh_file), "material": "water"}]}
    p = tmp_path / name
    p.write_text(tomli_w.dumps(d))
    return p


def test_flat_mesh_is_called_flat_not_inward(tmp_path, capsys):
    """A closed mesh squashed into a plane (or a 1e-7 mm thin disc) has no inside: the report says
    so instead of 'pointing inward', and so do the repair warning, `info` and `render`."""
    import warnings

    from taichi_xray.mesh import MeshWarning
    from taichi_xray.primitives import cylinder

    V, F = cylinder(20.0, 10.0, n=24)
    for scale in (0.0, 1e-8):
        W = V.copy()
        W[:, 2] *= scale
        rep = Mesh(W, F).check()
        assert rep.watertight and rep.flat and not rep.outward
        text = "; ".join(rep.problems())
        assert "encloses no volume" in text and "inward" not in text, text
        with pytest.warns(MeshWarning, match="encloses no volume") as rec:
            Mesh(W, F).oriented()
        assert not any("inward" in str(w.message) for w in rec)
    # an ordinary thin plate (0.01 mm over 40 mm) is not flat
    W = V.copy()
    W[:, 2] *= 0.001
    assert Mesh(W, F).check().outward
    # through a scene file: a 1e-6 mm thin disc (OBJ keeps its two faces apart) ...
    W = V.copy()
    W[:, 2] *= 1e-7
    Mesh(W, F).save(tmp_path / "thin.obj")
    sc = _scene_with(tmp_path, "thin.obj", "thin.toml")
    rc, out, err = run(["info", sc], capsys)
    assert rc == 0 and "encloses no volume" in out and "inward" not in out
    rc, _, err = run(["render", sc, "-o", tmp_path / "thin.png"], capsys)
    assert rc == 0 and "taichi-xray: warning:" in err and "encloses no volume" in err and "inward" not in err
    # ... and an exactly flat one in STL, whose coincident vertices merge: degenerate and non-manifold
    W[:, 2] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # meshio's STL writer normalises zero normals
        Mesh(W, F).save(tmp_path / "flat.stl")
    rc, out, err = run(["info", _scene_with(tmp_path, "flat.stl", "flat.toml")], capsys)
    assert rc == 0 and "degenerate" in out and "not manifold" in out and "inward" not in out


def test_far_away_mesh_is_judged_about_its_centroid():
    """Signed volume about the mesh's own centroid: 1e8 mm from the origin an outward sphere is
    outward (and its reversal inward), with the volume of the sphere at the origin."""
    V, F = icosphere(10.0, 2)
    near = Mesh(V, F).check().volume
    for off in (1e6, 1e8):
        rep = Mesh(V + off, F).check()
        assert rep.outward and rep.problems() == [] and rep.volume == pytest.approx(near, rel=1e-6)
        inv = Mesh(V + off, F[:, ::-1]).check()
        assert not inv.outward and inv.problems() == ["faces point inward (negative volume)"]


def test_absurd_source_distance_is_a_camera_error(small, tmp_path, capsys):
    bad = _scene_with(tmp_path, small.parent / "ball.obj", sid=1e20, sdd=2e20)
    rc, _, err = run(["render", bad, "-o", tmp_path / "x.png"], capsys)
    assert rc == 2 and "key 'sid'" in err and "float32" in err and "nesting" not in err.lower()
    assert len(err.strip().splitlines()) == 1


def test_directory_and_renamed_file_are_named_as_such(small, tmp_path, capsys):
    d = tmp_path / "folder"
    d.mkdir()
    rc, _, err = run(["info", d], capsys)
    assert rc == 2 and "is a directory" in err and "not found" not in err
    rc, _, err = run(["info", _scene_with(tmp_path, "folder", "dirmesh.toml")], capsys)
    assert rc == 2 and "folder is a directory, not a mesh file" in err
    rc, _, err = run(["render", small, "-o", tmp_path / "x.png", "--npy", d], capsys)
    assert rc == 2 and "is a directory" in err and "exists" not in err
    # a PNG renamed .stl
    from taichi_xray.imageio import save_png

    save_png(tmp_path / "pic.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "pic.png").rename(tmp_path / "pic.stl")
    rc, _, err = run(["info", _scene_with(tmp_path, "pic.stl", "pic.toml")], capsys)
    assert rc == 2 and "cannot read" in err and "as STL: it is a PNG image, not a mesh file" in err, err
    assert err.count("cannot read") == 1


# ----------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------
def test_geometry_writes_figure_and_respects_force(small, tmp_path, capsys):
    fig = tmp_path / "geo.png"
    rc, _, err = run(["geometry", small, "-o", fig, "--max-points", "200"], capsys)
    assert rc == 0, err
    assert err.startswith(f"wrote {fig} (1 view, 2 objects)")
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(fig))
    assert img.ndim == 3 and img.shape[0] > 300 and img.std() > 5
    before = fig.read_bytes()
    rc, _, err = run(["geometry", small, "-o", fig], capsys)
    assert rc == 2 and "--force" in err and fig.read_bytes() == before
    rc, _, err = run(["geometry", small, "-o", fig, "--force", "--lao", "30"], capsys)
    assert rc == 0 and fig.read_bytes() != before


def test_geometry_targets_with_matrices_and_dicom(small, tmp_path, capsys):
    """Targets: a rendered PNG with the scene camera, the same with its P.txt, and a DICOM written
    from the render (its camera comes from the C-arm tags): all three views get the scene's camera."""
    import argparse

    from taichi_xray.cli.geometry import _views
    from taichi_xray.io import write_dicom
    from taichi_xray.render import render

    rc, _, err = run(["render", small, "-o", tmp_path / "t.png", "--npy", tmp_path / "t.npy", "--lao", "20"], capsys)
    assert rc == 0, err
    sc = load_scene(small).with_overrides(lao=20)
    res = render(sc)
    write_dicom(tmp_path / "t.dcm", res.line_integral, res.camera)
    args = argparse.Namespace(P=[str(tmp_path / "t.P.txt")] * 2, targets=[str(tmp_path / "t.png"),
                                                                       str(tmp_path / "t.dcm")])
    views = _views(args, load_scene(small))
    for img, cam in views:
        np.testing.assert_allclose(cam.P / np.linalg.norm(cam.P[2, :3]), sc.camera.P / np.linalg.norm(sc.camera.P[2, :3]),
                                   rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(views[1][0], res.line_integral, atol=np.ptp(res.line_integral) / 1000)
    fig = tmp_path / "g.png"
    rc, _, err = run(["geometry", small, tmp_path / "t.npy", tmp_path / "t.dcm", "-o", fig, "--lao", "20"], capsys)
    assert rc == 0 and "(2 views" in err, err
    rc, _, err = run(["geometry", small, tmp_path / "t.png", "-o", tmp_path / "g2.png", "--P",
                      tmp_path / "t.P.txt"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize("target, text", [("missing.png", "not found"), ("bad.txt", "unsupported image file"),
                                          ("small.npy", "does not match"), ("folder", "is a directory")])
def test_geometry_bad_target_is_one_line(small, tmp_path, capsys, target, text):
    np.save(tmp_path / "small.npy", np.zeros((5, 6)))
    (tmp_path / "bad.txt").write_text("1 2 3")
    (tmp_path / "folder").mkdir()
    rc, _, err = run(["geometry", small, tmp_path / target, "-o", tmp_path / "g.png"], capsys)
    assert rc == 2 and text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "g.png").exists()


def test_command_list_is_extensible():
    """register/generate appear once their modules exist; the parser lists every existing one."""
    import importlib.util

    from taichi_xray import cli

    names = [m.__name__.rsplit(".", 1)[1] for m in cli.command_modules()]
    assert names[:3] == ["render", "info", "view"] and "geometry" in names and "import_labels" in names
    for extra in ("register", "generate"):
        assert (extra in names) == (importlib.util.find_spec(f"taichi_xray.cli.{extra}") is not None)
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert set(sub.choices) >= {"render", "info", "view", "geometry", "import-labels"}
