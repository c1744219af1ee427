"""``taichi-xray view SCENE``: the interactive viewer (Taichi GGUI window), or with
``--offscreen --out DIR`` a scripted camera path rendered without a window.

Exit status: 0; 2 for bad input, and for a window without a display (one line with the hint
``--offscreen``); 3 when Vulkan, which GGUI needs even for the off-screen mode, is missing
(one line naming the packages to install). The GGUI code is :mod:`taichi_xray.viewer`;
this module only parses and checks the command line, so ``taichi-xray --help`` does not load
the viewer.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .common import UsageError, add_scene_options, has_display, log, parse_size, start_backend

__all__ = ["add_parser", "run", "NO_DISPLAY"]

NO_DISPLAY = "no display for the viewer window; use --offscreen --out DIR to render frames without one"
# (also when $DISPLAY names an X server that does not answer)


def add_parser(subparsers):
    """Add ``view`` to the ``taichi-xray`` sub-commands (``subparsers`` from add_subparsers)."""
    v = subparsers.add_parser("view", help="interactive viewer (Taichi GGUI window; --offscreen for headless frames)")
    add_scene_options(v, initial=True)
    v.add_argument("--save-dir", default=".", help="folder for the save key (default: the working directory)")
    v.add_argument("--offscreen", action="store_true", help="no window: render a scripted camera path to --out")
    v.add_argument("--frames", type=int, default=24, help="off-screen: number of frames (default 24)")
    v.add_argument("--out", help="off-screen: output folder (created if missing)")
    v.add_argument("--path", choices=("lao", "cran", "orbit", "still"), default="lao",
                   help="off-screen camera path: LAO sweep (default), CRAN sweep, full orbit, or still")
    v.add_argument("--range", default="-45:45", help="off-screen sweep START:STOP in degrees (default -45:45, "
                                                     "relative to the initial LAO for --path lao)")
    v.add_argument("--save-window", action="store_true", help="off-screen: also write the whole window")
    v.add_argument("--npy", action="store_true", help="off-screen: also write the float images (.npy)")
    v.set_defaults(func=run)
    return v


def _parse_range(text) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in str(text).split(":"))
    except ValueError:
        raise UsageError(f"--range must be START:STOP in degrees, got {text!r}") from None
    return a, b


def run(args) -> int:
    """Run ``view`` for parsed ``args``; returns the exit status (0; 2 without a display;
    3 with a one-line message when Vulkan is missing). Bad input raises UsageError /
    FileNotFoundError / FileExistsError / NotADirectoryError with a clear message."""
    from .. import viewer  # GGUI; looked up at call time (tests replace viewer.vulkan_status)
    from ..scene import load_scene

    if args.offscreen:
        if not args.out:
            raise UsageError("--offscreen needs --out DIR (a folder for the frames; created if missing)")
        if args.frames < 1:
            raise UsageError(f"--frames must be >= 1, got {args.frames}")
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise NotADirectoryError(f"--out {args.out} is not a directory")
    a, b = _parse_range(args.range)
    size = parse_size(args.size) if args.size else None
    save_dir = Path(args.save_dir)
    if not args.offscreen:
        if not save_dir.is_dir():
            raise (NotADirectoryError if save_dir.exists() else FileNotFoundError)(
                f"--save-dir {save_dir} {'is not a directory' if save_dir.exists() else 'does not exist'}")
        if not has_display():
            print(f"taichi-xray: error: {NO_DISPLAY}", file=sys.stderr)
            return 2
    ok, why = viewer.vulkan_status()
    if not ok:
        print(f"taichi-xray: error: {viewer.VULKAN_HINT} ({why})", file=sys.stderr)
        return viewer.EXIT_NO_VULKAN
    scene = load_scene(args.scene)
    initial = {"lao": args.lao, "cran": args.cran, "kvp": args.kvp}
    start_backend(args)
    try:
        if args.offscreen:
            s = viewer.run_offscreen(scene, args.frames, args.out, size=size, path=args.path, start=a, stop=b,
                                     save_window=args.save_window, save_npy=args.npy, **initial)
            log.info("taichi-xray view: wrote %d frames to %s (%dx%d, %s): %.1f ms/frame, %.2f fps",
                     len(s["frames"]), args.out, s["size"][0], s["size"][1], s["arch"], s["mean_ms"], s["fps"])
            return 0
        viewer.Viewer(scene, size=size, show=True, save_dir=save_dir, **initial).run()
        return 0
    except viewer.VulkanUnavailable as exc:
        print(f"taichi-xray: error: {exc}", file=sys.stderr)
        return viewer.EXIT_NO_VULKAN
    except RuntimeError as exc:  # GLFW could not open the window (e.g. $DISPLAY names no server)
        if not str(exc).startswith("cannot open the viewer window"):
            raise
        print(f"taichi-xray: error: {exc}", file=sys.stderr)
        return 2
