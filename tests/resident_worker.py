"""Scenes of tests/test_resident.py, and (run as a script) their renders in device-resident mode.

``python resident_worker.py OUT.npz`` must run with ``TAICHI_XRAY_RESIDENT=1`` (a fresh process:
residency is chosen when Taichi is initialised). It writes the resident results and, for every bound
launch of the rasterizer and the physics stage, the type of each argument; the test compares them
with the same scenes rendered by the ordinary (torch-buffer) path of the test process.
"""
import json
import sys

import numpy as np
import torch

import taichi_xray as tx
from taichi_xray.physics.spectra import Spectrum
from taichi_xray.pipeline import Pipeline
from taichi_xray.primitives import icosphere

H, W = 40, 56


def camera():
    return tx.Camera.c_arm(sid=600, sdd=1000, width=W, height=H, pixel_spacing=1.5)


def nested_meshes():
    """An outer sphere with an inner one (4 faces on the central rays: K grows from 2 to 4) and a
    hemisphere-like open mesh (unbalanced pixels: the fill-from-neighbours path)."""
    Vo, Fo = icosphere(40.0, 2)
    Vi, Fi = icosphere(15.0, 2, centre=(6.0, 0.0, 3.0))
    return [tx.Mesh(Vo, Fo, "outer"), tx.Mesh(Vi, Fi, "inner")]


def open_mesh():
    V, F = icosphere(8.0, 2, centre=(-10.0, -5.0, 5.0))
    keep = V[F].mean(1)[:, 2] < 11.0  # a cap cut off: open
    return tx.Mesh(V, F[keep], "cap")


def pipeline(dtype=torch.float32):
    spec = Spectrum.tungsten(80, filtration={"Al": 2.5}, bin_width=4.0)  # polychromatic, > 8 energies
    return Pipeline(nested_meshes(), [camera()], materials=["soft_tissue", "bone"], parents=[-1, 0],
                    spectrum=spec, air=True, dtype=dtype)


def side_by_side():
    """Two disjoint spheres, side by side (K = 2), then moved one behind the other along the beam
    (4 faces on shared rays: K grows)."""
    Va, Fa = icosphere(8.0, 2, centre=(-12.0, 0.0, 0.0))
    Vb, Fb = icosphere(8.0, 2, centre=(12.0, 0.0, 0.0))
    beside = [Va, Vb]
    behind = [Va + np.array([12.0, -25.0, 0.0]), Vb + np.array([-12.0, 25.0, 0.0])]
    pipe = Pipeline([tx.Mesh(Va, Fa, "a"), tx.Mesh(Vb, Fb, "b")], [camera()], materials=["soft_tissue", "bone"],
                    spectrum=Spectrum.tungsten(70, bin_width=5.0), check_nesting="always")  # slots every time
    return pipe, beside, behind


def tet_pipeline(kind):
    """A tetrahedral mesh (constant or per-vertex linear densities) inside a surface mesh."""
    from reference_tet import kuhn_grid

    from taichi_xray.objects.tetmesh import TetMesh
    from taichi_xray.primitives import ellipsoid

    rng = np.random.default_rng(7)
    lo, hi, n = np.array([-30.0, -25.0, -20.0]), np.array([30.0, 25.0, 20.0]), (3, 3, 2)
    V, X = kuhn_grid(n, (hi - lo) / n, lo, jitter=0.15, rng=rng)
    D = rng.uniform(0, 2, ((len(X) if kind == "constant" else len(V)), 2))
    body = tx.Mesh(*ellipsoid((80.0, 60.0, 70.0), n_lat=16, n_lon=32), "body")
    cam = tx.Camera.c_arm(sid=400.0, sdd=700.0, width=48, height=40, pixel_spacing=3.0, lao=25.0, cran=10.0)
    return Pipeline([body, TetMesh(V, X, D, name="tets", kind=kind)], cam, materials=["soft_tissue", None],
                    parents=[-1, 0], spectrum=Spectrum.tungsten(80, bin_width=5.0))


def pose_loss():
    """TaichiPoseLoss (Taichi tape) of the nested scene against a shifted target: two evaluations
    (loss, gradient) and the loss function."""
    from taichi_xray.fit.taichi_fit import TaichiPoseLoss

    target = pipeline().render(moved(nested_meshes(), (2.0, 0.0, -1.5))).numpy()
    fn = TaichiPoseLoss(pipeline(), target)
    out = [fn(np.array([1.0, -0.5, 0.5, 0.5, 1.0, 0.0])), fn(np.array([0.0, 0.0, 0.0, 1.5, 0.0, -1.0]))]
    return out, fn


def moved(meshes, shift):
    return [torch.as_tensor(np.asarray(m.vertices) + np.asarray(shift)) for m in meshes]


def _sorted_slots(r):
    """Slots of each pixel sorted by face id (their order within a pixel follows an atomic counter)."""
    n = r.count.numpy()
    sf = r.slot_face.numpy().astype(np.int64)
    K = sf.shape[-1]
    valid = np.arange(K)[None, None] < np.minimum(n, K)[..., None]
    key = np.where(valid, sf, np.iinfo(np.int64).max)
    order = np.argsort(key, -1, kind="stable")
    return (np.take_along_axis(np.where(valid, sf, -1), order, -1),
            np.take_along_axis(np.where(valid, r.slot_depth.numpy(), 0.0), order, -1))


def rasterize_all():
    """{name: array} of rasterize() results (path lengths and slots)."""
    out = {}
    cam = camera()
    import warnings

    from taichi_xray.mesh import MeshWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeshWarning)
        for dt, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
            r = tx.rasterize(nested_meshes() + [open_mesh()], cam, dtype=dt)
            out[f"r_{tag}_L"] = r.L.numpy()
            out[f"r_{tag}_count"] = r.count.numpy()
            out[f"r_{tag}_flags"] = r.flags.numpy()
            out[f"r_{tag}_nfixed"] = r.n_fixed
            out[f"r_{tag}_sf"], out[f"r_{tag}_sd"] = _sorted_slots(r)
            out[f"r_{tag}_K"] = np.array(r.K)
        rd = tx.rasterize(nested_meshes(), cam, deterministic=True)
        out["r_det_L"] = rd.L.numpy()
        # one rasterizer reused over two cameras (rasterize(out=...)): the cameras are uploaded again
        cams = [cam, tx.Camera.c_arm(sid=600, sdd=1000, width=W, height=H, pixel_spacing=1.5, lao=30.0)]
        out["r_two_cams"] = tx.path_length(nested_meshes(), cams)
    return out


def arg_types(launch_cache) -> dict:
    return {str(k): [type(a).__module__ + "." + type(a).__name__ for a in b.args] for k, b in launch_cache._c.items()}


def main(path):
    from taichi_xray import runtime
    from taichi_xray.kernels.buffers import is_nd

    assert runtime.resident(), "run with TAICHI_XRAY_RESIDENT=1"
    res = rasterize_all()
    pipe = pipeline()
    res["p_img0"] = pipe.render().numpy()
    rz = pipe.rasterizer(torch.float32, resident=True)
    K_first = rz.K  # grown from 2 by the first render (nesting check: slots kept)
    res["p_img1"] = pipe.render(moved(nested_meshes(), (3.0, 0.0, -2.0))).numpy()
    fwd = rz._launch._c["fwd"]  # renders after the first keep no slots: bound once more, then reused
    ids0 = [id(a) for a in fwd.args if is_nd(a)]
    res["p_img2"] = pipe.render().numpy()  # the scene's vertices again (uploaded, then reused)
    res["p_path"] = pipe.render(kind="path_length").numpy()
    fwd2 = rz._launch._c["fwd"]
    same = fwd2 is fwd and [id(a) for a in fwd2.args if is_nd(a)] == ids0
    types = {"rasterizer": arg_types(rz._launch), "pipeline": arg_types(pipe._launch),
             "pool": arg_types(rz._pool._launch)}
    # K growth in a rasterizer already bound: side by side (K = 2), then one behind the other
    sp, beside, behind = side_by_side()
    res["s_img0"] = sp.render([torch.as_tensor(v) for v in beside]).numpy()
    srz = sp.rasterizer(torch.float32, resident=True)
    K0 = srz.K
    f0 = srz._launch._c["fwd"]
    nd0 = {i: id(a) for i, a in enumerate(f0.args) if is_nd(a)}
    res["s_img1"] = sp.render([torch.as_tensor(v) for v in behind]).numpy()
    f1 = srz._launch._c["fwd"]
    nd1 = {i: id(a) for i, a in enumerate(f1.args) if is_nd(a)}
    changed = sorted(i for i in nd0 if nd0[i] != nd1.get(i))
    names = list(f1.kernel.arguments)
    types["side_by_side"] = arg_types(srz._launch)
    for kind in ("constant", "linear"):
        tp = tet_pipeline(kind)
        res[f"t_{kind}"] = tp.render().numpy()
        types[f"tets_{kind}"] = arg_types(tp.rasterizer(torch.float32, resident=True)._launch)
    (f0, f1), fn = pose_loss()
    res["f_loss"] = np.array([f0[0], f1[0]])
    res["f_grad"] = np.stack([f0[1], f1[1]])
    res["f_image"] = fn.image()
    types["tape"] = arg_types(fn.pipe.rasterizer(torch.float32, resident=True)._launch)
    types["tape_pipeline"] = arg_types(fn.pipe._launch)
    fit_resident = bool(fn.resident and is_nd(fn.V) and is_nd(fn.loss))
    # backward of a resident state against the torch-buffer rasterizer on the same forward
    cam = camera()
    ms = nested_meshes()
    V = torch.as_tensor(np.concatenate([m.vertices for m in ms])[None], dtype=torch.float64).contiguous()
    F = np.concatenate([ms[0].faces, ms[1].faces + len(ms[0].vertices)])
    fo = np.repeat([0, 1], [len(ms[0].faces), len(ms[1].faces)])
    g = torch.linspace(-1.0, 1.0, 2 * H * W, dtype=torch.float64).reshape(1, 2, H, W)
    for resident in (True, False):
        r = tx.Rasterizer(F, fo, None, None, 2, [cam], dtype=torch.float64, resident=resident)
        st = r.forward(V)
        gV, _ = r.backward(st, g)
        res[f"b_gV_{int(resident)}"] = gV.numpy()
        res[f"b_L_{int(resident)}"] = (st.L.to_numpy() if resident else st.L.numpy())
    np.savez(path, **res)
    with open(str(path) + ".json", "w") as f:
        json.dump({"types": types, "same_ids": bool(same), "K0": int(K0), "K1": int(srz.K), "K_first": int(K_first),
                   "changed_args": [names[i].name for i in changed],
                   "fit_resident": fit_resident}, f)


if __name__ == "__main__":
    main(sys.argv[1])
