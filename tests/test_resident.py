"""Device residency (Vulkan/Metal): tables and buffers as ti.ndarray, launched without host copies
(the rasterizer, Pipeline.render, the Taichi-tape fit, the viewer's update logic and the dataset worker).

Residency is chosen when Taichi starts, so the resident renders run in a subprocess with
``TAICHI_XRAY_RESIDENT=1 TAICHI_XRAY_ARCH=cpu`` (Taichi's CPU backend binds ndarrays through
the same launch path as Vulkan; this machine has no GPU) and are compared with the same scenes
rendered here by the ordinary torch-buffer path.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import taichi as ti
import torch

import resident_worker as rw
from taichi_xray import runtime
from taichi_xray.kernels import buffers as kb
from taichi_xray.kernels.launch import LaunchCache

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def resident(tmp_path_factory):
    out = tmp_path_factory.mktemp("resident") / "res.npz"
    env = dict(os.environ, TAICHI_XRAY_RESIDENT="1", TAICHI_XRAY_ARCH="cpu",
               PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE, os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, os.path.join(HERE, "resident_worker.py"), str(out)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    with open(str(out) + ".json") as f:
        info = json.load(f)
    return dict(np.load(out)), info


@pytest.fixture(scope="module")
def reference():
    """The same scenes through the torch-buffer path (this process is not resident)."""
    if runtime.resident():
        pytest.skip("the test process itself runs resident (TAICHI_XRAY_RESIDENT=1): no torch-buffer reference")
    ref = rw.rasterize_all()
    pipe = rw.pipeline()
    ref["p_img0"] = pipe.render().numpy()
    ref["p_img1"] = pipe.render(rw.moved(rw.nested_meshes(), (3.0, 0.0, -2.0))).numpy()
    ref["p_img2"] = pipe.render().numpy()
    ref["p_path"] = pipe.render(kind="path_length").numpy()
    sp, beside, behind = rw.side_by_side()
    ref["s_img0"] = sp.render([torch.as_tensor(v) for v in beside]).numpy()
    ref["s_img1"] = sp.render([torch.as_tensor(v) for v in behind]).numpy()
    for kind in ("constant", "linear"):
        ref[f"t_{kind}"] = rw.tet_pipeline(kind).render().numpy()
    (f0, f1), fn = rw.pose_loss()
    assert not fn.resident
    ref["f_loss"], ref["f_grad"], ref["f_image"] = np.array([f0[0], f1[0]]), np.stack([f0[1], f1[1]]), fn.image()
    return ref


@pytest.fixture(scope="module")
def viewer_reference(tmp_path_factory):
    """The viewer's update logic on the same scenes and steps through the torch buffers (this process)."""
    if runtime.resident():
        pytest.skip("the test process itself runs resident (TAICHI_XRAY_RESIDENT=1): no torch-buffer reference")
    return rw.viewer_all(tmp_path_factory.mktemp("viewer_ref"))


def _close(a, b):
    # float atomics accumulate a pixel's terms in an order that may vary between runs, so equality
    # is to rounding (observed: bit-identical on the CPU)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * max(float(np.abs(b).max()), 1e-30))


def test_rasterize_resident_matches(resident, reference):
    res, _ = resident
    for tag in ("f32", "f64"):
        _close(res[f"r_{tag}_L"], reference[f"r_{tag}_L"])
        _close(res[f"r_{tag}_sd"], reference[f"r_{tag}_sd"])
        for k in ("count", "flags", "nfixed", "sf", "K"):
            np.testing.assert_array_equal(res[f"r_{tag}_{k}"], reference[f"r_{tag}_{k}"], err_msg=f"{tag} {k}")
        assert int(res[f"r_{tag}_K"]) >= 4  # nested spheres: grown from 2
        assert res[f"r_{tag}_nfixed"][2] > 0 and res[f"r_{tag}_flags"].any()  # the open cap was filled
        assert res[f"r_{tag}_L"][0].max() > 50 and res[f"r_{tag}_L"][1].max() > 20  # objects were seen
    np.testing.assert_array_equal(res["r_det_L"], reference["r_det_L"])  # deterministic: bit for bit
    _close(res["r_two_cams"], reference["r_two_cams"])
    assert np.abs(res["r_two_cams"][0] - res["r_two_cams"][1]).max() > 1.0  # the second camera was used


def test_pipeline_render_resident_matches(resident, reference):
    res, _ = resident
    for k in ("p_img0", "p_img1", "p_img2", "p_path", "s_img0", "s_img1", "t_constant", "t_linear"):
        assert res[k].shape == reference[k].shape, k
        assert np.isfinite(res[k]).all(), k
        _close(res[k], reference[k])
    assert res["p_img0"].max() > 1.0 and np.abs(res["p_img1"] - res["p_img0"]).max() > 0.1  # moved: changed
    _close(res["p_img2"], res["p_img0"])  # the scene's vertices again (not the moved ones: > 0.1 apart)


def test_taichi_tape_fit_resident_matches(resident, reference):
    """The torch-free registration loss on the Taichi tape: with residency its arrays are ndarrays and
    the rasterizer's forward and z-buffer gradient run on them; loss and gradient equal the torch-buffer
    run (to the rounding of float atomics)."""
    res, info = resident
    assert info["fit_resident"]
    assert {"tapefwd", "bwd"} <= set(info["types"]["tape"])
    np.testing.assert_allclose(res["f_loss"], reference["f_loss"], rtol=1e-6)
    g, gr = res["f_grad"], reference["f_grad"]
    assert np.abs(gr).max() > 1e-4 and res["f_loss"].min() > 1e-4
    np.testing.assert_allclose(g, gr, rtol=1e-4, atol=1e-4 * np.abs(gr).max())
    _close(res["f_image"], reference["f_image"])


def test_resident_launches_bind_only_ndarrays(resident):
    """The property that removes the per-launch copies on Vulkan/Metal: no torch tensor or numpy
    array is bound to any launch of the rasterizer, the air term, Beer-Lambert or the pool."""
    _, info = resident
    seen = set()
    for cache, launches in info["types"].items():
        for name, types in launches.items():
            seen.add(name)
            for i, t in enumerate(types):
                assert t.startswith("taichi.lang._ndarray.") or t in ("builtins.int", "builtins.float") or \
                    t.endswith(".DataType"), f"{cache}/{name} argument {i} is a {t}"
            assert any(t.startswith("taichi.lang._ndarray.") for t in types), f"{cache}/{name}"
    assert {"fwd", "nest", "air", "bl_res"} <= seen


def test_resident_buffers_are_reused_and_K_grows(resident):
    _, info = resident
    assert info["same_ids"]  # moved vertices, the scene again, path lengths: the same ndarrays
    assert info["K_first"] == 4
    assert (info["K0"], info["K1"]) == (2, 4)  # side by side, then one sphere behind the other
    assert info["changed_args"] == ["slot_face", "slot_depth"]  # only the slots were reallocated


def test_resident_backward_matches(resident):
    res, _ = resident
    np.testing.assert_allclose(res["b_L_1"], res["b_L_0"], rtol=1e-12, atol=1e-12)
    g0, g1 = res["b_gV_0"], res["b_gV_1"]
    assert np.abs(g0).max() > 0
    np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-10 * np.abs(g0).max())


def test_pool_torch_mode_is_torch():
    pool = kb.BufferPool(False, "cpu")
    a = pool.get("a", (2, 3), torch.int32, zero=True)
    assert isinstance(a, torch.Tensor) and pool.get("a", (2, 3), torch.int32) is a
    a[1, 2] = 7
    assert int(a.amax()) == 7
    assert pool.get("a", (2, 3), torch.int32, zero=True) is a and not a.any()  # cleared in place (memset)
    big = pool.get("big", (kb.MEMSET_MAX_BYTES // 4 + 1,), torch.float32)  # above the memset limit: zero_()
    big.fill_(2.0)
    pool.zero(big)
    assert not big.any()
    t = torch.arange(4.0)
    assert pool.resident_copy("t", t) is t


def test_pool_ndarray_ops_and_relaunch():
    """ndarray pool (works on any backend): zero, upload once, and a bound launch with
    ndarray arguments launched twice (Taichi 1.7.4's CPU launcher overwrote the bound allocation
    in the context: the second launch crashed)."""
    pool = kb.BufferPool(True)
    c = pool.upload("c", np.array([[3, 9], [4, 1]], np.int32))
    assert kb.is_nd(c) and int(c.to_numpy().max()) == 9
    pool.zero(c)
    assert not c.to_numpy().any()
    t = torch.tensor([1.0, 2.0])
    d1 = pool.resident_copy("t", t)
    assert pool.resident_copy("t", torch.tensor([1.0, 2.0])) is d1  # same contents: not uploaded again
    t2 = torch.tensor([5.0, 2.0])
    d2 = pool.resident_copy("t", t2)
    np.testing.assert_array_equal(d2.to_numpy(), [5.0, 2.0])
    t2 += 1  # modified in place: uploaded again
    np.testing.assert_array_equal(pool.resident_copy("t", t2).to_numpy(), [6.0, 3.0])
    L = pool.get("L", (2, 3, 4, 5), torch.float32, zero=True)
    ray = pool.upload("ray", np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5))
    cam_of = pool.upload("cam", np.array([1, 0], np.int32))
    lc = LaunchCache()
    lc("air", kb.add_air, L, ray, cam_of, 2)
    lc("air", kb.add_air, L, ray, cam_of, 2)
    got = L.to_numpy()
    r = np.arange(40, dtype=np.float32).reshape(2, 4, 5)
    np.testing.assert_array_equal(got[:, 2], 2 * r[[1, 0]])
    assert not got[:, [0, 1]].any()


VULKAN = """
import numpy as np, taichi as ti
try:
    ti.init(arch=ti.vulkan, log_level=ti.ERROR)
except Exception as e:
    print("SKIP", e); raise SystemExit(0)
if ti.lang.impl.current_cfg().arch != ti.vulkan:
    print("SKIP not vulkan"); raise SystemExit(0)
from taichi_xray.kernels import buffers as kb
from taichi_xray.kernels.launch import LaunchCache
import torch
pool = kb.BufferPool(True)
L = pool.get("L", (2, 3, 4, 5), torch.float32, zero=True)
ray = pool.upload("ray", np.arange(40, dtype=np.float32).reshape(2, 4, 5))
cam_of = pool.upload("cam", np.array([1, 0], np.int32))
lc = LaunchCache()
for _ in range(2):
    lc("air", kb.add_air, L, ray, cam_of, 1)
got = L.to_numpy()
r = np.arange(40, dtype=np.float32).reshape(2, 4, 5)
assert np.array_equal(got[:, 1], 2 * r[[1, 0]]) and not got[:, [0, 2]].any(), got
print("OK")
"""


def test_vulkan_ndarray_bound_launch():
    """On a Vulkan device (here Mesa's llvmpipe, which our start-up check refuses for the atomic
    rasterizer), a bound launch of a kernel without atomics on ndarrays runs and relaunches."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", VULKAN], capture_output=True, text=True, env=env, timeout=300)
    if p.stdout.startswith("SKIP"):
        pytest.skip(f"no Vulkan device: {p.stdout.strip()}")
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-3000:]



# ----------------------------------------------------------------------------------------
# the viewer (XrayPipeline.update, no window)
# ----------------------------------------------------------------------------------------
def _nd_only(types: dict, where: str, allow=()):
    for name, ts in types.items():
        if name in allow:
            continue
        for i, t in enumerate(ts):
            assert t.startswith("taichi.lang._ndarray.") or t in ("builtins.int", "builtins.float") or \
                t.endswith(".DataType"), f"{where}/{name} argument {i} is a {t}"
        assert any(t.startswith("taichi.lang._ndarray.") for t in ts), f"{where}/{name}"


def test_viewer_resident_matches(resident, viewer_reference):
    """Every displayed image (transmission and the image of the display kind) of the resident viewer
    equals the torch-buffer viewer's on the same states, the stages that ran are the same, and the
    torch-buffer viewer kept L as torch and downloaded nothing."""
    res, info = resident
    ref, rinfo = viewer_reference
    for scene, steps in rw.VIEWER_STEPS.items():
        got, want = info["viewer"][scene]["steps"], rinfo[scene]["steps"]
        for (label, _), g, w in zip(steps, got, want):
            assert g["label"] == w["label"] == label
            for k in ("ran", "n_rasterized", "n_physics", "n_imaging", "L_shape"):
                assert g[k] == w[k], (scene, label, k)
            assert not w["resident"] and not w["L_nd"] and w["n_L_downloads"] == w["L_fetched"] == 0
            for kind in ("T", "image"):
                a, b = res[f"v_{scene}_{label}_{kind}"], ref[f"v_{scene}_{label}_{kind}"]
                assert a.shape == b.shape and np.isfinite(a).all(), (scene, label, kind)
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()),
                                           err_msg=f"{scene} {label} {kind}")
        _close(res[f"v_{scene}_L"], ref[f"v_{scene}_L"])  # the first instance's path lengths, downloaded
        # every step changed the image (the spectrum change was applied, not a stale image kept)
        imgs = [ref[f"v_{scene}_{label}_image"] for label, _ in steps]
        for (label, _), a, b in zip(steps[1:], imgs[:-1], imgs[1:]):
            assert np.abs(a - b).max() > 1e-4 * np.abs(b).max(), (scene, label)
    assert res["v_imaging_L"].shape[0] == 4 and res["v_imaging_L"].max() > 50.0  # channels; the body was seen


def test_viewer_resident_keeps_L_on_device(resident):
    """Resident viewer: L stays the rasterizer's ndarray; a spectrum change re-runs Beer-Lambert from
    that ndarray without rasterizing or downloading L; L crosses to the host only for what needs it
    there (heel effect, scatter, the L read-out), once per rasterization (downloads counted where Taichi
    copies an ndarray to the host, not by the viewer)."""
    _, info = resident
    steps = {s["label"]: s for s in info["viewer"]["plain"]["steps"]}
    for s in info["viewer"]["plain"]["steps"][:-1]:
        assert s["resident"] and s["L_nd"] and s["bl_reads_L"], s  # Beer-Lambert read the kept ndarray
        assert s["L_fetched"] == s["n_L_downloads"] == 0, s  # no imaging stage: L never downloaded
    for label in ("kvp", "filter"):  # spectrum: physics only
        assert "rasterize" not in steps[label]["ran"] and "physics" in steps[label]["ran"]
    assert (steps["kvp"]["n_rasterized"], steps["kvp"]["n_physics"]) == (1, 2)
    assert (steps["filter"]["n_rasterized"], steps["filter"]["n_physics"]) == (1, 3)
    assert (steps["camera"]["n_rasterized"], steps["camera"]["n_physics"]) == (2, 4)
    assert steps["L"]["L_fetched"] == steps["L"]["n_L_downloads"] == 1  # pipeline.L: downloaded on demand
    im = info["viewer"]["imaging"]["steps"]
    assert all(s["resident"] and s["L_nd"] and s["L_shape"][0] == 4 for s in im[:-1])  # 4 focal-spot samples
    assert [s["n_rasterized"] for s in im[:-1]] == [1, 1, 1, 2, 2, 2, 2, 2]
    assert [s["n_physics"] for s in im[:-1]] == [1, 2, 3, 4, 5, 5, 5, 5]
    # L downloads: scatter's one per rasterization; without scatter none; scatter back on: one
    assert [s["L_fetched"] for s in im] == [1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert all(s["L_fetched"] == s["n_L_downloads"] for s in im)
    # Beer-Lambert on the device from the kept ndarray, the heel effect's per-row weights included
    assert [s["bl_reads_L"] for s in im[:-1]] == [True] * 8
    for scene in ("plain", "imaging"):
        types = info["viewer"][scene]["types"]
        _nd_only(types["rasterizer"], f"{scene} rasterizer")
        _nd_only(types["pipeline"], f"{scene} pipeline")
        assert {"air", "bl_res"} <= set(types["pipeline"]) and {"fwd"} <= set(types["rasterizer"])
        assert "bl" not in types["pipeline"]  # the torch-buffer Beer-Lambert never ran


# ----------------------------------------------------------------------------------------
# the dataset worker (SampleRenderer.render)
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset_reference(tmp_path_factory):
    """The dataset worker on the same files and samples through the torch buffers (this process)."""
    if runtime.resident():
        pytest.skip("the test process itself runs resident (TAICHI_XRAY_RESIDENT=1): no torch-buffer reference")
    return rw.dataset_all(tmp_path_factory.mktemp("dataset_ref"))


def test_dataset_worker_resident_matches(resident, dataset_reference):
    """Images, 16-bit copies, masks, path-length maps and parameters of the resident worker equal the
    torch-buffer worker's on the same samples: Beer-Lambert with kernel scatter, and the detector model
    (two-row Beer-Lambert, MTF) at two tube voltages."""
    res, info = resident
    ref, rinfo = dataset_reference
    fields = {"scatter": ("image", "image_u16", "masks", "path_lengths", "params"),
              "detector": ("image", "masks", "params")}
    for name, (_, _, n) in rw.DATASETS.items():
        assert sorted(k for k in res if k.startswith(f"d_{name}_")) == sorted(
            f"d_{name}_{i}_{f}" for i in range(n) for f in fields[name])
        assert not any(s["L_nd"] or s["len_L_nd"] for s in rinfo[name]["samples"])  # the reference: torch
        for i in range(n):
            k = f"d_{name}_{i}_"
            a, b = res[k + "image"], ref[k + "image"]
            assert a.shape == b.shape == (32, 40) and np.isfinite(a).all(), k
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()), err_msg=k + "image")
            np.testing.assert_array_equal(res[k + "masks"], ref[k + "masks"], err_msg=k + "masks")
            assert res[k + "masks"].any(axis=(1, 2)).all(), k  # every group was seen
            np.testing.assert_array_equal(res[k + "params"], ref[k + "params"], err_msg=k + "params")
            if name == "scatter":
                np.testing.assert_allclose(res[k + "path_lengths"], ref[k + "path_lengths"], rtol=1e-5,
                                           atol=1e-5 * float(np.abs(ref[k + "path_lengths"]).max()))
                assert 14.0 < float(ref[k + "path_lengths"][0].max()) <= 16.0  # bone: a sphere of radius 8 mm
                assert np.abs(res[k + "image_u16"].astype(np.int64) - ref[k + "image_u16"]).max() <= 1, k
        images = [ref[f"d_{name}_{i}_image"] for i in range(n)]
        assert all(np.abs(a - b).max() > 1e-3 * np.abs(b).max() for a, b in zip(images[:-1], images[1:]))
    kvp = rinfo["detector"]["param_names"].index("kvp")
    assert {float(ref[f"d_detector_{i}_params"][kvp]) for i in range(3)} == {70.0, 100.0}  # mu changed


def test_dataset_worker_resident_keeps_L_on_device(resident):
    """Resident worker: the path lengths, slots and path-length maps are ndarrays; Beer-Lambert (the
    pipeline's, and the detector model's two-row sums) reads the projected L on the device; L comes down
    once per sample for scatter's water-equivalent thickness and not at all without scatter; the
    path-length pipeline's maps come down once per sample (downloads counted where Taichi copies an
    ndarray to the host); every bound launch binds only ndarrays."""
    _, info = resident
    sc, dm = info["datasets"]["scatter"], info["datasets"]["detector"]
    for s in sc["samples"]:
        assert s["L_nd"] and s["len_L_nd"], s
        assert (s["L_fetched"], s["len_L_fetched"]) == (1, 1), s
    for s in dm["samples"]:
        assert s["L_nd"] and s["len_L_nd"] and s["dm_reads_L"], s
        assert (s["L_fetched"], s["len_L_fetched"]) == (0, 1), s
    for name, d in info["datasets"].items():
        for cache, types in d["types"].items():
            _nd_only(types, f"{name} {cache}")
        assert {"fwd", "nest"} <= set(d["types"]["pipe_rasterizer"]) and "fwd" in d["types"]["len_pipe_rasterizer"]
        assert "air" in d["types"]["pipe"]
    assert "bl_res" in sc["types"]["pipe"] and set(dm["types"]["worker"]) == {"dm_bl"}
