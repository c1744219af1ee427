#!/usr/bin/env python
"""Forward-pass benchmark of taichi_xray against gVirtualXRay (gvxr).

Scene (the peer's anchor): a water sphere of radius 100 mm (an icosphere,
1280 ... 1.3M faces) centred at the origin, a point source 1 m from its centre
(sid = 1000 mm), a flat detector 1.5 m from the source (sdd = 1500 mm), 400 mm
wide, square pixels (pixel spacing = 400 mm / resolution). Monochromatic
60 keV beam for gvxr.

For every (faces, resolution) cell it measures

* taichi_xray ``tx.rasterize`` in three modes: ``paths`` (``keep_slots=False``:
  path lengths only, new buffers each call), ``reuse`` (the same into the previous
  result's buffers, ``out=``: device-resident buffers, no allocation) and ``slots``
  (``keep_slots=True``: the K-slot buffers the
  backward pass needs). Time = median over ``--repeat`` calls after a first
  call (reported separately: it includes the Taichi kernel compilation for the
  first cell of the process and the mesh check/first-touch allocation for every
  new mesh) and ``--warmup`` calls. GPU work is synchronised (``ti.sync()`` and
  ``torch.cuda.synchronize()``) before a timer stops.
* peak memory: the process peak-RSS increase over the calls (``VmHWM`` after
  resetting it through ``/proc/self/clear_refs``; on CUDA the torch peak
  allocation), and the bytes of the returned Raster buffers.
* gvxr ``computeXRayImage()`` converted to a numpy array (host), median of
  repeated calls, and the ratio gvxr / taichi_xray (paths mode).
* correctness: taichi_xray's path length against gvxr's, obtained by
  inverting Beer-Lambert on gvxr's image with the material's mu
  (``L = -ln(I / I0) / mu``), on the central region (pixels whose ray passes
  within 90 % of the sphere's silhouette radius), and both against the
  analytic chord length of the sphere.

Usage::

    python benchmarks/bench_forward.py                       # default grid (< ~10 min on 2 cores)
    python benchmarks/bench_forward.py --faces 1280,20480 --res 256,512 --repeat 10 --no-gvxr
    python benchmarks/bench_forward.py --big --out benchmarks/results/NAME.md
    python benchmarks/bench_forward.py --profile             # step timings of rasterize + cProfile

Backend: ``TAICHI_XRAY_ARCH`` (cpu, cuda, ...; default auto) as for the package.
"""
import argparse
import cProfile
import datetime
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

import taichi as ti
import taichi_xray as tx
from taichi_xray import primitives, runtime
import importlib
txr = importlib.import_module("taichi_xray.rasterize")
from taichi_xray.kernels import raster as kr

RADIUS = 100.0  # mm
SID = 1000.0  # mm, source - sphere centre
SDD = 1500.0  # mm, source - detector
DET_WIDTH = 400.0  # mm
ENERGY_KEV = 60.0
LEVELS = {20 * 4 ** s: s for s in range(0, 10)}
DEFAULT_FACES = "1280,20480,81920,327680,1310720"
DEFAULT_RES = "256,512,1024,2048"


# ------------------------------------------------------------------ scene
def icosphere(radius: float, level: int):
    """Icosphere (vertices (N, 3) float64 mm, faces (20 * 4**level, 3) int64), vectorised subdivision.

    Same surface as :func:`taichi_xray.primitives.icosphere` (which loops in Python
    and takes tens of seconds at level 8); vertex numbering differs.
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

    ``radiological=False`` so that the columns run along -x like gvxr's
    detector right vector (the sphere is symmetric anyway).
    """
    return tx.Camera.c_arm(sid=SID, sdd=SDD, width=res, height=res, pixel_spacing=DET_WIDTH / res,
                           radiological=False)


def analytic_chord(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact chord (H, W) of the pixel rays through the sphere, and the central-region mask."""
    cam = camera(res)
    d = cam.pixel_rays(normalize=True)  # (H, W, 3)
    s = cam.source
    # |s + t d|^2 = R^2; b = d.s
    b = d @ s
    disc = b * b - (s @ s - RADIUS ** 2)
    chord = 2.0 * np.sqrt(np.maximum(disc, 0.0))
    # impact parameter of each ray relative to the silhouette radius
    impact = np.sqrt(np.maximum(s @ s - b * b, 0.0))
    central = impact < 0.9 * RADIUS
    return chord, central


# ------------------------------------------------------------------ machinery
def arch() -> str:
    return runtime.ensure_init()


def sync():
    ti.sync()
    if torch.cuda.is_available() and runtime.torch_device() == "cuda":
        torch.cuda.synchronize()


def _status():
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


def reset_peak():
    """Reset the process peak RSS (VmHWM) and, on CUDA, torch's peak statistics."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    if runtime.torch_device() == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = _status().get("VmRSS", 0)
    cuda_base = torch.cuda.memory_allocated() if runtime.torch_device() == "cuda" else 0
    return base, cuda_base


def peak_delta(base):
    rss0, cuda0 = base
    st = _status()
    rss = max(st.get("VmHWM", 0) - rss0, 0)
    cuda = (torch.cuda.max_memory_allocated() - cuda0) if runtime.torch_device() == "cuda" else 0
    return rss, cuda


def raster_bytes(r) -> int:
    return sum(int(t.numel() * t.element_size()) for t in (r.L, r.flags, r.count, r.slot_face, r.slot_depth))


def timed(fn, repeat, warmup, max_seconds):
    """(first-call seconds, list of timed seconds, last result). Stops early after max_seconds (>= 3 repeats)."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        out = fn()
    sync()
    times = []
    start = time.perf_counter()
    for i in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > max_seconds:
            break
    return first, times, out


def med_ms(times):
    return 1e3 * statistics.median(times)


# ------------------------------------------------------------------ gvxr
class Gvxr:
    """Thin wrapper around gvxr's headless (EGL) renderer."""

    def __init__(self):
        from gvxrPython3 import gvxr  # noqa: WPS433

        self.g = gvxr
        self.label = None
        self.error = None
        self.log = os.path.join(tempfile.gettempdir(), f"gvxr-bench-{os.getpid()}.log")
        gvxr.useLogFile(self.log)  # gvxr logs every call; keep stdout readable
        t0 = time.perf_counter()
        gvxr.createOpenGLContext()
        self.context_s = time.perf_counter() - t0
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
        self.label = f"sphere{len(F)}"
        g.makeTriangularMesh(self.label, V.astype(np.float32).ravel().tolist(),
                             F.astype(np.int32).ravel().tolist(), "mm")
        g.setCompound(self.label, "H2O")
        g.setDensity(self.label, 1.0, "g/cm3")
        g.addPolygonMeshAsInnerSurface(self.label)
        self.mu_per_mm = g.getLinearAttenuationCoefficient(self.label, ENERGY_KEV, "keV") / 10.0

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
    except Exception as exc:  # ImportError (missing libxcb-*/libEGL), or no EGL/OpenGL context
        return None, f"{type(exc).__name__}: {exc}"


# ------------------------------------------------------------------ profile
def profile_steps(mesh, cam, keep_slots, repeat):
    """Median time (ms) of each step of ``rasterize`` (a replica calling the same private helpers/kernels)."""
    device = runtime.torch_device()
    dtype, real = torch.float32, ti.f32
    steps = {}

    def tick(name, t0):
        sync()
        steps.setdefault(name, []).append(time.perf_counter() - t0)
        return time.perf_counter()

    for _ in range(repeat + 1):
        sync()
        t0 = tstart = time.perf_counter()
        V, F, face_mesh = txr._pack([mesh], dtype, device)[:3]
        t0 = tick("pack meshes (cached tensors of a Mesh)", t0)
        camt, minv, src = txr._camera_tensors(cam, dtype, device)
        proj = torch.empty((len(V), 3), dtype=dtype, device=device)
        t0 = tick("camera tensors (cached) + proj alloc", t0)
        H, W = cam.height, cam.width
        cap = txr._K_HINT.get((H, W, len(F)), 8) if keep_slots else 0
        L = torch.empty((1, H, W), dtype=dtype, device=device)
        balance = torch.empty((1, H, W), dtype=torch.int32, device=device)
        count = torch.empty((H, W), dtype=torch.int32, device=device)
        slot_face = torch.empty((H, W, max(cap, 1)), dtype=torch.int32, device=device)
        slot_depth = torch.empty(slot_face.shape, dtype=dtype, device=device)
        flags = torch.empty((1, H, W), dtype=torch.uint8, device=device)
        status = torch.zeros(kr.ST_UNBALANCED + 1, dtype=torch.int32, device=device)
        t0 = tick("allocate buffers (empty)", t0)
        for t in (L, balance, count, flags):
            t.zero_()
        t0 = tick("zero L/balance/count/flags (torch)", t0)
        kr.rasterize_faces(V, F, face_mesh, camt, proj, src, minv, L, balance, count, slot_face, slot_depth,
                           status, cap, int(keep_slots), real)
        t0 = tick("kernel rasterize_faces (project + raster: one launch)", t0)
        st = torch.cat([status[: kr.ST_MAX_COUNT], count.max().reshape(1).to(torch.int32),
                        (balance != 0).sum(dim=(1, 2)).to(torch.int32)]).cpu().numpy()
        t0 = tick("counters -> host", t0)
        steps.setdefault("TOTAL (replica)", []).append(time.perf_counter() - tstart)
        del st
    # full call for reference
    _, times, _ = timed(lambda: tx.rasterize(mesh, cam, keep_slots=keep_slots), repeat, 1, 30)
    out = {k: med_ms(v[1:]) for k, v in steps.items()}
    out["tx.rasterize (real call)"] = med_ms(times)
    return out


def cprofile_top(mesh, cam, keep_slots, n_calls=5, top=14):
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n_calls):
        tx.rasterize(mesh, cam, keep_slots=keep_slots)
        sync()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    return s.getvalue()


# ------------------------------------------------------------------ machine
def machine_info(gv, gv_err):
    info = {}
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["CPU"] = f"{cpu} ({platform.machine()})"
    info["cores (os.cpu_count)"] = str(os.cpu_count())
    try:
        with open("/proc/meminfo") as fh:
            info["RAM"] = f"{int(fh.readline().split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    osname = platform.platform()
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"') + f" ({platform.release()})"
    except OSError:
        pass
    info["OS"] = osname
    info["Python"] = platform.python_version()
    info["taichi"] = ".".join(map(str, ti.__version__))
    info["torch"] = torch.__version__
    info["numpy"] = np.__version__
    a = arch()
    info["taichi arch"] = a
    if a == "cuda" and torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name(0)
    info["torch intra-op threads"] = str(torch.get_num_threads())
    info["OMP_WAIT_POLICY / OMP_NUM_THREADS"] = (f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')} / "
                                                 f"{os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    info["TAICHI_XRAY_ARCH"] = os.environ.get("TAICHI_XRAY_ARCH", "(unset: auto)")
    try:
        import importlib.metadata as md
        info["gvxr"] = md.version("gvxr")
    except Exception:
        info["gvxr"] = "not installed"
    if gv is not None:
        info["gvxr OpenGL"] = f"{gv.renderer} / {gv.gl_version}"
    else:
        info["gvxr status"] = gv_err
    with open("/proc/loadavg") as fh:
        info["load average at start (1/5/15 min)"] = " ".join(fh.read().split()[:3])
    info["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return info


def loadavg():
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


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
    p.add_argument("--modes", default="paths,reuse,slots",
                   help="paths (keep_slots=False), reuse (paths into the previous result's buffers: out=), "
                        "slots (keep_slots=True)")
    p.add_argument("--big", action="store_true",
                   help="also run the biggest cells (res >= 2048 with faces >= 1.3M; skipped by default)")
    p.add_argument("--profile", action="store_true",
                   help="step timings of rasterize + cProfile on --profile-cells")
    p.add_argument("--profile-cells", default="327680x512,1310720x1024,20480x256")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads(N) before anything runs (default: torch's default). On a loaded "
                        "2-core machine torch's OpenMP pool and Taichi's thread pool fight; 1 avoids that")
    p.add_argument("--out", default=None, help="markdown results file")
    p.add_argument("--name", default=None, help="run name shown in the results file")
    return p.parse_args(argv)


def skipped(faces, res, args):
    return (not args.big) and res >= 2048 and faces >= 1_310_720


def main(argv=None):
    args = parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    faces_list = [int(x) for x in args.faces.split(",") if x]
    res_list = [int(x) for x in args.res.split(",") if x]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for f in faces_list:
        if f not in LEVELS:
            raise ValueError(f"--faces: {f} is not an icosphere face count 20*4**level ({sorted(LEVELS)})")
    for m in modes:
        if m not in ("paths", "reuse", "slots"):
            raise ValueError(f"--modes: unknown mode {m!r} (paths, slots)")

    warnings.simplefilter("ignore", tx.MeshWarning)
    t_init = time.perf_counter()
    a = arch()
    init_s = time.perf_counter() - t_init
    gv, gv_err = make_gvxr(args.gvxr)
    info = machine_info(gv, gv_err)
    print("# machine", json.dumps(info, indent=1), flush=True)

    # compile time: first call of each mode on a tiny mesh
    tiny = tx.Mesh(*icosphere(RADIUS, 1))
    compile_ms = {}
    for m in modes:
        sync()
        t0 = time.perf_counter()
        tx.rasterize(tiny, camera(64), keep_slots=(m == "slots"))
        sync()
        compile_ms[m] = 1e3 * (time.perf_counter() - t0)
    print(f"# taichi init {init_s * 1e3:.0f} ms; first call (compile, or offline-cache load) "
          + ", ".join(f"{m}: {v:.0f} ms" for m, v in compile_ms.items()), flush=True)

    rows, checks = [], []
    header = ("faces", "res", "mode", "tx ms", "tx first ms", "n", "peak RSS MB", "raster MB", "K",
              "gvxr ms", "gvxr/tx")
    print("| " + " | ".join(header) + " |", flush=True)
    t_run = time.perf_counter()
    for nf in faces_list:
        t0 = time.perf_counter()
        V, F = icosphere(RADIUS, LEVELS[nf])
        build_s = time.perf_counter() - t0
        mesh = tx.Mesh(V, F, name=f"ico{LEVELS[nf]}")
        t0 = time.perf_counter()
        mesh.check()
        check_s = time.perf_counter() - t0
        print(f"# mesh {nf} faces: build {build_s:.2f} s, Mesh.check {check_s:.2f} s (cached on the Mesh)",
              flush=True)
        gv_load_s = None
        if gv is not None:
            try:
                t0 = time.perf_counter()
                gv.set_mesh(V, F)
                gv_load_s = time.perf_counter() - t0
            except Exception as exc:
                gv_err = f"set_mesh failed: {exc}"
                gv = None
        for res in res_list:
            if skipped(nf, res, args):
                print(f"# skip {nf} x {res}^2 (use --big)", flush=True)
                continue
            cam = camera(res)
            chord, central = analytic_chord(res)
            tx_paths = None
            gv_ms = None
            if gv is not None:
                gv.set_res(res)
                g_first, g_times, img = timed(gv.image, args.repeat, args.warmup, args.max_seconds)
                gv_ms = med_ms(g_times)
                Lg = gv.path_length(img)
            for m in modes:
                keep = m == "slots"
                holder = {}

                def call(keep=keep, m=m, holder=holder):
                    # "reuse": device-resident buffers, rasterize(..., out=previous result)
                    holder["r"] = tx.rasterize(mesh, cam, keep_slots=keep,
                                               out=holder.get("r") if m == "reuse" else None)
                    return holder["r"]

                base = reset_peak()
                first, times, r = timed(call, args.repeat, args.warmup, args.max_seconds)
                rss, cuda_peak = peak_delta(base)
                ms = med_ms(times)
                row = dict(faces=nf, res=res, mode=m, tx_ms=ms, tx_first_ms=first * 1e3, n=len(times),
                           peak_mb=(cuda_peak if a == "cuda" else rss) / 2**20,
                           raster_mb=raster_bytes(r) / 2**20, K=r.K,
                           tx_min_ms=1e3 * min(times), load=loadavg())
                if m in ("paths", "reuse"):
                    tx_paths = ms
                    Lt = r.L[0].detach().cpu().numpy().astype(np.float64)
                if gv_ms is not None and m in ("paths", "reuse"):
                    row["gvxr_ms"] = gv_ms
                    row["gvxr_first_ms"] = g_first * 1e3
                    row["ratio"] = gv_ms / ms
                rows.append(row)
                print("| " + " | ".join([
                    str(nf), f"{res}", m, f"{ms:.2f}", f"{row['tx_first_ms']:.1f}", str(row["n"]),
                    f"{row['peak_mb']:.1f}", f"{row['raster_mb']:.1f}", str(row["K"]),
                    f"{row['gvxr_ms']:.2f}" if "gvxr_ms" in row else "-",
                    f"{row['ratio']:.2f}" if "ratio" in row else "-"]) + " |", flush=True)
                del r
            if tx_paths is None:
                Lt = tx.rasterize(mesh, cam, keep_slots=False).L[0].cpu().numpy().astype(np.float64)
            c = dict(faces=nf, res=res, central_px=int(central.sum()))
            c["tx_vs_analytic_max"] = float(np.abs(Lt - chord)[central].max())
            c["tx_vs_analytic_mean"] = float(np.abs(Lt - chord)[central].mean())
            if gv_ms is not None:
                # gvxr's image may be flipped relative to ours; take the orientation that matches best
                best = None
                for name, Lgo in (("as is", Lg), ("flipud", Lg[::-1]), ("fliplr", Lg[:, ::-1]),
                                  ("rot180", Lg[::-1, ::-1])):
                    d = np.abs(Lt - Lgo)[central]
                    if best is None or d.mean() < best[1]:
                        best = (name, d.mean(), d.max(), float(np.abs(Lgo - chord)[central].max()))
                c.update(gvxr_orientation=best[0], tx_vs_gvxr_mean=best[1], tx_vs_gvxr_max=best[2],
                         gvxr_vs_analytic_max=best[3])
                # outside the silhouette both must be 0
                outside = chord == 0
                c["outside_max_tx"] = float(np.abs(Lt[outside]).max()) if outside.any() else 0.0
                c["outside_max_gvxr"] = float(np.abs(Lg[outside]).max()) if outside.any() else 0.0
            checks.append(c)
    run_s = time.perf_counter() - t_run

    prof = {}
    prof_text = {}
    if args.profile:
        for cell in args.profile_cells.split(","):
            nf, res = (int(x) for x in cell.split("x"))
            mesh = tx.Mesh(*icosphere(RADIUS, LEVELS[nf]))
            mesh.check()
            cam = camera(res)
            for m in modes:
                keep = m == "slots"
                prof[(nf, res, m)] = profile_steps(mesh, cam, keep, max(args.repeat, 5))
                print(f"# profile {nf} faces {res}^2 {m}:", flush=True)
                for k, v in prof[(nf, res, m)].items():
                    print(f"#   {k:45s} {v:9.3f} ms", flush=True)
            prof_text[(nf, res)] = cprofile_top(mesh, cam, False)
            print(prof_text[(nf, res)], flush=True)

    print_checks(checks)
    print(f"# total run {run_s:.0f} s; load average at end {loadavg()}", flush=True)
    if args.out:
        write_markdown(args, info, init_s, compile_ms, rows, checks, prof, prof_text, run_s, gv_err)
        print(f"# wrote {args.out}")


def print_checks(checks):
    print("# correctness (central region: rays within 0.9 R of the centre), |difference| in mm")
    for c in checks:
        s = (f"#   {c['faces']:>8} faces {c['res']:>5}^2: tx vs analytic max {c['tx_vs_analytic_max']:.4f}"
             f" mean {c['tx_vs_analytic_mean']:.4f}")
        if "tx_vs_gvxr_max" in c:
            s += (f"; tx vs gvxr ({c['gvxr_orientation']}) max {c['tx_vs_gvxr_max']:.4f} mean "
                  f"{c['tx_vs_gvxr_mean']:.4f}; gvxr vs analytic max {c['gvxr_vs_analytic_max']:.4f}")
        print(s)


def write_markdown(args, info, init_s, compile_ms, rows, checks, prof, prof_text, run_s, gv_err):
    L = []
    L.append(f"# Forward benchmark: {args.name or os.path.splitext(os.path.basename(args.out))[0]}\n")
    L.append("Generated by `benchmarks/bench_forward.py` (command: `" + " ".join(
        ["python", "benchmarks/bench_forward.py"] + sys.argv[1:]) + "`).\n")
    L.append("## Machine\n")
    L.append("| | |\n|---|---|")
    for k, v in info.items():
        L.append(f"| {k} | {v} |")
    L.append(f"| load average at end | {loadavg()} |")
    L.append("")
    L.append(f"Scene: water icosphere, radius {RADIUS:g} mm at the origin; point source at {SID:g} mm "
             f"from its centre, detector at {SDD:g} mm from the source, {DET_WIDTH:g} mm wide "
             f"(pixel = {DET_WIDTH:g} mm / res); gvxr monochromatic {ENERGY_KEV:g} keV, H2O 1 g/cm3.\n")
    L.append(f"Taichi init: {init_s * 1e3:.0f} ms. First call on a tiny mesh (kernel compilation, or a load "
             "from Taichi's offline cache when it is warm): "
             + ", ".join(f"{m} {v:.0f} ms" for m, v in compile_ms.items()) + ".\n")
    L.append(f"Times are medians over n calls (after {args.warmup} warm-up calls; `first` is the first call "
             "for that cell, including first-touch allocation and, for the first cell, Taichi kernel loading). "
             "`peak RSS MB`: increase of the process peak RSS during the cell's calls (CUDA: torch peak "
             "allocation). `raster MB`: bytes of the returned Raster tensors. `gvxr/tx`: gvxr median / "
             "taichi_xray paths-mode median (same run, same scene). The `load` column is the 1-min load "
             "average when the cell finished.\n")
    L.append("| faces | res | mode | tx ms (median) | tx min ms | tx first ms | n | peak RSS MB | raster MB | K "
             "| gvxr ms | gvxr first ms | gvxr/tx | load |")
    L.append("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        L.append(f"| {r['faces']} | {r['res']}² | {r['mode']} | {r['tx_ms']:.2f} | {r['tx_min_ms']:.2f} | "
                 f"{r['tx_first_ms']:.1f} | {r['n']} | {r['peak_mb']:.1f} | {r['raster_mb']:.1f} | {r['K']} | "
                 + (f"{r['gvxr_ms']:.2f} | {r['gvxr_first_ms']:.1f} | {r['ratio']:.2f}" if "ratio" in r
                    else "- | - | -") + f" | {r['load'].split()[0]} |")
    if gv_err:
        L.append(f"\ngvxr: {gv_err}\n")
    L.append("\n## Correctness\n")
    L.append("Central region = pixels whose ray passes within 0.9 R of the sphere's centre. Differences in mm; "
             "`analytic` = exact chord of the ideal sphere (the icosphere is inscribed, so both renderers are "
             "slightly below it; the polygonal error shrinks with the face count). gvxr's path length is "
             "`-ln(I/I0)/mu` from `computeXRayImage()` and `getWhiteImage()`.\n")
    L.append("| faces | res | central px | tx-analytic max | tx-analytic mean | tx-gvxr max | tx-gvxr mean "
             "| gvxr-analytic max | gvxr orientation | outside max tx / gvxr |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for c in checks:
        if "tx_vs_gvxr_max" in c:
            g = (f"{c['tx_vs_gvxr_max']:.4f} | {c['tx_vs_gvxr_mean']:.5f} | {c['gvxr_vs_analytic_max']:.4f} | "
                 f"{c['gvxr_orientation']} | {c['outside_max_tx']:.3g} / {c['outside_max_gvxr']:.3g}")
        else:
            g = "- | - | - | - | -"
        L.append(f"| {c['faces']} | {c['res']}² | {c['central_px']} | {c['tx_vs_analytic_max']:.4f} | "
                 f"{c['tx_vs_analytic_mean']:.5f} | {g} |")
    if prof:
        L.append("\n## Where the time goes (step replica of `rasterize`, median ms)\n")
        keys = list(prof)
        names = list(next(iter(prof.values())))
        L.append("| step | " + " | ".join(f"{k[0]} f, {k[1]}², {k[2]}" for k in keys) + " |")
        L.append("|---|" + "---:|" * len(keys))
        for n in names:
            L.append(f"| {n} | " + " | ".join(f"{prof[k].get(n, float('nan')):.3f}" for k in keys) + " |")
        for k, txt in prof_text.items():
            L.append(f"\ncProfile, 5 calls of `rasterize(keep_slots=False)`, {k[0]} faces, {k[1]}²:\n")
            L.append("```\n" + "\n".join(txt.strip().splitlines()[:40]) + "\n```")
    L.append(f"\nTotal benchmark loop: {run_s:.0f} s.\n")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
