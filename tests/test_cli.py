"""The taichi-xray command line: outputs, overwrite protection, sweeps, info, errors, and the
quick-start thorax scene end to end (anatomy distinguishable, not just "not blank")."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from reference import box, icosphere  # noqa: E402

import taichi_xray as tx  # noqa: E402
from taichi_xray.cli import main, parse_sweep  # noqa: E402
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
    assert "running on cpu" in err and "wrote" in err


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
