"""``taichi-xray render SCENE -o image.png``: render a scene to a PNG and its projection matrix.

Beside every PNG the projection matrix is written as ``IMAGE.P.txt`` (``image.png`` ->
``image.P.txt``). A sweep (``--sweep lao=-90:90:5``) writes a numbered series
``image_000.png``, ... Every output is checked (folder exists, not there yet unless
``--force``) before anything is rendered.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from .common import (SWEEP_PARAMS, UsageError, add_scene_options, load_scene_args, log, parse_size, parse_sweep,
                     start_backend)

__all__ = ["add_parser", "run", "output_paths", "matrix_path"]


def add_parser(subparsers):
    r = subparsers.add_parser("render", help="render a scene to a PNG (+ projection matrix)")
    add_scene_options(r)
    r.add_argument("-o", "--output", required=True, help="PNG image; IMAGE.P.txt is written beside it")
    r.add_argument("--npy", help="also save the float image (the [output] kind) as .npy")
    r.add_argument("--tiff", help="also save the float image as float32 TIFF")
    r.add_argument("--figure", help="matplotlib figure: image with colour bar and the centre-row profile")
    r.add_argument("--sweep", help="numbered series over a parameter, e.g. lao=-90:90:5 (lao, cran or kvp)")
    r.add_argument("--force", action="store_true", help="overwrite existing outputs")
    r.add_argument("--on-nesting", choices=("raise", "warn", "ignore"), default="raise",
                   help="objects outside their declared parent: error (default), warning or ignore")
    r.set_defaults(func=run)
    return r


def _numbered(path: Path, i: int | None, n: int) -> Path:
    if i is None:
        return path
    width = max(3, len(str(n - 1)))
    return path.with_name(f"{path.stem}_{i:0{width}d}{path.suffix}")


def matrix_path(png: Path) -> Path:
    """``image.png`` -> ``image.P.txt``."""
    return png.with_name(png.stem + ".P.txt")


def output_paths(args, n_frames: int) -> list[list[Path]]:
    """Per frame, the list of files the render command writes."""
    frames = []
    for i in range(n_frames):
        k = None if n_frames == 1 and args.sweep is None else i
        png = _numbered(Path(args.output), k, n_frames)
        paths = [png, matrix_path(png)]
        for opt in (args.npy, args.tiff, args.figure):
            if opt:
                paths.append(_numbered(Path(opt), k, n_frames))
        frames.append(paths)
    return frames


def run(args) -> int:
    from ..imageio import save_npy, save_png, save_projection_matrix, save_tiff
    from ..render import render

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise UsageError(f"-o/--output must be a .png file (use --npy/--tiff for float data), got {out}")
    sweep = parse_sweep(args.sweep) if args.sweep else None
    scene = load_scene_args(args)
    # frames: (label, scene) -- all cameras/spectra are built (and so checked) before rendering
    frames = []
    if sweep is None:
        frames.append(("", scene))
    else:
        name, values = sweep
        size = parse_size(args.size) if args.size else None
        for v in values:
            over = {k: getattr(args, k) for k in SWEEP_PARAMS}
            over[name] = v
            try:
                frames.append((f"{name}={v:g}", scene.with_overrides(size=size, **over)))
            except (ValueError, TypeError) as exc:
                raise UsageError(f"--sweep {args.sweep}: {exc}") from None
    paths = output_paths(args, len(frames))
    flat = [p for ps in paths for p in ps]
    if len(set(flat)) != len(flat):
        raise UsageError("two outputs have the same file name: " + ", ".join(sorted({str(p) for p in flat
                                                                                      if flat.count(p) > 1})))
    for p in flat:
        if p.is_dir():
            raise IsADirectoryError(f"output {p} is a directory; give a file name")
        if not p.parent.is_dir():
            raise UsageError(f"output directory {p.parent} does not exist (for {p})")
        if p.exists() and not args.force:
            raise FileExistsError(f"{p} exists; use --force to overwrite it")
    start_backend(args)
    from tqdm import tqdm

    bar = tqdm(list(zip(frames, paths)), desc="render", unit="frame", file=sys.stderr,
               disable=getattr(args, "quiet", False) or len(frames) == 1)
    total = {"rasterize": 0.0, "physics": 0.0, "output": 0.0, "write": 0.0}
    pipe = None  # one pipeline for all frames of a sweep (the nesting is checked on the first frame)
    for (label, sc), ps in bar:
        res = render(sc, on_nesting=args.on_nesting, pipeline=pipe)
        pipe = res.pipeline
        t0 = time.perf_counter()
        png, ptxt, rest = ps[0], ps[1], ps[2:]
        save_png(png, res.pixels, bits=sc.output.bits, overwrite=args.force)
        comment = f"scene {sc.label} ({sc.name}){', ' + label if label else ''}; image {png.name}"
        save_projection_matrix(ptxt, res.camera.P, overwrite=args.force, comment=comment)
        it = iter(rest)
        if args.npy:
            save_npy(next(it), res.image, overwrite=args.force)
        if args.tiff:
            save_tiff(next(it), res.image, overwrite=args.force)
        if args.figure:
            _figure(next(it), res, sc, label, overwrite=args.force)
        for k, v in res.timings.items():
            total[k] = total.get(k, 0.0) + v
        total["write"] += (time.perf_counter() - t0) * 1e3
        if len(frames) == 1:
            stages = ", ".join(f"{k} {v:.0f}" for k, v in list(res.timings.items()) + [("write", total["write"])])
            log.info("wrote %s (%dx%d %s, window [%.4g, %.4g]) and %s; %.0f ms (%s)", png, res.camera.width,
                     res.camera.height, res.kind, res.window[0], res.window[1], ptxt.name,
                     res.total_ms + total["write"], stages)
    if len(frames) > 1:
        log.info("wrote %d frames %s ... %s; total %.0f ms (%s)", len(frames), paths[0][0], paths[-1][0],
                 sum(total.values()), ", ".join(f"{k} {v:.0f}" for k, v in total.items()))
    return 0


def _figure(path: Path, res, scene, label: str, overwrite: bool):
    """Matplotlib figure: the image with a colour bar, and the profile along the centre row."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; use --force to overwrite it")
    img = res.image
    H, W = img.shape
    names = {"line_integral": "line integral -ln(I/I0)", "transmission": "transmission I/I0",
             "intensity": "intensity (photons x response)"}
    fig = Figure(figsize=(11, 4.8))
    FigureCanvasAgg(fig)
    a0, a1 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    im = a0.imshow(img, cmap="gray_r" if scene.output.invert else "gray", vmin=res.window[0],
                   vmax=res.window[1], interpolation="nearest")
    a0.axhline(H // 2, color="tab:orange", lw=0.8, ls="--")
    a0.set_title(f"{scene.name}{' ' + label if label else ''}")
    a0.set_xlabel("column (px)")
    a0.set_ylabel("row (px)")
    fig.colorbar(im, ax=a0, label=names[res.kind])
    a1.plot(np.arange(W), img[H // 2], color="tab:orange")
    a1.set_xlabel("column (px)")
    a1.set_ylabel(names[res.kind])
    a1.set_title(f"profile through the centre row ({H // 2})")
    a1.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
