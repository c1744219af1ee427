"""Shared helpers of the benchmark scripts: import order, machine description, timing, memory, output.

Every benchmark script starts with::

    import _common
    IMPORTS = _common.bootstrap()        # imports taichi_xray BEFORE torch, records what happened
    import torch                         # only now

so that its figures do not depend on what the caller imported first: taichi_xray sets
``OMP_WAIT_POLICY=PASSIVE`` when it is imported before torch (torch's OpenMP threads
otherwise spin after each parallel region and fight Taichi's CPU threads), and
:func:`bootstrap` records which module was imported first and the thread settings, for
the results header.

Memory (:class:`PeakMemory`): the peak resident set size of the process during a block,
measured from a baseline taken when the block starts (``gc.collect()``, glibc
``malloc_trim(0)`` so that memory freed by earlier cells is handed back to the system
and cannot be silently reused, then ``VmHWM`` reset through ``/proc/self/clear_refs``;
peak = ``VmHWM`` at the end - ``VmRSS`` at the start). Start the block *before* the
objects of the cell (rasterizer, pipeline, tensors) are created, so that their
allocations are included. On CUDA it is torch's peak allocation over the block.
:func:`tensor_bytes` adds up the bytes an object holds in torch tensors (the
rasterizer's pooled buffers, face tables, ...).
"""
from __future__ import annotations

import ctypes
import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
import time

IMPORTS: dict = {}


# ----------------------------------------------------------------------------- import order
def bootstrap(package_root: str | None = None) -> dict:
    """Import taichi_xray (from ``package_root`` when given: put first on sys.path) before torch.

    Returns (and keeps in ``IMPORTS``) a description: which of taichi_xray / torch was imported
    first, the OMP settings before and after, the package's location and version.
    """
    if package_root:
        root = os.path.abspath(package_root)
        if not os.path.isdir(os.path.join(root, "taichi_xray")):
            raise SystemExit(f"--package-root {package_root}: no taichi_xray/ folder there")
        sys.path.insert(0, root)
        for name in [m for m in sys.modules if m == "taichi_xray" or m.startswith("taichi_xray.")]:
            del sys.modules[name]
    torch_first = "torch" in sys.modules
    omp_before = os.environ.get("OMP_WAIT_POLICY")
    import taichi_xray  # noqa: F401  (sets OMP_WAIT_POLICY=PASSIVE when torch is not loaded yet)
    import torch  # noqa: F401

    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(taichi_xray.__file__)))
    if package_root and os.path.abspath(pkg_dir) != os.path.abspath(package_root):
        raise SystemExit(f"--package-root {package_root}: taichi_xray was imported from {pkg_dir} instead")
    IMPORTS.clear()
    IMPORTS.update(
        first="torch (imported by the caller before taichi_xray)" if torch_first else "taichi_xray, then torch",
        omp_before=omp_before or "(unset)",
        omp_after=os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        package_root=pkg_dir,
        package=package_description(pkg_dir),
        version=getattr(taichi_xray, "__version__", "?"),
    )
    return IMPORTS


def package_description(root: str) -> str:
    """``root`` plus its git commit (and whether taichi_xray/ has uncommitted changes), read-only."""
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        top = subprocess.run(["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                             timeout=10)
        if head.returncode == 0 and os.path.abspath(top.stdout.strip()) == os.path.abspath(root):
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "taichi_xray"],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
            return f"{root} (git {head.stdout.strip()}{', with uncommitted changes in taichi_xray/' if dirty else ''})"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{root} (not a git checkout)"


# ----------------------------------------------------------------------------- machine
def loadavg() -> str:
    """'1-min 5-min 15-min' load averages."""
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "? ? ?"


def load1() -> str:
    """The 1-minute load average alone (a table cell)."""
    return loadavg().split()[0]


def machine_info(extra: dict | None = None) -> dict:
    """Description of the machine and software for a results header (ordered dict of strings)."""
    import numpy as np
    import taichi as ti
    import torch

    from taichi_xray import runtime

    info = {}
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info["CPU"] = f"{cpu} ({platform.machine()})"
    info["cores (os.cpu_count / usable)"] = f"{os.cpu_count()} / {len(os.sched_getaffinity(0))}"
    try:
        with open("/proc/meminfo") as fh:
            info["RAM"] = f"{int(fh.readline().split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    osname = platform.platform()
    try:
        with open("/etc/os-release") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip().strip('"') + f" ({platform.release()})"
    except OSError:
        pass
    info["OS"] = osname
    info["Python"] = platform.python_version()
    ver = ti.__version__
    info["taichi"] = ".".join(map(str, ver)) if isinstance(ver, tuple) else str(ver)
    info["torch"] = torch.__version__
    info["numpy"] = np.__version__
    a = runtime.ensure_init()
    info["taichi arch"] = a
    if a == "cuda" and torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name(0)
    info["taichi_xray"] = f"{IMPORTS.get('version', '?')} from {IMPORTS.get('package', '?')}"
    info["import order"] = IMPORTS.get("first", "?")
    info["OMP_WAIT_POLICY before / after import"] = (f"{IMPORTS.get('omp_before', '?')} / "
                                                     f"{IMPORTS.get('omp_after', '?')}")
    info["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "(unset)")
    info["torch intra-op / inter-op threads"] = f"{torch.get_num_threads()} / {torch.get_num_interop_threads()}"
    info["TAICHI_XRAY_ARCH"] = os.environ.get("TAICHI_XRAY_ARCH", "(unset: auto)")
    for k, v in (extra or {}).items():
        info[k] = v
    info["load average at start (1/5/15 min)"] = loadavg()
    info["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return info


def quiet_warning(info: dict, threshold: float | None = None) -> str | None:
    """A warning line when the 1-min load average at start exceeds ``threshold`` (default: 0.5 x cores)."""
    try:
        l1 = float(info["load average at start (1/5/15 min)"].split()[0])
    except (KeyError, ValueError, IndexError):
        return None
    cores = len(os.sched_getaffinity(0))
    thr = 0.5 * cores if threshold is None else threshold
    if l1 > thr:
        return (f"the 1-min load average was {l1:.2f} at start on {cores} usable cores (> {thr:g}): the machine "
                "was not quiet; rerun for figures to compare")
    return None


def machine_markdown(info: dict) -> list[str]:
    lines = ["## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines.append(f"| load average at end (1/5/15 min) | {loadavg()} |")
    w = quiet_warning(info)
    if w:
        lines += ["", f"**Warning:** {w}."]
    return lines + [""]


# ----------------------------------------------------------------------------- timing
def sync() -> None:
    """Wait for Taichi's and torch's queued GPU work (a no-op cost on the CPU backend)."""
    import taichi as ti
    import torch

    from taichi_xray import runtime

    ti.sync()
    if runtime.arch() == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int, warmup: int = 2, max_seconds: float = float("inf")) -> dict:
    """Time ``fn()``: the first call alone, then ``warmup`` untimed calls, then up to ``repeat``
    timed calls (stopping after ``max_seconds`` once 3 are done). GPU work is synchronised
    before each timer stops. Returns {first_ms, times_ms (list), median_ms, min_ms, n, out}."""
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        out = fn()
    sync()
    times = []
    start = time.perf_counter()
    for i in range(max(repeat, 1)):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
        if i >= 2 and time.perf_counter() - start > max_seconds:
            break
    ms = [1e3 * t for t in times]
    return dict(first_ms=1e3 * first, times_ms=ms, median_ms=statistics.median(ms), min_ms=min(ms), n=len(ms),
                out=out)


def timed_interleaved(fns: dict, repeat: int, max_seconds: float = float("inf")) -> dict:
    """Time several callables round-robin: ``repeat`` rounds, each calling every ``fns[name]()``
    once (synchronised), rotating which one goes first, so that a burst of noise (other
    processes, a virtual machine's stolen time) and the cost of following another callable fall
    on all of them alike instead of on whichever block ran then. The callables must
    have had their first and warm-up calls already. Stops after ``max_seconds`` once 3 rounds
    are done. Returns {name: {times_ms, median_ms, min_ms, n}}."""
    times = {k: [] for k in fns}
    names = list(fns)
    start = time.perf_counter()
    for i in range(max(repeat, 1)):
        for j in range(len(names)):  # each round starts with the next callable (a call right after
            k = names[(i + j) % len(names)]  # another one's may find the caches cold or its threads busy)
            fn = fns[k]
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(1e3 * (time.perf_counter() - t0))
        if i >= 2 and time.perf_counter() - start > max_seconds:
            break
    return {k: dict(times_ms=v, median_ms=statistics.median(v), min_ms=min(v), n=len(v)) for k, v in times.items()}


# ----------------------------------------------------------------------------- memory
_LIBC = None


def _malloc_trim() -> None:
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        _LIBC = False


def _status() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


class PeakMemory:
    """``with PeakMemory() as pm: ...`` then ``pm.mb``: peak memory of the block above its start (MiB).

    CPU: peak RSS (``VmHWM``, reset at the start) minus the RSS at the start, after
    ``gc.collect()`` and ``malloc_trim(0)``. CUDA: torch's peak allocation minus its
    allocation at the start. ``pm.method`` says which (``"n/a"`` when /proc is missing).
    """

    def __enter__(self):
        import torch

        from taichi_xray import runtime

        self.cuda = runtime.ensure_init() == "cuda" and torch.cuda.is_available()
        gc.collect()
        _malloc_trim()
        self.method = "RSS"
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            self.method = "n/a"
        self.base = _status().get("VmRSS", 0)
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_base = torch.cuda.memory_allocated()
            self.method = "torch CUDA"
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.cuda_base
        else:
            self.bytes = max(_status().get("VmHWM", 0) - self.base, 0) if self.method == "RSS" else float("nan")
        return False

    @property
    def mb(self) -> float:
        return self.bytes / 2**20


def tensor_bytes(*objs) -> int:
    """Bytes of the distinct torch tensors reachable from objs through dicts, lists, tuples and
    the attributes of plain objects (one level: a Rasterizer's or Pipeline's attributes)."""
    import torch

    seen, total = set(), 0

    def walk(o, depth):
        nonlocal total
        if isinstance(o, torch.Tensor):
            if o.numel() == 0:
                return
            st = o.untyped_storage()
            key = (st.data_ptr(), o.device.type)
            if key not in seen:
                seen.add(key)
                total += st.nbytes()
            return
        if depth > 4:
            return
        if isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)

    for obj in objs:
        if isinstance(obj, (torch.Tensor, dict, list, tuple)):
            walk(obj, 0)
        else:
            for v in vars(obj).values():
                walk(v, 1)
    return total


def _raster_parts(rz) -> list:
    """A Rasterizer and what it keeps in helper objects: its buffer pools and its face tables."""
    parts = [rz]
    for name in ("_pool", "_host"):
        pool = getattr(rz, name, None)
        if pool is not None:
            parts.append(getattr(pool, "_b", {}))
    if getattr(rz, "_ft", None) is not None:
        parts.append(rz._ft)
    return parts


def rasterizer_bytes(rz) -> int:
    """Bytes a Rasterizer holds: its pooled buffers plus faces, face tables (traversal order and
    projection positions included), cameras."""
    return tensor_bytes(*_raster_parts(rz))


def pipeline_bytes(pipe) -> int:
    """Bytes a Pipeline holds: its rasterizers' buffers and tables plus its physics tables and ray lengths."""
    return tensor_bytes(pipe, *[p for rz in getattr(pipe, "_rz", {}).values() for p in _raster_parts(rz)])


# ----------------------------------------------------------------------------- output
def check_out(path: str | None, append: bool = False, force: bool = False) -> None:
    """Fail early (before a long run) if ``path`` exists and neither ``force`` nor ``append`` was given."""
    if path and os.path.exists(path) and not (append or force):
        raise SystemExit(f"{path} exists: pass --force to overwrite it (or --append where the script has it)")


def write_out(path: str, text: str, append: bool = False) -> None:
    """Write (or append) a results file; appended sections are separated by a rule."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    sep = "\n---\n\n" if append and os.path.exists(path) and os.path.getsize(path) > 0 else ""
    with open(path, "a" if append else "w") as fh:
        fh.write(sep + text)


def md_table(header, rows) -> list[str]:
    """Markdown table lines; ``header`` items ending in ':' are right-aligned (the colon is dropped)."""
    names = [h.rstrip(":") for h in header]
    align = ["---:" if h.endswith(":") else "---" for h in header]
    out = ["| " + " | ".join(names) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def command_line(script: str) -> str:
    return "python benchmarks/" + os.path.basename(script) + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")


def fmt(x, nd=2) -> str:
    """A number for a table cell ('-' for None/NaN)."""
    if x is None:
        return "-"
    try:
        if x != x:
            return "-"
    except TypeError:
        return str(x)
    return f"{x:.{nd}f}"
