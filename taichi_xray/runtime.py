"""The one place where Taichi is initialised.

Every module that launches a Taichi kernel calls :func:`ensure_init` first.
The backend is chosen by :func:`init`'s ``arch`` argument, else by the
environment variable ``TAICHI_XRAY_ARCH`` (``cuda``, ``vulkan``, ``metal``,
``cpu`` or ``auto``; default ``auto``).

* ``auto`` takes the best GPU backend that starts and passes a start-up check
  (CUDA, then Vulkan, then Metal), otherwise the CPU, and logs which one it
  took and why the others were passed over.
* An explicit request (``cuda``, ``vulkan``, ``metal``) that cannot be served
  raises :class:`BackendError` with the underlying reason; it never falls back
  in silence.

The start-up check (:mod:`taichi_xray.kernels.selftest`) counts atomic
additions in nested loops, which the rasterizer relies on. Mesa's software
Vulkan (llvmpipe) fails it: Taichi's compute on it loses updates. Compute then
runs on the CPU; the viewer's window still uses Vulkan for drawing.

Taichi runs with ``fast_math=False``: the watertight coverage rule needs the
edge functions of a shared edge to be evaluated identically for both faces,
which reassociation would break. Taichi's own start-up lines are not printed
(``verbose=True`` keeps them).

Floating point: Taichi's ``default_fp`` is global, so it stays ``f32`` and
every kernel family in this package is specialised on the dtype of the arrays
it is given (float32 or float64). Float64 therefore works in the same
process as float32, which the gradient checks rely on.

torch next to Taichi on the CPU: torch's OpenMP threads spin after each
parallel region and then fight Taichi's threads for the cores (measured: a
forward+backward took 190 ms instead of 55 ms). ``import taichi_xray`` before
torch sets ``OMP_WAIT_POLICY=PASSIVE``, which prevents it; when torch was
imported first (too late for that), :func:`init` on the CPU limits torch to
one intra-op thread (the heavy work runs in Taichi) unless
``TAICHI_XRAY_KEEP_TORCH_THREADS=1``; either way the import order does not
change the speed.

Device residency (:func:`resident`): on Vulkan, Metal and OpenGL/GLES, Taichi
copies every torch or numpy array argument host -> device before each launch
and back after it (torch has no tensors on those devices). On these backends
the rasterizer and the physics stage of :meth:`Pipeline.render
<taichi_xray.pipeline.Pipeline.render>` (and the Taichi-tape fit,
:class:`~taichi_xray.fit.taichi_fit.TaichiPoseLoss`) keep their arrays as ``ti.ndarray``
allocated once on the device (see :mod:`taichi_xray.kernels.buffers`), so per
frame only the vertices go in and the image comes out (docs/backends.md). ``TAICHI_XRAY_RESIDENT=1``
forces it on any backend (``0`` turns it off); the variable is read once, when
Taichi is initialised. CPU and CUDA do not need it (torch tensors already live
where the kernels run) and keep torch buffers.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os

import taichi as ti

log = logging.getLogger("taichi_xray")

_ARCHES = {
    "cuda": "cuda",
    "gpu": "gpu",
    "vulkan": "vulkan",
    "metal": "metal",
    "cpu": "cpu",
    "x64": "cpu",
    "arm64": "cpu",
}
_state = {"arch": None, "resident": False}
_RESIDENT_ARCHES = ("vulkan", "metal", "opengl", "gles")


class BackendError(RuntimeError):
    """An explicitly requested backend cannot be used; the message gives the reason."""


class BackendFallbackWarning(RuntimeWarning):
    """Kept for compatibility: ``auto`` logs its choices instead of warning."""


SOFTWARE_VULKAN = ("the Vulkan device is a software renderer (Mesa llvmpipe?) whose atomic additions lose updates "
                   "under Taichi, so Taichi's compute cannot run on it: compute runs on the CPU (the viewer's window "
                   "still draws with Vulkan)")


def _arch_name(arch) -> str:
    name = getattr(arch, "name", str(arch))
    return "cpu" if name in ("x64", "arm64") else name


def _try_init(name: str, verbose: bool, **kw):
    """Initialise Taichi on ``name``; return (arch actually running, or None; reason)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out) if not verbose else contextlib.nullcontext():
            ti.init(arch=getattr(ti, name), **kw)
    except Exception as exc:  # Taichi raises RuntimeError or its own errors
        return None, f"{type(exc).__name__}: {exc}".strip()
    return _arch_name(ti.lang.impl.current_cfg().arch), ""


def _available(name: str) -> tuple[bool, str]:
    if name == "cuda":  # ask the loader first: Taichi's own probe prints a warning without a driver
        import ctypes.util

        if ctypes.util.find_library("cuda") is None:
            return False, "no CUDA driver library (libcuda) was found"
    from taichi.lang.misc import is_arch_supported

    with contextlib.redirect_stdout(io.StringIO()):
        ok = is_arch_supported(getattr(ti, name))
    return bool(ok), "" if ok else f"this Taichi build or machine does not support {name}"


def init(arch: str | None = None, *, debug: bool = False, verbose: bool = False) -> str:
    """Initialise Taichi and return the backend name in use.

    Parameters
    ----------
    arch : {"auto", "cuda", "vulkan", "metal", "cpu"}, optional
        Backend. ``None`` reads ``TAICHI_XRAY_ARCH`` (default ``"auto"``).
        ``auto`` falls back to the CPU (and logs why); an explicit GPU backend that does
        not start or fails the start-up check raises :class:`BackendError` with the reason.
    debug : bool
        Taichi debug mode (bounds checks; slow).
    verbose : bool
        Keep Taichi's own start-up lines and log level INFO.
    """
    requested = (arch or os.environ.get("TAICHI_XRAY_ARCH") or "auto").strip().lower()
    if requested != "auto" and requested not in _ARCHES:
        raise ValueError(
            f"unknown Taichi backend {requested!r} (from "
            f"{'argument arch' if arch else 'TAICHI_XRAY_ARCH'}); "
            f"choose one of auto, cuda, vulkan, metal, cpu"
        )
    kw = dict(
        default_fp=ti.f32,
        default_ip=ti.i32,
        debug=debug,
        log_level=ti.INFO if verbose else ti.WARN,
        offline_cache=True,
        fast_math=False,
    )
    if requested == "auto":
        order = ["cuda", "vulkan", "metal"]
    elif _ARCHES[requested] == "cpu":
        order = []
    else:
        order = [_ARCHES[requested]]
    got, reasons = None, []
    for name in order:
        ok, why = _available(name)
        if ok:
            got, why = _try_init(name, verbose, **kw)
            if got is not None and got != "cpu":
                from .kernels.selftest import atomics_ok

                if atomics_ok():
                    break
                why = SOFTWARE_VULKAN if name == "vulkan" else "it failed the start-up check (atomic additions " \
                                                                  "lost updates)"
            elif got == "cpu":
                why = f"Taichi started on the CPU instead of {name}"
        got = None
        reasons.append(f"{name}: {why}")
        if requested != "auto":
            raise BackendError(f"taichi_xray: the requested backend {name!r} cannot be used: {why}. "
                               "Use --arch cpu / TAICHI_XRAY_ARCH=cpu (or auto) to run on the CPU.")
    if got is None:
        got, why = _try_init("cpu", verbose, **kw)
        if got is None:  # pragma: no cover - Taichi itself is broken
            raise BackendError(f"taichi_xray: Taichi failed to start even on the CPU: {why}")
        if reasons:
            log.info("taichi_xray: no GPU backend (%s); running on the CPU", "; ".join(reasons))
    _state["arch"] = got
    forced = os.environ.get("TAICHI_XRAY_RESIDENT", "").strip().lower()
    if forced not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"TAICHI_XRAY_RESIDENT must be 0 or 1, got {forced!r}")
    _state["resident"] = (forced in ("1", "true", "yes", "on")) if forced else got in _RESIDENT_ARCHES
    if got == "cpu":
        _limit_torch_threads()
    if requested == "auto" or verbose:
        log.info("taichi_xray: running on %s", got)
    return got


def _limit_torch_threads() -> None:
    import sys

    import taichi_xray

    if not taichi_xray._TORCH_WAS_IMPORTED or "torch" not in sys.modules:
        return
    if os.environ.get("OMP_WAIT_POLICY", "").lower() == "passive" or os.environ.get("TAICHI_XRAY_KEEP_TORCH_THREADS"):
        return
    torch = sys.modules["torch"]
    if torch.get_num_threads() > 1:
        torch.set_num_threads(1)
        log.info("taichi_xray: torch was imported before taichi_xray, so its OpenMP threads would spin and slow "
                 "Taichi's CPU kernels down; torch now uses one intra-op thread (import taichi_xray first, set "
                 "OMP_WAIT_POLICY=PASSIVE, or TAICHI_XRAY_KEEP_TORCH_THREADS=1 to keep them)")


def ensure_init() -> str:
    """Initialise Taichi with the defaults if nobody has yet; return the backend."""
    if _state["arch"] is None:
        init()
    return _state["arch"]


def arch() -> str | None:
    """The backend in use (``None`` before initialisation)."""
    return _state["arch"]


def resident() -> bool:
    """Whether the kernels' persistent arrays are ``ti.ndarray`` kept on the device (Vulkan, Metal,
    OpenGL/GLES, or ``TAICHI_XRAY_RESIDENT=1``, read at initialisation); initialises Taichi if needed."""
    ensure_init()
    return _state["resident"]


def torch_device() -> str:
    """The torch device whose tensors the kernels read without a copy."""
    return "cuda" if ensure_init() == "cuda" else "cpu"
