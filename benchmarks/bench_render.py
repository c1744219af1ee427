#!/usr/bin/env python
"""Time per full frame of the default thorax scene (scenes/thorax.toml) through taichi_xray.render.

For each backend (CPU; CUDA when Taichi can start it) and detector size (512^2, 1024^2 by
default; --size keeps the detector's physical width) it renders one warm-up frame (Taichi
kernel compilation, attenuation-table caching), then ``--repeat`` frames, and reports the
median of each stage of :func:`taichi_xray.render.render`:

* rasterize: mesh packing + the path-length rasterizer (one call for all 61 objects),
* physics: per-material exclusive lengths + the polychromatic Beer-Lambert kernel,
* output: transmission, line integral, windowing, copy to the host.

Scene loading (building the procedural phantom) and file writing are not included.

Usage::

    python benchmarks/bench_render.py                                  # prints the table
    python benchmarks/bench_render.py --out benchmarks/results/render-cpu.md
    python benchmarks/bench_render.py --arch cpu,cuda --sizes 512,1024,2048 --repeat 5
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024 ** 3
        mem = f"{mem:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        mem = "RAM unknown"
    import taichi
    import torch

    ver = ".".join(map(str, taichi.__version__)) if isinstance(taichi.__version__, tuple) else taichi.__version__
    try:
        load = "load average at start %.1f, %.1f, %.1f (1, 5, 15 min)" % os.getloadavg()
    except OSError:
        load = "load average unknown"
    return (f"{cpu}, {os.cpu_count()} logical cores visible, {mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, Taichi {ver}, torch {torch.__version__}; {load}")


def cuda_available() -> bool:
    import taichi as ti
    from taichi.lang.misc import is_arch_supported

    return is_arch_supported(ti.cuda)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene", default=str(ROOT / "scenes/thorax.toml"))
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--arch", default=None, help="comma list (default: cpu, plus cuda when available)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", help="write the markdown table here (overwrites)")
    args = ap.parse_args(argv)

    import taichi_xray as tx
    from taichi_xray.render import render
    from taichi_xray.scene import load_scene

    arches = args.arch.split(",") if args.arch else (["cpu"] + (["cuda"] if cuda_available() else []))
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()
    scene = load_scene(args.scene)
    load_ms = (time.perf_counter() - t0) * 1e3
    faces = sum(o.mesh.n_faces for o in scene.objects)
    rows = []
    for arch in arches:
        got = tx.init(arch)
        if got != arch:
            print(f"skipping {arch}: Taichi runs on {got}", file=sys.stderr)
            continue
        for n in sizes:
            sc = scene.with_overrides(size=(n, n))
            t = time.perf_counter()
            render(sc)  # warm-up (compilation)
            first = (time.perf_counter() - t) * 1e3
            runs = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = render(sc)
                runs.append(dict(r.timings, wall=(time.perf_counter() - t) * 1e3))
            med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            rows.append((arch, n, med, first))
            print(f"{arch} {n}x{n}: {med['wall']:.0f} ms/frame (rasterize {med['rasterize']:.0f}, physics "
                  f"{med['physics']:.0f}, output {med['output']:.0f}); first frame {first:.0f} ms", file=sys.stderr)
    lines = [
        "# Render benchmark: full thorax frame",
        "",
        f"Scene `{Path(args.scene).relative_to(ROOT) if Path(args.scene).is_relative_to(ROOT) else args.scene}`: "
        f"{len(scene.objects)} objects, {faces} faces, {len(scene.spectrum)} energy bins, "
        f"{len({o.material_name for o in scene.objects})} materials + air, line-integral output.",
        f"Machine: {machine()}.",
        f"Date: {datetime.date.today().isoformat()}. Command: `python benchmarks/bench_render.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`.",
        "",
        f"Median of {args.repeat} frames after one warm-up frame, in ms (wall = the whole `render()` call).",
        f"Loading the scene (building the procedural phantom) took {load_ms:.0f} ms once and is not included.",
        "",
        "| backend | size | rasterize | physics | output | wall / frame | frames/s | first frame |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arch, n, m, first in rows:
        lines.append(f"| {arch} | {n}x{n} | {m['rasterize']:.0f} | {m['physics']:.0f} | {m['output']:.0f} | "
                     f"{m['wall']:.0f} | {1e3 / m['wall']:.2f} | {first:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
