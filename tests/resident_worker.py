"""Scenes of tests/test_resident.py, and (run as a script) their renders in device-resident mode.

``python resident_worker.py OUT.npz`` must run with ``TAICHI_XRAY_RESIDENT=1`` (a fresh process:
residency is chosen when Taichi is initialised). It writes the resident results and, for every bound
launch of the rasterizer and the physics stage, the type of each argument; the test compares them
with the same scenes rendered by the ordinary (torch-buffer) path of the test process.
"""
import contextlib
import json
import sys

import numpy as np
import torch

import taichi_xray as tx
from taichi_xray.physics.spectra import Spectrum
from taichi_xray.pipeline import Pipeline
from taichi_xray.primitives import icosphere

from scenes import dataset_scene_toml

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


# ----------------------------------------------------------------------------------------
# the viewer's update logic (XrayPipeline, no window) on a plain and an imaging scene
# ----------------------------------------------------------------------------------------
# every switchable imaging stage except the detector noise (a Poisson draw could flip on a rate that
# differs by float rounding between the two runs)
VIEWER_IMAGING = """
[source]
mAs = 0.05
focal_spot = { width_mm = 2.0, samples = 4 }
heel = true
falloff = true
[detector]
scintillator = { material = "CsI", thickness_mm = 0.6 }
swank = 0.8
gain = 0.5
offset = 100.0
mtf = { gaussian_sigma_mm = 5.0 }
[scatter]
air_gap_mm = 200.0
"""

# (label, [(parameter, value, index)]): the steps each viewer run goes through
VIEWER_STEPS = {
    "plain": [("first", []), ("kvp", [("kvp", 90, None)]), ("filter", [("filter:Cu", 0.3, None)]),
              ("camera", [("lao", 25.0, None)]), ("hide", [("visible", False, 1)]),
              ("kind", [("kind", "transmission", None)])],
    "imaging": [("first", []), ("kvp", [("kvp", 95, None)]), ("heel_scatter_off", [("heel", False, None),
                                                                                    ("scatter", False, None)]),
                ("camera", [("lao", -20.0, None)]), ("kvp2", [("kvp", 70, None)]), ("scatter_on", [("scatter", True,
                                                                                                    None)]),
                ("blur_off", [("blur", False, None)]), ("intensity", [("kind", "intensity", None)])],
}


def viewer_scenes(folder) -> dict:
    """{"plain", "imaging"}: the small scene of tests/test_viewer.py (a body with a bone and a lung),
    without and with an imaging stage (focal spot of 4 samples, heel, falloff, detector model with an
    MTF, scatter), written into ``folder`` and loaded."""
    from scenes import write_viewer_scene
    from taichi_xray.scene import load_scene

    return {"plain": load_scene(write_viewer_scene(folder, "plain.toml")),
            "imaging": load_scene(write_viewer_scene(folder, "imaging.toml", w=40, h=40, px=6.4, kvp=80,
                                                     extra=VIEWER_IMAGING))}


@contextlib.contextmanager
def counted_downloads():
    """A list that receives id(ndarray) at every device -> host copy Taichi makes of an ndarray while the
    block runs (counted where the copy happens, not by the code under test)."""
    from taichi.lang._ndarray import Ndarray

    downloads = []
    orig = Ndarray._ndarray_to_numpy

    def counted(self):
        downloads.append(id(self))
        return orig(self)

    Ndarray._ndarray_to_numpy = counted
    try:
        yield downloads
    finally:
        Ndarray._ndarray_to_numpy = orig


def viewer_run(scene, steps):
    """Drive the viewer's :class:`XrayPipeline` through ``steps`` (see VIEWER_STEPS). Returns
    ({f"{label}_T", f"{label}_image", "L"}: arrays, {"steps": [per step: stages run, counters, whether L
    is an ndarray, whether the last device Beer-Lambert launch read the kept L, how many times L itself
    was downloaded so far (counted at Taichi's ndarray download, not by the viewer)], "types": argument
    types of the rasterizer's and the pipeline's bound launches})."""
    from taichi_xray.kernels.buffers import is_nd
    from taichi_xray.viewer import XrayPipeline
    from taichi_xray.viewer_state import ViewerState

    with counted_downloads() as downloads:
        pl = XrayPipeline(scene)
        st = ViewerState.from_scene(scene)
        arrays, recs = {}, []
        for label, params in steps:
            for name, value, index in params:
                st.set_param(name, value, index)
            ran = pl.update(st)
            bl = pl.pipe._launch._c.get("bl_res")
            recs.append({"label": label, "ran": sorted(ran), "n_rasterized": pl.n_rasterized,
                         "n_physics": pl.n_physics, "n_imaging": pl.n_imaging, "n_L_downloads": pl.n_L_downloads,
                         "L_nd": bool(is_nd(pl.L_all)), "L_shape": list(pl.L_all.shape),
                         "bl_reads_L": bool(bl is not None and any(a is pl.L_all for a in bl.args)),
                         "L_fetched": downloads.count(id(pl.L_all)), "resident": bool(pl.resident)})
            arrays[f"{label}_T"] = pl.T.detach().cpu().numpy()
            arrays[f"{label}_image"] = pl.image.detach().cpu().numpy()
        arrays["L"] = pl.L.cpu().numpy()  # the first instance's path lengths (resident: one download)
        recs.append({"label": "L", "n_L_downloads": pl.n_L_downloads, "L_fetched": downloads.count(id(pl.L_all))})
        types = {"rasterizer": arg_types(pl.pipe.rasterizer(torch.float32, resident=True)._launch)
                 if pl.resident else {}, "pipeline": arg_types(pl.pipe._launch)}
    return arrays, {"steps": recs, "types": types}


def viewer_all(folder):
    """{f"v_{scene}_{key}": array}, {scene: info} of viewer_run on both viewer scenes."""
    import warnings

    arrays, info = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scenes = viewer_scenes(folder)
    for name, sc in scenes.items():
        a, info[name] = viewer_run(sc, VIEWER_STEPS[name])
        arrays.update({f"v_{name}_{k}": v for k, v in a.items()})
    return arrays, info


# ----------------------------------------------------------------------------------------
# the dataset worker (SampleRenderer) on a tiny scene: masks, path lengths, scatter, detector model
# ----------------------------------------------------------------------------------------
DS_SCENE = dataset_scene_toml(w=40, h=32, px=6.0, kvp=90, bin_width=5.0)

DS_SPHERES = {"body": (60, (0, 0, 0), 2), "lung_left": (18, (25, 0, 5), 2), "lung_right": (18, (-25, 0, 5), 2),
              "heart": (12, (0, -20, -5), 2), "bone": (8, (0, 35, 0), 2)}

_DS_HEAD = """
[dataset]
scenes = ["scene.toml"]
[camera]
lao = { dist = "uniform", low = -30, high = 30 }
cran = { dist = "uniform", low = -10, high = 10 }
[[pose]]
objects = ["heart"]
rotate_deg = { dist = "normal", mean = 0, std = 5 }
translate = { dist = "uniform", low = -2, high = 2 }
"""

# (file, seed, samples): "scatter": Beer-Lambert through Pipeline.physics, kernel scatter (reads L on the
# host), masks and path-length maps; "detector": the detector model's two-row Beer-Lambert (CsI MTF, no
# noise) at two tube voltages (the attenuation table changes between samples), a mask
DATASETS = {
    "scatter": (_DS_HEAD + """
[scatter]
air_gap_mm = 100.0
[output]
uint16 = { window = [0.0, 6.0] }
masks = { lungs = ["lung_*"], heart = ["heart"] }
path_lengths = { bone = ["bone"], lungs_mm = ["lung_*"] }
""", 5, 3),
    "detector": (_DS_HEAD + """
[spectrum]
kvp = { dist = "choice", values = [70, 100] }
[detector_model]
preset = "csi"
gain = 0.5
offset = 100.0
[output]
kind = "intensity"
masks = { heart = ["heart"] }
""", 2, 3),
}


def dataset_files(folder):
    """Write the tiny scene's meshes, the scene and the DATASETS files into ``folder``."""
    from pathlib import Path

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    for n, (r, c, s) in DS_SPHERES.items():
        tx.Mesh(*icosphere(r, s, c), n).save(d / f"{n}.obj")
    (d / "scene.toml").write_text(DS_SCENE)
    for name, (text, _, _) in DATASETS.items():
        (d / f"{name}.toml").write_text(text)
    return d


def dataset_run(path, seed, n):
    """Samples 0..n-1 of the dataset file ``path`` by one SampleRenderer. Returns ({f"{i}_{field}": array}
    (image, image_u16, masks, path_lengths, params), {"samples": per sample: whether L was an ndarray, how
    many times the main pipeline's L and the path-length pipeline's L were downloaded during that sample
    (counted where Taichi copies an ndarray to the host), whether the detector model's launch read the
    projected L; "types": argument types of every bound launch of the worker, its pipelines and their
    rasterizers})."""
    from taichi_xray.datasets.spec import load_dataset
    from taichi_xray.datasets.worker import SampleRenderer
    from taichi_xray.kernels.buffers import is_nd

    with counted_downloads() as downloads:
        r = SampleRenderer(load_dataset(path), seed)
        arrays, recs = {}, []
        for i in range(n):
            downloads.clear()
            res = r.render(i)
            assert not res.failed, res.error
            st = r._scenes[0]
            L = st.pipe._last_L
            dm = r._launch._c.get("dm_bl") if r._launch is not None else None
            recs.append({"L_nd": bool(is_nd(L)), "L_fetched": downloads.count(id(L)),
                         "len_L_nd": bool(st.len_pipe is not None and is_nd(st.len_pipe._last_L)),
                         "len_L_fetched": downloads.count(id(st.len_pipe._last_L)) if st.len_pipe else 0,
                         "dm_reads_L": bool(dm is not None and dm.args[0] is L), "n_fetched": len(downloads)})
            for k in ("image", "image_u16", "masks", "path_lengths"):
                v = getattr(res, k)
                if v is not None:
                    arrays[f"{i}_{k}"] = v.cpu().numpy()
            arrays[f"{i}_params"] = res.params
        st = r._scenes[0]
        types = {"worker": arg_types(r._launch) if r._launch is not None else {}}
        for tag, pipe in (("pipe", st.pipe), ("len_pipe", st.len_pipe)):
            if pipe is None:
                continue
            types[f"{tag}"] = arg_types(pipe._launch)
            for (dt, res_), rz in pipe._rz.items():
                if res_:
                    types[f"{tag}_rasterizer"] = arg_types(rz._launch)
    return arrays, {"samples": recs, "types": types, "param_names": list(r.param_names)}


def dataset_all(folder):
    """{f"d_{name}_{key}": array}, {name: info} of dataset_run on every DATASETS file."""
    import warnings

    d = dataset_files(folder)
    arrays, info = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (_, seed, n) in DATASETS.items():
            a, info[name] = dataset_run(d / f"{name}.toml", seed, n)
            arrays.update({f"d_{name}_{k}": v for k, v in a.items()})
    return arrays, info


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
    types = {"rasterizer": arg_types(rz._launch), "pipeline": arg_types(pipe._launch)}
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
    import os

    varr, vinfo = viewer_all(os.path.join(os.path.dirname(os.path.abspath(path)), "viewer_scenes"))
    res.update(varr)
    darr, dinfo = dataset_all(os.path.join(os.path.dirname(os.path.abspath(path)), "dataset_scenes"))
    res.update(darr)
    np.savez(path, **res)
    with open(str(path) + ".json", "w") as f:
        json.dump({"types": types, "same_ids": bool(same), "K0": int(K0), "K1": int(srz.K), "K_first": int(K_first),
                   "changed_args": [names[i].name for i in changed],
                   "fit_resident": fit_resident, "viewer": vinfo, "datasets": dinfo}, f)


if __name__ == "__main__":
    main(sys.argv[1])
