"""Scene files: loading, transforms, overrides, and one clear error per malformed case."""
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w

sys.path.insert(0, str(Path(__file__).parent))
from reference import box  # noqa: E402

from taichi_xray.mesh import Mesh  # noqa: E402
from taichi_xray.physics import get_material  # noqa: E402
from taichi_xray.scene import SceneError, SceneFileNotFoundError, load_scene  # noqa: E402


def base():
    return {
        "camera": {"sid": 500.0, "sdd": 800.0, "detector": [32, 24], "pixel_spacing": 2.0},
        "spectrum": {"monochromatic": 60.0},
        "object": [{"name": "cube", "mesh": "box.obj", "material": "water"}],
    }


@pytest.fixture
def write(tmp_path):
    V, F = box((-20, -20, -20), (20, 20, 20))
    Mesh(V, F).save(tmp_path / "box.obj")

    def _write(data, name="scene.toml"):
        p = tmp_path / name
        p.write_text(tomli_w.dumps(data) if isinstance(data, dict) else data)
        return p

    return _write


def error(write, data, cls=SceneError):
    p = write(data)
    with pytest.raises(cls) as ei:
        load_scene(p)
    msg = str(ei.value)
    assert msg.startswith(str(p) + ":"), msg  # every error names the file first
    return msg


# ---------------------------------------------------------------------------- valid scenes
def test_minimal_scene_loads_with_defaults(write):
    s = load_scene(write(base()))
    assert s.names == ["cube"] and s.parents == [-1]
    assert (s.camera.width, s.camera.height, s.camera.pixel_spacing) == (32, 24, 2.0)
    assert s.output.kind == "line_integral" and s.output.bits == 8 and s.output.window is None
    assert s.detector.kind == "energy" and s.detector.scintillator is None
    np.testing.assert_allclose(s.spectrum.energies, [60.0])
    np.testing.assert_allclose(s.meshes[0].bounds[0], [-20, -20, -20])


def test_mesh_path_is_relative_to_the_scene_file(write, tmp_path, monkeypatch):
    sub = tmp_path / "sub"
    sub.mkdir()
    d = base()
    d["object"][0]["mesh"] = "../box.obj"
    p = write(d, "sub/scene.toml")
    monkeypatch.chdir("/")
    assert load_scene(p).objects[0].source == str(sub / "../box.obj")


def test_transform_translate_and_rotate(write):
    d = base()
    d["object"][0]["transform"] = {"translate": [10.0, 0.0, 5.0]}
    lo, hi = load_scene(write(d)).meshes[0].bounds
    np.testing.assert_allclose(lo, [-10, -20, -15])
    V, F = box((0, 0, 0), (40, 10, 10))
    Mesh(V, F).save(Path(write(base())).parent / "bar.obj")
    d["object"][0] = {"name": "bar", "mesh": "bar.obj", "material": "water",
                      "transform": {"rotate_deg": [0, 0, 90], "centre": [0, 0, 0]}}
    lo, hi = load_scene(write(d)).meshes[0].bounds  # x -> y under +90 deg about z
    np.testing.assert_allclose(lo, [-10, 0, 0], atol=1e-9)
    np.testing.assert_allclose(hi, [0, 40, 10], atol=1e-9)


def test_custom_materials_formula_elements_composition(write):
    d = base()
    d["materials"] = {"calcite": {"formula": "CaCO3", "density": 2.71},
                      "alu": {"elements": ["Al"], "fractions": [1.0], "density": 2.699},
                      "wat": {"composition": {"H": 0.111894, "O": 0.888106}, "density": 1.0}}
    d["object"] = [{"name": f"o{i}", "mesh": "box.obj", "material": m} for i, m in enumerate(d["materials"])]
    s = load_scene(write(d))
    e = [30.0, 60.0]
    np.testing.assert_allclose(s.objects[1].material.mu(e), get_material("aluminium").mu(e), rtol=1e-9)
    np.testing.assert_allclose(s.objects[2].material.mu(e), get_material("water").mu(e), rtol=1e-6)
    assert s.objects[0].material.density == 2.71


def test_phantom_reference_and_default_material(write):
    d = base()
    d["scene"] = {"phantom_resolution": "low"}
    d["object"] = [{"name": "body", "mesh": "phantom:pelvis/body", "material": "soft_tissue"},
                   {"name": "gas", "mesh": "phantom:pelvis/rectal_gas", "parent": "body"}]
    s = load_scene(write(d))
    assert s.objects[1].material_name == "air" and s.parents == [-1, 0]
    assert s.meshes[0].check().watertight


def test_raw_projection_matrix_camera_and_resize(write):
    from taichi_xray import Camera

    c = Camera.c_arm(sid=500, sdd=800, width=32, height=24, pixel_spacing=2.0)
    d = base()
    d["camera"] = {"P": c.P.tolist(), "width": 32, "height": 24, "pixel_spacing": 2.0}
    s = load_scene(write(d))
    np.testing.assert_allclose(s.camera.P, c.P)
    small = s.with_overrides(size=(16, 12)).camera  # same physical detector, half the pixels
    ref = Camera.c_arm(sid=500, sdd=800, width=16, height=12, pixel_spacing=4.0)
    np.testing.assert_allclose(small.P, ref.P, atol=1e-9)
    assert small.pixel_spacing == 4.0


def test_overrides_kvp_angles_size(write):
    d = base()
    d["spectrum"] = {"kvp": 80, "filtration": {"Al": 2.5}}
    s = load_scene(write(d))
    t = s.with_overrides(kvp=100, lao=30, size=(64, 48))
    assert t.spectrum.energies.max() > 95 and s.spectrum.energies.max() < 81
    assert (t.camera.width, t.camera.height) == (64, 48) and t.camera.pixel_spacing == 1.0
    assert t.camera.source[0] < -100  # LAO 30: the source swings to the patient's right (-x)
    with pytest.raises(ValueError, match="tungsten"):
        load_scene(write(base())).with_overrides(kvp=90)


# ------------------------------------------------------------------------ one error each
def test_error_invalid_toml(write):
    assert "not valid TOML" in error(write, "[camera\nsid = 1")


def test_error_unknown_section(write):
    d = base()
    d["camra"] = {}
    msg = error(write, d)
    assert "key 'camra'" in msg and "did you mean 'camera'" in msg


def test_error_unknown_object_key(write):
    d = base()
    d["object"][0]["materal"] = "bone"
    msg = error(write, d)
    assert "[[object]] #1 'cube'" in msg and "key 'materal'" in msg and "did you mean 'material'" in msg


def test_error_unknown_camera_key(write):
    d = base()
    d["camera"]["pixel_spacin"] = 1.0
    msg = error(write, d)
    assert "[camera]" in msg and "did you mean 'pixel_spacing'" in msg


def test_error_wrong_type(write):
    d = base()
    d["camera"]["sid"] = "far"
    msg = error(write, d, TypeError)
    assert "[camera]: key 'sid': must be a number" in msg


def test_error_wrong_type_boolean_is_not_a_number(write):
    d = base()
    d["spectrum"] = {"monochromatic": True}
    assert "key 'monochromatic': must be a number" in error(write, d)


def test_error_unknown_material(write):
    d = base()
    d["object"][0]["material"] = "lunge"
    msg = error(write, d)
    assert "[[object]] #1 'cube': key 'material': unknown material 'lunge'" in msg
    assert "did you mean 'lung'" in msg and "known:" in msg and "soft_tissue" in msg


def test_error_missing_mesh(write, tmp_path):
    d = base()
    d["object"][0]["mesh"] = "meshes/nothere.stl"
    msg = error(write, d, SceneFileNotFoundError)
    assert isinstance(SceneFileNotFoundError("x"), FileNotFoundError)
    assert "key 'mesh'" in msg and str(tmp_path / "meshes/nothere.stl") in msg


def test_error_unknown_parent(write):
    d = base()
    d["object"][0]["parent"] = "bodyy"
    d["object"].append({"name": "body", "mesh": "box.obj", "material": "water"})
    msg = error(write, d)
    assert "key 'parent': unknown parent 'bodyy'" in msg and "did you mean 'body'" in msg


def test_error_parent_cycle(write):
    d = base()
    d["object"] = [{"name": "a", "mesh": "box.obj", "material": "water", "parent": "b"},
                   {"name": "b", "mesh": "box.obj", "material": "water", "parent": "c"},
                   {"name": "c", "mesh": "box.obj", "material": "water", "parent": "a"}]
    msg = error(write, d)
    assert "parent cycle" in msg and "'a' -> 'b' -> 'c' -> 'a'" in msg


def test_error_own_parent(write):
    d = base()
    d["object"][0]["parent"] = "cube"
    assert "its own parent" in error(write, d)


def test_error_duplicate_name(write):
    d = base()
    d["object"].append(dict(d["object"][0]))
    msg = error(write, d)
    assert "[[object]] #2 'cube'" in msg and "duplicate object name 'cube'" in msg and "#1" in msg


def test_error_bad_camera_distances(write):
    d = base()
    d["camera"]["sdd"] = 400.0
    msg = error(write, d)
    assert "[camera]: key 'sdd': must be larger than sid" in msg


def test_error_bad_camera_detector(write):
    d = base()
    d["camera"]["detector"] = [32.5, 24]
    assert "key 'detector': must be [width, height]" in error(write, d)


def test_error_bad_camera_matrix(write):
    d = base()
    d["camera"] = {"P": [[1, 0, 0, 0], [0, 1, 0, 0]], "width": 8, "height": 8}
    assert "key 'P': must be a 3x4 array" in error(write, d)


def test_error_missing_camera(write):
    d = base()
    del d["camera"]
    assert "missing section [camera]" in error(write, d)


def test_error_bad_spectrum_two_kinds(write):
    d = base()
    d["spectrum"] = {"kvp": 80, "monochromatic": 60}
    assert "[spectrum]: give exactly one of kvp" in error(write, d)


def test_error_bad_spectrum_kvp_range(write):
    d = base()
    d["spectrum"] = {"kvp": 20}
    msg = error(write, d)
    assert "[spectrum]: key 'kvp'" in msg and "kVp must be in" in msg


def test_error_bad_spectrum_filter_material(write):
    d = base()
    d["spectrum"] = {"kvp": 80, "filtration": {"Alu": 2.0}}
    assert "key 'filtration.Alu'" in error(write, d)


def test_error_missing_spectrum_csv(write):
    d = base()
    d["spectrum"] = {"csv": "spec.csv"}
    assert "key 'csv': spectrum file not found" in error(write, d, FileNotFoundError)


def test_error_bad_detector_kind(write):
    d = base()
    d["detector"] = {"kind": "energie"}
    msg = error(write, d)
    assert "[detector]: key 'kind'" in msg and "did you mean 'energy'" in msg


def test_error_custom_material_without_density(write):
    d = base()
    d["materials"] = {"calcite": {"formula": "CaCO3"}}
    assert "[materials.calcite]: key 'density': missing" in error(write, d)


def test_error_custom_material_shadows_builtin(write):
    d = base()
    d["materials"] = {"water": {"formula": "H2O", "density": 1.0}}
    assert "built-in material" in error(write, d)


def test_error_output_kind(write):
    d = base()
    d["output"] = {"kind": "transmision"}
    msg = error(write, d)
    assert "[output]: key 'kind'" in msg and "did you mean 'transmission'" in msg


def test_error_output_bits(write):
    d = base()
    d["output"] = {"bits": 12}
    assert "key 'bits': must be one of 8, 16" in error(write, d)


def test_error_output_window(write):
    d = base()
    d["output"] = {"window": [3.0, 1.0]}
    assert "key 'window'" in error(write, d)


def test_error_air_needs_pixel_spacing(write):
    from taichi_xray import Camera

    d = base()
    d["camera"] = {"P": Camera.c_arm(sid=500, sdd=800, width=8, height=8, pixel_spacing=1).P.tolist(),
                   "width": 8, "height": 8}
    d["output"] = {"air": True}
    assert "key 'air'" in error(write, d) and "pixel_spacing" in error(write, d)


def test_error_noise_without_seed(write):
    d = base()
    d["output"] = {"noise": {"photons_per_pixel": 1000}}
    assert "key 'noise.seed'" in error(write, d)


def test_error_bad_transform(write):
    d = base()
    d["object"][0]["transform"] = {"translate": [1, 2]}
    assert "key 'transform.translate': must be a list of 3 numbers" in error(write, d)


def test_error_unknown_phantom_object(write):
    d = base()
    d["object"][0]["mesh"] = "phantom:thorax/lung_lft"
    d["scene"] = {"phantom_resolution": "low"}
    msg = error(write, d)
    assert "has no object 'lung_lft'" in msg and "lung_left" in msg


def test_error_scene_file_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="scene file not found"):
        load_scene(tmp_path / "none.toml")


def test_shipped_scenes_load():
    from taichi_xray import phantoms

    root = Path(__file__).resolve().parents[1] / "scenes"
    for name, n in (("thorax", 129), ("pelvis", 17)):
        s = load_scene(root / f"{name}.toml")
        assert len(s.objects) == n and s.camera.width == 512
        # the object list is the phantom's (tools/phantom_scenes.py writes it), parents included
        ph = getattr(phantoms, name)()
        assert s.names == ph.names
        assert [s.names[p] if p >= 0 else None for p in s.parents] == [o.parent for o in ph]
        assert all(o.mesh.check().outward for o in s.objects)
        # the realistic variant (tools/phantom_figures.py --write-scenes): the same objects and camera
        # plus a focal spot, a CsI detector model with noise and kernel scatter
        r = load_scene(root / f"{name}-realistic.toml")
        assert r.names == s.names and np.allclose(r.camera.P, s.camera.P)
        im = r.imaging
        assert im.focal_spot is not None and im.scatter is not None and im.detector is not None and im.noise


def test_documented_complete_example_loads(tmp_path):
    doc = (Path(__file__).resolve().parents[1] / "docs/scene-format.md").read_text()
    text = doc.split("## Complete example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "meshes").mkdir()
    Mesh(*box((-40, -40, -60), (40, 40, 60))).save(tmp_path / "meshes/cylinder.stl", binary=True)
    Mesh(*box((-5, -5, -30), (5, 5, 30))).save(tmp_path / "meshes/rod.obj")
    p = tmp_path / "example.toml"
    p.write_text(text)
    s = load_scene(p)
    assert s.names == ["cylinder", "insert", "bubble"] and s.parents == [-1, 0, 0]
    assert s.output.bits == 16 and s.output.noise == (20000.0, 42) and s.materials["pmma"].density == 1.18
