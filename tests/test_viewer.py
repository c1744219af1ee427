"""Viewer: input handling without a window, the off-screen GGUI mode, the missing-Vulkan path.

The GGUI tests need Vulkan (on a CPU machine: Mesa's software driver,
``apt-get install mesa-vulkan-drivers libvulkan1``) and are skipped without it.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scenes import write_viewer_scene
from taichi_xray.camera import Camera
from taichi_xray.imageio import load_projection_matrix, read_png, to_uint
from taichi_xray.scene import load_scene
from taichi_xray.viewer_state import (CRAN_LIMIT, ViewerState, camera_path, display_quantity, drag_to_angles,
                                      unique_stem, window_to_uint8, wrap_angle)

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------
# a small scene: an ellipsoid "body" with a box "bone" and a sphere "lung" inside
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    return write_viewer_scene(tmp_path_factory.mktemp("viewer_scene"))


@pytest.fixture(scope="module")
def scene(scene_path):
    return load_scene(scene_path)


# ----------------------------------------------------------------------------------------
# input handling (no window)
# ----------------------------------------------------------------------------------------
def test_drag_to_angles():
    # a drag across the whole pane turns by 180 deg; right = LAO, up (dy < 0) = CRAN
    assert drag_to_angles(0.0, 0.0, 256, 0, 256) == (-180.0, 0.0)  # wraps to [-180, 180)
    assert drag_to_angles(10.0, 0.0, 64, 0, 256) == pytest.approx((55.0, 0.0))
    assert drag_to_angles(0.0, 0.0, -32, -64, 256) == pytest.approx((-22.5, 45.0))
    assert drag_to_angles(170.0, 0.0, 32, 0, 256)[0] == pytest.approx(-167.5)
    assert drag_to_angles(0.0, 80.0, 0, -256, 256)[1] == CRAN_LIMIT  # clamped
    assert drag_to_angles(0.0, -80.0, 0, 256, 256)[1] == -CRAN_LIMIT
    with pytest.raises(ValueError, match="pane_px"):
        drag_to_angles(0, 0, 1, 1, 0)
    assert wrap_angle(190) == -170 and wrap_angle(-180) == -180 and wrap_angle(540) == -180


def test_state_from_scene_and_keys(scene):
    st = ViewerState.from_scene(scene)
    assert (st.lao, st.cran, st.sdd, st.sid, st.size) == (10.0, -5.0, 1000.0, 600.0, (48, 40))
    assert st.kvp == 70 and st.filtration == {"Al": 2.5, "Cu": 0.0}
    assert st.visible == [True] * 3 and st.mu_scale == [1.0] * 3 and st.auto_window
    g0 = st.geometry_key()
    assert st.handle_key("Right") is None and st.lao == 15.0
    assert st.handle_key("Left", shift=True) is None and st.lao == 14.0
    st.handle_key("Up")
    st.handle_key("Up")
    assert st.cran == 5.0
    st.handle_key("Down", shift=True)
    assert st.cran == 4.0
    assert st.geometry_key() != g0
    assert st.handle_key("s") == "save" and st.handle_key("Escape") == "quit"
    st.handle_key("n")
    assert st.noise
    st.handle_key("i")
    assert st.invert
    st.handle_key("l")
    assert st.kind == "transmission" and st.auto_window
    st.handle_key("l")
    assert st.kind == "line_integral"
    st.handle_key("r")
    assert (st.lao, st.cran, st.noise, st.invert) == (10.0, -5.0, False, False)
    assert st.geometry_key() == g0
    # command-line overrides of the initial view are what reset returns to
    st = ViewerState.from_scene(scene, size=(24, 20), lao=-30, cran=12, kvp=90)
    st.handle_key("Right")
    st.handle_key("r")
    assert (st.lao, st.cran, st.kvp, st.size) == (-30.0, 12.0, 90.0, (24, 20))
    with pytest.raises(ValueError, match="cran"):
        ViewerState.from_scene(scene, cran=95)


def test_sliders_to_scene_parameters(scene):
    st = ViewerState.from_scene(scene)
    g, m, s = st.geometry_key(), st.material_key(), st.spectrum_key()
    # SDD: camera focal length follows, angles stay
    assert st.set_param("sdd", 1200.0)
    cam = st.camera(scene.camera_spec)
    ref = Camera.c_arm(sid=600, sdd=1200, width=48, height=40, pixel_spacing=6.0, lao=10, cran=-5)
    np.testing.assert_allclose(cam.P, ref.P, atol=1e-9)
    assert st.geometry_key() != g and st.material_key() == m and st.spectrum_key() == s
    with pytest.raises(ValueError, match="sdd"):
        st.set_param("sdd", 500.0)  # not beyond the isocentre
    # kVp / filtration -> spectrum only
    assert st.set_param("kvp", 100)
    assert st.spectrum_key() != s and st.material_key() == m
    sp = st.spectrum(scene.spectrum_spec)
    from taichi_xray.physics.spectra import Spectrum

    ref_sp = Spectrum.tungsten(100.0, filtration={"Al": 2.5}, bin_width=5.0)  # Cu 0 mm is left out
    np.testing.assert_allclose(sp.energies, ref_sp.energies)
    np.testing.assert_allclose(sp.photons, ref_sp.photons)
    st.set_param("filter:Cu", 0.5)
    hard = st.spectrum(scene.spectrum_spec)
    assert hard.mean_energy() > sp.mean_energy()  # copper hardens the beam
    with pytest.raises(ValueError, match="kvp"):
        st.set_param("kvp", 20)
    with pytest.raises(KeyError, match="Sn"):
        st.set_param("filter:Sn", 1.0)
    # objects -> material weights only
    s2, g2 = st.spectrum_key(), st.geometry_key()
    assert st.set_param("visible", False, 1)
    assert not st.set_param("visible", False, 1)  # unchanged
    st.set_param("mu_scale", 2.0, 2)
    assert st.material_key() != m and st.spectrum_key() == s2 and st.geometry_key() == g2
    with pytest.raises(IndexError):
        st.set_param("visible", True, 7)
    with pytest.raises(ValueError, match="mu_scale"):
        st.set_param("mu_scale", -1.0, 0)
    with pytest.raises(KeyError, match="bogus"):
        st.set_param("bogus", 1)
    with pytest.raises(TypeError, match="sdd"):
        st.set_param("sdd", "far")


def test_window_level(scene):
    img = np.array([[0.0, 0.5, 1.0], [2.0, -1.0, np.nan]])
    u = window_to_uint8(img, 0.0, 1.0)
    np.testing.assert_array_equal(u, [[0, 128, 255], [255, 0, 0]])
    np.testing.assert_array_equal(window_to_uint8(img, 0.0, 1.0, invert=True), [[255, 128, 0], [0, 255, 255]])
    # same rule as imageio.to_uint (the PNG writer of render)
    r = np.random.default_rng(0).normal(size=(20, 30))
    np.testing.assert_array_equal(window_to_uint8(r, -1.0, 1.5), to_uint(r, 8, (-1.0, 1.5)))
    np.testing.assert_array_equal(window_to_uint8(r, -1.0, 1.5, True), to_uint(r, 8, (-1.0, 1.5), True))
    with pytest.raises(ValueError, match="window"):
        window_to_uint8(img, 1.0, 0.0)
    # sliders and right drag switch the auto window off
    st = ViewerState.from_scene(scene)
    st.window = (1.0, 3.0)
    st.set_param("window_lo", 1.5)
    assert st.window == (1.5, 3.0) and not st.auto_window
    st.set_param("window_hi", 1.0)  # never below lo
    assert st.window == (1.5, 1.5)
    st.window = (1.0, 3.0)
    st.level_drag(0.0, 100.0, 100.0)  # down one pane: centre + one width
    assert st.window == pytest.approx((3.0, 5.0))
    st.level_drag(100.0 * np.log(2.0), 0.0, 100.0)  # right: width doubles
    assert st.window == pytest.approx((2.0, 6.0))


def test_display_quantity_log_linear():
    T = np.array([[1.0, np.exp(-2.0)], [0.0, 0.25]])
    np.testing.assert_allclose(display_quantity(T, "transmission"), T)
    np.testing.assert_allclose(display_quantity(T, "intensity", I0=4.0), 4 * T)
    li = display_quantity(T, "line_integral", floor=1e-3)
    np.testing.assert_allclose(li, [[0.0, 2.0], [-np.log(1e-3), np.log(4.0)]])
    import torch

    np.testing.assert_allclose(display_quantity(torch.as_tensor(T), "line_integral", floor=1e-3).numpy(), li)
    with pytest.raises(ValueError, match="display kind"):
        display_quantity(T, "log")


def test_camera_path():
    p = camera_path(5, "lao", -40, 40, cran=10)
    assert [a for a, _ in p] == [-40, -20, 0, 20, 40] and all(c == 10 for _, c in p)
    assert camera_path(4, "orbit", 0) == [(0.0, 0.0), (90.0, 0.0), (-180.0, 0.0), (-90.0, 0.0)]
    assert camera_path(3, "cran", -30, 30, lao=5) == [(5.0, -30.0), (5.0, 0.0), (5.0, 30.0)]
    with pytest.raises(ValueError, match="CRAN"):
        camera_path(3, "cran", -90, 90)
    with pytest.raises(ValueError, match="frames"):
        camera_path(0)
    with pytest.raises(ValueError, match="kind"):
        camera_path(3, "zigzag")


def test_unique_names_never_overwrite(tmp_path):
    exts = (".png", ".npy", ".P.txt")
    s1 = unique_stem(tmp_path, "thorax_lao+0", exts)
    assert s1.name == "thorax_lao+0_001"
    Path(str(s1) + ".npy").write_text("x")  # any member of the set blocks the number
    s2 = unique_stem(tmp_path, "thorax_lao+0", exts)
    assert s2.name == "thorax_lao+0_002"
    Path(str(s2) + ".png").write_text("x")
    Path(str(s1) + ".npy").unlink()  # a deleted number is not reused
    assert unique_stem(tmp_path, "thorax_lao+0", exts).name == "thorax_lao+0_003"
    assert unique_stem(tmp_path, "a b/c", exts).name == "a_b_c_001"  # safe file names
    with pytest.raises(FileNotFoundError):
        unique_stem(tmp_path / "missing", "x", exts)


def test_pipeline_weights_hide_and_scale_objects(scene):
    """Face weights of the one pipeline: each object adds its own material and removes what
    surrounds it; hiding an object gives its volume to its nearest visible ancestor (or the
    air); a scale multiplies the object's own term and what its children remove."""
    from taichi_xray.viewer import XrayPipeline

    pipe = XrayPipeline(scene).pipe
    body, bone, lung = (pipe.obj_channel[i] for i in range(3))
    air = pipe.air_channel
    ch, w = pipe.object_weights()
    np.testing.assert_array_equal(ch, [[body, air], [bone, body], [lung, body]])
    np.testing.assert_allclose(w, [[1, -1], [1, -1], [1, -1]])
    pipe.set_object_weights(visible=[True, False, True])
    ch, w = pipe.object_weights()
    assert ch[1, 0] == -1 and ch[1, 1] == -1 and w[1].tolist() == [0, 0]  # the bone's volume stays body
    pipe.set_object_weights(visible=[False, True, True])
    ch, w = pipe.object_weights()  # body hidden: its children displace the air
    np.testing.assert_array_equal(ch[1:], [[bone, air], [lung, air]])
    pipe.set_object_weights(visible=[True] * 3, mu_scale=[1.0, 2.0, 1.0])
    ch, w = pipe.object_weights()
    np.testing.assert_allclose(w, [[1, -1], [2, -1], [1, -1]])
    # and the images follow: hiding the bone equals a scene without it
    pipe.set_object_weights(visible=[True, False, True], mu_scale=[1.0] * 3)
    hidden = pipe.render()
    from taichi_xray.pipeline import Pipeline

    ref = Pipeline([o.mesh for o in scene.objects if o.name != "bone"], pipe.cameras,
                   materials=[o.material for o in scene.objects if o.name != "bone"], parents=[-1, 0],
                   spectrum=pipe.spectrum, detector=pipe.detector, air=True, physics_dtype=pipe.physics_dtype)
    np.testing.assert_allclose(hidden.cpu().numpy(), ref.render().cpu().numpy(), rtol=1e-6, atol=1e-7)


def test_pipeline_caches_stages(scene):
    import torch

    from taichi_xray.render import render
    from taichi_xray.viewer import XrayPipeline

    pl = XrayPipeline(scene)
    st = ViewerState.from_scene(scene)
    assert {"rasterize", "physics"} <= pl.update(st)
    res = render(scene)
    np.testing.assert_allclose(pl.image.cpu().numpy(), res.image, rtol=1e-6, atol=1e-6)
    assert pl.window == pytest.approx(res.window, rel=1e-6, abs=1e-9)
    np.testing.assert_array_equal(pl.pixels(), res.pixels)
    assert pl.update(st) == set()  # nothing changed: nothing recomputed
    st.set_param("kvp", 90)
    assert pl.update(st) >= {"physics"} and "rasterize" not in pl.update(st)
    st.set_param("visible", False, 1)  # visibility is a face weight: rasterize and physics run
    ran = pl.update(st)
    assert {"physics", "rasterize"} <= ran
    st.handle_key("Right")
    assert "rasterize" in pl.update(st)
    assert pl.n_rasterized == 3
    # torch buffers (this process is not resident): L is the rasterizer's torch tensor, never downloaded
    assert not pl.resident and isinstance(pl.L_all, torch.Tensor) and pl.L_all.shape[0] == 1
    assert pl.L.data_ptr() == pl.L_all.data_ptr() and pl.n_L_downloads == 0


# ----------------------------------------------------------------------------------------
# imaging stage: focal spot, heel, falloff, scatter, detector model (MTF, noise) as controls
# ----------------------------------------------------------------------------------------
_IMAGING_KEYS = {  # stage -> (section, line); dropping one gives the scene without that component
    "focal_spot": ("source", "focal_spot = { width_mm = 2.0, samples = 4 }"),
    "heel": ("source", "heel = true"),
    "falloff": ("source", "falloff = true"),
    "blur": ("detector", "mtf = { gaussian_sigma_mm = 5.0 }"),
    "noise": ("detector", "noise = { seed = 7 }"),
    "scatter": ("scatter", "air_gap_mm = 200.0"),
}


@pytest.fixture(scope="module")
def imaging_scene(scene_path):
    """make(drop=()) -> the small scene at 64 x 64 with [source] focal_spot/heel/falloff/mAs, a
    detector model with MTF and noise, and [scatter], without the components named in drop."""
    d = scene_path.parent
    base = scene_path.read_text().replace("detector = [48, 40]", "detector = [64, 64]").replace(
        "pixel_spacing = 6.0", "pixel_spacing = 4.0").replace("kvp = 70", "kvp = 80")
    cache = {}

    def make(drop=()):
        drop = tuple(sorted(drop))
        if drop not in cache:
            lines = {"source": ["mAs = 0.05"], "detector": [
                'scintillator = { material = "CsI", thickness_mm = 0.6 }', "swank = 0.8", "gain = 0.5",
                "offset = 100.0", "electronic_noise = 5.0"], "scatter": []}
            for k, (sec, line) in _IMAGING_KEYS.items():
                if k not in drop:
                    lines[sec].append(line)
            extra = "".join(f"[{sec}]\n" + "\n".join(ls) + "\n" for sec, ls in lines.items() if ls)
            p = d / f"imaging_{'-'.join(drop) or 'all'}.toml"
            p.write_text(base.replace("[[object]]", extra + "[[object]]", 1))
            cache[drop] = load_scene(p)
        return cache[drop]

    return make


def _reference_T(scene, kind="transmission"):
    """The Pipeline's own render of the scene (float32 projection, float64 physics, as render())."""
    import torch

    from taichi_xray.pipeline import Pipeline

    pipe = Pipeline.from_scene(scene, dtype=torch.float32, physics_dtype=torch.float64)
    return pipe.render(kind=kind)[0].cpu().numpy()


def test_state_imaging_controls(scene, imaging_scene):
    st = ViewerState.from_scene(imaging_scene())
    assert st.stages == {k: True for k in ("focal_spot", "heel", "falloff", "scatter", "blur")}
    assert st.imaging_noise and st.noise and st.seed == 7  # the detector model's noise, on as in the scene
    assert st.label() == "lao+10_cran-5_focal_spot+heel+falloff+scatter+blur"
    assert "detector noise" in st.stages_text() and "off:" not in st.stages_text()
    k0, g0, s0 = st.imaging_key(), st.geometry_key(), st.spectrum_key()
    for key, stage in (("f", "focal_spot"), ("h", "heel"), ("o", "falloff"), ("c", "scatter"), ("b", "blur")):
        assert st.handle_key(key) is None and st.stages[stage] is False
    assert st.imaging_key() != k0 and st.geometry_key() == g0 and st.spectrum_key() == s0
    assert st.label() == "lao+10_cran-5_no-stages" and "off: focal spot" in st.stages_text()
    assert st.set_param("heel", True) and not st.set_param("heel", True)
    assert st.set_param("seed", 12) and st.seed == 12
    with pytest.raises(ValueError, match="seed"):
        st.set_param("seed", 1.5)
    with pytest.raises(ValueError, match="seed"):
        st.set_param("seed", -1)
    st.handle_key("r")
    assert st.imaging_key() == k0 and st.seed == 7
    # a scene without imaging stages: no switches, keys do nothing, the label is unchanged
    plain = ViewerState.from_scene(scene)
    assert plain.stages == {} and not plain.imaging_noise and plain.stages_text() == ""
    plain.handle_key("f")
    assert plain.stages == {} and plain.label() == "lao+10_cran-5"
    with pytest.raises(KeyError, match="focal spot"):
        plain.set_param("focal_spot", False)
    # a stage the scene lacks cannot be switched
    st = ViewerState.from_scene(imaging_scene(("scatter",)))
    assert "scatter" not in st.stages
    with pytest.raises(KeyError, match="scatter"):
        st.set_param("scatter", True)


def test_viewer_imaging_equals_pipeline(imaging_scene):
    """With an imaging stage the viewer's transmission, line integral and detector reading are
    the Pipeline's own (all focal-spot samples, scatter, MTF, seeded detector noise)."""
    from taichi_xray.render import render
    from taichi_xray.viewer import XrayPipeline

    sc = imaging_scene()
    pl = XrayPipeline(sc)
    st = ViewerState.from_scene(sc)
    assert {"rasterize", "physics", "imaging"} <= pl.update(st)
    assert "imaging" in pl.timings and pl.L_all.shape[0] == 4  # one instance per focal-spot sample
    ref = _reference_T(sc)
    assert ref.shape == (64, 64) and 0.01 < ref.mean() < 0.9
    np.testing.assert_allclose(pl.T.cpu().numpy(), ref, rtol=1e-6, atol=1e-9)
    res = render(sc)  # the scene's [output] kind: line integral
    np.testing.assert_allclose(pl.image.cpu().numpy(), res.image, rtol=1e-6, atol=1e-9)
    assert pl.update(st) == set()
    st.set_param("kind", "intensity")  # the detector reading (ADU)
    pl.update(st)
    np.testing.assert_allclose(pl.image.cpu().numpy(), _reference_T(sc, "intensity"), rtol=1e-6)


def test_viewer_imaging_switches(imaging_scene):
    """Each switch off = the Pipeline of the scene without that key; back on = the first image
    exactly; only the stages a switch touches rerun."""
    import torch

    from taichi_xray.viewer import XrayPipeline

    sc = imaging_scene()
    pl = XrayPipeline(sc)
    st = ViewerState.from_scene(sc)
    pl.update(st)
    T_on = pl.T.clone()
    # stage -> (rasterize, physics) it reruns; the imaging stage always reruns
    reruns = {"focal_spot": (1, 1), "heel": (0, 1), "falloff": (0, 0), "scatter": (0, 0), "blur": (0, 0),
              "noise": (0, 0)}
    for stage, (dr, dp) in reruns.items():
        n = (pl.n_rasterized, pl.n_physics, pl.n_imaging)
        assert st.set_param(stage, False)
        ran = pl.update(st)
        assert (pl.n_rasterized - n[0], pl.n_physics - n[1], pl.n_imaging - n[2]) == (dr, dp, 1), stage
        assert "imaging" in ran and "imaging" in pl.timings
        off = pl.T.cpu().numpy()
        np.testing.assert_allclose(off, _reference_T(imaging_scene((stage,))), rtol=1e-6, atol=1e-9,
                                   err_msg=stage)
        assert np.abs(off - T_on.cpu().numpy()).max() > 1e-5, stage  # the switch does something
        st.set_param(stage, True)
        pl.update(st)
        # any stage run again may add its atomic / threaded sums in another order: the first image to rounding
        np.testing.assert_allclose(pl.T.cpu().numpy(), T_on.cpu().numpy(), rtol=1e-5, atol=1e-7, err_msg=stage)
    # the noise seed reruns only the imaging stage, and the same seed gives the same image
    n = (pl.n_rasterized, pl.n_physics, pl.n_imaging)
    st.set_param("seed", 8)
    assert "imaging" in pl.update(st) and (pl.n_rasterized, pl.n_physics, pl.n_imaging) == (n[0], n[1], n[2] + 1)
    assert np.abs(pl.T.cpu().numpy() - T_on.cpu().numpy()).max() > 1e-3  # another noise realisation
    st.set_param("seed", 7)
    pl.update(st)
    np.testing.assert_allclose(pl.T.cpu().numpy(), T_on.cpu().numpy(), rtol=1e-5, atol=1e-7)
    # photons belong to the viewer's own Poisson noise, unused with the detector's noise
    st.set_param("photons", 50.0)
    pl.update(st)
    np.testing.assert_allclose(pl.T.cpu().numpy(), T_on.cpu().numpy(), rtol=1e-5, atol=1e-7)
    assert pl.n_imaging == n[2] + 2


def test_viewer_imaging_without_detector_noise(imaging_scene):
    """An imaging stage without detector noise: the viewer's own Poisson noise on its transmission."""
    import torch

    from taichi_xray.viewer import XrayPipeline

    sc = imaging_scene(("noise",))
    pl = XrayPipeline(sc)
    st = ViewerState.from_scene(sc)
    assert not st.imaging_noise and not st.noise
    pl.update(st)
    ref = _reference_T(sc)
    np.testing.assert_allclose(pl.T.cpu().numpy(), ref, rtol=1e-6, atol=1e-9)
    st.set_param("photons", 1000.0)
    st.handle_key("n")
    ran = pl.update(st)
    assert "noise" in ran and "imaging" not in ran and "physics" not in ran
    g = torch.Generator().manual_seed(st.seed)
    expect = torch.poisson(torch.as_tensor(ref).clamp(min=0) * 1000.0, generator=g) / 1000.0
    np.testing.assert_allclose(pl.T.cpu().numpy(), expect.numpy(), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------
# GGUI (needs Vulkan)
# ----------------------------------------------------------------------------------------
def _vulkan():
    from taichi_xray.viewer import vulkan_status

    return vulkan_status()


needs_vulkan = pytest.mark.skipif(not _vulkan()[0], reason="no Vulkan for Taichi GGUI (Debian: apt-get install "
                                  "mesa-vulkan-drivers libvulkan1): " + _vulkan()[1])


@pytest.fixture(scope="module")
def offscreen(scene, tmp_path_factory):
    if not _vulkan()[0]:
        pytest.skip("no Vulkan for GGUI")
    from taichi_xray.viewer import Viewer, run_offscreen

    out = tmp_path_factory.mktemp("frames")
    v = Viewer(scene, show=False, controls=False)
    summary = run_offscreen(scene, 3, out, path="lao", start=-30, stop=30, save_window=True, save_npy=True,
                            viewer=v)
    return out, summary, v


@needs_vulkan
def test_offscreen_frames_written(offscreen):
    out, summary, v = offscreen
    names = sorted(p.name for p in out.iterdir())
    for i in range(3):
        for suffix in (".png", ".P.txt", ".npy"):
            assert f"xray_{i:04d}{suffix}" in names
        assert f"window_{i:04d}.png" in names
    info = json.loads((out / "frames.json").read_text())
    assert [f["lao"] for f in info["frames"]] == pytest.approx([-20.0, 10.0, 40.0])  # scene lao 10 +- 30
    assert info["fps"] > 0 and len(info["frames"]) == 3
    frames = [read_png(out / f"xray_{i:04d}.png") for i in range(3)]
    for f in frames:
        assert f.shape == (40, 48) and f.dtype == np.uint8
        assert f.std() > 10  # not blank
    assert np.abs(frames[0].astype(int) - frames[1]).mean() > 2  # the angle changes the image
    assert np.abs(frames[1].astype(int) - frames[2]).mean() > 2
    win = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "window_0001.png"))
    assert win.shape == (40, 48 + 40, 3)
    assert win[:, 48:].std() > 1  # the 3D overview drew something


@needs_vulkan
def test_offscreen_pane_matches_render(offscreen, scene):
    """The X-ray pane as GGUI drew it equals render() of the same camera, within display rounding."""
    from taichi_xray.render import render

    out, summary, v = offscreen
    for i in (0, 2):
        P = load_projection_matrix(out / f"xray_{i:04d}.P.txt")
        lao = summary["frames"][i]["lao"]
        sc = scene.with_overrides(lao=lao)
        np.testing.assert_allclose(sc.camera.P, P, rtol=1e-9, atol=1e-9)
        res = render(sc)
        pane = read_png(out / f"xray_{i:04d}.png").astype(int)
        diff = np.abs(pane - res.pixels.astype(int))
        assert diff.max() <= 1, diff.max()
        np.testing.assert_allclose(np.load(out / f"xray_{i:04d}.npy"), res.image, rtol=1e-6, atol=1e-6)


@needs_vulkan
def test_offscreen_refuses_to_overwrite(offscreen, scene):
    from taichi_xray.viewer import run_offscreen

    out, _, v = offscreen
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="never overwritten"):
        run_offscreen(scene, 1, out, viewer=v)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before


@needs_vulkan
def test_save_key_numbered(offscreen, tmp_path):
    out, _, v = offscreen
    assert v.state.handle_key("s") == "save"
    p1 = v.save(tmp_path)
    p2 = v.save(tmp_path)
    assert [Path(p).name for p in p1] == ["small_lao+40_cran-5_001.png", "small_lao+40_cran-5_001.npy",
                                           "small_lao+40_cran-5_001.P.txt"]
    assert Path(p2[0]).name == "small_lao+40_cran-5_002.png"
    np.testing.assert_array_equal(read_png(p1[0]), v.pipeline.pixels())
    np.testing.assert_allclose(load_projection_matrix(p1[2]), v.pipeline.camera.P, rtol=1e-12)


@needs_vulkan
def test_window_imaging_controls(imaging_scene, tmp_path):
    """The controls panel draws the stage switches (hidden window), and a saved file names the stages."""
    from taichi_xray.render import render
    from taichi_xray.viewer import Viewer

    sc = imaging_scene()
    v = Viewer(sc, show=False, controls=True)
    try:
        v.frame(interactive=False)
        v._gui()  # draws the checkboxes of the five stages and the detector-noise seed
        np.testing.assert_allclose(v.pipeline.image.cpu().numpy(), render(sc).image, rtol=1e-6, atol=1e-9)
        v.state.handle_key("c")
        v.frame(interactive=False)
        paths = v.save(tmp_path)
        assert Path(paths[0]).name == "small_lao+10_cran-5_focal_spot+heel+falloff+blur_001.png"
        assert "off: scatter" in Path(paths[2]).read_text()
    finally:
        v.close()


# ----------------------------------------------------------------------------------------
# missing Vulkan
# ----------------------------------------------------------------------------------------
def _view_args(scene_path, tmp_path, **kw):
    import argparse

    from taichi_xray.viewer import add_view_subparser

    p = argparse.ArgumentParser()
    add_view_subparser(p.add_subparsers(dest="command"))
    argv = ["view", str(scene_path), "--offscreen", "--frames", "1", "--out", str(tmp_path)]
    return p.parse_args(argv)


def test_missing_vulkan_message(scene_path, tmp_path, monkeypatch, capsys):
    from taichi_xray import viewer

    monkeypatch.setattr(viewer, "vulkan_status", lambda: (False, "simulated"))
    rc = viewer.main_view(_view_args(scene_path, tmp_path))
    err = capsys.readouterr().err
    assert rc == viewer.EXIT_NO_VULKAN
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert "mesa-vulkan-drivers" in err and "libvulkan1" in err and "Vulkan" in err
    assert list(tmp_path.iterdir()) == []
    # a window that fails to open for lack of Vulkan gives the same message
    monkeypatch.setattr(viewer, "vulkan_status", lambda: (True, ""))

    def no_window(*a, **k):
        raise RuntimeError("Vulkan must be available for GGUI")

    monkeypatch.setattr(viewer.ti.ui, "Window", no_window)
    with pytest.raises(viewer.VulkanUnavailable, match="mesa-vulkan-drivers"):
        viewer._make_window("x", (8, 8), False)


def test_missing_vulkan_subprocess(scene_path, tmp_path):
    """End to end without a Vulkan driver: one line on stderr, exit status 3."""
    env = dict(os.environ, VK_ICD_FILENAMES=str(tmp_path / "none.json"), VK_DRIVER_FILES=str(tmp_path / "none.json"),
               TAICHI_XRAY_ARCH="cpu")
    r = subprocess.run([sys.executable, "-m", "taichi_xray.viewer", str(scene_path), "--offscreen", "--frames", "1",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    msg = [l for l in r.stderr.splitlines() if l.startswith("taichi-xray:")]
    assert len(msg) == 1 and "mesa-vulkan-drivers libvulkan1" in msg[0]


def test_bad_view_arguments(scene_path, tmp_path):
    from taichi_xray import viewer

    args = _view_args(scene_path, tmp_path)
    args.out = None
    with pytest.raises(ValueError, match="--out"):
        viewer.main_view(args)
    args = _view_args(scene_path, tmp_path)
    args.range = "a:b"
    with pytest.raises(ValueError, match="--range"):
        viewer.main_view(args)
