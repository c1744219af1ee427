"""What the ``taichi-xray`` commands share: option parsing helpers, the scene options, scene
loading with command-line overrides, and starting the Taichi backend.

Command modules log through :data:`log` (``logging.getLogger("taichi_xray.cli")``): INFO
lines (e.g. ``wrote image.png ...``) are shown by default, DEBUG lines only with ``-v``.
The library's own messages (``taichi_xray`` logger: which backend, why auto fell back) are
shown only with ``-v``.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path

__all__ = ["UsageError", "parse_size", "parse_sweep", "add_scene_argument", "add_arch_option",
           "add_scene_options", "load_scene_args", "start_backend", "check_input_file", "check_output_file", "has_display", "log",
           "SWEEP_PARAMS", "ARCHES"]

log = logging.getLogger("taichi_xray.cli")
SWEEP_PARAMS = ("lao", "cran", "kvp")
ARCHES = ("cpu", "cuda", "vulkan", "metal", "auto")


class UsageError(ValueError):
    """A bad command line value (exit status 2, one line)."""


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H) positive integers."""
    parts = str(text).lower().split("x")
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


# ----------------------------------------------------------------------------------------
# shared options
# ----------------------------------------------------------------------------------------
def add_scene_argument(p) -> None:
    p.add_argument("scene", help="scene file (TOML, see docs/scene-format.md)")


def add_arch_option(p) -> None:
    p.add_argument("--arch", choices=ARCHES, default=None,
                   help="Taichi backend for the kernels (default: $TAICHI_XRAY_ARCH or auto)")


def add_scene_options(p, *, arch: bool = True, kvp: bool = True, angles: bool = True, size: bool = True,
                      initial: bool = False) -> None:
    """SCENE plus the options that override the scene: --arch, --kvp, --lao, --cran, --size.
    ``initial=True`` words the help as the viewer's starting values."""
    add_scene_argument(p)
    if arch:
        add_arch_option(p)
    first = "initial " if initial else ""
    if kvp:
        p.add_argument("--kvp", type=float, help=f"{first}tube voltage (kVp), replaces the scene's (tungsten spectra)")
    if angles:
        p.add_argument("--lao", type=float, help=f"{first}C-arm LAO angle in degrees (negative = RAO)")
        p.add_argument("--cran", type=float, help=f"{first}C-arm CRAN angle in degrees (negative = CAUD)")
    if size:
        p.add_argument("--size", help="detector size WxH in pixels; keeps the detector's physical width")


def check_input_file(path, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError / IsADirectoryError naming ``what`` otherwise."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a directory, not a file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p} not found")
    return p


def check_output_file(path, force: bool, what: str = "output") -> Path:
    """An output file that may be written: its folder exists, it is not a directory, and it
    does not exist unless ``force``."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{what} {p} is a directory; give a file name")
    if not p.parent.is_dir():
        raise UsageError(f"output directory {p.parent} does not exist (for {p})")
    if p.exists() and not force:
        raise FileExistsError(f"{p} exists; use --force to overwrite it")
    return p


def load_scene_args(args):
    """The scene of ``args.scene`` with the command line's --kvp/--lao/--cran/--size applied
    (options a command does not have count as not given)."""
    from ..scene import load_scene

    scene = load_scene(args.scene)
    size = getattr(args, "size", None)
    size = parse_size(size) if size else None
    try:
        return scene.with_overrides(kvp=getattr(args, "kvp", None), lao=getattr(args, "lao", None),
                                    cran=getattr(args, "cran", None), size=size)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{args.scene}: {exc}") from None


def start_backend(args) -> str:
    """Start Taichi on ``args.arch`` (or $TAICHI_XRAY_ARCH / auto); returns the backend.
    With -v, logs the Taichi version and the backend (the library's own messages, e.g. why
    auto passed over a GPU, are shown at -v too)."""
    from ..render import use_arch

    got = use_arch(getattr(args, "arch", None))
    import taichi as ti

    version = ".".join(str(x) for x in ti.__version__)
    log.debug("taichi-xray: Taichi %s, kernels on %s", version, got)
    return got


def has_display() -> bool:
    """Whether a window can be shown: on Linux/BSD a Wayland socket ($WAYLAND_DISPLAY) or an X
    server that accepts a connection ($DISPLAY; checked with libX11 when it is installed, as
    Taichi's GLFW would otherwise end the process); always on macOS and Windows."""
    if sys.platform == "darwin" or os.name == "nt":
        return True
    wl = os.environ.get("WAYLAND_DISPLAY")
    if wl:
        sock = wl if os.path.isabs(wl) else os.path.join(os.environ.get("XDG_RUNTIME_DIR", ""), wl)
        if os.path.exists(sock):
            return True
    if not os.environ.get("DISPLAY"):
        return False
    import ctypes
    import ctypes.util

    lib = ctypes.util.find_library("X11")
    if lib is None:  # cannot check; trust $DISPLAY
        return True
    try:
        x11 = ctypes.CDLL(lib)
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        d = x11.XOpenDisplay(None)
    except (OSError, AttributeError):  # pragma: no cover - odd libX11
        return True
    if not d:
        return False
    x11.XCloseDisplay(d)
    return True
