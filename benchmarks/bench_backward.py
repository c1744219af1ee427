#!/usr/bin/env python
"""Forward and forward + backward benchmark of the differentiable renderer (torch bridge).

Scene: a cortical-bone icosphere of radius 100 mm at the origin, source 1 m from its
centre, detector 1.5 m from the source and 400 mm wide (as bench_forward.py). For each
(faces, resolution, mode) cell it times, median over ``--repeat`` calls after warm-up:

* ``paths``: ``taichi_xray.torch.path_lengths([v], [F], cam)``, forward alone (under
  ``torch.no_grad``) and forward + ``backward`` of ``sum(L * w)`` (w fixed random weights);
* ``image``: ``XRayRenderer`` (80 kVp TASMIP spectrum in ``--bin`` keV bins, CsI 0.6 mm
  energy-integrating detector, line-integral output), forward alone and forward + backward
  of an MSE loss against a target rendered 1 mm away, with gradients to the vertices and
  to the per-object attenuation scale ``mu_scale``;

in the default mode and with ``deterministic=True`` (``--modes``). Memory: the bytes the
cell's pipeline holds in torch tensors (``held``) and the peak memory of the cell above a
baseline taken before its renderer was created (``peak``; CPU: peak RSS, CUDA: torch's
peak allocation; see ``_common.PeakMemory``). GPU work is synchronised before timers stop.
Backend: ``TAICHI_XRAY_ARCH`` (default auto).

Usage::

    python benchmarks/bench_backward.py --out benchmarks/results/NAME.md     # default grid
    python benchmarks/bench_backward.py --faces 1280 --res 64 --repeat 2       # smoke test
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

_common.bootstrap()  # taichi_xray before torch

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import taichi_xray as tx  # noqa: E402
from taichi_xray import runtime  # noqa: E402
from taichi_xray.physics import Detector, Spectrum  # noqa: E402
from taichi_xray.torch import XRayRenderer, path_lengths  # noqa: E402
from bench_forward import LEVELS, camera, icosphere  # noqa: E402

_fn = sys.modules["taichi_xray.torch.function"]


def _cached_pipeline(F):
    """The Pipeline that path_lengths cached for the faces array F (None if not found)."""
    for entry in getattr(_fn, "_PIPES", {}).values():
        if entry[2] and entry[2][0] is F:
            return entry[0]
    return None


def run_cell(VF, cam, what, mode, spectrum, detector, device, repeat, warmup, max_seconds) -> dict:
    """Time one cell: forward + backward (with the peak memory from before the renderer exists), then
    the forward alone under no_grad; returns the row's figures."""
    V, F = VF
    det = mode == "deterministic"
    res = cam.height
    w = torch.randn((1, res, cam.width), generator=torch.Generator().manual_seed(0)).to(device)
    getattr(_fn, "_PIPES", {}).clear()  # no pipeline of an earlier cell stays cached
    F_cell = np.array(F, copy=True)  # a faces object of this cell alone (path_lengths keys on it)
    rend = None
    with _common.PeakMemory() as pm:  # baseline before the cell's pipeline/renderer exists
        v = torch.tensor(V, dtype=torch.float32, device=device, requires_grad=True)
        if what == "paths":
            def fwd():
                return path_lengths([v], [F_cell], cam, deterministic=det)

            def step():
                v.grad = None
                (path_lengths([v], [F_cell], cam, deterministic=det) * w).sum().backward()
        else:
            rend = XRayRenderer([F_cell], cam, materials=["cortical_bone"], spectrum=spectrum, detector=detector,
                                deterministic=det).to(device)
            with torch.no_grad():
                target = rend([v.detach() + 1.0]).clone()
            s = torch.ones(1, device=device, requires_grad=True)

            def fwd():
                return rend([v], mu_scale=s)

            def step():
                v.grad = None
                s.grad = None
                ((rend([v], mu_scale=s) - target) ** 2).mean().backward()
        tb = _common.timed(step, repeat, warmup, max_seconds)
    with torch.no_grad():
        tf = _common.timed(fwd, repeat, 1, max_seconds)
    pipe = _cached_pipeline(F_cell) if what == "paths" else rend.pipeline
    held = _common.pipeline_bytes(pipe) if pipe is not None else float("nan")
    return dict(what=what, mode=mode, fwd_ms=tf["median_ms"], ms=tb["median_ms"], min_ms=tb["min_ms"],
                first_ms=tb["first_ms"], n=tb["n"], held_mb=held / 2**20, peak_mb=pm.mb, load=_common.load1())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", default="20480,81920,327680", help="comma-separated icosphere face counts")
    ap.add_argument("--res", default="256,512", help="comma-separated square resolutions")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=6.0, help="stop a cell's repeats after this long (>= 3)")
    ap.add_argument("--bin", type=float, default=2.0, help="spectrum bin width, keV")
    ap.add_argument("--modes", default="default,deterministic", help="default and/or deterministic")
    ap.add_argument("--what", default="paths,image", help="paths and/or image")
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--out", help="markdown results file")
    ap.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = ap.parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    whats = [w.strip() for w in args.what.split(",") if w.strip()]
    for m in modes:
        if m not in ("default", "deterministic"):
            raise SystemExit(f"--modes: unknown mode {m!r}")
    for w in whats:
        if w not in ("paths", "image"):
            raise SystemExit(f"--what: unknown {w!r}")
    faces_list = [int(x) for x in args.faces.split(",") if x]
    for nf in faces_list:
        if nf not in LEVELS:
            raise SystemExit(f"--faces: {nf} is not an icosphere face count 20*4**level")
    _common.check_out(args.out, force=args.force)
    warnings.simplefilter("ignore", tx.MeshWarning)
    got = runtime.ensure_init()
    device = runtime.torch_device()
    info = _common.machine_info()
    print("# machine", json.dumps(info, indent=1), flush=True)
    if _common.quiet_warning(info):
        print(f"# WARNING: {_common.quiet_warning(info)}", flush=True)
    spectrum = Spectrum.tungsten(80, bin_width=args.bin)
    detector = Detector("energy", ("CsI", 0.6))
    # first call of every (what, mode) on a tiny mesh: kernel compilation (or offline-cache load), so that
    # the cells' first-call times and peak memory do not include the JIT compiler's
    tiny = icosphere(100.0, 1)
    compile_ms = {}
    for mode in modes:
        for what in whats:
            r = run_cell(tiny, camera(32), what, mode, spectrum, detector, device, repeat=1, warmup=0,
                         max_seconds=1.0)
            compile_ms[f"{what} {mode}"] = r["first_ms"]
    print("# first call on a tiny mesh (compile or offline-cache load): "
          + ", ".join(f"{k} {v:.0f} ms" for k, v in compile_ms.items()), flush=True)
    rows = []
    print("| faces | res | what | mode | fwd ms | fwd+bwd ms | min ms | first ms | held MB | peak MB | load |", flush=True)
    for nf in faces_list:
        VF = icosphere(100.0, LEVELS[nf])
        for res in [int(x) for x in args.res.split(",") if x]:
            cam = camera(res)
            for mode in modes:
                for what in whats:
                    row = dict(faces=nf, res=res, **run_cell(VF, cam, what, mode, spectrum, detector, device,
                                                             args.repeat, args.warmup, args.max_seconds))
                    rows.append(row)
                    print(f"| {nf} | {res} | {what} | {mode} | {row['fwd_ms']:.2f} | {row['ms']:.2f} | "
                          f"{row['min_ms']:.2f} | {row['first_ms']:.1f} | {row['held_mb']:.2f} | {row['peak_mb']:.2f} "
                          f"| {row['load']} |", flush=True)
    print(f"# load average at end {_common.loadavg()}", flush=True)
    if args.out:
        _common.write_out(args.out, markdown(args, info, got, spectrum, rows, compile_ms))
        print(f"# wrote {args.out}")
    return rows


def markdown(args, info, got, spectrum, rows, compile_ms) -> str:
    L = [f"# Forward + backward benchmark ({got})", "",
         f"Generated by `benchmarks/bench_backward.py` (command: `{_common.command_line(__file__)}`).", ""]
    L += _common.machine_markdown(info)
    L.append("Scene: cortical-bone icosphere r = 100 mm, source 1 m from its centre, detector 1.5 m from the source, "
             f"400 mm wide. `paths` = `taichi_xray.torch.path_lengths` (loss `sum(L * w)`); `image` = `XRayRenderer`, "
             f"80 kVp TASMIP ({args.bin:g} keV bins, {len(spectrum.energies)} energies), CsI 0.6 mm, line integral, "
             "MSE loss, gradients to the vertices and `mu_scale`. `deterministic` = `deterministic=True` (bitwise "
             "reproducible: slots summed in face order, face-parallel backward).\n")
    L.append("First forward + backward on a tiny mesh before the grid (kernel compilation, or a load from Taichi's "
             "offline cache): " + ", ".join(f"{k} {v:.0f} ms" for k, v in compile_ms.items()) + ".\n")
    L.append(f"Columns: `fwd ms` median of the forward alone under `torch.no_grad`; `fwd+bwd ms` median of forward + "
             f"backward over n calls after {args.warmup} warm-up calls, `min ms` its fastest call, `first ms` its "
             "first call (pipeline construction, allocation, binding); `held MB` bytes the cell's pipeline holds in "
             "torch tensors (rasterizer buffers and tables, physics tables); `peak MB` peak memory of the cell above "
             "a baseline taken before its renderer was created (CPU: peak RSS after gc + malloc_trim and a VmHWM "
             "reset; CUDA: torch's peak allocation); `load` the 1-min load average when the cell finished.\n")
    hdr = ["faces:", "res:", "what", "mode", "fwd ms:", "fwd+bwd ms:", "min ms:", "first ms:", "n:", "held MB:",
           "peak MB:", "load:"]
    L += _common.md_table(hdr, [[r["faces"], f"{r['res']}²", r["what"], r["mode"], f"{r['fwd_ms']:.2f}",
                                 f"{r['ms']:.2f}", f"{r['min_ms']:.2f}", f"{r['first_ms']:.1f}", r["n"],
                                 f"{r['held_mb']:.2f}", f"{r['peak_mb']:.2f}", r["load"]] for r in rows])
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
