"""``taichi-xray register SCENE TARGET [TARGET ...] --objects NAMES -o OUTDIR``: fit the pose of
some objects of a scene to X-ray images.

Estimates the rigid transform of the named objects (as one body; with ``--shape-model`` also
the coefficients of a shape model of them) that makes the scene's render match the target(s),
starting from the scene as given plus ``--init``. The named objects may include CT volumes
(``[[volume]]`` names; the meshes inside a named volume follow it). The other objects stay where
the scene puts them. Built on :func:`taichi_xray.fit.scene_register.register_scene` (see docs/registration.md).

Targets: DICOM files (camera from their tags), PNG / NPY / TIFF with ``IMAGE.P.txt`` beside them,
or one image without geometry (the scene's camera; several with ``--views LAO:CRAN,...``).
Masks of the collimated field come from the DICOM shutter tags, else from detection
(``--no-mask``: every pixel). Writes ``OUTDIR/result.json``, ``OUTDIR/meshes/NAME.stl`` (the
fitted pose of each moving mesh; volumes: the transform in result.json) and
``OUTDIR/registration.png``; nothing is overwritten without ``--force``.
"""
from __future__ import annotations

import math
from pathlib import Path

from .common import UsageError, add_arch_option, add_scene_argument, check_input_file, log, start_backend

__all__ = ["add_parser", "run", "parse_init", "parse_views"]


def add_parser(subparsers):
    r = subparsers.add_parser("register", help="fit the pose (and shape) of scene objects to X-ray images",
                              description="Fit the rigid pose (and optionally the shape) of some objects of a "
                                          "scene to X-ray images; see docs/registration.md.")
    add_scene_argument(r)
    r.add_argument("targets", nargs="+", metavar="TARGET",
                   help="X-ray images, one per view: DICOM (.dcm or any name), or .png/.npy/.tif with IMAGE.P.txt")
    r.add_argument("--objects", required=True,
                   help="objects and/or volumes to move as one body: comma-separated names or patterns (e.g. "
                        "'sacrum,hip_*,femur_*', or a [[volume]] name); objects nested in them follow")
    r.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    add_arch_option(r)
    r.add_argument("--init", default=None, metavar="DX,DY,DZ,RX,RY,RZ",
                   help="starting offset of the objects: mm and degrees (R = Rz Ry Rx) about their centroid "
                        "(a moving volume's: its body centroid; write --init=-3,0,... when the first value is "
                        "negative)")
    r.add_argument("--polarity", default="auto", choices=("auto", "dense-bright", "dense-dark"),
                   help="how dense anatomy looks in the displayed targets (default: from tags, else detected, "
                        "then checked against the initial render)")
    r.add_argument("--no-mask", action="store_true", help="use every pixel (no collimator mask)")
    r.add_argument("--mask-margin", type=int, default=2, metavar="PX",
                   help="erode the collimator mask by this many pixels (default 2)")
    r.add_argument("--schedule", default=None, metavar="F:N:LR,...",
                   help="levels FACTOR:ITERATIONS:LR, coarse to fine (default: about 64, 128 and 256 px across)")
    r.add_argument("--loss", default=None, help="similarity: patch_ngc (default: NGC per patch, a quarter of the image "
                                                "across), ngc, robust_ngc, multiscale_ngc, ncc or mse")
    r.add_argument("--views", default=None, metavar="LAO:CRAN,...",
                   help="C-arm angles of targets without geometry (one per target; the scene's camera otherwise)")
    r.add_argument("--isocenter", default=None, metavar="X,Y,Z",
                   help="C-arm isocentre (mm, LPS) for DICOM targets read from their standard tags (no tag holds "
                        "it; default: the scene's C-arm isocentre)")
    r.add_argument("--shape-model", default=None, metavar="FILE",
                   help="shape model (.npz, ShapeModel.save) over the moving objects' vertices: pose + shape")
    r.add_argument("--starts", type=int, default=1, help="multi-start: number of starts (default 1)")
    r.add_argument("--no-figure", action="store_true", help="skip registration.png")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--force", action="store_true", help="overwrite existing outputs")
    r.set_defaults(func=run)
    return r


def parse_init(text):
    """'dx,dy,dz,rx,ry,rz' -> 6 floats (mm, degrees)."""
    if text is None:
        return None
    try:
        vals = [float(x) for x in str(text).split(",")]
    except ValueError:
        raise UsageError(f"--init must be 6 numbers dx,dy,dz,rx,ry,rz (mm, degrees), got {text!r}") from None
    if len(vals) != 6 or not all(math.isfinite(v) for v in vals):
        raise UsageError(f"--init must be 6 finite numbers dx,dy,dz,rx,ry,rz (mm, degrees), got {text!r}")
    return vals


def parse_views(text, n_targets: int):
    """'0:0,90:0' -> [(0, 0), (90, 0)], one per target."""
    if text is None:
        return None
    out = []
    for part in (p for p in text.split(",") if p.strip()):
        bits = part.split(":")
        try:
            lao, cran = float(bits[0]), float(bits[1]) if len(bits) > 1 else 0.0
            if len(bits) > 2:
                raise ValueError
        except (ValueError, IndexError):
            raise UsageError(f"--views must be LAO:CRAN pairs in degrees separated by commas, got {part!r}") from None
        out.append((lao, cran))
    if len(out) != n_targets:
        raise UsageError(f"--views gives {len(out)} views for {n_targets} targets: give one LAO:CRAN per target")
    return out


def run(args) -> int:
    import numpy as np

    from ..fit import scene_register as sr
    from ..scene import load_scene

    scene_path = check_input_file(args.scene, "scene")
    targets = [check_input_file(t, "target") for t in args.targets]
    init = parse_init(args.init)
    views = parse_views(args.views, len(targets))
    iso = None
    if args.isocenter is not None:
        try:
            iso = [float(x) for x in args.isocenter.split(",")]
        except ValueError:
            iso = []
        if len(iso) != 3 or not all(math.isfinite(v) for v in iso):
            raise UsageError(f"--isocenter must be 3 numbers X,Y,Z in mm, got {args.isocenter!r}")
    if args.schedule is not None:
        try:
            sr.parse_schedule(args.schedule)
        except ValueError as exc:
            raise UsageError(f"--schedule: {exc}") from None
    loss = args.loss or sr.DEFAULT_LOSS
    from ..fit.register import LOSSES

    if loss not in LOSSES:
        raise UsageError(f"--loss: unknown loss {loss!r}; choose one of {', '.join(sorted(LOSSES))}")
    if args.starts < 1:
        raise UsageError(f"--starts must be >= 1, got {args.starts}")
    if args.mask_margin < 0:
        raise UsageError(f"--mask-margin must be >= 0, got {args.mask_margin}")
    if args.shape_model is not None:
        check_input_file(args.shape_model, "shape model")
    scene = load_scene(scene_path)
    moving = sr.select_objects(scene, args.objects)  # names checked before anything is rendered
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"-o {out} exists and is not a directory")
    if not out.parent.is_dir():
        raise UsageError(f"the folder of -o {out} ({out.parent}) does not exist")
    names = sr.object_names(scene)
    paths = sr.output_paths(out, [names[i] for i in moving if i < len(scene.names)])  # volumes: no mesh file
    if args.no_figure:
        paths = [p for p in paths if p.name != "registration.png"]
    clash = [str(p) for p in paths if p.exists()]
    if clash and not args.force:
        raise FileExistsError(f"{', '.join(clash)} exist(s); use --force to overwrite")
    start_backend(args)
    log.debug("register: moving %s", ", ".join(names[i] for i in moving))
    reg = sr.register_scene(scene, targets, moving, init=init, polarity=args.polarity, use_mask=not args.no_mask,
                            mask_margin_px=args.mask_margin, schedule=args.schedule, loss=loss,
                            shape_model=args.shape_model, views=views, isocenter=iso, n_starts=args.starts,
                            progress=not args.no_progress)
    written = sr.write_registration(reg, out, force=True, figure=not args.no_figure)
    r, t = reg.rotation_deg, reg.translation_mm
    log.info("registered %s: rotation (x, y, z) %s deg, translation %s mm about %s mm; loss %.4f, %.1f s",
             ", ".join(reg.objects), np.array2string(r, precision=2), np.array2string(t, precision=2),
             np.array2string(reg.centre_mm, precision=1), reg.result.loss, reg.time_s)
    for note in reg.notes:
        log.info("note: %s", note)
    meshes = [p for p in written if p.suffix == ".stl"]
    others = [str(p) for p in written if p.suffix != ".stl"]
    log.info("wrote %s and %d mesh(es) in %s", ", ".join(others), len(meshes), out / "meshes")
    return 0
