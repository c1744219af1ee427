"""The render pipeline end to end through the scene loader, against analytic and numpy references."""
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from reference import box, icosphere  # noqa: E402

import taichi_xray as tx  # noqa: E402
from taichi_xray.mesh import Mesh  # noqa: E402
from taichi_xray.physics import Detector, Spectrum, get_material  # noqa: E402
from taichi_xray.render import NestingError, NestingWarning, render  # noqa: E402
from taichi_xray.scene import load_scene  # noqa: E402

CAM = {"sid": 500.0, "sdd": 800.0, "detector": [48, 40], "pixel_spacing": 2.5}


def scene(tmp_path, objects, spectrum=None, output=None, materials=None, detector=None):
    d = {"camera": dict(CAM), "spectrum": spectrum or {"monochromatic": 60.0}, "object": objects}
    for k, v in (("output", output), ("materials", materials), ("detector", detector)):
        if v is not None:
            d[k] = v
    p = tmp_path / "scene.toml"
    p.write_text(tomli_w.dumps(d))
    return load_scene(p)


def rays(camera):
    """Unit ray directions (H, W, 3) and source (3,), in float64 from the camera's matrix."""
    return camera.pixel_rays(normalize=True), camera.source


def chord_sphere(camera, centre, r):
    d, s = rays(camera)
    oc = np.asarray(centre) - s
    t = d @ oc
    dist2 = np.maximum(oc @ oc - t ** 2, 0.0)
    return 2.0 * np.sqrt(np.clip(r * r - dist2, 0.0, None))


def chord_box(camera, lo, hi):
    d, s = rays(camera)
    with np.errstate(divide="ignore"):
        t1 = (np.asarray(lo) - s) / d
        t2 = (np.asarray(hi) - s) / d
    tn = np.minimum(t1, t2).max(-1)
    tf = np.maximum(t1, t2).min(-1)
    return np.clip(tf - tn, 0.0, None)


def test_monochromatic_sphere_matches_exp_minus_mu_L(tmp_path):
    r = 30.0
    V, F = icosphere(r, 4)
    Mesh(V, F).save(tmp_path / "sphere.obj")
    sc = scene(tmp_path, [{"name": "ball", "mesh": "sphere.obj", "material": "water"}],
               output={"kind": "transmission"})
    res = render(sc, per_object=True)
    mu = get_material("water").mu([60.0])[0]
    # the icosphere lies between its inscribed sphere (face planes) and the circumscribed one
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    r_in = np.min(np.abs(np.einsum("ij,ij->i", n / np.linalg.norm(n, axis=1)[:, None], V[F[:, 0]])))
    lo, hi = chord_sphere(res.camera, (0, 0, 0), r_in), chord_sphere(res.camera, (0, 0, 0), r)
    L = res.path_lengths[0]
    assert np.all(L >= lo - 1e-3) and np.all(L <= hi + 1e-3)
    assert np.all(res.image <= np.exp(-mu * lo) + 1e-6) and np.all(res.image >= np.exp(-mu * hi) - 1e-6)
    assert hi.max() - lo.max() < 0.2 and hi.max() > 55  # the bounds are tight and the sphere is in view
    np.testing.assert_allclose(res.image, np.exp(-mu * L), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.line_integral, mu * L, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("air", [False, True])
def test_monochromatic_slab_custom_material_exact(tmp_path, air):
    lo, hi = (-300.0, -10.0, -300.0), (300.0, 10.0, 300.0)  # every ray crosses both large faces
    V, F = box(lo, hi)
    Mesh(V, F).save(tmp_path / "slab.obj")
    sc = scene(tmp_path, [{"name": "slab", "mesh": "slab.obj", "material": "alu"}],
               spectrum={"monochromatic": 40.0}, output={"kind": "line_integral", "air": air},
               materials={"alu": {"elements": ["Al"], "fractions": [1.0], "density": 2.699}})
    res = render(sc, per_object=True)
    L = chord_box(res.camera, lo, hi)
    mu = get_material("aluminium").mu([40.0])[0]
    expect = mu * L
    if air:
        expect = expect + get_material("air").mu([40.0])[0] * (res.camera.ray_lengths() - L)
    np.testing.assert_allclose(res.path_lengths[0], L, rtol=1e-5)  # float32 rasterizer
    np.testing.assert_allclose(res.image, expect, rtol=2e-5)
    np.testing.assert_allclose(res.transmission, np.exp(-expect), rtol=2e-5)


def nested_files(tmp_path, inner_hi=(8, 8, 8)):
    Mesh(*icosphere(30.0, 3)).save(tmp_path / "outer.obj")
    Mesh(*box((-8, -8, -8), inner_hi)).save(tmp_path / "inner.obj")
    return [{"name": "outer", "mesh": "outer.obj", "material": "water"},
            {"name": "inner", "mesh": "inner.obj", "material": "cortical_bone", "parent": "outer"}]


def test_nested_objects_equal_explicit_subtraction(tmp_path):
    sc = scene(tmp_path, nested_files(tmp_path), spectrum={"monochromatic": 50.0})
    res = render(sc)
    Lo = tx.path_length(sc.meshes[0], res.camera)
    Li = tx.path_length(sc.meshes[1], res.camera)
    mw, mb = get_material("water").mu([50.0])[0], get_material("cortical_bone").mu([50.0])[0]
    assert Li.max() > 15
    np.testing.assert_allclose(res.line_integral, mw * (Lo - Li) + mb * Li, rtol=1e-5, atol=1e-6)


def test_polychromatic_matches_numpy_reference(tmp_path):
    objs = nested_files(tmp_path)
    from taichi_xray.primitives import ellipsoid

    Mesh(*ellipsoid((8.0, 8.0, 10.0), centre=(0.0, 18.0, 0.0), n_lat=12, n_lon=24)).save(tmp_path / "gas.obj")
    objs.append({"name": "gas", "mesh": "gas.obj", "material": "air", "parent": "outer"})
    # a 16 x 16 x 20 mm gas bubble centred at y = 18 mm: 2 mm from the inner box (y <= 8), inside the sphere
    sc = scene(tmp_path, objs, spectrum={"kvp": 80, "filtration": {"Al": 2.5, "Cu": 0.1}, "bin_width": 2.0},
               detector={"kind": "energy", "scintillator": {"material": "CsI", "thickness_mm": 0.6}},
               output={"kind": "intensity", "air": True})
    res = render(sc, per_object=True)
    L = res.path_lengths.astype(np.float64)  # the reference uses the same path lengths
    assert L[2].max() > 15
    Lx = np.stack([L[0] - L[1] - L[2], L[1], L[2], res.camera.ray_lengths() - L[0]])
    spec = Spectrum.tungsten(80, filtration={"Al": 2.5, "Cu": 0.1}, bin_width=2.0)
    e = spec.energies
    mu = np.stack([get_material(m).mu(e) for m in ("water", "cortical_bone", "air", "air")])
    w = spec.photons * Detector("energy", ("CsI", 0.6)).response(e)
    I = np.einsum("e,ehw->hw", w, np.exp(-np.einsum("pe,phw->ehw", mu, Lx)))
    np.testing.assert_allclose(res.intensity, I, rtol=2e-6)
    np.testing.assert_allclose(res.image, I, rtol=2e-6)
    np.testing.assert_allclose(res.I0, w.sum(), rtol=1e-12)
    np.testing.assert_allclose(res.line_integral, -np.log(I / w.sum()), rtol=1e-5, atol=1e-7)
    assert set(res.timings) == {"rasterize", "physics", "output"} and all(v >= 0 for v in res.timings.values())


def test_object_outside_its_parent_is_reported(tmp_path):
    sc = scene(tmp_path, nested_files(tmp_path, inner_hi=(8, 8, 60)))  # the box pokes out of the sphere
    with pytest.raises(NestingError) as ei:
        render(sc)
    msg = str(ei.value)
    assert str(sc.path) in msg and "'inner' extends outside its parent 'outer'" in msg
    n = int(msg.split(" on ")[1].split(" pixels")[0])
    assert n > 10
    with pytest.warns(NestingWarning, match="pixels"):
        res = render(sc, on_nesting="warn")
    assert res.nesting and "inner" in res.nesting[0]


def test_nested_scene_has_no_nesting_report(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NestingWarning)
        assert render(scene(tmp_path, nested_files(tmp_path)), on_nesting="warn").nesting == []


def test_output_window_bits_invert_noise(tmp_path):
    objs = nested_files(tmp_path)
    out = {"kind": "transmission", "bits": 16, "window": [0.0, 1.0], "invert": True,
           "noise": {"photons_per_pixel": 1e4, "seed": 7}}
    a = render(scene(tmp_path, objs, output=out))
    b = render(scene(tmp_path, objs, output=out))
    assert a.pixels.dtype == np.uint16 and a.window == (0.0, 1.0)
    np.testing.assert_array_equal(a.image, b.image)  # same seed, same noise
    clean = render(scene(tmp_path, objs, output={"kind": "transmission"}))
    z = (a.image - clean.image) / np.sqrt(clean.image / 1e4)
    assert abs(z.mean()) < 0.2 and 0.8 < z.std() < 1.2  # Poisson statistics
    np.testing.assert_array_equal(a.pixels, np.rint(65535 * (1 - np.clip(a.image, 0, 1))).astype(np.uint16))


def test_render_accepts_a_path_and_a_camera(tmp_path):
    sc = scene(tmp_path, nested_files(tmp_path))
    cam = sc.camera_spec.build(lao=30)
    res = render(sc.path, camera=cam, per_object=True)
    assert res.camera is cam and res.path_lengths.shape == (2, 40, 48)
