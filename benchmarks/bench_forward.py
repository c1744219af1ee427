#!/usr/bin/env python
"""Forward-pass benchmark of the taichi_xray rasterizer against gVirtualXRay (gvxr).

Scene (the peer's anchor): a water sphere of radius 100 mm (an icosphere, 1280 ... 1.3M
faces) centred at the origin, a point source 1 m from its centre (sid = 1000 mm), a flat
detector 1.5 m from the source (sdd = 1500 mm), 400 mm wide, square pixels (pixel
spacing = 400 mm / resolution). Monochromatic 60 keV beam for gvxr.

For every (faces, resolution) cell it measures three taichi_xray modes:

* ``paths``: ``tx.path_length(mesh, cam)``, the path-length image as a new numpy array, as
  gvxr's ``computeXRayImage()`` returns one (the one-line call of a script; its rasterizer is
  kept with the Mesh after the first call, whose time is the ``first`` column: packing the
  mesh, building a Rasterizer, allocating its buffers and binding its launches);
* ``reuse``: a persistent :class:`taichi_xray.rasterize.Rasterizer` built once for the
  cell, timing ``rz.forward(V, keep_slots=False)`` (pooled buffers, launches bound once:
  what the Pipeline, the viewer and the optimisation loops do);
* ``slots``: the same with ``keep_slots=True`` (the K-slot buffers the backward pass and
  the nesting check need);

and gvxr ``computeXRayImage()`` (converted to a numpy array). Per cell: median and min
time over ``--repeat`` calls (after the first call, reported separately, and ``--warmup``
calls; the timed calls of gvxr and the three modes interleaved round-robin, see
``_common.timed_interleaved``), gvxr/tx for every mode (the issue's target: >= 10x in every cell of the default
grid, same run), the bytes the rasterizer holds (pooled buffers + faces/tables), the peak
memory of the cell above a baseline taken before its rasterizer was created (see
``_common.PeakMemory``), K, and the 1-min load average. A correctness table compares
taichi_xray's path lengths with gvxr's (``L = -ln(I/I0)/mu``) and with the exact chord of
the ideal sphere on the central region, and checks that the three modes agree.

``--profile`` adds, for ``--profile-cells``, where one call's time goes: launch lookup /
binding, launch + kernel (synchronised), and the rest (Python glue and torch ops: buffer
clears, counters, host copy), by wrapping the rasterizer's launch cache; plus a cProfile of
a few calls.

Usage::

    python benchmarks/bench_forward.py --out benchmarks/results/NAME.md   # default grid (~5-10 min on 2 cores)
    python benchmarks/bench_forward.py --faces 1280 --res 64 --repeat 2 --no-gvxr   # smoke test
    python benchmarks/bench_forward.py --big                             # adds 2048^2 x 1.3M faces
    python benchmarks/bench_forward.py --profile --profile-cells 327680x512

Backend: ``TAICHI_XRAY_ARCH`` (cpu, cuda, ...; default auto) as for the package.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

_common.bootstrap()  # taichi_xray before torch

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import taichi_xray as tx  # noqa: E402
from taichi_xray import primitives, runtime  # noqa: E402
from taichi_xray.kernels import launch as klaunch  # noqa: E402
from taichi_xray.rasterize import Rasterizer, prepare_mesh  # noqa: E402

txr = sys.modules["taichi_xray.rasterize"]

RADIUS = 100.0  # mm
SID = 1000.0  # mm, source - sphere centre
SDD = 1500.0  # mm, source - detector
DET_WIDTH = 400.0  # mm
ENERGY_KEV = 60.0
LEVELS = {20 * 4 ** s: s for s in range(0, 10)}
DEFAULT_FACES = "1280,20480,81920,327680,1310720"
DEFAULT_RES = "256,512,1024,2048"
MODES = ("paths", "reuse", "slots")


# ------------------------------------------------------------------ scene
def icosphere(radius: float, level: int):
    """Icosphere (vertices (N, 3) float64 mm, faces (20 * 4**level, 3) int64), vectorised subdivision.

    Same surface as :func:`taichi_xray.primitives.icosphere` (which loops in Python and is
    slow at level 8); vertex numbering differs.
    """
    V, F = primitives.icosphere(1.0, 0)
    for _ in range(level):
        e = F[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 3, 2)
        key = np.sort(e, axis=2).reshape(-1, 2)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        inv = inv.reshape(-1, 3) + len(V)
        mid = V[uniq[:, 0]] + V[uniq[:, 1]]
        V = np.vstack([V, mid / np.linalg.norm(mid, axis=1, keepdims=True)])
        a, b, c = F[:, 0], F[:, 1], F[:, 2]
        ab, bc, ca = inv[:, 0], inv[:, 1], inv[:, 2]
        F = np.concatenate([np.stack(t, axis=1) for t in
                            ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    V = V * radius
    if primitives.mesh_volume(V, F) < 0:
        F = F[:, ::-1].copy()
    return V, F


def camera(res: int) -> tx.Camera:
    """Source at (0, SID, 0), beam along -y, detector centre at (0, SID - SDD, 0).

    ``radiological=False`` so that the columns run along -x like gvxr's detector right
    vector (the sphere is symmetric anyway).
    """
    return tx.Camera.c_arm(sid=SID, sdd=SDD, width=res, height=res, pixel_spacing=DET_WIDTH / res,
                           radiological=False)


def analytic_chord(res: int):
    """Exact chord (H, W) of the pixel rays through the sphere, and the central-region mask."""
    cam = camera(res)
    d = cam.pixel_rays(normalize=True)  # (H, W, 3)
    s = cam.source
    b = d @ s
    disc = b * b - (s @ s - RADIUS ** 2)
    chord = 2.0 * np.sqrt(np.maximum(disc, 0.0))
    impact = np.sqrt(np.maximum(s @ s - b * b, 0.0))
    return chord, impact < 0.9 * RADIUS


def make_rasterizer(mesh: tx.Mesh, cam: tx.Camera):
    """A Rasterizer of one mesh (one channel = its path length) and its vertices (1, N, 3) float32,
    built as :func:`taichi_xray.rasterize` builds its own."""
    V, F, closed = prepare_mesh(mesh, mesh.name or "sphere")
    M = len(F)
    rz = Rasterizer(F, np.zeros(M, np.int32), np.zeros((M, 1), np.int32), np.ones((M, 1)), 1, [cam],
                    open_objects=() if closed else (0,), names=[mesh.name or "sphere"], dtype=torch.float32)
    Vt = torch.tensor(np.asarray(V)[None], dtype=torch.float32, device=rz.device).contiguous()
    return rz, Vt


# ------------------------------------------------------------------ gvxr
class Gvxr:
    """Thin wrapper around gvxr's headless (EGL) renderer."""

    def __init__(self):
        from gvxrPython3 import gvxr  # noqa: WPS433

        self.g = gvxr
        self.log = os.path.join(tempfile.gettempdir(), f"gvxr-bench-{os.getpid()}.log")
        gvxr.useLogFile(self.log)  # gvxr logs every call; keep stdout readable
        gvxr.createOpenGLContext()
        gvxr.setSourcePosition(0.0, SID, 0.0, "mm")
        gvxr.usePointSource()
        gvxr.setMonoChromatic(ENERGY_KEV, "keV", 1000)
        gvxr.setDetectorPosition(0.0, SID - SDD, 0.0, "mm")
        gvxr.setDetectorUpVector(0.0, 0.0, 1.0)
        self.renderer = gvxr.getOpenGlRenderer() if hasattr(gvxr, "getOpenGlRenderer") else "?"
        self.gl_version = gvxr.getOpenGlVersion() if hasattr(gvxr, "getOpenGlVersion") else "?"

    def set_mesh(self, V, F):
        g = self.g
        g.removePolygonMeshesFromXRayRenderer()
        g.removePolygonMeshesFromSceneGraph()
        label = f"sphere{len(F)}"
        g.makeTriangularMesh(label, V.astype(np.float32).ravel().tolist(), F.astype(np.int32).ravel().tolist(), "mm")
        g.setCompound(label, "H2O")
        g.setDensity(label, 1.0, "g/cm3")
        g.addPolygonMeshAsInnerSurface(label)
        self.mu_per_mm = g.getLinearAttenuationCoefficient(label, ENERGY_KEV, "keV") / 10.0

    def set_res(self, res):
        self.g.setDetectorNumberOfPixels(res, res)
        self.g.setDetectorPixelSize(DET_WIDTH / res, DET_WIDTH / res, "mm")

    def image(self):
        return np.asarray(self.g.computeXRayImage(), dtype=np.float32)

    def path_length(self, img):
        white = np.asarray(self.g.getWhiteImage(), dtype=np.float64)
        with np.errstate(divide="ignore"):
            return -np.log(img.astype(np.float64) / white) / self.mu_per_mm


def make_gvxr(enabled):
    if not enabled:
        return None, "disabled (--no-gvxr)"
    try:
        return Gvxr(), None
    except Exception as exc:  # ImportError (missing libxcb-*/libEGL, gvxr not installed), or no EGL context
        return None, f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ profile
class _TimedLaunches(klaunch.LaunchCache):
    """A LaunchCache that records, per call, the lookup/binding time and the launch + kernel time."""

    record = None  # defaultdict(list), set while profiling

    def __call__(self, name, kernel, *args, grad: bool = False, **scalars):
        rec = _TimedLaunches.record
        t0 = time.perf_counter()
        if not klaunch.supported():
            kernel.grad(*args) if grad else kernel(*args)
            _common.sync()
            if rec is not None:
                rec["launch + kernel (plain Taichi call)"].append(time.perf_counter() - t0)
            return
        b = self._c.get(name)
        if b is None or not b.matches(*args):
            b = klaunch.BoundLaunch(kernel, *args, grad=grad)
            self._c[name] = b
            what = "bind a launch (compile lookup, launch context)"
        else:
            what = "look up the bound launch (argument match)"
        t1 = time.perf_counter()
        b.launch()
        _common.sync()
        t2 = time.perf_counter()
        if rec is not None:
            rec[what].append(t1 - t0)
            rec[f"launch + kernel '{name}' (to sync)"].append(t2 - t1)


class _TimedRasterizer(Rasterizer):
    """A Rasterizer whose construction is timed (``rasterize()`` builds one per call)."""

    def __init__(self, *a, **k):
        t0 = time.perf_counter()
        super().__init__(*a, **k)
        if _TimedLaunches.record is not None:
            _TimedLaunches.record["construct a Rasterizer (faces, tables, cameras to tensors)"].append(
                time.perf_counter() - t0)


def kept_raster(mesh, cam):
    """The Raster that path_length() keeps with the Mesh for this camera size (float32), or None."""
    for _, pk in mesh.__dict__.get("_tx_prepared", {}).get("packed", {}).values():
        r = pk.kept.get((cam.height, cam.width, torch.float32))
        if r is not None:
            return r
    return None


def profile_cell(mesh, cam, mode, repeat):
    """{step: median ms per call} for one mode, measured with the launch cache wrapped."""
    orig = txr.LaunchCache, txr.Rasterizer
    txr.LaunchCache = _TimedLaunches  # Rasterizers built from now on time their launches
    txr.Rasterizer = _TimedRasterizer  # and rasterize() times the construction of its Rasterizer
    try:
        if mode == "paths":
            def call():
                return tx.path_length(mesh, cam)
        else:
            rz, V = make_rasterizer(mesh, cam)
            keep = mode == "slots"

            def call():
                return rz.forward(V, keep_slots=keep)
        for _ in range(2):
            call()
        _common.sync()
        totals, per_call = [], []
        for _ in range(max(repeat, 3)):
            rec = defaultdict(list)
            _TimedLaunches.record = rec
            t0 = time.perf_counter()
            call()
            _common.sync()
            totals.append(time.perf_counter() - t0)
            _TimedLaunches.record = None
            per_call.append({k: sum(v) for k, v in rec.items()})
    finally:
        txr.LaunchCache, txr.Rasterizer = orig
        _TimedLaunches.record = None
    keys = sorted({k for d in per_call for k in d})
    out = {"TOTAL per call": 1e3 * statistics.median(totals)}
    inside = [sum(d.values()) for d in per_call]
    for k in keys:
        out[k] = 1e3 * statistics.median([d.get(k, 0.0) for d in per_call])
    out["Python glue + torch ops (TOTAL - the steps above)"] = 1e3 * statistics.median(
        [t - s for t, s in zip(totals, inside)])
    return out


def cprofile_top(fn, n_calls=5, top=16):
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n_calls):
        fn()
        _common.sync()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faces", default=DEFAULT_FACES, help="comma-separated face counts (20*4**level)")
    p.add_argument("--res", default=DEFAULT_RES, help="comma-separated square resolutions")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per cell (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=4.0,
                   help="stop a cell's repeats after this many seconds (at least 3 repeats)")
    p.add_argument("--gvxr", dest="gvxr", action="store_true", default=True)
    p.add_argument("--no-gvxr", dest="gvxr", action="store_false")
    p.add_argument("--modes", default=",".join(MODES), help="any of paths, reuse, slots (see the module doc)")
    p.add_argument("--big", action="store_true", help="also run res >= 2048 with faces >= 1.3M (skipped by default)")
    p.add_argument("--profile", action="store_true", help="step timings of one call + cProfile on --profile-cells")
    p.add_argument("--profile-cells", default="327680x512,1310720x1024,20480x256")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads(N) before anything runs")
    p.add_argument("--out", default=None, help="markdown results file")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--name", default=None, help="run name shown in the results file")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    faces_list = [int(x) for x in args.faces.split(",") if x]
    res_list = [int(x) for x in args.res.split(",") if x]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for f in faces_list:
        if f not in LEVELS:
            raise SystemExit(f"--faces: {f} is not an icosphere face count 20*4**level ({sorted(LEVELS)})")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: unknown mode {m!r} (choose from {', '.join(MODES)})")
    _common.check_out(args.out, force=args.force)  # fail before the long run, not after

    warnings.simplefilter("ignore", tx.MeshWarning)
    t0 = time.perf_counter()
    a = runtime.ensure_init()
    init_s = time.perf_counter() - t0
    gv, gv_err = make_gvxr(args.gvxr)
    extra = {}
    try:
        import importlib.metadata as md
        extra["gvxr"] = md.version("gvxr")
    except Exception:
        extra["gvxr"] = "not installed"
    extra["gvxr OpenGL"] = f"{gv.renderer} / {gv.gl_version}" if gv is not None else f"not used: {gv_err}"
    extra["bound launches (taichi_xray.kernels.launch.supported())"] = str(klaunch.supported())
    info = _common.machine_info(extra)
    print("# machine", json.dumps(info, indent=1), flush=True)
    warn = _common.quiet_warning(info)
    if warn:
        print(f"# WARNING: {warn}", flush=True)

    # first call of each mode on a tiny mesh: kernel compilation (or offline-cache load)
    tiny = tx.Mesh(*icosphere(RADIUS, 1), name="tiny")
    compile_ms = {}
    for m in modes:
        _common.sync()
        t0 = time.perf_counter()
        if m == "paths":
            tx.path_length(tiny, camera(64))
        else:
            rz, V = make_rasterizer(tiny, camera(64))
            rz.forward(V, keep_slots=(m == "slots"))
        _common.sync()
        compile_ms[m] = 1e3 * (time.perf_counter() - t0)
    print(f"# taichi init {init_s * 1e3:.0f} ms; first call (compile, or offline-cache load) "
          + ", ".join(f"{m}: {v:.0f} ms" for m, v in compile_ms.items()), flush=True)

    rows, checks, mesh_info = [], [], []
    head = ("faces", "res", "mode", "tx ms", "min", "first", "n", "held MB", "peak MB", "K", "gvxr ms", "gvxr/tx",
            "load")
    print("| " + " | ".join(head) + " |", flush=True)
    t_run = time.perf_counter()
    for nf in faces_list:
        t0 = time.perf_counter()
        V, F = icosphere(RADIUS, LEVELS[nf])
        build_s = time.perf_counter() - t0
        mesh = tx.Mesh(V, F, name=f"ico{LEVELS[nf]}")
        t0 = time.perf_counter()
        prepare_mesh(mesh, mesh.name)  # Mesh.check + orientation, cached on the Mesh (as every call would)
        check_s = time.perf_counter() - t0
        mesh_info.append((nf, len(V), build_s, check_s))
        print(f"# mesh {nf} faces: build {build_s:.2f} s, check {check_s:.2f} s (cached on the Mesh)", flush=True)
        if gv is not None:
            try:
                gv.set_mesh(V, F)
            except Exception as exc:
                gv_err = f"set_mesh failed: {type(exc).__name__}: {exc}"
                gv = None
        for res in res_list:
            if not args.big and res >= 2048 and nf >= 1_310_720:
                print(f"# skip {nf} x {res}^2 (use --big)", flush=True)
                continue
            cam = camera(res)
            chord, central = analytic_chord(res)
            g = None
            fns, setup = {}, {}
            if gv is not None:  # first call and warm-ups now, timed calls interleaved below
                gv.set_res(res)
                g = _common.timed(gv.image, 0, args.warmup)
                Lg = gv.path_length(g["out"])
                fns["gvxr"] = gv.image
            images = {}
            for m in modes:
                with _common.PeakMemory() as pm:  # baseline before the cell's rasterizer exists
                    if m == "paths":
                        def call():
                            return tx.path_length(mesh, cam)
                        rz = None
                    else:
                        rz, Vt = make_rasterizer(mesh, cam)
                        keep = m == "slots"

                        def call(rz=rz, Vt=Vt, keep=keep):
                            return rz.forward(Vt, keep_slots=keep)
                    t = _common.timed(call, 0, args.warmup)  # first call and warm-ups
                out = t.pop("out")
                if m == "paths":
                    kept = kept_raster(mesh, cam)
                    held = _common.rasterizer_bytes(kept._rasterizer) if kept is not None else 0
                    K = 0
                    images[m] = np.asarray(out, dtype=np.float64)
                else:
                    held = _common.rasterizer_bytes(rz)
                    K = out.K
                    images[m] = out.L[0, 0].detach().cpu().numpy().astype(np.float64)
                setup[m] = dict(first_ms=t["first_ms"], held_mb=held / 2**20, peak_mb=pm.mb, mem=pm.method, K=K)
                fns[m] = call
                del out
            timed = _common.timed_interleaved(fns, args.repeat, args.max_seconds)
            if g is not None:
                g.update(timed.pop("gvxr"))
            for m in modes:
                t = timed[m]
                row = dict(faces=nf, res=res, mode=m, median_ms=t["median_ms"], min_ms=t["min_ms"], n=t["n"],
                           times_ms=t["times_ms"], **setup[m], load=_common.load1())
                if g is not None:
                    row.update(gvxr_ms=g["median_ms"], gvxr_min_ms=g["min_ms"], gvxr_first_ms=g["first_ms"],
                               ratio=g["median_ms"] / t["median_ms"])
                rows.append(row)
                print("| " + " | ".join([
                    str(nf), str(res), m, f"{t['median_ms']:.2f}", f"{t['min_ms']:.2f}", f"{row['first_ms']:.1f}",
                    str(t["n"]), f"{row['held_mb']:.1f}", f"{row['peak_mb']:.1f}", str(row["K"]),
                    _common.fmt(row.get("gvxr_ms")), _common.fmt(row.get("ratio")), row["load"]]) + " |", flush=True)
            del fns
            if not images:
                continue
            Lt = images.get("reuse", images.get("paths", next(iter(images.values()))))
            c = dict(faces=nf, res=res, central_px=int(central.sum()))
            c["modes_max_diff"] = max((float(np.abs(v - Lt).max()) for v in images.values()), default=0.0)
            c["tx_vs_analytic_max"] = float(np.abs(Lt - chord)[central].max())
            c["tx_vs_analytic_mean"] = float(np.abs(Lt - chord)[central].mean())
            outside = chord == 0
            c["outside_max_tx"] = float(np.abs(Lt[outside]).max()) if outside.any() else 0.0
            if g is not None:
                best = None  # gvxr's image may be flipped relative to ours: take the orientation that matches best
                for name, Lgo in (("as is", Lg), ("flipud", Lg[::-1]), ("fliplr", Lg[:, ::-1]),
                                  ("rot180", Lg[::-1, ::-1])):
                    d = np.abs(Lt - Lgo)[central]
                    if best is None or d.mean() < best[1]:
                        best = (name, d.mean(), d.max(), float(np.abs(Lgo - chord)[central].max()),
                                float(np.abs(Lgo[outside]).max()) if outside.any() else 0.0)
                c.update(gvxr_orientation=best[0], tx_vs_gvxr_mean=best[1], tx_vs_gvxr_max=best[2],
                         gvxr_vs_analytic_max=best[3], outside_max_gvxr=best[4])
            checks.append(c)
    run_s = time.perf_counter() - t_run

    prof, prof_text = {}, {}
    if args.profile:
        for cell in [c for c in args.profile_cells.split(",") if c]:
            nf, res = (int(x) for x in cell.split("x"))
            if nf not in LEVELS:
                raise SystemExit(f"--profile-cells: {nf} is not an icosphere face count")
            mesh = tx.Mesh(*icosphere(RADIUS, LEVELS[nf]), name=f"ico{LEVELS[nf]}")
            prepare_mesh(mesh, mesh.name)
            cam = camera(res)
            for m in modes:
                prof[(nf, res, m)] = profile_cell(mesh, cam, m, max(args.repeat, 5))
                print(f"# profile {nf} faces {res}^2 {m}:", flush=True)
                for k, v in prof[(nf, res, m)].items():
                    print(f"#   {k:60s} {v:9.3f} ms", flush=True)
            rz, Vt = make_rasterizer(mesh, cam)
            prof_text[(nf, res)] = cprofile_top(lambda: rz.forward(Vt, keep_slots=False))
            print(prof_text[(nf, res)], flush=True)

    print_checks(checks)
    print(f"# total run {run_s:.0f} s; load average at end {_common.loadavg()}", flush=True)
    if args.out:
        _common.write_out(args.out, markdown(args, info, init_s, compile_ms, mesh_info, rows, checks, prof, prof_text,
                                             run_s, gv_err))
        print(f"# wrote {args.out}")
    return rows, checks


def print_checks(checks):
    print("# correctness (central region: rays within 0.9 R of the centre), |difference| in mm")
    for c in checks:
        s = (f"#   {c['faces']:>8} faces {c['res']:>5}^2: modes agree to {c['modes_max_diff']:.2g}; tx vs analytic "
             f"max {c['tx_vs_analytic_max']:.4f} mean {c['tx_vs_analytic_mean']:.4f}")
        if "tx_vs_gvxr_max" in c:
            s += (f"; tx vs gvxr ({c['gvxr_orientation']}) max {c['tx_vs_gvxr_max']:.4f} mean "
                  f"{c['tx_vs_gvxr_mean']:.4f}; gvxr vs analytic max {c['gvxr_vs_analytic_max']:.4f}")
        print(s)


def markdown(args, info, init_s, compile_ms, mesh_info, rows, checks, prof, prof_text, run_s, gv_err) -> str:
    name = args.name or os.path.splitext(os.path.basename(args.out))[0]
    L = [f"# Forward benchmark: {name}", "",
         f"Generated by `benchmarks/bench_forward.py` (command: `{_common.command_line(__file__)}`).", ""]
    L += _common.machine_markdown(info)
    L.append(f"Scene: water icosphere, radius {RADIUS:g} mm at the origin; point source {SID:g} mm from its centre, "
             f"detector {SDD:g} mm from the source, {DET_WIDTH:g} mm wide (pixel = {DET_WIDTH:g} mm / res); gvxr "
             f"monochromatic {ENERGY_KEV:g} keV, H2O 1 g/cm3.\n")
    L.append(f"Taichi init: {init_s * 1e3:.0f} ms. First call on a tiny mesh (kernel compilation, or a load from "
             "Taichi's offline cache when it is warm): " + ", ".join(f"{m} {v:.0f} ms" for m, v in compile_ms.items())
             + ". Meshes (built once per face count; `Mesh.check` and orientation cached on the Mesh, as in any "
             "program that renders a mesh more than once): "
             + "; ".join(f"{nf} faces: build {b:.2f} s, check {c:.2f} s" for nf, _, b, c in mesh_info) + ".\n")
    L.append("Modes: `paths` = `tx.path_length(mesh, cam)`, the path-length image as a new numpy array (as gvxr's "
             "`computeXRayImage()` returns one); its rasterizer is kept with the Mesh after the cell's first call, whose "
             "time (`first`) includes packing the mesh, building a Rasterizer, allocating and binding; `reuse` = "
             "`rz.forward(V, keep_slots=False)` on a Rasterizer built once for the cell (pooled buffers, launches bound "
             "once; the image stays a tensor on the kernels' device); `slots` = the same with `keep_slots=True` "
             "(K-slot buffers for the backward pass).\n")
    L.append(f"Columns: `tx ms` median over n calls after {args.warmup} warm-up calls (gvxr's and the three modes' "
             "timed calls interleaved round-robin, the first of each round rotating); `min` the fastest call; "
             "`first` the first call of the cell (allocation, binding, first touch). `held MB`: bytes the rasterizer "
             "holds in torch tensors (pooled buffers + faces and face tables). `peak MB`: peak memory of the cell "
             "above a baseline taken before its rasterizer was created (CPU: peak RSS after gc + malloc_trim and a "
             "VmHWM reset; CUDA: torch's peak allocation); it includes the first-call allocations. `gvxr/tx` = gvxr "
             "median / this row's median (same run, same scene; target >= 10). `load`: 1-min load average when the "
             "cell finished.\n")
    hdr = ["faces:", "res:", "mode", "tx ms:", "tx min ms:", "tx first ms:", "n:", "held MB:", "peak MB:", "K:",
           "gvxr ms:", "gvxr min ms:", "gvxr/tx:", "load:"]
    body = [[r["faces"], f"{r['res']}²", r["mode"], f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}",
             f"{r['first_ms']:.1f}", r["n"], f"{r['held_mb']:.2f}", f"{r['peak_mb']:.2f}", r["K"],
             _common.fmt(r.get("gvxr_ms")), _common.fmt(r.get("gvxr_min_ms")), _common.fmt(r.get("ratio")),
             r["load"]] for r in rows]
    L += _common.md_table(hdr, body)
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    if ratios:
        worst = min(rows, key=lambda r: r.get("ratio", float("inf")))
        L.append(f"\nSmallest gvxr/tx: {worst['ratio']:.2f} ({worst['faces']} faces, {worst['res']}², "
                 f"{worst['mode']}); cells below 10: {sum(x < 10 for x in ratios)} of {len(ratios)}.")
    if gv_err:
        L.append(f"\ngvxr: {gv_err}")
    L += ["", "## Correctness", "",
          "Central region = pixels whose ray passes within 0.9 R of the sphere's centre. Differences in mm. `modes` = "
          "largest difference between the modes' images (all pixels); `analytic` = exact chord of the ideal sphere "
          "(the icosphere is inscribed, so both renderers are slightly below it; the polygonal error shrinks with the "
          "face count); gvxr's path length is `-ln(I/I0)/mu` from `computeXRayImage()` and `getWhiteImage()`; "
          "`outside` = largest value outside the sphere's silhouette.", ""]
    hdr = ["faces:", "res:", "central px:", "modes:", "tx-analytic max:", "tx-analytic mean:", "tx-gvxr max:",
           "tx-gvxr mean:", "gvxr-analytic max:", "gvxr orientation", "outside tx / gvxr"]
    body = []
    for c in checks:
        gcol = ([f"{c['tx_vs_gvxr_max']:.4f}", f"{c['tx_vs_gvxr_mean']:.5f}", f"{c['gvxr_vs_analytic_max']:.4f}",
                 c["gvxr_orientation"], f"{c['outside_max_tx']:.3g} / {c['outside_max_gvxr']:.3g}"]
                if "tx_vs_gvxr_max" in c else ["-", "-", "-", "-", f"{c['outside_max_tx']:.3g} / -"])
        body.append([c["faces"], f"{c['res']}²", c["central_px"], f"{c['modes_max_diff']:.2g}",
                     f"{c['tx_vs_analytic_max']:.4f}", f"{c['tx_vs_analytic_mean']:.5f}"] + gcol)
    L += _common.md_table(hdr, body)
    if prof:
        L += ["", "## Where a call's time goes (median ms per call)", "",
              "Measured by wrapping the rasterizer's launch cache: `look up`/`bind` = finding (or creating) the bound "
              "launch for the call's arguments; `launch + kernel` = `BoundLaunch.launch()` up to `ti.sync()` (on the "
              "CPU backend the kernel runs inside the launch); the rest is Python glue and torch ops (buffer clears, "
              "reference point, counters and their host copy, flags); for `paths` also the mesh packing lookup, "
              "the Raster result and the copy into a new numpy array. Each step is a median over the calls, so the steps need not add up to TOTAL exactly; the "
              "wrapped timers sync after each launch, so TOTAL can exceed the unwrapped median above.", ""]
        keys = list(prof)
        names = []
        for d in prof.values():
            names += [n for n in d if n not in names]
        hdr = ["step"] + [f"{k[0]} f, {k[1]}², {k[2]}:" for k in keys]
        L += _common.md_table(hdr, [[n] + [_common.fmt(prof[k].get(n), 3) for k in keys] for n in names])
        for k, txt in prof_text.items():
            L.append(f"\ncProfile, 5 calls of `rz.forward(V, keep_slots=False)` (reuse), {k[0]} faces, {k[1]}²:\n")
            L.append("```\n" + "\n".join(txt.strip().splitlines()[:40]) + "\n```")
    L.append(f"\nTotal benchmark loop: {run_s:.0f} s.\n")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
