#!/usr/bin/env python
"""CT-volume projector timings: taichi_xray (Siddon, trilinear) vs DiffDRR 0.6.1 and nanodrr, same CT and geometry.

The CT is ../shared/data/pelvis-ct/ct.nii.gz (122 x 101 x 112 voxels, 3 mm) unless
``--ct`` names another NIfTI file. One C-arm view (LAO 15, CRAN 5; source 600 mm from the
volume's centre, detector 1020 mm from the source, 384 mm wide, ``res x res`` pixels) is
rendered by

* taichi_xray :class:`~taichi_xray.objects.volume_project.VolumeProjector` (the default
  air/water/bone HU conversion, B = 3 line integrals per pixel, float32), ``siddon`` and
  ``trilinear`` (step half a voxel, 1.5 mm);
* DiffDRR 0.6.1 ``DRR(renderer="siddon" | "trilinear")`` (its defaults otherwise), geometry from
  :func:`taichi_xray.geometry.diffdrr.diffdrr_from_camera`;
* nanodrr ``DRR.from_carm_intrinsics`` (default 500 samples per ray, backend "auto"), geometry
  from :func:`taichi_xray.geometry.diffdrr.nanodrr_from_camera`;

the peers only when importable. Per cell: forward (no gradient) and forward + backward with
respect to the pose (6 parameters; ours: rotation vector + translation of the volume,
DiffDRR: ZXY Euler angles + translation of the camera, nanodrr: the same through
``make_rt_inv``), loss = sum of the image(s); median over ``--repeat`` calls after
``--warmup`` calls (kernel compilation). A sanity column gives the correlation between our
Siddon image (water-equivalent: ``sum_m mu_m(65 keV) L_m / mu_water``) and each peer's.

Usage::

    python benchmarks/bench_volume.py --out benchmarks/results/volume-cpu.md      # 128, 256, 512
    python benchmarks/bench_volume.py --sizes 32 --repeat 1 --warmup 1            # smoke test
    python benchmarks/bench_volume.py --no-peers --sizes 256,512

Run it on a quiet machine: on a shared one the medians move with the other load (the
results file records the load average at start and end).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's OpenMP threads must not spin against Taichi's

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

import taichi_xray  # noqa: E402,F401  (import before torch: see runtime.init)

ROOT = Path(__file__).resolve().parents[1]
CT_DEFAULT = ROOT.parent / "shared" / "data" / "pelvis-ct" / "ct.nii.gz"


def loadavg() -> str:
    try:
        return "%.2f, %.2f, %.2f" % os.getloadavg()
    except OSError:
        return "unknown"


def machine() -> list[tuple[str, str]]:
    import taichi
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024 ** 3:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        mem = "unknown"
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    ver = taichi.__version__
    ver = ".".join(map(str, ver)) if isinstance(ver, tuple) else str(ver)
    from importlib.metadata import PackageNotFoundError, version

    peers = []
    for mod in ("diffdrr", "nanodrr"):
        try:
            __import__(mod)
            peers.append(f"{mod} {version(mod)}")
        except PackageNotFoundError:
            peers.append(f"{mod} (version unknown)")
        except Exception as exc:  # noqa: BLE001 - report why a peer is missing
            peers.append(f"{mod} not importable ({type(exc).__name__})")
    from taichi_xray import runtime

    return [("CPU", cpu), ("cores usable", str(cores)), ("RAM", mem),
            ("OS", f"{platform.system()} {platform.release()}"), ("Python", platform.python_version()),
            ("versions", f"taichi {ver}, torch {torch.__version__}, numpy {np.__version__}; " + ", ".join(peers)),
            ("Taichi arch", str(runtime.arch())), ("torch threads", str(torch.get_num_threads())),
            ("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "")),
            ("date", datetime.datetime.now().strftime("%Y-%m-%d %H:%M")),
            ("command", "python " + " ".join([Path(sys.argv[0]).name] + sys.argv[1:]))]


def sync():
    import taichi as ti
    import torch

    ti.sync()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int, warmup: int, max_seconds: float):
    """(median ms, first call ms, result of the last call)."""
    t0 = time.perf_counter()
    out = fn()
    sync()
    first = 1e3 * (time.perf_counter() - t0)
    for _ in range(max(warmup - 1, 0)):
        out = fn()
    sync()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(1e3 * (time.perf_counter() - t0))
        if len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return statistics.median(times), first, out


def corr(a, b) -> float:
    a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# --------------------------------------------------------------------------------------- renderers
def ours(vol, cam, method, dtype):
    import torch

    from taichi_xray.objects.volume_project import VolumeProjector

    proj = VolumeProjector(vol, cam, method=method, dtype=dtype)
    mu = proj.conversion.mu([65.0])[:, 0]
    wmu = torch.as_tensor(mu / mu[1], dtype=dtype, device=proj.device)

    def fwd():
        with torch.no_grad():
            return proj()

    pose = torch.zeros(6, dtype=dtype, device=proj.device, requires_grad=True)

    def fwd_bwd():
        pose.grad = None
        out = proj(pose)
        out.sum().backward()
        return pose.grad

    def image(out):
        return torch.einsum("vbhw,b->hw", out, wmu).cpu().numpy()

    return fwd, fwd_bwd, image


def diffdrr_renderer(ct_path, vol, cam, renderer):
    import torch
    from diffdrr.data import read
    from diffdrr.drr import DRR

    from taichi_xray.geometry.diffdrr import diffdrr_from_camera

    g = diffdrr_from_camera(cam, orientation="AP", center=vol.centre)
    subject = read(str(ct_path), orientation="AP")
    drr = DRR(subject, renderer=renderer, **g.drr_kwargs())
    rot, trans = g.pose_parameters("euler_angles", "ZXY")
    rot = torch.tensor(np.asarray(rot), dtype=torch.float32)[None]
    trans = torch.tensor(np.asarray(trans), dtype=torch.float32)[None]

    def fwd():
        with torch.no_grad():
            return drr(rot, trans, parameterization="euler_angles", convention="ZXY")

    r = rot.clone().requires_grad_(True)
    t = trans.clone().requires_grad_(True)

    def fwd_bwd():
        r.grad = t.grad = None
        drr(r, t, parameterization="euler_angles", convention="ZXY").sum().backward()
        return r.grad

    return fwd, fwd_bwd, lambda out: out[0, 0].detach().cpu().numpy()


def nanodrr_renderer(ct_path, cam):
    import torch
    from nanodrr.camera.extrinsics import make_rt_inv
    from nanodrr.data import Subject
    from nanodrr.drr import DRR

    from taichi_xray.geometry.diffdrr import nanodrr_from_camera

    g = nanodrr_from_camera(cam)
    subject = Subject.from_filepath(str(ct_path))
    drr = DRR.from_carm_intrinsics(**g.intrinsics_kwargs(), dtype=torch.float32)
    rot = torch.tensor(g.rotation, dtype=torch.float32)[None]
    trans = torch.tensor(g.translation, dtype=torch.float32)[None]
    iso = torch.tensor(g.isocenter, dtype=torch.float32)

    def fwd():
        with torch.no_grad():
            return drr(subject, make_rt_inv(rot, trans, g.orientation, iso))

    r = rot.clone().requires_grad_(True)
    t = trans.clone().requires_grad_(True)

    def fwd_bwd():
        r.grad = t.grad = None
        drr(subject, make_rt_inv(r, t, g.orientation, iso)).sum().backward()
        return r.grad

    return fwd, fwd_bwd, lambda out: out[0, 0].detach().cpu().numpy()


# --------------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ct", default=str(CT_DEFAULT), help="NIfTI CT (default: the shared pelvis CT)")
    ap.add_argument("--sizes", default="128,256,512")
    ap.add_argument("--methods", default="siddon,trilinear")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--max-seconds", type=float, default=20.0, help="stop a cell's repeats after this (>= 3 calls)")
    ap.add_argument("--float64", action="store_true", help="run our projector in float64")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", help="write the markdown results here (refuses to overwrite without --force)")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--note", default="", help="a sentence for the results file (e.g. that the machine was shared)")
    args = ap.parse_args(argv)

    import torch

    from taichi_xray.camera import Camera
    from taichi_xray.objects.volume import Volume
    from taichi_xray.runtime import ensure_init

    if args.out and os.path.exists(args.out) and not args.force:
        sys.exit(f"{args.out} exists (use --force to overwrite)")
    ct = Path(args.ct)
    if not ct.is_file():
        sys.exit(f"CT not found: {ct}")
    ensure_init()
    vol = Volume.load(ct)
    dtype = torch.float64 if args.float64 else torch.float32
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    info = machine()
    load0 = loadavg()
    rows = []  # (size, renderer, fwd, fwd first, fwd+bwd, r)
    for res in sizes:
        cam = Camera.c_arm(sid=600.0, sdd=1020.0, width=res, height=res, pixel_spacing=384.0 / res, lao=15, cran=5,
                           isocenter=vol.centre)
        cells = [(f"taichi_xray {m}", (lambda m=m: ours(vol, cam, m, dtype))) for m in methods]
        if not args.no_peers:
            for r in ("siddon", "trilinear"):
                cells.append((f"DiffDRR {r}", (lambda r=r: diffdrr_renderer(ct, vol, cam, r))))
            cells.append(("nanodrr", lambda: nanodrr_renderer(ct, cam)))
        ref_img = None
        for name, make in cells:
            try:
                fwd, fwd_bwd, image = make()
            except ImportError as exc:
                print(f"# {name}: not importable ({exc}); skipped", flush=True)
                continue
            tf, first, out = timed(fwd, args.repeat, args.warmup, args.max_seconds)
            tb, _, _ = timed(fwd_bwd, args.repeat, args.warmup, args.max_seconds)
            img = image(out)
            if ref_img is None:
                ref_img = img
            r = corr(ref_img, img)
            rows.append((res, name, tf, first, tb, r))
            print(f"{res:5d}  {name:24s} fwd {tf:9.1f} ms (first {first:8.1f})  fwd+bwd {tb:9.1f} ms  r={r:.5f}",
                  flush=True)
    load1 = loadavg()
    lines = ["# CT-volume projector benchmark", "",
             f"CT `{ct.name}`: {vol!r}. One view: C-arm LAO 15 / CRAN 5, source 600 mm from the volume centre, "
             "detector 1020 mm from the source, 384 mm wide. Median wall time in ms over up to "
             f"{args.repeat} calls after {args.warmup} warm-up call(s); 'first' includes kernel compilation. "
             "fwd+bwd: forward and backward of the image sum w.r.t. the 6 pose parameters. "
             f"taichi_xray in {str(dtype).replace('torch.', '')}, 3 basis materials (air/water/bone).",
             *([""] + [f"**Note:** {args.note}"] if args.note else []), "",
             "| machine | |", "|---|---|", *[f"| {k} | {v} |" for k, v in info],
             f"| load average at start | {load0} |", f"| load average at end | {load1} |", "",
             "| size | renderer | fwd ms | first ms | fwd+bwd ms | DiffDRR Siddon / this (fwd, fwd+bwd) | r vs ours |",
             "|---:|---|---:|---:|---:|---|---:|"]
    for res, name, tf, first, tb, r in rows:
        base = [x for x in rows if x[0] == res and x[1] == "DiffDRR siddon"]
        ratio = f"{base[0][2] / tf:.1f}, {base[0][4] / tb:.1f}" if base else "-"
        lines.append(f"| {res}² | {name} | {tf:.1f} | {first:.1f} | {tb:.1f} | {ratio} | {r:.5f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
