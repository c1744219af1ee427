#!/usr/bin/env python
"""Throughput of ``taichi-xray generate`` on the thorax dataset (scenes/dataset-thorax.toml).

Two measurements per detector size (256², 512² by default):

1. **Throughput** of the whole command (``taichi-xray generate``, each run in a fresh
   process) with 1 and 2 local workers: each configuration runs twice, with ``n1`` and
   ``n2`` samples, into fresh folders; ``(n2 - n1) / (t2 - t1)`` is the steady-state rate
   (images/s), free of the fixed start-up cost (Python and worker processes, Taichi, the
   phantom, the first kernel launches), which is reported separately as ``t1 - n1 / rate``.
2. **Per-sample breakdown** in one process (one renderer, warm): sampling (``draw``),
   rendering (``SampleRenderer.render`` minus its draws: geometry, projection with the
   nesting check, physics and noise, masks, landmarks), encoding and writing (``ShardWriter.write``
   plus the amortised ``close`` and SHA-256 of the shard), and reading a sample back
   (``ShardedDataset[i]``, random order). "Overhead" is everything but rendering.

Usage::

    python benchmarks/bench_generate.py                                   # prints the tables
    python benchmarks/bench_generate.py --out benchmarks/results/generate-cpu.md
    python benchmarks/bench_generate.py --sizes 256 --n1 4 --n2 12 --shard-size 2 --workers 1,2 --repeat 8
"""
import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "scenes" / "dataset-thorax.toml"


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
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1024 ** 3:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        mem = "RAM unknown"
    import h5py
    import taichi
    import torch

    ver = ".".join(map(str, taichi.__version__)) if isinstance(taichi.__version__, tuple) else taichi.__version__
    return (f"{cpu}, {os.cpu_count()} logical cores visible, {mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, Taichi {ver}, torch {torch.__version__}, h5py {h5py.__version__}")


def load() -> str:
    try:
        return "%.1f, %.1f, %.1f" % os.getloadavg()
    except OSError:
        return "unknown"


def dataset_file(tmp: Path, size: int, compression: str) -> Path:
    """The thorax dataset at ``size``² (scene path made absolute)."""
    text = DATASET.read_text()
    text = text.replace('scenes = ["thorax.toml"]', f'scenes = ["{(ROOT / "scenes" / "thorax.toml").as_posix()}"]')
    text = text.replace("size = [256, 256]", f"size = [{size}, {size}]")
    if compression != "gzip":
        text = text.replace("[output]\n", f'[output]\ncompression = "{compression}"\n', 1)
    p = tmp / f"thorax-{size}.toml"
    p.write_text(text)
    return p


def throughput(ds: Path, tmp: Path, workers: int, n1: int, n2: int, shard: int):
    """Two runs of the command in fresh processes (as a user runs it); returns (rate, start-up, times)."""
    import subprocess

    times = []
    for n in (n1, n2):
        out = tmp / f"out-{ds.stem}-w{workers}-n{n}"
        cmd = [sys.executable, "-m", "taichi_xray.cli", "-q", "generate", str(ds), "-o", str(out), "--samples", str(n),
               "--seed", "1", "--workers", str(workers), "--shard-size", str(shard), "--force"]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=dict(os.environ, TAICHI_XRAY_ARCH=os.environ.get("TAICHI_XRAY_ARCH", "cpu")))
        times.append(time.perf_counter() - t0)
    rate = (n2 - n1) / (times[1] - times[0]) if times[1] > times[0] else float("nan")
    return rate, times[0] - n1 / rate, times


def breakdown(ds: Path, tmp: Path, repeat: int):
    import torch  # noqa: F401

    from taichi_xray.datasets.generate import _shard_attrs, layout_of
    from taichi_xray.datasets.sampling import draw
    from taichi_xray.datasets.spec import load_dataset
    from taichi_xray.datasets.torch import ShardedDataset
    from taichi_xray.datasets.worker import SampleRenderer
    from taichi_xray.datasets.writer import ShardWriter, sha256_file, write_json_atomic

    spec = load_dataset(ds)
    r = SampleRenderer(spec, 1)
    r.render(10_000)  # warm-up: pipelines, kernels, spectra
    lay = layout_of(spec)
    out = tmp / f"bd-{ds.stem}"
    out.mkdir(exist_ok=True)
    path = out / "shard-000000.h5"
    w = ShardWriter(path, lay, repeat, _shard_attrs(spec, 1))
    t_draw, t_render, t_write = [], [], []
    for j in range(repeat):
        t0 = time.perf_counter()
        draw(spec, 1, j)
        t1 = time.perf_counter()
        res = r.render(j)  # draws again (t_draw is subtracted below) and re-draws failed attempts
        t2 = time.perf_counter()
        w.write(j, res)
        t3 = time.perf_counter()
        t_draw.append(t1 - t0)
        t_render.append(t2 - t1 - (t1 - t0) * res.attempts)
        t_write.append(t3 - t2)
    t0 = time.perf_counter()
    w.close()
    sha256_file(path)
    t_close = (time.perf_counter() - t0) / repeat
    size = path.stat().st_size / repeat
    # read back in random order through the torch Dataset
    write_json_atomic(out / "manifest.json", {
        "format": "taichi_xray.dataset", "layout": lay.to_json(),
        "shards": [{"shard": 0, "file": path.name, "start": 0, "stop": repeat}], "failed": [], "complete": True})
    dsr = ShardedDataset(out)
    dsr[0]
    order = list(range(repeat))[::-1]
    t0 = time.perf_counter()
    for i in order:
        dsr[i]
    t_read = (time.perf_counter() - t0) / repeat
    med = statistics.median
    return {"draw": med(t_draw), "render": med(t_render), "write": med(t_write), "close": t_close,
            "read": t_read, "bytes": size}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512", help="square detector sizes (pixels), comma-separated")
    ap.add_argument("--workers", default="1,2", help="worker counts, comma-separated")
    ap.add_argument("--n1", type=int, default=16, help="samples of the short run (default 16)")
    ap.add_argument("--n2", type=int, default=40, help="samples of the long run (default 40)")
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=20, help="samples timed in the per-sample breakdown")
    ap.add_argument("--compression", default="gzip", choices=("gzip", "lzf", "none"))
    ap.add_argument("--out", help="write the results as Markdown to this file")
    ap.add_argument("--note", default="", help="a line added to the results (e.g. 'machine shared')")
    args = ap.parse_args(argv)
    if args.n1 < max(int(w) for w in args.workers.split(",")) * args.shard_size or args.n2 <= args.n1:
        ap.error("need n2 > n1 >= (largest worker count) x shard size, so that both runs use every worker")
    os.environ.setdefault("TAICHI_XRAY_ARCH", "cpu")
    sizes = [int(s) for s in args.sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    load0 = load()
    rows, rows2 = [], []
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as d:
        tmp = Path(d)
        for size in sizes:
            ds = dataset_file(tmp, size, args.compression)
            bd = breakdown(ds, tmp, args.repeat)
            over = bd["draw"] + bd["write"] + bd["close"]
            rows2.append(f"| {size}x{size} | {bd['draw'] * 1e3:.2f} | {bd['render'] * 1e3:.1f} | "
                         f"{bd['write'] * 1e3:.2f} | {bd['close'] * 1e3:.2f} | {over * 1e3:.2f} "
                         f"({100 * over / (over + bd['render']):.1f} %) | {bd['bytes'] / 1024:.0f} | "
                         f"{bd['read'] * 1e3:.2f} |")
            print(rows2[-1], flush=True)
            for w in workers:
                rate, start, times = throughput(ds, tmp, w, args.n1, args.n2, args.shard_size)
                rows.append(f"| {size}x{size} | {w} | {rate:.2f} | {1e3 / rate:.0f} | {start:.1f} | "
                            f"{times[0]:.1f} / {times[1]:.1f} |")
                print(rows[-1], flush=True)
    load1 = load()
    from taichi_xray.scene import load_scene

    thorax = load_scene(ROOT / "scenes" / "thorax.toml")
    n_obj, n_faces = len(thorax.objects), sum(len(o.mesh.faces) for o in thorax.objects)
    text = "\n".join([
        "# Dataset generation benchmark: thorax, CPU",
        "",
        f"Dataset `scenes/dataset-thorax.toml` (thorax scene: {n_obj} objects, {n_faces} faces; LAO/CRAN, sid/sdd, "
        f"isocentre, kVp, Cu filtration and mAs sampled; CsI detector model with noise; float32 + 16-bit images, "
        f"3 masks, 7 landmarks; HDF5 {args.compression}), at the sizes below.",
        f"Machine: {machine()}.",
        f"Load average (1, 5, 15 min) at start {load0}, at end {load1}. {args.note}".rstrip(),
        f"Date: {datetime.date.today().isoformat()}. Command: `python benchmarks/bench_generate.py "
        f"{shlex.join(sys.argv[1:] if argv is None else argv)}`.",
        "",
        "## Throughput of `generate`",
        "",
        f"Steady-state rate `(n2 - n1) / (t2 - t1)` from two runs of {args.n1} and {args.n2} samples (shards of "
        f"{args.shard_size}); start-up = the fixed cost of a run (worker processes, Taichi, phantom, first kernel "
        "launches).",
        "",
        "| size | workers | images/s | ms / image | start-up s | t1 / t2 s |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "## Per-sample time in one warm worker",
        "",
        f"Median over {args.repeat} samples, ms. sampling = `draw`; render = `SampleRenderer.render` minus its draws "
        "(geometry, projection with the nesting check, physics and noise, masks, landmarks); write = `ShardWriter.write`; "
        "close = closing the shard and its SHA-256, per sample; overhead = sampling + write + close (share of the "
        "total); read = one random sample through `ShardedDataset`.",
        "",
        "| size | sampling | render | write | close | overhead | KiB / sample | read |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows2,
        "",
    ])
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
