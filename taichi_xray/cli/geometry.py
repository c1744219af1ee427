"""``taichi-xray geometry SCENE [TARGET ...] -o fig.png``: draw the X-ray geometry of a scene.

One 3-D panel (meshes, sources, detectors, beam frusta, patient axes L/P/S, the targets
textured onto their detectors) and one 2-D panel per view (the target with the meshes
projected on top), by :func:`taichi_xray.geometry.geometry_figure`. If the overlay does not
sit on the image, a convention is wrong.

Views: one per TARGET (.png, .npy, .tif/.tiff, .dcm). A DICOM target brings its own camera
(:func:`taichi_xray.io.read_xray`: the C-arm tags, or ``--P``); other targets use the scene's
camera (with ``--lao``/``--cran``/``--size``), or the ``--P`` file given for them (a 3x4 projection
matrix, e.g. the ``IMAGE.P.txt`` that ``render`` writes). Without targets: one view per
``--P`` file, else the scene's camera.
"""
from __future__ import annotations

from pathlib import Path

from .common import UsageError, add_scene_options, check_input_file, check_output_file, load_scene_args, log

__all__ = ["add_parser", "run", "FIGURE_SUFFIXES", "TARGET_SUFFIXES"]

FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
TARGET_SUFFIXES = (".png", ".npy", ".tif", ".tiff", ".dcm", ".dicom")


def add_parser(subparsers):
    g = subparsers.add_parser("geometry", help="figure of the scene geometry (3-D view + projected meshes on targets)")
    add_scene_options(g, arch=False, kvp=False)
    g.add_argument("targets", nargs="*", metavar="TARGET",
                   help="images to overlay, one view each: .png, .npy, .tif or .dcm (DICOM brings its own camera)")
    g.add_argument("-o", "--output", required=True, help="figure file (.png, .pdf or .svg)")
    g.add_argument("--force", action="store_true", help="overwrite an existing figure")
    g.add_argument("--max-points", type=int, default=1500, help="vertices drawn per object (default 1500)")
    g.add_argument("--P", dest="P", nargs="+", action="extend", metavar="FILE",
                   help="projection matrix files (3x4 text, e.g. IMAGE.P.txt), one per target in order (or one "
                        "view each without targets); put the targets before --P")
    g.set_defaults(func=run)
    return g


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    with path.open("rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _matrix(path) -> "object":
    import numpy as np

    p = check_input_file(path, "--P")
    try:
        M = np.loadtxt(p, comments="#", ndmin=2)
    except ValueError as exc:
        raise UsageError(f"--P {p}: not a 3x4 matrix of numbers ({exc})") from None
    if M.shape != (3, 4) or not np.isfinite(M).all():
        raise UsageError(f"--P {p}: expected a 3x4 matrix of finite numbers, got shape {M.shape}")
    return M


def _views(args, scene):
    """(image or None, Camera) per view."""
    import numpy as np

    from ..camera import Camera

    mats = [_matrix(p) for p in (args.P or [])]
    targets = [check_input_file(t, "target") for t in args.targets]
    cam0 = scene.camera
    if not targets:
        if not mats:
            return [(None, cam0)]
        return [(None, Camera.from_projection_matrix(M, cam0.width, cam0.height)) for M in mats]
    if mats and len(mats) != len(targets):
        raise UsageError(f"{len(mats)} --P files for {len(targets)} targets: give one per target")
    views = []
    for i, t in enumerate(targets):
        M = mats[i] if mats else None
        if _is_dicom(t):
            from ..io import read_xray

            x = read_xray(t, P=M)
            views.append((x.line_integral, x.camera))
            continue
        if t.suffix.lower() not in TARGET_SUFFIXES:
            raise UsageError(f"target {t}: unsupported image file (use .png, .npy, .tif or .dcm)")
        if M is None:
            views.append((t, cam0))
        else:
            from ..geometry.figure import _load_image

            img = _load_image(t, f"target {t}")
            H, W = img.shape
            views.append((np.asarray(img), Camera.from_projection_matrix(M, W, H)))
    return views


def run(args) -> int:
    from ..geometry import geometry_figure

    out = Path(args.output)
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise UsageError(f"-o/--output must be a .png, .pdf or .svg file, got {out}")
    check_output_file(out, args.force, "-o/--output")
    if args.max_points < 1:
        raise UsageError(f"--max-points must be >= 1, got {args.max_points}")
    scene = load_scene_args(args)
    views = _views(args, scene)
    targets = [(img, cam) for img, cam in views if img is not None]
    cameras = None if targets else [cam for _, cam in views]
    fig = geometry_figure(scene, targets=targets, cameras=cameras, out=out, overwrite=args.force,
                          max_points=args.max_points)
    log.info("wrote %s (%d view%s, %d objects)", out, len(fig.views), "s" if len(fig.views) != 1 else "",
             len(fig.names))
    return 0
