"""Command line: ``taichi-xray render SCENE -o image.png`` and ``taichi-xray info SCENE``.

User errors (bad scene, missing file, existing output without --force, bad
option) print one line ``taichi-xray: error: ...`` to stderr and exit with
status 2. Beside every PNG the projection matrix is written as
``IMAGE.P.txt`` (``image.png`` -> ``image.P.txt``). A sweep
(``--sweep lao=-90:90:5``) writes a numbered series ``image_000.png``, ...
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main", "parse_size", "parse_sweep", "output_paths"]

log = logging.getLogger("taichi_xray")
SWEEP_PARAMS = ("lao", "cran", "kvp")


class UsageError(ValueError):
    """A bad command line value."""


class _StderrHandler(logging.Handler):
    def emit(self, record):  # writes to the current sys.stderr (pytest swaps it)
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover
            self.handleError(record)


_HANDLER = _StderrHandler()
_HANDLER.setFormatter(logging.Formatter("%(message)s"))


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H) positive integers."""
    parts = text.lower().split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--size must be WIDTHxHEIGHT in pixels (e.g. 512x512), got {text!r}") from None
    if w <= 0 or h <= 0:
        raise UsageError(f"--size must be positive, got {text!r}")
    return w, h


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """'lao=-90:90:5' -> ('lao', [-90, -85, ..., 90]) (stop included when reached)."""
    if "=" not in text:
        raise UsageError(f"--sweep must be PARAM=START:STOP:STEP with PARAM one of {', '.join(SWEEP_PARAMS)}, "
                         f"got {text!r}")
    name, rng = text.split("=", 1)
    name = name.strip()
    if name not in SWEEP_PARAMS:
        raise UsageError(f"--sweep: unknown parameter {name!r}; choose one of {', '.join(SWEEP_PARAMS)}")
    try:
        a, b, s = (float(x) for x in rng.split(":"))
    except ValueError:
        raise UsageError(f"--sweep: range must be START:STOP:STEP (numbers), got {rng!r}") from None
    if not all(math.isfinite(x) for x in (a, b, s)) or s == 0 or (b - a) * s < 0:
        raise UsageError(f"--sweep: STEP must be non-zero and go from START toward STOP, got {rng!r}")
    n = int(math.floor((b - a) / s + 1e-9)) + 1
    if n > 10000:
        raise UsageError(f"--sweep: {n} frames is too many (at most 10000)")
    return name, [a + i * s for i in range(n)]


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


# ----------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------
def _start(args):
    from . import runtime
    from .render import use_arch

    fresh = runtime.arch() is None
    requested = args.arch
    wanted = (requested or os.environ.get("TAICHI_XRAY_ARCH") or "auto").strip().lower()
    auto = fresh and wanted == "auto"
    got = use_arch(requested)
    if not auto:  # the runtime logs "running on ..." itself for auto
        log.info("taichi_xray: running on %s", got)
    return got


def _load(args):
    from .scene import load_scene

    scene = load_scene(args.scene)
    size = parse_size(args.size) if args.size else None
    try:
        return scene.with_overrides(kvp=args.kvp, lao=args.lao, cran=args.cran, size=size)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{args.scene}: {exc}") from None


def _cmd_render(args) -> int:
    from .imageio import save_npy, save_png, save_projection_matrix, save_tiff
    from .render import render

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise UsageError(f"-o/--output must be a .png file (use --npy/--tiff for float data), got {out}")
    sweep = parse_sweep(args.sweep) if args.sweep else None
    scene = _load(args)
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
        if not p.parent.is_dir():
            raise UsageError(f"output directory {p.parent} does not exist (for {p})")
        if p.exists() and not args.force:
            raise FileExistsError(f"{p} exists; use --force to overwrite it")
    _start(args)
    from tqdm import tqdm

    bar = tqdm(list(zip(frames, paths)), desc="render", unit="frame", file=sys.stderr,
               disable=args.quiet or len(frames) == 1)
    total = {"rasterize": 0.0, "physics": 0.0, "output": 0.0, "write": 0.0}
    import time

    for (label, sc), ps in bar:
        res = render(sc, on_nesting=args.on_nesting)
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
            total[k] += v
        total["write"] += (time.perf_counter() - t0) * 1e3
        if len(frames) == 1:
            log.info("wrote %s (%dx%d %s, window [%.4g, %.4g]) and %s; %.0f ms (rasterize %.0f, physics %.0f, "
                     "output %.0f, write %.0f)", png, res.camera.width, res.camera.height, res.kind,
                     res.window[0], res.window[1], ptxt.name, res.total_ms + total["write"],
                     res.timings["rasterize"], res.timings["physics"], res.timings["output"], total["write"])
    if len(frames) > 1:
        log.info("wrote %d frames %s ... %s; total %.0f ms (rasterize %.0f, physics %.0f, output %.0f, write %.0f)",
                 len(frames), paths[0][0], paths[-1][0], sum(total.values()), total["rasterize"],
                 total["physics"], total["output"], total["write"])
    return 0


def _figure(path: Path, res, scene, label: str, overwrite: bool):
    """Matplotlib figure: the image with a colour bar, and the profile along the centre row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; use --force to overwrite it")
    img = res.image
    H, W = img.shape
    names = {"line_integral": "line integral -ln(I/I0)", "transmission": "transmission I/I0",
             "intensity": "intensity (photons x response)"}
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [1.1, 1]})
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
    plt.close(fig)


def _cmd_info(args) -> int:
    from .physics import get_material
    from .render import memory_estimate

    scene = _load(args)
    cam, spec, det = scene.camera, scene.spectrum, scene.detector
    p = print
    p(f"scene     {scene.label} ({scene.name})" + (f": {scene.description}" if scene.description else ""))
    # geometry
    cs = scene.camera_spec
    s = cam.source + 0.0  # no "-0.0"
    p("geometry")
    if cs.kind == "c_arm":
        iso = np.asarray(cs.isocenter)
        lao = cs.lao if args.lao is None else args.lao
        cran = cs.cran if args.cran is None else args.cran
        p(f"  C-arm     LAO {lao:g} deg, CRAN {cran:g} deg, {'radiological' if cs.radiological else 'source'} view")
        mag = cs.sdd / cs.sid
        p(f"  distances source-isocentre {cs.sid:g} mm, source-detector {cs.sdd:g} mm")
    else:
        lo = np.min([o.mesh.bounds[0] for o in scene.objects], axis=0)
        hi = np.max([o.mesh.bounds[1] for o in scene.objects], axis=0)
        iso = 0.5 * (lo + hi)
        _, w = cam.project(iso[None])
        mag = cam.detector_distance / float(w[0]) if cam.pixel_spacing else float("nan")
        p("  camera    raw projection matrix P (isocentre taken as the centre of the objects' bounds)")
    p(f"  source    ({s[0]:.1f}, {s[1]:.1f}, {s[2]:.1f}) mm")
    iso = np.asarray(iso, dtype=float) + 0.0
    p(f"  isocentre ({iso[0]:.1f}, {iso[1]:.1f}, {iso[2]:.1f}) mm")
    p(f"  view dir  ({cam.view_direction[0]:.3f}, {cam.view_direction[1]:.3f}, {cam.view_direction[2]:.3f})"
      " (source -> detector)")
    if cam.pixel_spacing:
        dw, dh = cam.width * cam.pixel_spacing, cam.height * cam.pixel_spacing
        p(f"  detector  {cam.width} x {cam.height} px of {cam.pixel_spacing:.4g} mm = {dw:.1f} x {dh:.1f} mm")
        p(f"  magnification {mag:.3f}; field of view at the isocentre {dw / mag:.1f} x {dh / mag:.1f} mm")
    else:
        p(f"  detector  {cam.width} x {cam.height} px (pixel spacing not given); focal length "
          f"{cam.focal_length_px:.1f} px")
    # spectrum
    sp = scene.spectrum_spec
    p("spectrum")
    if sp.kind == "tungsten":
        kvp = sp.kvp if args.kvp is None else args.kvp
        filt = ", ".join(f"{k} {v:g} mm" for k, v in (sp.filtration or {}).items()) or "none added"
        p(f"  tungsten  {kvp:g} kVp (TASMIP), filtration {filt}, {len(spec)} bins of {sp.bin_width:g} keV")
    elif sp.kind == "monochromatic":
        p(f"  monochromatic {sp.energy:g} keV")
    else:
        p(f"  from file {sp.csv} ({len(spec)} bins)")
    emean = spec.mean_energy()
    try:
        hvl = f"{spec.hvl1():.2f} mm Al"
    except ValueError as exc:
        hvl = f"n/a ({exc})"
    p(f"  mean energy {emean:.2f} keV, HVL1 {hvl}")
    sc = "ideal absorber" if det.scintillator is None else \
        f"{det.scintillator[0].name} {det.scintillator[1]:g} mm"
    p(f"detector  {'energy-integrating' if det.kind == 'energy' else 'photon-counting'}, {sc}")
    # materials
    p(f"materials (mu at the mean energy {emean:.1f} keV)")
    used: dict = {}
    for o in scene.objects:
        used.setdefault(o.material_name, (o.material, []))[1].append(o.name)
    if scene.output.air:
        used.setdefault("air", (get_material("air"), []))[1].append("(beam path)")
    p(f"  {'name':<26} {'density g/cm3':>13} {'mu 1/mm':>10} {'mu/rho cm2/g':>12}  objects")
    for name, (m, objs) in used.items():
        mu = float(m.mu([emean])[0])
        tag = " (custom)" if name in scene.materials else "" if name == m.name else f" = {m.name}"
        shown = ", ".join(objs[:4]) + (f", ... ({len(objs)})" if len(objs) > 4 else "")
        p(f"  {name + tag:<26} {m.density:>13.5g} {mu:>10.4g} {mu * 10 / m.density:>12.4g}  {shown}")
    # objects
    p(f"objects ({len(scene.objects)}, {sum(o.mesh.n_faces for o in scene.objects)} faces)")
    p(f"  {'#':>3} {'name':<20} {'material':<16} {'parent':<14} {'faces':>7} {'volume cm3':>10} "
      f"{'watertight':>10} {'outward':>7}  problems")
    for i, o in enumerate(scene.objects, 1):
        r = o.mesh.check()
        probs = "; ".join(r.problems()) or "-"
        p(f"  {i:>3} {o.name:<20} {o.material_name:<16} {o.parent or '-':<14} {r.n_faces:>7} "
          f"{r.volume / 1e3:>10.2f} {'yes' if r.watertight else 'NO':>10} {'yes' if r.outward else 'NO':>7}  {probs}")
    mem = memory_estimate(scene)
    mib = 1024 ** 2
    p(f"memory estimate ({cam.width}x{cam.height}, {len(scene.objects)} objects): {mem['total'] / mib:.1f} MiB "
      f"(rasterize {mem['rasterize'] / mib:.1f}, physics {mem['physics'] / mib:.1f}, "
      f"output {mem['output'] / mib:.1f})")
    return 0


# ----------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's own behaviour, minus the usage block)
        raise UsageError(f"{self.prog}: {message}")


def _cmd_import_labels(args) -> int:
    from .ct.scene_export import labels_to_scene, parse_assignments

    spec: dict = {}
    for item in args.labels.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            name, ids = (x.strip() for x in item.split("=", 1))
            parts = [int(x) if x.strip().lstrip("-").isdigit() else x.strip() for x in ids.split("+")]
            spec[name] = parts if len(parts) > 1 else parts[0]
        else:
            spec[item] = item
    if not spec:
        raise ValueError("--labels: no structures given")
    out = labels_to_scene(
        args.labels_file, spec, args.output,
        materials=parse_assignments(args.materials, "--materials"),
        parents=parse_assignments(args.parents, "--parents"),
        smooth_iterations=args.smooth, target_faces=args.target_faces, size=args.size, overwrite=args.force,
    )
    log.info("wrote %s and %s/", out, out.parent / f"{out.stem}_meshes")
    return 0


def _common(p):
    p.add_argument("scene", help="scene file (TOML, see docs/scene-format.md)")
    p.add_argument("--arch", choices=("cpu", "cuda", "vulkan", "metal", "auto"), default=None,
                   help="Taichi backend (default: $TAICHI_XRAY_ARCH or auto)")
    p.add_argument("--kvp", type=float, help="tube voltage (kVp), replaces the scene's (tungsten spectra)")
    p.add_argument("--lao", type=float, help="C-arm LAO angle in degrees (negative = RAO)")
    p.add_argument("--cran", type=float, help="C-arm CRAN angle in degrees (negative = CAUD)")
    p.add_argument("--size", help="detector size WxH in pixels; keeps the detector's physical width")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taichi-xray", description="Differentiable X-ray simulator for triangle meshes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors and warnings")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("render", help="render a scene to a PNG (+ projection matrix)")
    _common(r)
    r.add_argument("-o", "--output", required=True, help="PNG image; IMAGE.P.txt is written beside it")
    r.add_argument("--npy", help="also save the float image (the [output] kind) as .npy")
    r.add_argument("--tiff", help="also save the float image as float32 TIFF")
    r.add_argument("--figure", help="matplotlib figure: image with colour bar and the centre-row profile")
    r.add_argument("--sweep", help="numbered series over a parameter, e.g. lao=-90:90:5 (lao, cran or kvp)")
    r.add_argument("--force", action="store_true", help="overwrite existing outputs")
    r.add_argument("--on-nesting", choices=("raise", "warn", "ignore"), default="raise",
                   help="objects outside their declared parent: error (default), warning or ignore")
    r.set_defaults(func=_cmd_render)
    i = sub.add_parser("info", help="materials, meshes, geometry, spectrum and memory of a scene")
    _common(i)
    i.set_defaults(func=_cmd_info)
    from .viewer import add_view_subparser

    add_view_subparser(sub)
    m = sub.add_parser("import-labels", help="mesh labels of a CT label map (NIfTI) and write a scene file")
    m.add_argument("labels_file", metavar="CT_LABELS", help="NIfTI label map (labels.json beside it names the ids)")
    m.add_argument("--labels", required=True,
                   help="structures to mesh: NAME=ID or NAME=ID+ID+... (merged), or label names, comma-separated")
    m.add_argument("--materials", help="NAME=MATERIAL,... (default: cortical_bone for bones, else soft_tissue)")
    m.add_argument("--parents", help="NAME=PARENT,... for nested structures")
    m.add_argument("--smooth", type=int, default=10, help="Taubin smoothing iterations (default 10)")
    m.add_argument("--target-faces", type=int, help="coarsen each mesh to about this many faces")
    m.add_argument("--size", type=int, default=512, help="detector size in pixels (square, default 512)")
    m.add_argument("-o", "--output", required=True, help="scene file (.toml); meshes go to <stem>_meshes/")
    m.add_argument("--force", action="store_true", help="overwrite existing outputs")
    m.set_defaults(func=_cmd_import_labels)
    return parser


def _showwarning(message, category, filename, lineno, file=None, line=None):
    print(f"taichi-xray: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Entry point of ``taichi-xray``; returns the exit status."""
    from .rasterize import GeometryError

    parser = build_parser()
    quiet = False
    try:
        args = parser.parse_args(argv)
        quiet = args.quiet
    except UsageError as exc:
        print(f"taichi-xray: error: {exc}", file=sys.stderr)
        return 2
    if _HANDLER not in log.handlers:
        log.addHandler(_HANDLER)
    old_level, old_prop = log.level, log.propagate
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if args.verbose else logging.INFO)
    log.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _showwarning
            return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, GeometryError, NotADirectoryError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"taichi-xray: error: {msg}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # pragma: no cover - e.g. `taichi-xray info x.toml | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # pragma: no cover
        print("taichi-xray: interrupted", file=sys.stderr)
        return 130
    finally:
        log.setLevel(old_level)
        log.propagate = old_prop


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
