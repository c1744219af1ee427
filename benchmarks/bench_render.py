#!/usr/bin/env python
"""Time per full frame of a scene (scenes/thorax.toml, scenes/pelvis.toml) through
``taichi_xray.render.render(scene, pipeline=pipe)`` with a reused pipeline, per stage, and
gVirtualXRay (gvxr) rendering the same scene.

For each scene and detector size (512^2 and 1024^2 by default; ``--sizes`` keeps the
detector's physical width) it builds the scene's pipeline once
(:func:`taichi_xray.render.scene_pipeline`), renders one first frame (the nesting check
runs on it; reported separately) and ``--warmup`` frames, then ``--repeat`` frames, and
reports the median of each stage of :attr:`RenderResult.timings` (``rasterize``:
per-material path lengths + air; ``physics``: polychromatic Beer-Lambert; ``imaging``
when the scene has a source/detector model; ``output``: transmission, line integral,
windowing, copies to numpy; later stages such as detector blur, noise or scatter show up
as further columns automatically), the whole ``render()`` call, the bytes the pipeline
holds and the peak memory above a baseline taken before the pipeline was created. The
same with a monochromatic beam at the spectrum's mean energy (``mono`` rows).

gvxr: the scene is exported per material (gvxr attenuates each mesh by its own material
and knows no nesting): the mesh of material m holds, with their orientation, the faces
of every object made of m whose parent is not made of m, and, reversed, the faces of
every object whose parent is made of m and which is not; gvxr's signed path length of
that mesh is then the exclusive length of m, the same per-material channel taichi_xray's
rasterizer accumulates. Materials are given as mixtures (mass fractions) and densities;
the beam is the scene's spectrum (``poly``) or one energy (``mono``). gvxr's detector is
ideal (energy integrating, no scintillator) and it has no air between source and
detector; the correctness check compares it with a taichi_xray render under the same
conditions (ideal energy-integrating detector, no air): line integrals, median and 99th
percentile of the absolute difference inside the body. The issue's target: the thorax
frame >= 5x faster than gvxr's polychromatic render in the same run (``gvxr/tx``).

Usage::

    python benchmarks/bench_render.py --out benchmarks/results/render-cpu.md
    python benchmarks/bench_render.py --sizes 64 --repeat 2 --no-gvxr              # smoke test
    python benchmarks/bench_render.py --scenes thorax --sizes 512,1024,2048 --repeat 5
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

_common.bootstrap()  # taichi_xray before torch

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from taichi_xray import runtime  # noqa: E402
from taichi_xray.physics import Detector, Spectrum  # noqa: E402
from taichi_xray.pipeline import Pipeline, material_key  # noqa: E402
from taichi_xray.rasterize import prepare_mesh  # noqa: E402
from taichi_xray.render import render, scene_pipeline  # noqa: E402
from taichi_xray.scene import load_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCENES = {"thorax": ROOT / "scenes" / "thorax.toml", "pelvis": ROOT / "scenes" / "pelvis.toml"}


# ----------------------------------------------------------------------------- gvxr
class GvxrScene:
    """A scene exported to gvxr per material (see the module doc)."""

    def __init__(self, scene):
        from gvxrPython3 import gvxr  # noqa: WPS433

        self.g = gvxr
        gvxr.useLogFile(os.path.join(tempfile.gettempdir(), f"gvxr-bench-render-{os.getpid()}.log"))
        gvxr.createOpenGLContext()
        self.renderer = gvxr.getOpenGlRenderer() if hasattr(gvxr, "getOpenGlRenderer") else "?"
        gvxr.removePolygonMeshesFromXRayRenderer()
        gvxr.removePolygonMeshesFromSceneGraph()
        objs = scene.objects
        parents = scene.parents
        keys = [material_key(o.material) for o in objs]
        mats = {}
        for q, o in enumerate(objs):
            mats.setdefault(keys[q], o.material)
        parts = {k: ([], [], [0]) for k in mats}  # vertices, faces, vertex count

        def add(k, V, F):
            Vs, Fs, n = parts[k]
            Vs.append(V)
            Fs.append(F + n[0])
            n[0] += len(V)

        for q, o in enumerate(objs):
            V, F, _ = prepare_mesh(o.mesh, o.name)  # outward orientation, as the rasterizer uses
            p = parents[q]
            kp = keys[p] if p >= 0 else None
            if kp != keys[q]:
                add(keys[q], V, F)  # +L_q in its own material
                if kp is not None:
                    add(kp, V, F[:, ::-1])  # -L_q in its parent's material
        self.labels, self.n_faces = [], 0
        for i, (k, (Vs, Fs, _)) in enumerate(parts.items()):
            if not Fs:
                continue
            m = mats[k]
            label = f"m{i}_{m.name}"
            V = np.concatenate(Vs).astype(np.float32)
            F = np.ascontiguousarray(np.concatenate(Fs), dtype=np.int32)
            self.n_faces += len(F)
            gvxr.makeTriangularMesh(label, V.ravel().tolist(), F.ravel().tolist(), "mm")
            syms = list(m.composition)
            gvxr.setMixture(label, syms, [float(m.composition[s]) for s in syms])
            gvxr.setDensity(label, float(m.density), "g/cm3")
            gvxr.addPolygonMeshAsInnerSurface(label)
            self.labels.append(label)
        gvxr.usePointSource()

    def set_camera(self, cam):
        """Source, detector centre, up vector and pixels of a taichi_xray Camera.

        gvxr derives the detector's right vector from the up vector and the beam (setting it
        explicitly to the camera's column direction gave blank images), so a mirrored camera
        (``radiological=True``) gives gvxr's image flipped left-right; :func:`compare` finds the flip."""
        g = self.g
        s = cam.source
        D = cam.detector_distance
        if D is None:
            raise ValueError("the scene's camera has no pixel_spacing: gvxr needs the detector's distance")
        Minv = cam.M_inv
        u0, v0 = (cam.width - 1) / 2.0, (cam.height - 1) / 2.0
        centre = s + D * (Minv @ np.array([u0, v0, 1.0]))
        down = Minv[:, 1] / np.linalg.norm(Minv[:, 1])
        g.setSourcePosition(*map(float, s), "mm")
        g.setDetectorPosition(*map(float, centre), "mm")
        g.setDetectorUpVector(*map(float, -down))
        g.setDetectorNumberOfPixels(cam.width, cam.height)
        g.setDetectorPixelSize(float(cam.pixel_spacing), float(cam.pixel_spacing), "mm")

    def set_spectrum(self, spectrum):
        g = self.g
        g.resetBeamSpectrum()
        for e, n in zip(spectrum.energies, spectrum.photons):
            if n > 0:
                g.addEnergyBinToSpectrum(float(e), "keV", float(n))

    def image(self):
        return np.asarray(self.g.computeXRayImage(), dtype=np.float64)

    def line_integral(self, img):
        white = np.asarray(self.g.getWhiteImage(), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.log(img / white)


def make_gvxr(scene):
    try:
        return GvxrScene(scene), None
    except Exception as exc:  # not installed, missing libxcb-*/libEGL, no EGL context
        return None, f"{type(exc).__name__}: {exc}"


def reference_line_integral(sc, spectrum) -> np.ndarray:
    """taichi_xray's line integral of the scene under gvxr's conditions (ideal energy-integrating
    detector, no air), float64 physics."""
    pipe = Pipeline(sc.meshes, sc.camera, materials=[o.material for o in sc.objects], parents=sc.parents,
                    names=sc.names, spectrum=spectrum, detector=Detector("energy"), air=False,
                    output="line_integral", physics_dtype=torch.float64, overlap="allow")
    return pipe.render()[0].detach().cpu().numpy().astype(np.float64)


def compare(Lt, Lg, body):
    """Best-matching flip of gvxr's image: (name, median |diff|, p99 |diff|) over the body's pixels."""
    best = None
    for name, x in (("as is", Lg), ("flipud", Lg[::-1]), ("fliplr", Lg[:, ::-1]), ("rot180", Lg[::-1, ::-1])):
        d = np.abs(Lt - x)[body]
        d = d[np.isfinite(d)]
        if not d.size:
            continue
        med = float(np.median(d))
        if best is None or med < best[1]:
            best = (name, med, float(np.percentile(d, 99)))
    return best or ("-", float("nan"), float("nan"))


# ----------------------------------------------------------------------------- tx frames
def frames(sc, pipe, spectrum, repeat, warmup):
    """Render frames with a reused pipeline: (first frame's timings, median timings per stage + wall, min wall, n)."""
    stages = []

    def one():
        t0 = time.perf_counter()
        r = render(sc, pipeline=pipe, spectrum=spectrum)
        stages.append(dict(r.timings, wall=(time.perf_counter() - t0) * 1e3))
        return r

    t = _common.timed(one, repeat, warmup)
    first = stages[0]
    timed_runs = stages[-t["n"]:]
    med = {k: statistics.median(x.get(k, 0.0) for x in timed_runs) for k in timed_runs[0]}
    return first, med, min(x["wall"] for x in timed_runs), t["n"], t["out"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", default="thorax,pelvis", help="comma list of thorax, pelvis or .toml paths")
    ap.add_argument("--sizes", default="512,1024", help="square detector sizes (physical width kept)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--gvxr", dest="gvxr", action="store_true", default=True)
    ap.add_argument("--no-gvxr", dest="gvxr", action="store_false")
    ap.add_argument("--gvxr-scenes", default="thorax", help="scenes gvxr renders too (comma list)")
    ap.add_argument("--no-mono", action="store_true", help="skip the monochromatic rows")
    ap.add_argument("--torch-threads", type=int, default=None)
    ap.add_argument("--out", help="markdown results file")
    ap.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    args = ap.parse_args(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    _common.check_out(args.out, force=args.force)
    arch = runtime.ensure_init()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    scene_names = [s.strip() for s in args.scenes.split(",") if s.strip()]
    gv_scenes = {s.strip() for s in args.gvxr_scenes.split(",") if s.strip()} if args.gvxr else set()
    extra = {}
    try:
        import importlib.metadata as md
        extra["gvxr"] = md.version("gvxr")
    except Exception:
        extra["gvxr"] = "not installed"
    info = _common.machine_info(extra)
    print("# machine", json.dumps(info, indent=1), flush=True)
    if _common.quiet_warning(info):
        print(f"# WARNING: {_common.quiet_warning(info)}", flush=True)

    rows, checks, scene_desc, notes = [], [], [], []
    compile_ms = None
    for name in scene_names:
        path = SCENES.get(name, Path(name))
        t0 = time.perf_counter()
        scene = load_scene(path)
        load_ms = (time.perf_counter() - t0) * 1e3
        mono = Spectrum.monochromatic(float(scene.spectrum.mean_energy()))
        n_mat = len({material_key(o.material) for o in scene.objects})
        gv, gv_err = (make_gvxr(scene) if name in gv_scenes else (None, None))
        if gv_err:
            notes.append(f"gvxr ({name}): {gv_err}")
        scene_desc.append(f"`{name}`: {len(scene.objects)} objects, {sum(o.mesh.n_faces for o in scene.objects)} "
                          f"faces, {n_mat} materials{' + air' if scene.output.air else ''}, "
                          f"{len(scene.spectrum.energies)} energy bins (mono: {mono.energies[0]:.1f} keV), detector "
                          f"{scene.detector}, output {scene.output.kind}; loading it (building the phantom) took "
                          f"{load_ms:.0f} ms, not included"
                          + (f"; exported to gvxr as {len(gv.labels)} per-material meshes, {gv.n_faces} faces "
                             f"(OpenGL: {gv.renderer})" if gv is not None else ""))
        print(f"# {scene_desc[-1]}", flush=True)
        if compile_ms is None:  # kernels compiled (or loaded from the offline cache) before any row
            t0 = time.perf_counter()
            tiny = scene.with_overrides(size=(32, 32))
            render(tiny, pipeline=scene_pipeline(tiny))
            compile_ms = (time.perf_counter() - t0) * 1e3
            notes.append(f"First frame of `{name}` on a 32x32 detector before the rows (kernel compilation or "
                         f"offline-cache load, nesting check): {compile_ms:.0f} ms.")
            print(f"# {notes[-1]}", flush=True)
        for n in sizes:
            sc = scene.with_overrides(size=(n, n))
            for beam, spec in (("poly", scene.spectrum), ("mono", mono)):
                if beam == "mono" and args.no_mono:
                    continue
                with _common.PeakMemory() as pm:  # baseline before the pipeline exists
                    pipe = scene_pipeline(sc, spectrum=spec)
                    first, med, mn, nrep, res = frames(sc, pipe, spec, args.repeat, args.warmup)
                row = dict(scene=name, size=n, beam=beam, first=first, med=med, min=mn, n=nrep,
                           held_mb=_common.pipeline_bytes(pipe) / 2**20, peak_mb=pm.mb, load=_common.load1())
                if gv is not None:
                    gv.set_camera(sc.camera)
                    gv.set_spectrum(spec)
                    g = _common.timed(gv.image, args.repeat, args.warmup)
                    row.update(gvxr_ms=g["median_ms"], gvxr_first_ms=g["first_ms"],
                               ratio=g["median_ms"] / med["wall"])
                    Lg = gv.line_integral(g["out"])
                    Lt = reference_line_integral(sc, spec)
                    body = Lt > 0.05
                    orient, d_med, d_99 = compare(Lt, Lg, body)
                    checks.append(dict(scene=name, size=n, beam=beam, orient=orient, med=d_med, p99=d_99,
                                       body_px=int(body.sum()), tx_max=float(Lt.max())))
                rows.append(row)
                st = ", ".join(f"{k} {v:.1f}" for k, v in med.items() if k != "wall")
                print(f"# {name} {n}^2 {beam}: {med['wall']:.1f} ms/frame ({st}); first {first['wall']:.0f} ms; "
                      f"held {row['held_mb']:.1f} MB, peak {row['peak_mb']:.1f} MB"
                      + (f"; gvxr {row['gvxr_ms']:.1f} ms, gvxr/tx {row['ratio']:.2f}" if "ratio" in row else "")
                      + f"; load {row['load']}", flush=True)
                del pipe, res
        del gv
    for c in checks:
        print(f"# check {c['scene']} {c['size']}^2 {c['beam']}: |tx - gvxr| line integral median {c['med']:.4f}, "
              f"p99 {c['p99']:.4f} ({c['orient']}, {c['body_px']} px, tx max {c['tx_max']:.2f})", flush=True)
    text = markdown(args, info, arch, rows, checks, scene_desc, notes)
    print(text)
    if args.out:
        _common.write_out(args.out, text)
        print(f"# wrote {args.out}")
    return rows, checks


def markdown(args, info, arch, rows, checks, scene_desc, notes) -> str:
    stages = []
    for r in rows:
        stages += [k for k in r["med"] if k != "wall" and k not in stages]
    L = [f"# Render benchmark: full frames ({arch})", "",
         f"Generated by `benchmarks/bench_render.py` (command: `{_common.command_line(__file__)}`).", ""]
    L += _common.machine_markdown(info)
    L += ["Scenes: " + "; ".join(scene_desc) + ".", ""]
    L.append(f"Each frame is `render(scene, pipeline=pipe)` with the scene's pipeline built once per (scene, size, "
             f"beam). Stage columns (ms) are medians over n frames after the first and {args.warmup} warm-up "
             "frame(s), from `RenderResult.timings` (GPU synchronised); `wall` = the whole `render()` call; `first` = "
             "the first frame (nesting check, allocation, binding). `held MB` = bytes the pipeline holds in torch "
             "tensors; `peak MB` = peak memory above a baseline taken before the pipeline was created (CPU: peak RSS "
             "after gc + malloc_trim and a VmHWM reset; CUDA: torch's peak allocation). `gvxr ms` = median "
             "`computeXRayImage()` of the same scene and beam; `gvxr/tx` = gvxr / wall (target for the thorax, "
             "poly: >= 5). `load` = 1-min load average when the row finished.\n")
    hdr = (["scene", "size:", "beam"] + [f"{s}:" for s in stages] +
           ["wall:", "min wall:", "frames/s:", "first:", "n:", "held MB:", "peak MB:", "gvxr ms:", "gvxr/tx:", "load:"])
    body = []
    for r in rows:
        m = r["med"]
        body.append([r["scene"], f"{r['size']}²", r["beam"]] + [_common.fmt(m.get(s), 1) for s in stages] +
                    [f"{m['wall']:.1f}", f"{r['min']:.1f}", f"{1e3 / m['wall']:.2f}", f"{r['first']['wall']:.0f}",
                     r["n"], f"{r['held_mb']:.1f}", f"{r['peak_mb']:.1f}", _common.fmt(r.get("gvxr_ms"), 1),
                     _common.fmt(r.get("ratio")), r["load"]])
    L += _common.md_table(hdr, body)
    if checks:
        L += ["", "## Agreement with gvxr", "",
              "Line integral `-ln(I/I0)` of gvxr (per-material export, `getWhiteImage()` as I0) against taichi_xray "
              "under the same conditions (ideal energy-integrating detector, no air), on the pixels where "
              "taichi_xray's line integral exceeds 0.05; gvxr's image is compared in the flip that matches best.", ""]
        L += _common.md_table(["scene", "size:", "beam", "pixels:", "median abs diff:", "p99 abs diff:",
                               "tx max:", "gvxr flip"],
                              [[c["scene"], f"{c['size']}²", c["beam"], c["body_px"], f"{c['med']:.4f}",
                                f"{c['p99']:.4f}", f"{c['tx_max']:.2f}", c["orient"]] for c in checks])
    if notes:
        L += [""] + [f"* {n}" for n in notes]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
