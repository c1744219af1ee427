#!/usr/bin/env python
"""Time one iteration of a two-view pelvis registration (render + NGC + backward + Adam step),
before and after: the package in this checkout and an older release from another folder.

Setup (as benchmarks/pelvis_experiment.py): three bone meshes (hip_left, hip_right, sacrum)
from the label map of ``../shared/data/pelvis-ct`` (``taichi_xray.ct.labels_to_meshes``,
10 Taubin iterations, ``--faces`` per bone, 0 = full marching-cubes resolution), rendered
as cortical bone (80 kVp tungsten, CsI 0.6 mm, line integral) in two C-arm views (RAO 45,
LAO 45; SID 800 mm, SDD 1200 mm, 480 mm detector) of ``--sizes`` pixels; without the data,
the bones of the built-in pelvis phantom. One iteration is what ``fit.register`` does per
Adam step: pose the template (rotation vector, translation) in torch, render both views,
``ngc_loss`` against the target with a mask, ``backward``, ``Adam.step``. The target is the
model rendered 2 deg / 5 mm away (the iteration's cost does not depend on the target's
content). Level factors (``--factors``): 1 = full resolution, 2 = the coarse level of the
multi-resolution schedule (detector binned 2 x 2: ``XRayRenderer.at_scale(2)``, or for a
release without it the register's own ``downsample_camera`` copy of the renderer).

Routes: ``torch`` (XRayRenderer + torch autograd, both packages) and ``taichi``
(``taichi_xray.fit.taichi_fit.TaichiPoseLoss``: pose, render, NGC and gradient in one
``ti.ad.Tape``, plus its numpy Adam; packages that have it).

Before/after::

    git archive 9903469 | tar -x -C /tmp/oldrepo          # the previous release (does not touch this checkout)
    python benchmarks/bench_registration.py --compare /tmp/oldrepo --out benchmarks/results/registration-iteration-cpu.md

``--compare OLD`` runs the old package in a subprocess (this script with ``--package-root
OLD``) and this checkout's package in-process, and writes one table with both and the
speed-up. Alternatively run each with ``--package-root DIR`` (puts DIR first on sys.path)
and ``--out FILE --append``. Smoke test: ``--sizes 64 --repeat 2 --faces 2000``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def _early_package_root():
    """--package-root must act before taichi_xray is imported (before argparse runs)."""
    for i, a in enumerate(sys.argv):
        if a == "--package-root" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if a.startswith("--package-root="):
            return a.split("=", 1)[1]
    return None


_common.bootstrap(_early_package_root())  # taichi_xray (from that root) before torch

import argparse  # noqa: E402
import copy  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from taichi_xray import runtime  # noqa: E402
from taichi_xray.camera import Camera  # noqa: E402
from taichi_xray.fit.losses import ngc_loss  # noqa: E402
from taichi_xray.fit.register import downsample_camera  # noqa: E402
from taichi_xray.physics import Detector, Spectrum  # noqa: E402
from taichi_xray.pose import axis_angle_to_matrix  # noqa: E402
from taichi_xray.torch import XRayRenderer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data", "pelvis-ct"))
BONES = ("hip_left", "hip_right", "sacrum")
VIEWS = {"rao45": -45.0, "lao45": 45.0}
DEG = math.pi / 180.0
OFFSET = (np.array([2.0, -1.5, 1.0]), np.array([5.0, -3.0, 4.0]))  # target pose: rotvec deg, translation mm


# ----------------------------------------------------------------------------- setup
def load_bones(data: str, faces: int):
    """([(V (N, 3) float64, F (M, 3) int64)] for the three bones, description)."""
    labels = os.path.join(data, "labels.nii.gz")
    if os.path.exists(labels):
        from taichi_xray.ct import labels_to_meshes

        tf = faces or None
        for _ in range(10):  # coarsening can give a non-manifold mesh: retry with more faces (as the experiment)
            try:
                ms = labels_to_meshes(labels, labels={"hip_left": 90, "hip_right": 91, "sacrum": 92},
                                      smooth_iterations=10, target_faces=tf)
                break
            except RuntimeError:
                if tf is None:
                    raise
                tf = int(tf * 1.1)
        bones = [(np.asarray(ms[k].vertices, np.float64), np.asarray(ms[k].faces, np.int64)) for k in BONES]
        src = f"CT labels {labels} (hip_left, hip_right, sacrum; target_faces={tf})"
    else:
        from taichi_xray import phantoms

        ph = phantoms.pelvis()
        objs = [o for o in getattr(ph, "objects", ph) if o.material in ("cortical_bone", "trabecular_bone")
                and not o.name.startswith(("femur", "vertebra"))]
        bones = [(np.asarray(o.vertices, np.float64), np.asarray(o.faces, np.int64)) for o in objs]
        src = f"built-in pelvis phantom bones ({', '.join(o.name for o in objs)}): {labels} not found"
    return bones, src


def cameras(centre, n):
    return [Camera.c_arm(sid=800.0, sdd=1200.0, width=n, height=n, pixel_spacing=480.0 / n, lao=a,
                         isocenter=centre) for a in VIEWS.values()]


def renderer_kwargs(n_meshes):
    kw = dict(materials=["cortical_bone"] * n_meshes, spectrum=Spectrum.tungsten(80.0), detector=Detector("energy", ("CsI", 0.6)))
    if "overlap" in inspect.signature(XRayRenderer.__init__).parameters:
        kw["overlap"] = "allow"  # bones touching at the joints must not stop a timing run (the check still runs)
    return kw


def level_renderer(faces, cams, factor):
    """(renderer at this level, how it was made): at_scale where the package has it, else the
    copy that the old fit.register made (cameras replaced by downsampled ones)."""
    rend = XRayRenderer(faces, cams, **renderer_kwargs(len(faces)))
    if factor == 1:
        return rend, "full"
    if hasattr(rend, "at_scale"):
        return rend.at_scale(factor), f"at_scale({factor})"
    r = copy.copy(rend)
    r.cameras = [downsample_camera(c, factor) for c in cams]
    return r, f"copy with downsample_camera(., {factor})"


def posed(base, c, rv_deg, t):
    R = axis_angle_to_matrix(torch.as_tensor(rv_deg, dtype=torch.float64) * DEG)
    return (base - c) @ R.T + c + torch.as_tensor(t, dtype=torch.float64)


# ----------------------------------------------------------------------------- routes
def torch_iteration(bones, n, factor, repeat, warmup):
    """The torch route: returns (timing dict, peak MB, held MB or NaN, note)."""
    faces = [F for _, F in bones]
    sizes = [len(V) for V, _ in bones]
    base = torch.as_tensor(np.concatenate([V for V, _ in bones]))
    c = base.mean(0)
    cams = cameras(c.numpy(), n)
    with _common.PeakMemory() as pm:
        rend, how = level_renderer(faces, cams, factor)
        with torch.no_grad():
            tgt = rend([p.float().contiguous() for p in torch.split(posed(base, c, *OFFSET), sizes)]).double()
        mask = torch.ones_like(tgt)
        x = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([x], lr=0.5)

        def step():
            opt.zero_grad()
            R = axis_angle_to_matrix(x[0:3] * DEG)
            v = (base - c) @ R.T + c + x[3:6]
            img = rend([p.to(torch.float32).contiguous() for p in torch.split(v, sizes)])
            loss = ngc_loss(img.to(torch.float64), tgt, mask)
            loss.backward()
            opt.step()
            return float(loss.detach())

        t = _common.timed(step, repeat, warmup)
    pipe = getattr(rend, "pipeline", None)
    held = _common.pipeline_bytes(pipe) / 2**20 if pipe is not None else float("nan")
    return t, pm.mb, held, how, tuple(rend.image_shape)


def taichi_iteration(bones, n, factor, repeat, warmup):
    """The Taichi-only route (TaichiPoseLoss + its Adam)."""
    from taichi_xray.fit.taichi_fit import Adam, TaichiPoseLoss
    from taichi_xray.pipeline import Pipeline

    base = np.concatenate([V for V, _ in bones])
    c = base.mean(0)
    cams = [downsample_camera(cm, factor) for cm in cameras(c, n)]
    kw = renderer_kwargs(len(bones))
    with _common.PeakMemory() as pm:
        pipe = Pipeline([(V, F) for V, F in bones], cams, materials=kw["materials"], spectrum=kw["spectrum"],
                        detector=kw["detector"], overlap="allow")
        with torch.no_grad():
            Vt = posed(torch.as_tensor(base), torch.as_tensor(c), *OFFSET).numpy()
            tgt = pipe.render(Vt).detach().cpu().numpy().astype(np.float64)
        loss = TaichiPoseLoss(pipe, tgt, template=base, centre=c, mask=np.ones_like(tgt))
        opt = Adam(np.zeros(6), lr=0.5)

        def step():
            val, g = loss(opt.x)
            opt.step(g)
            return val

        t = _common.timed(step, repeat, warmup)
    return t, pm.mb, _common.pipeline_bytes(pipe) / 2**20, "Pipeline on downsample_camera views", pipe.image_shape


# ----------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--package-root", default=None, help="import taichi_xray from this folder (put first on sys.path)")
    p.add_argument("--compare", default=None, metavar="OLDROOT",
                   help="also run the package in OLDROOT (a subprocess) and write both into one table")
    p.add_argument("--label", default=None, help="name of this package in the table (default: new with --compare, "
                   "else the package folder's name)")
    p.add_argument("--old-label", default="old", help="name of the --compare package in the table")
    p.add_argument("--data", default=DATA)
    p.add_argument("--faces", type=int, default=0, help="faces per bone (0: full marching-cubes resolution)")
    p.add_argument("--sizes", default="160,256", help="detector pixels (square), comma list")
    p.add_argument("--factors", default="1,2", help="level factors (1 = full resolution, 2 = coarse level)")
    p.add_argument("--routes", default="torch,taichi", help="torch and/or taichi (skipped where missing)")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--torch-threads", type=int, default=1,
                   help="torch.set_num_threads (1, as pelvis_experiment.py; 0 keeps torch's default)")
    p.add_argument("--out", default=None, help="markdown results file")
    p.add_argument("--append", action="store_true", help="append a section to --out")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--json-out", default=None, help="write the rows as JSON here (used by --compare)")
    return p.parse_args(argv)


def measure(args, label):
    """Rows for this process's package."""
    runtime.ensure_init()
    warnings.simplefilter("ignore")  # mesh/nesting warnings of the label meshes must not flood the output
    t0 = time.perf_counter()
    bones, src = load_bones(args.data, args.faces)
    load_s = time.perf_counter() - t0
    routes = [r.strip() for r in args.routes.split(",") if r.strip()]
    has_taichi = True
    try:
        __import__("taichi_xray.fit.taichi_fit")
    except ImportError:
        has_taichi = False
    # one iteration per route on a tiny detector first: kernel compilation (or offline-cache load) is not
    # counted in the rows' first iteration or peak memory
    compile_ms = {}
    for route in routes:
        if route == "taichi" and not has_taichi:
            continue
        fn = torch_iteration if route == "torch" else taichi_iteration
        compile_ms[route] = fn(bones, 32, 1, 1, 0)[0]["first_ms"]
    print("# first iteration on a 32x32 detector (compile or offline-cache load): "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in compile_ms.items()), flush=True)
    rows = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        for f in [int(s) for s in args.factors.split(",") if s]:
            for route in routes:
                if route == "taichi" and not has_taichi:
                    continue
                fn = torch_iteration if route == "torch" else taichi_iteration
                t, peak, held, how, shape = fn(bones, n, f, args.repeat, args.warmup)
                row = dict(package=label, route=route, size=n, factor=f, level=f"{shape[0]}x{shape[1]}", how=how,
                           median_ms=t["median_ms"], min_ms=t["min_ms"], first_ms=t["first_ms"], n=t["n"],
                           peak_mb=peak, held_mb=held, load=_common.load1())
                rows.append(row)
                print(f"# [{label}] {route:6s} {n}^2 factor {f} ({row['level']}, {how}): median "
                      f"{row['median_ms']:.1f} ms, min {row['min_ms']:.1f}, first {row['first_ms']:.0f}; peak "
                      f"{peak:.1f} MB; load {row['load']}", flush=True)
    meta = dict(label=label, package=_common.IMPORTS.get("package"), version=_common.IMPORTS.get("version"),
                imports=f"{_common.IMPORTS.get('first')}, OMP_WAIT_POLICY {_common.IMPORTS.get('omp_before')} -> "
                        f"{_common.IMPORTS.get('omp_after')}",
                bones=src, faces=[int(len(F)) for _, F in bones], load_s=load_s,
                has_at_scale=hasattr(XRayRenderer, "at_scale"), has_taichi_route=has_taichi, compile_ms=compile_ms,
                torch_threads=torch.get_num_threads())
    return rows, meta


def main(argv=None):
    args = parse(argv)
    if args.compare and args.package_root:
        raise SystemExit("--compare runs this checkout's package in-process: do not combine it with --package-root")
    if args.append and args.force:
        raise SystemExit("--append and --force exclude each other")
    _common.check_out(args.out, append=args.append, force=args.force)  # fail before the long run
    runtime.ensure_init()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    info = _common.machine_info()
    print("# machine", json.dumps(info, indent=1), flush=True)
    if _common.quiet_warning(info):
        print(f"# WARNING: {_common.quiet_warning(info)}", flush=True)
    all_rows, metas = [], []
    if args.compare:
        old = os.path.abspath(args.compare)
        with tempfile.TemporaryDirectory() as tmp:
            js = os.path.join(tmp, "old.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--package-root", old, "--label", args.old_label,
                   "--json-out", js, "--data", args.data, "--faces", str(args.faces), "--sizes", args.sizes,
                   "--factors", args.factors, "--routes", args.routes, "--repeat", str(args.repeat),
                   "--warmup", str(args.warmup), "--torch-threads", str(args.torch_threads)]
            print("# running the old package:", " ".join(cmd), flush=True)
            env = dict(os.environ)
            if _common.IMPORTS.get("omp_before") == "(unset)":
                env.pop("OMP_WAIT_POLICY", None)  # set by our import: let the old package's import decide, as here
            r = subprocess.run(cmd, env=env)
            if r.returncode != 0:
                raise SystemExit(f"the old package's run failed (exit status {r.returncode})")
            with open(js) as fh:
                old_res = json.load(fh)
        all_rows += old_res["rows"]
        metas.append(old_res["meta"])
    default = "new" if args.compare else os.path.basename(_common.IMPORTS.get("package_root", "this").rstrip("/"))
    rows, meta = measure(args, args.label or default)
    all_rows += rows
    metas.append(meta)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(dict(rows=rows, meta=meta, info=info), fh)
    text = markdown(args, info, all_rows, metas)
    print(text)
    if args.out:
        _common.write_out(args.out, text, append=args.append)
        print(f"# wrote {args.out}")


def markdown(args, info, rows, metas) -> str:
    L = ["# Registration iteration: two-view pelvis, render + NGC + backward + Adam step", "",
         f"Generated by `benchmarks/bench_registration.py` (command: `{_common.command_line(__file__)}`).", ""]
    L += _common.machine_markdown(info)
    L.append("Packages (the machine table's `taichi_xray` line is the in-process one):\n")
    for m in metas:
        L.append(f"* `{m['label']}`: taichi_xray {m['version']} from {m['package']}; bones: {m['bones']}, faces "
                 f"{m['faces']} (loaded in {m['load_s']:.1f} s); XRayRenderer.at_scale: "
                 f"{'yes' if m['has_at_scale'] else 'no'}; Taichi route: {'yes' if m['has_taichi_route'] else 'no'}; "
                 f"import order {m.get('imports', '?')}; torch threads {m['torch_threads']}; first iteration on a 32x32 detector (compile or offline-cache "
                 "load): " + ", ".join(f"{k} {v:.0f} ms" for k, v in m.get("compile_ms", {}).items()) + ".")
    L.append("")
    L.append("Two views (RAO 45, LAO 45; SID 800 mm, SDD 1200 mm, 480 mm detector), 80 kVp tungsten, CsI 0.6 mm, "
             "cortical bone, line integral. One iteration = pose the template (torch), render both views, "
             "`ngc_loss` with a mask, backward, Adam step (`torch` route), or `TaichiPoseLoss` (one `ti.ad.Tape`) + "
             "its Adam (`taichi` route). `factor` 2 = the coarse level (detector binned 2 x 2). Times in ms: median "
             f"and min over n iterations after {args.warmup} warm-up iterations; `first` = the first iteration "
             "(nesting check, allocation, binding). `peak MB` = peak memory above a baseline taken before the "
             "renderer was created; `held MB` = bytes the renderer's pipeline holds in torch tensors (`-` for a "
             "release without a Pipeline). `load` = 1-min load average after the row.\n")
    hdr = ["package", "route", "size:", "factor:", "rendered:", "median ms:", "min ms:", "first ms:", "n:", "peak MB:",
           "held MB:", "load:", "level renderer"]
    L += _common.md_table(hdr, [[r["package"], r["route"], f"{r['size']}²", r["factor"], r["level"],
                                 f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['first_ms']:.0f}", r["n"],
                                 _common.fmt(r["peak_mb"], 1), _common.fmt(r["held_mb"], 1), r["load"], r["how"]]
                                for r in rows])
    labels = list(dict.fromkeys(r["package"] for r in rows))
    if len(labels) == 2:
        a, b = labels
        L += ["", f"Speed-up `{a}` median / `{b}` median (same route, size and factor; the `taichi` route of `{b}` "
              f"against the `torch` route of `{a}` where `{a}` has no Taichi route):", ""]
        body = []
        for r in [r for r in rows if r["package"] == b]:
            ref = [q for q in rows if q["package"] == a and q["size"] == r["size"] and q["factor"] == r["factor"]
                   and q["route"] == r["route"]]
            ref = ref or [q for q in rows if q["package"] == a and q["size"] == r["size"] and q["factor"] == r["factor"]
                          and q["route"] == "torch"]
            if ref:
                body.append([f"{r['size']}²", r["factor"], f"{ref[0]['route']} -> {r['route']}",
                             f"{ref[0]['median_ms']:.1f}", f"{r['median_ms']:.1f}",
                             f"{ref[0]['median_ms'] / r['median_ms']:.2f}"])
        L += _common.md_table(["size:", "factor:", "route", f"{a} ms:", f"{b} ms:", "speed-up:"], body)
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
