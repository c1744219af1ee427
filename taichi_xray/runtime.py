"""The one place where Taichi is initialised.

Every module that launches a Taichi kernel calls :func:`ensure_init` first.
The backend is chosen by :func:`init`'s ``arch`` argument, else by the
environment variable ``TAICHI_XRAY_ARCH`` (``cuda``, ``vulkan``, ``metal``,
``cpu`` or ``auto``; default ``auto``). ``auto`` takes the best GPU backend
that starts and passes a start-up check (CUDA, then Vulkan, then Metal) and
otherwise the CPU, and says which one it took. The check
(:mod:`taichi_xray.kernels.selftest`) counts atomic additions in nested
loops, which the rasterizer relies on; Mesa's software Vulkan fails it.

Taichi runs with ``fast_math=False``: the watertight coverage rule needs the
edge functions of a shared edge to be evaluated identically for both faces,
which reassociation would break.

Floating point: Taichi's ``default_fp`` is global, so it stays ``f32`` and
every kernel family in this package is specialised on the dtype of the arrays
it is given (float32 or float64).  Float64 therefore works in the same
process as float32, which the gradient checks rely on.
"""
from __future__ import annotations

import logging
import os
import warnings

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
_state = {"arch": None}


class BackendFallbackWarning(RuntimeWarning):
    """A requested GPU backend is not available; Taichi runs on the CPU."""


def _arch_name(arch) -> str:
    name = getattr(arch, "name", str(arch))
    return "cpu" if name in ("x64", "arm64") else name


def _try_init(name: str, **kw) -> str | None:
    """Initialise Taichi on ``name``; return the arch actually running."""
    try:
        ti.init(arch=getattr(ti, name), **kw)
    except Exception as exc:  # Taichi raises RuntimeError or its own errors
        log.debug("taichi backend %s failed: %s", name, exc)
        return None
    got = _arch_name(ti.lang.impl.current_cfg().arch)
    return got


def init(arch: str | None = None, *, debug: bool = False, verbose: bool = False) -> str:
    """Initialise Taichi and return the backend name in use.

    Parameters
    ----------
    arch : {"auto", "cuda", "vulkan", "metal", "cpu"}, optional
        Backend. ``None`` reads ``TAICHI_XRAY_ARCH`` (default ``"auto"``).
        A GPU backend that does not start, or that fails a start-up check
        of atomic additions (Mesa's software Vulkan loses updates), falls
        back to the CPU with a :class:`BackendFallbackWarning` that says so.
    debug : bool
        Taichi debug mode (bounds checks; slow).
    verbose : bool
        Keep Taichi's own start-up log lines.
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
    from taichi.lang.misc import is_arch_supported

    def _available(name: str) -> bool:
        if name == "cuda":  # ask the loader first: Taichi's own probe prints a warning without a driver
            import ctypes.util

            if ctypes.util.find_library("cuda") is None:
                return False
        return is_arch_supported(getattr(ti, name))

    order = [n for n in order if _available(n)]
    got = None
    why = "is not available here"
    for name in order:
        got = _try_init(name, **kw)
        if got is not None and got != "cpu":
            from .kernels.selftest import atomics_ok

            if atomics_ok():
                break
            why = "failed the start-up check (atomic additions lost updates; a software Vulkan driver?)"
            (log.info if requested == "auto" else log.warning)("taichi_xray: backend %s %s", name, why)
        got = None
    if got is None:
        if requested not in ("auto", "cpu", "x64", "arm64"):
            warnings.warn(
                f"taichi_xray: backend {requested!r} {why}; running on the CPU",
                BackendFallbackWarning,
                stacklevel=2,
            )
        got = _try_init("cpu", **kw)
        if got is None:  # pragma: no cover - Taichi itself is broken
            raise RuntimeError("taichi_xray: Taichi failed to start even on the CPU")
    _state["arch"] = got
    if got == "cpu" and "OMP_WAIT_POLICY" not in os.environ:
        import taichi_xray

        if taichi_xray._TORCH_WAS_IMPORTED:
            log.info("taichi_xray: torch was imported before taichi_xray, so its OpenMP threads spin-wait and "
                     "slow Taichi's CPU kernels down; set OMP_WAIT_POLICY=PASSIVE (or import taichi_xray first)")
    if requested == "auto" or verbose:
        log.info("taichi_xray: running on %s", got)
    return got


def ensure_init() -> str:
    """Initialise Taichi with the defaults if nobody has yet; return the backend."""
    if _state["arch"] is None:
        init()
    return _state["arch"]


def arch() -> str | None:
    """The backend in use (``None`` before initialisation)."""
    return _state["arch"]


def torch_device() -> str:
    """The torch device whose tensors the kernels read without a copy."""
    return "cuda" if ensure_init() == "cuda" else "cpu"
