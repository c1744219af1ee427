"""taichi_xray.datasets: dataset files, per-sample sampling, HDF5 shards, resume, Ray, torch datasets.

A tiny scene (48 x 40 pixels, five icospheres written as OBJ files) keeps every render at a
few milliseconds; most of the time goes into starting worker processes and Ray.
"""
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scenes import TET_OBJECTS, camera_toml, dataset_scene_toml, write_tet_meshes
from taichi_xray.camera import Camera
from taichi_xray.datasets.generate import CRASH_ENV, GenerateError, generate, plan_shards
from taichi_xray.datasets.sampling import draw, parameter_names, seed_sequence
from taichi_xray.datasets.spec import DatasetError, DatasetFileNotFoundError, Dist, load_dataset
from taichi_xray.datasets.torch import OnTheFlyDataset, ShardedDataset, worker_indices
from taichi_xray.datasets.worker import SampleRenderer

SEED = 7
N, K = 10, 2  # 5 shards of 2

SCENE = dataset_scene_toml()

DATASET = """
[dataset]
name = "tiny"
scenes = ["scene.toml"]
max_attempts = 3
[camera]
lao = { dist = "uniform", low = -30, high = 30 }
cran = { dist = "truncnormal", mean = 0, std = 10, low = -20, high = 20 }
sdd = { dist = "uniform", low = 750, high = 850 }
isocenter_offset = [{ dist = "normal", mean = 0, std = 3 }, 0, 0]
[spectrum]
kvp = { dist = "choice", values = [70, 90] }
filtration = { Cu = { dist = "choice", values = [0.0, 0.1] } }
[noise]
photons_per_pixel = { dist = "loguniform", low = 1e3, high = 1e5 }
[[pose]]
objects = ["heart"]
rotate_deg = { dist = "normal", mean = 0, std = 5 }
translate = { dist = "uniform", low = -2, high = 2 }
[shape.heart]
model = "heart_ssm.npz"
coefficients = { dist = "truncnormal", mean = 0, std = 1, low = -2, high = 2 }
[[landmarks.point]]
name = "heart_apex"
object = "heart"
vertex = 0
[[landmarks.point]]
name = "bone_centre"
object = "bone"
position = [0, 35, 0]
[output]
uint16 = { window = [0.0, 6.0] }
masks = { lungs = ["lung_*"], heart = ["heart"] }
path_lengths = { bone = ["bone"] }
"""

SPHERES = {"body": (60, (0, 0, 0), 3), "lung_left": (18, (25, 0, 5), 2), "lung_right": (18, (-25, 0, 5), 2),
           "heart": (12, (0, -20, -5), 2), "bone": (8, (0, 35, 0), 2)}


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    from taichi_xray.fit.ssm import ShapeModel, synthetic_population
    from taichi_xray.mesh import Mesh
    from taichi_xray.primitives import icosphere

    d = tmp_path_factory.mktemp("ds_scene")
    for n, (r, c, s) in SPHERES.items():
        V, F = icosphere(r, s, c)
        Mesh(V, F, n).save(d / f"{n}.obj")
    V, F = icosphere(12, 2, (0, -20, -5))
    ShapeModel.fit(synthetic_population(V, F, 12, seed=3, displacement_mm=1.0), F, n_components=3).save(
        d / "heart_ssm.npz")
    (d / "scene.toml").write_text(SCENE)
    (d / "ds.toml").write_text(DATASET)
    return d


@pytest.fixture(scope="module")
def ref(scene_dir, tmp_path_factory):
    """The reference run: one worker, in this process."""
    out = tmp_path_factory.mktemp("ds_ref") / "out"
    man = generate(scene_dir / "ds.toml", out, N, seed=SEED, shard_size=K, workers=1, progress=False)
    return out, man


def _sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _shard_shas(out) -> dict:
    return {p.name: _sha(p) for p in sorted(Path(out).glob("shard-*.h5"))}


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN == NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())
    return bool(torch.equal(a, b))


# ----------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------
def test_draw_uses_seed_sequence_of_seed_and_index(scene_dir):
    spec = load_dataset(scene_dir / "ds.toml")
    for i in (0, 3, 12345):
        # documented order: one scene (no draw), then lao (uniform), cran (truncnormal), sdd (uniform), iso x
        rng = np.random.default_rng(np.random.SeedSequence([SEED, i]))
        lao = rng.uniform(-30, 30)
        p = draw(spec, SEED, i)
        assert p.lao == lao
        assert p.sid == 500.0  # constant from the scene: no draw
        assert -20 <= p.cran <= 20 and 750 <= p.sdd < 850 and p.kvp in (70, 90) and 1e3 <= p.photons_per_pixel <= 1e5
        # a re-draw uses [seed, index, attempt]
        rng = np.random.default_rng(np.random.SeedSequence([SEED, i, 2]))
        assert draw(spec, SEED, i, 2).lao == rng.uniform(-30, 30)
    np.testing.assert_array_equal(draw(spec, SEED, 4).vector(spec), draw(spec, SEED, 4).vector(spec))
    assert len(parameter_names(spec)) == len(draw(spec, SEED, 0).vector(spec))
    assert seed_sequence(1, 2).entropy == seed_sequence(1, 2, 0).entropy
    with pytest.raises(ValueError, match="seed"):
        seed_sequence(-1, 0)


def test_truncnormal_matches_its_analytic_mean_and_bounds():
    from scipy.special import ndtr

    d = Dist("truncnormal", mean=1.0, std=2.0, low=0.0, high=3.0)
    rng = np.random.default_rng(0)
    x = np.array([d.sample(rng) for _ in range(4000)])
    assert x.min() >= 0.0 and x.max() <= 3.0
    a, b = (0.0 - 1.0) / 2.0, (3.0 - 1.0) / 2.0
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    mean = 1.0 + 2.0 * (phi(a) - phi(b)) / (ndtr(b) - ndtr(a))  # truncated-normal mean
    assert abs(x.mean() - mean) < 4 * x.std() / math.sqrt(len(x))
    c = Dist("choice", values=(1.0, 2.0), weights=(3.0, 1.0))
    y = np.array([c.sample(rng) for _ in range(4000)])
    assert abs((y == 1.0).mean() - 0.75) < 0.03


def test_worker_indices_split_the_range_once():
    parts = [list(worker_indices(5, 23, w, 3)) for w in range(3)]
    assert sorted(i for p in parts for i in p) == list(range(5, 23))
    it = worker_indices(0, None, 1, 4)
    assert [next(it) for _ in range(3)] == [1, 5, 9]
    assert plan_shards(5, 2) == [(0, 0, 2), (1, 2, 4), (2, 4, 5)]


# ----------------------------------------------------------------------------------------
# writing and reading back
# ----------------------------------------------------------------------------------------
def test_same_command_same_bytes_and_cli(ref, scene_dir, tmp_path):
    from taichi_xray.cli import main

    out, man = ref
    assert man["complete"] and man["samples"] == N and len(man["shards"]) == 5 and man["n_failed"] == 0
    for s in man["shards"]:  # the manifest's checksums are those of the files
        assert _sha(out / s["file"]) == s["sha256"]
    out2 = tmp_path / "again"
    assert main(["-q", "generate", str(scene_dir / "ds.toml"), "-o", str(out2), "--samples", str(N), "--seed",
                 str(SEED), "--shard-size", str(K), "--workers", "1"]) == 0
    assert _shard_shas(out2) == _shard_shas(out)
    assert (out2 / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    # another seed gives other samples; an existing dataset with other settings is refused
    out3 = tmp_path / "seed8"
    generate(scene_dir / "ds.toml", out3, 2, seed=SEED + 1, shard_size=K, workers=1, progress=False)
    assert _sha(out3 / "shard-000000.h5") != _sha(out / "shard-000000.h5")
    with pytest.raises(FileExistsError, match="seed 8 -> 7"):
        generate(scene_dir / "ds.toml", out3, 2, seed=SEED, shard_size=K, workers=1, progress=False)
    assert main(["generate", str(scene_dir / "ds.toml"), "-o", str(out3), "--samples", "2", "--seed",
                 str(SEED)]) == 2


def test_dataset_reads_back_what_was_rendered(ref, scene_dir):
    out, _ = ref
    spec = load_dataset(scene_dir / "ds.toml")
    r = SampleRenderer(spec, SEED)
    ds = ShardedDataset(out)
    assert len(ds) == N and ds.mask_names == ["lungs", "heart"] and ds.landmark_names == ["heart_apex", "bone_centre"]
    assert ds.param_names == parameter_names(spec)
    for i in (0, 5, 9):
        s = ds[i]
        res = r.render(i)
        assert int(s["index"]) == i and not bool(s["failed"])
        assert _equal(s["image"], res.image) and _equal(s["masks"], res.masks)
        assert _equal(s["path_lengths"], res.path_lengths) and _equal(s["image_u16"], res.image_u16)
        assert np.array_equal(s["P"].numpy(), res.P)
        drawn = draw(spec, SEED, i).vector(spec)  # the last column, nesting_conflict_px, comes from the render
        np.testing.assert_array_equal(s["params"].numpy()[:-1], drawn[:-1])
        assert ds.param_names[-1] == "nesting_conflict_px" and s["params"][-1] == 0
        # the 16-bit copy is the float image in the window [0, 6]
        img = s["image"].numpy().astype(np.float64)
        assert np.array_equal(s["image_u16"].numpy(), np.rint(np.clip(img * 65535 / 6.0, 0, 65535)).astype(np.int32))
        # landmarks: projection of their 3-D positions by P, visible where inside and in front
        P = s["P"].numpy()
        X = np.c_[s["landmarks_3d"].numpy().astype(np.float64), np.ones(2)]
        h = X @ P.T
        np.testing.assert_allclose(s["landmarks"].numpy(), h[:, :2] / h[:, 2:], atol=1e-3)
        u, v = h[:, 0] / h[:, 2], h[:, 1] / h[:, 2]
        vis = (h[:, 2] > 0) & (u >= -0.5) & (u <= 47.5) & (v >= -0.5) & (v <= 39.5)
        assert s["landmarks_visible"].numpy().tolist() == vis.tolist()
        np.testing.assert_allclose(s["landmarks_3d"][1].numpy(), [0, 35, 0], atol=1e-5)  # the bone does not move
        # the bone's path length against the public single-mesh rasterizer, in the sample's camera
        from taichi_xray import Mesh, path_length
        from taichi_xray.primitives import icosphere

        cam = Camera.from_projection_matrix(P, 48, 40)
        ref_len = path_length(Mesh(*icosphere(8, 2, (0, 35, 0))), cam)
        np.testing.assert_allclose(s["path_lengths"][0].numpy(), ref_len, atol=2e-3)
        assert 14.0 < float(ref_len.max()) <= 16.0  # chord through a sphere of radius 8 mm
        assert bool(s["masks"][0].any()) and bool(s["masks"][1].any())


def test_iterable_dataset_gives_the_files_samples(ref, scene_dir):
    out, _ = ref
    ds = ShardedDataset(out)
    it = OnTheFlyDataset(scene_dir / "ds.toml", seed=SEED, start=3, stop=6)
    got = list(it)
    assert len(got) == len(it) == 3
    for s in got:
        f = ds[int(s["index"])]
        for k, v in f.items():
            if isinstance(v, torch.Tensor):
                assert _equal(v, s[k].cpu()), k
    batch = next(iter(torch.utils.data.DataLoader(it, batch_size=2)))
    assert batch["image"].shape == (2, 40, 48) and batch["masks"].dtype == torch.bool


# ----------------------------------------------------------------------------------------
# workers, crash and resume, Ray
# ----------------------------------------------------------------------------------------
def test_two_workers_crash_then_resume(ref, scene_dir, tmp_path, monkeypatch):
    """Two spawn workers; one dies abruptly before sample 8 (the last shard). Every shard
    finished before is kept and is byte-identical to the one-worker run; the rerun makes
    only the rest and gives the same bytes."""
    out_ref, man_ref = ref
    out = tmp_path / "crash"
    monkeypatch.setenv(CRASH_ENV, "8")
    with pytest.raises(GenerateError, match="died"):
        generate(scene_dir / "ds.toml", out, N, seed=SEED, shard_size=K, workers=2, progress=False)
    monkeypatch.delenv(CRASH_ENV)
    finished = sorted(out.glob("shard-*.done.json"))
    assert len(finished) >= 3  # a worker takes shard 4 only after three shards were done
    assert not (out / "shard-000004.done.json").exists()
    kept = {}
    for m in finished:
        h5 = out / json.loads(m.read_text())["file"]
        assert _sha(h5) == _sha(out_ref / h5.name)  # made by two workers, same bytes
        st = h5.stat()
        kept[h5.name] = (st.st_ino, st.st_mtime_ns)
    man = generate(scene_dir / "ds.toml", out, N, seed=SEED, shard_size=K, workers=1, progress=False)
    assert man["complete"]
    for name, (ino, mt) in kept.items():  # not redone
        st = (out / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == (ino, mt)
    assert _shard_shas(out) == _shard_shas(out_ref)
    assert (out / "manifest.json").read_bytes() == (out_ref / "manifest.json").read_bytes()
    assert not list(out.glob("*.partial"))


RAY_SCRIPT = """
import json, sys
def main():
    import ray
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as exc:
        print("RAY_CANNOT_START", type(exc).__name__, exc)
        sys.exit(3)
    try:
        from taichi_xray.datasets.generate import generate
        generate(sys.argv[1], sys.argv[2], int(sys.argv[3]), seed=int(sys.argv[4]), shard_size=int(sys.argv[5]),
                 workers=2, ray="local", progress=False)
    finally:
        ray.shutdown()
if __name__ == "__main__":
    main()
"""


def test_ray_local_gives_the_same_bytes(ref, scene_dir, tmp_path):
    """Two Ray actors on a local Ray instance (num_cpus=2, no dashboard), started and shut
    down by a child process that is killed if it runs past its time limit."""
    pytest.importorskip("ray")
    out_ref, _ = ref
    script = tmp_path / "ray_run.py"
    script.write_text(RAY_SCRIPT)
    out = tmp_path / "ray_out"
    env = dict(os.environ, TAICHI_XRAY_ARCH="cpu", RAY_USAGE_STATS_ENABLED="0")
    p = subprocess.Popen([sys.executable, str(script), str(scene_dir / "ds.toml"), str(out), str(N), str(SEED),
                          str(K)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        log, _ = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
        pytest.fail("the Ray run did not finish within 300 s")
    if p.returncode == 3:
        pytest.skip("Ray cannot start here: " + log.strip().splitlines()[-1])
    assert p.returncode == 0, log[-3000:]
    assert _shard_shas(out) == _shard_shas(out_ref)
    assert (out / "manifest.json").read_bytes() == (out_ref / "manifest.json").read_bytes()


# ----------------------------------------------------------------------------------------
# failed samples
# ----------------------------------------------------------------------------------------
FAILING = """
[dataset]
scenes = ["scene.toml"]
max_attempts = 2
[camera]
lao = { dist = "uniform", low = -10, high = 10 }
[[pose]]
name = "push"
objects = ["heart"]
translate = [0, { dist = "choice", values = [0.0, -70.0] }, 0]
[output]
masks = { heart = ["heart"] }
"""


def test_failed_samples_keep_their_slot_and_are_reported(scene_dir, tmp_path, caplog):
    """A pose that pushes the heart out of the body (70 mm anterior, still in the field of view)
    makes NestingError: the sample
    is re-drawn with SeedSequence([seed, index, attempt]) and, after max_attempts, marked
    failed in its slot, listed in the manifest and logged."""
    (scene_dir / "failing.toml").write_text(FAILING)
    spec = load_dataset(scene_dir / "failing.toml")
    n = 8

    def expected(seed):  # first attempt with no translation succeeds; none in 2 attempts -> failed
        out = []
        for i in range(n):
            a = next((a for a in range(2) if draw(spec, seed, i, a).poses[0][1][1] == 0.0), None)
            out.append(a)
        return out

    seed = next(s for s in range(100) if None in expected(s) and 1 in expected(s))
    exp = expected(seed)
    caplog.set_level("WARNING", logger="taichi_xray")
    man = generate(scene_dir / "failing.toml", tmp_path / "f", n, seed=seed, shard_size=3, workers=1, progress=False)
    failed = [i for i, a in enumerate(exp) if a is None]
    assert [f["index"] for f in man["failed"]] == failed and man["n_failed"] == len(failed)
    assert all("NestingError" in f["error"] and "heart" in f["error"] and f["attempts"] == 2 for f in man["failed"])
    assert all(f"sample {i} failed" in caplog.text for i in failed)
    ds_all = ShardedDataset(tmp_path / "f", skip_failed=False)
    assert len(ds_all) == n
    for i, a in enumerate(exp):
        s = ds_all[i]
        assert int(s["index"]) == i and bool(s["failed"]) == (a is None)
        if a is None:
            assert bool(torch.isnan(s["image"]).all()) and not bool(s["masks"].any())
        else:
            assert int(s["params"][ds_all.param_names.index("attempt")]) == a  # the draw that succeeded
            assert bool(torch.isfinite(s["image"]).all()) and bool(s["masks"].any())
    ds = ShardedDataset(tmp_path / "f")
    assert len(ds) == n - len(failed) and set(ds.indices.tolist()) == set(range(n)) - set(failed)
    # with a (silly) tolerance of 10^6 conflicting pixels nothing fails, and the count is stored
    (scene_dir / "tolerant.toml").write_text(FAILING.replace("max_attempts = 2", "max_attempts = 2\n"
                                                             "nesting_tolerance_px = 1000000"))
    spec2 = load_dataset(scene_dir / "tolerant.toml")
    r = SampleRenderer(spec2, seed).render(failed[0])
    assert not r.failed and r.attempts == 1 and r.params[-1] > 10


# ----------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------
BAD = [
    ("[camera]\nloa = 3\n", "[camera]: key 'loa': unknown key; did you mean 'lao'?"),
    ("[camera]\nlao = { dist = \"uniforn\", low = 0, high = 1 }\n", "[camera]: key 'lao': unknown distribution "
                                                                    "'uniforn'; did you mean 'uniform'?"),
    ("[camera]\nlao = { dist = \"uniform\", low = 0, hgh = 1 }\n", "[camera]: key 'lao.hgh': unknown key for a "
                                                                   "uniform distribution; did you mean 'high'?"),
    ("[camera]\ncran = { dist = \"normal\", mean = 0, std = 5 }\n", "[camera]: key 'cran': CRAN angles (degrees) "
                                                                    "must stay within (-90, 90)"),
    ("[camera]\nsdd = { dist = \"uniform\", low = 300, high = 900 }\n", "[camera]: key 'sdd': source-detector "
                                                                        "distances must exceed"),
    ("[spectrum]\nkvp = { dist = \"normal\", mean = 80, std = 5 }\n", "[spectrum]: key 'kvp': tube voltages (kVp) "
                                                                      "must stay within [40, 150]"),
    ("[spectrum]\nkvp = true\n", "[spectrum]: key 'kvp': must be a number or a distribution table"),
    ("[noise]\nphotons_per_pixel = 1e4\nmAs = 2\n", "[noise]: give exactly one of photons_per_pixel"),
    ("[output]\nmasks = { lungs = [\"lung_lef\"] }\n", "[output]: key 'masks.lungs': no object 'lung_lef' in "
                                                       "scene"),
    ("[output]\nmasks = { ribs = [\"rib_*\"] }\n", "[output]: key 'masks.ribs': no object 'rib_*'"),
    ("[[pose]]\nobjects = [\"hart\"]\n", "[[pose]] #1 'hart': key 'objects': no object 'hart' in scene"),
    ("[scatter]\nair_gap_mm = 500\n", "[scatter]: key 'air_gap_mm': air gaps (mm, the calibrated range of the "
                                       "scatter kernels) must stay within [0, 300]"),
    ("[scatter]\ngrid = { ratoi = 10 }\n", "[scatter]: key 'grid': unknown grid key(s) ['ratoi']"),
    ("[spectrum]\nkvp = { dist = \"uniform\", low = 70, high = 90 }\n[scatter]\n",
     "[scatter]: the scatter kernels are calibrated for 80..120 kVp"),
    ("[outptu]\n", "top level: key 'outptu': unknown key; did you mean 'output'?"),
    ("[landmarks.pelvis]\nhip_left = [\"lung_right\"]\nhip_right = [\"lung_left\"]\nsacrum = [\"bone\"]\n",
     "hip_left lies to the right of hip_right"),
    ("[shape.body]\nmodel = \"heart_ssm.npz\"\n", "[shape.body]: key 'model': "),
    ("[detector_model]\npreset = \"cs\"\n", "[detector_model]: key 'preset': must be one of 'csi', 'gos', 'none', "
                                            "got 'cs'; did you mean 'csi'?"),
]


@pytest.mark.parametrize("extra, message", BAD)
def test_validation_errors_name_file_table_and_key(scene_dir, extra, message):
    p = scene_dir / "bad.toml"
    p.write_text("[dataset]\nscenes = [\"scene.toml\"]\n" + extra)
    with pytest.raises(DatasetError) as e:
        load_dataset(p)
    assert str(e.value).startswith(f"{p}: ") and message in str(e.value), str(e.value)


def test_missing_files_and_types(scene_dir):
    p = scene_dir / "bad2.toml"
    p.write_text("[dataset]\nscenes = [\"nope.toml\"]\n")
    with pytest.raises(DatasetFileNotFoundError, match=r"\[dataset\]: key 'scenes': scene file #1 not found"):
        load_dataset(p)
    assert issubclass(DatasetFileNotFoundError, FileNotFoundError)
    p.write_text("[dataset]\nscenes = [\"scene.toml\"]\n[output]\nfloat32 = 1\n")
    with pytest.raises(TypeError, match=r"\[output\]: key 'float32': must be true or false"):
        load_dataset(p)
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        generate(scene_dir / "ds.toml", scene_dir / "never", 0)


# ----------------------------------------------------------------------------------------
# pelvis landmarks and poses
# ----------------------------------------------------------------------------------------
def test_pelvis_landmarks_follow_a_pose(tmp_path):
    """The 14 landmarks of fit.landmarks on the built-in pelvis, after a pose of the whole body
    (children included) about the origin: x' = R x + t with R from scipy (extrinsic xyz)."""
    from scipy.spatial.transform import Rotation

    from taichi_xray.fit.landmarks import PELVIS_LANDMARK_NAMES, pelvis_landmarks
    from taichi_xray.scene import load_scene

    scene = Path(__file__).resolve().parents[1] / "scenes" / "pelvis.toml"
    (tmp_path / "pelvis-ds.toml").write_text(f"""
[dataset]
scenes = ["{scene.as_posix()}"]
size = [64, 64]
[[pose]]
objects = ["body"]
rotate_deg = [3.0, -2.0, 5.0]
translate = [2.0, 0.0, -1.0]
centre = [0.0, 0.0, 0.0]
[landmarks.pelvis]
hip_left = ["hip_L"]
hip_right = ["hip_R"]
sacrum = ["sacrum"]
""")
    spec = load_dataset(tmp_path / "pelvis-ds.toml")
    assert spec.landmark_names == list(PELVIS_LANDMARK_NAMES)
    r = SampleRenderer(spec, 0).render(0)
    assert not r.failed
    sc = load_scene(scene)
    part = lambda names: np.concatenate([sc.objects[sc.names.index(n)].mesh.vertices for n in names])  # noqa: E731
    hl, hr, sa = part(["hip_L"]), part(["hip_R"]), part(["sacrum"])
    X0 = pelvis_landmarks(hl, hr, sa).positions(np.concatenate([hl, hr, sa]))
    R = Rotation.from_euler("xyz", [3.0, -2.0, 5.0], degrees=True).as_matrix()
    np.testing.assert_allclose(r.landmarks_3d, X0 @ R.T + [2.0, 0.0, -1.0], atol=1e-3)
    assert r.landmarks_visible.all()  # the pelvis fills the field of view
    h = np.c_[r.landmarks_3d.astype(np.float64), np.ones(14)] @ r.P.T
    np.testing.assert_allclose(r.landmarks, h[:, :2] / h[:, 2:], atol=1e-3)


def test_scatter_adds_to_the_primary_and_a_grid_removes_some(scene_dir):
    """[scatter] (kernel model of physics.scatter): noise-free transmission with scatter >= the
    primary, more where the body is; a 10:1 grid keeps less; the automatic air gap is the
    detector distance minus the body's farthest depth (computed here from the mesh and P)."""
    from taichi_xray.primitives import icosphere

    base = "[dataset]\nscenes = [\"scene.toml\"]\n[camera]\nlao = { dist = \"uniform\", low = -20, high = 20 }\n" \
           "[output]\nkind = \"transmission\"\n"
    imgs = {}
    for name, extra in (("none", ""), ("scatter", "[scatter]\n"),
                        ("grid", "[scatter]\ngrid = { ratio = 10, lines_per_cm = 40, strip_um = 45 }\n")):
        (scene_dir / f"sc-{name}.toml").write_text(base + extra)
        spec = load_dataset(scene_dir / f"sc-{name}.toml")
        imgs[name] = SampleRenderer(spec, 3).render(0)
    T0, Ts, Tg = (imgs[k].image.numpy().astype(np.float64) for k in ("none", "scatter", "grid"))
    body = T0 < 0.5
    assert (Ts >= T0 - 1e-6).all() and (Ts - T0)[body].min() > 0
    assert (Tg - T0)[body].mean() < 0.5 * (Ts - T0)[body].mean()
    names = parameter_names(load_dataset(scene_dir / "sc-scatter.toml"))
    gap = imgs["scatter"].params[names.index("air_gap_mm")]
    P = imgs["scatter"].P
    V = icosphere(60, 3, (0, 0, 0))[0]
    far = float((V @ P[2, :3] + P[2, 3]).max())
    assert gap == pytest.approx(Camera.from_projection_matrix(P, 48, 40, 4.0).detector_distance - far, abs=1e-6)
    assert np.isnan(imgs["none"].params[names.index("air_gap_mm")])


@pytest.mark.parametrize("detector_model", [False, True])
def test_focal_spot_scene_averages_its_source_samples(scene_dir, tmp_path, detector_model):
    """A scene with a focal spot rasterizes one instance per source sample; the worker averages their
    Beer-Lambert sums with the pipeline's sample weights (the detector model's two-row sums once wrote
    past a (2, 1, H, W) buffer: a heap corruption). Reference: the transmission of every instance from
    its own path lengths, averaged by hand."""
    import shutil

    for f in scene_dir.glob("*.obj"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "scene.toml").write_text(SCENE.replace("[output]", "[source]\nfocal_spot = { width_mm = 4.0, "
                                                                   "samples = 4 }\n[output]", 1))
    extra = ('[detector_model]\npreset = "csi"\ngain = 0.5\noffset = 100.0\n[output]\nkind = "intensity"\n'
             if detector_model else '[output]\nkind = "transmission"\n')
    (tmp_path / "ds.toml").write_text('[dataset]\nscenes = ["scene.toml"]\n[camera]\nlao = 20.0\n' + extra)
    r = SampleRenderer(load_dataset(tmp_path / "ds.toml"), 3)
    res = r.render(0)
    assert not res.failed, res.error
    img = res.image.double()
    assert torch.isfinite(img).all()
    pipe = r._scenes[0].pipe
    L = pipe._last_L  # (4, C, H, W): one instance per source sample
    assert L.shape[0] == 4
    if detector_model:
        assert float(img.min()) > 100.0  # above the offset: a reading, not garbage
        return
    I0 = float(pipe.physics_tables(torch.float64, L.device)[2])
    each = torch.stack([pipe.physics(L[i:i + 1].contiguous())[0, 0].double() / I0 for i in range(4)])
    w = torch.as_tensor(np.asarray(pipe._inst_weight, np.float64))
    ref = torch.einsum("i,ihw->hw", w / w.sum(), each)
    np.testing.assert_allclose(img.numpy(), ref.numpy(), rtol=2e-5, atol=1e-7)
    assert float((each[0] - ref).abs().max()) > 1e-3  # the samples differ: instance 0 alone would fail


def test_dataset_of_a_scene_with_a_tetrahedral_object(tmp_path):
    """The worker's per-sample nesting check skips the faces between two tetrahedra (they are not a
    surface of their object), as Pipeline.check_nesting does: a tetrahedral bone inside a body renders,
    with no conflict pixel, the same line integral as the scene's own render."""
    from taichi_xray.render import render
    from taichi_xray.scene import load_scene

    write_tet_meshes(tmp_path)
    (tmp_path / "scene.toml").write_text(camera_toml() + "[spectrum]\nmonochromatic = 60.0\n" + TET_OBJECTS)
    (tmp_path / "ds.toml").write_text('[dataset]\nscenes = ["scene.toml"]\n[camera]\nlao = 0.0\n[output]\n'
                                      'kind = "line_integral"\n')
    r = SampleRenderer(load_dataset(tmp_path / "ds.toml"), 1)
    res = r.render(0)
    assert not res.failed, res.error
    assert res.params[list(r.param_names).index("nesting_conflict_px")] == 0
    ref = render(load_scene(tmp_path / "scene.toml")).line_integral
    assert ref.max() > 1.0  # the bone was seen
    np.testing.assert_allclose(res.image.numpy(), np.asarray(ref, np.float32), rtol=1e-4, atol=1e-4)
