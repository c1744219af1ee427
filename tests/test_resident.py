"""Device residency (Vulkan/Metal): tables and buffers as ti.ndarray, launched without host copies.

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
    np.testing.assert_array_equal(res["p_img0"], res["p_img2"])  # the scene's vertices again


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
    assert pool.amax(a) == 7
    t = torch.arange(4.0)
    assert pool.resident_copy("t", t) is t


def test_pool_ndarray_ops_and_relaunch():
    """ndarray pool (works on any backend): zero, device max, upload once, and a bound launch with
    ndarray arguments launched twice (Taichi 1.7.4's CPU launcher overwrote the bound allocation
    in the context: the second launch crashed)."""
    pool = kb.BufferPool(True)
    c = pool.upload("c", np.array([[3, 9], [4, 1]], np.int32))
    assert kb.is_nd(c) and pool.amax(c) == 9
    pool.zero(c)
    assert pool.amax(c) == 0
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

