"""Backend selection: argument, environment variable, fallback to the CPU with a warning.

Each case runs in a fresh interpreter: Taichi's initialisation is process-global.
"""
import os
import subprocess
import sys

import pytest

HAS_CUDA = False
try:
    from taichi.lang.misc import is_arch_supported
    import taichi as ti

    HAS_CUDA = is_arch_supported(ti.cuda)
except Exception:  # pragma: no cover
    pass


def run(code, env_arch=None):
    env = dict(os.environ)
    env.pop("TAICHI_XRAY_ARCH", None)
    if env_arch is not None:
        env["TAICHI_XRAY_ARCH"] = env_arch
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_cpu_by_argument_and_by_environment():
    p = run("import taichi_xray as tx; print('ARCH', tx.init('cpu'), tx.arch())")
    assert "ARCH cpu cpu" in p.stdout, p.stderr
    p = run("import taichi_xray as tx; from taichi_xray.runtime import ensure_init; print('ARCH', ensure_init())",
            env_arch="cpu")
    assert "ARCH cpu" in p.stdout, p.stderr


def test_unknown_backend_is_an_error_naming_its_source():
    p = run("import taichi_xray as tx; tx.init('tpu')")
    assert p.returncode != 0 and "unknown Taichi backend 'tpu'" in p.stderr and "argument arch" in p.stderr
    p = run("import taichi_xray as tx; tx.init()", env_arch="quantum")
    assert p.returncode != 0 and "TAICHI_XRAY_ARCH" in p.stderr


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA; the fallback is tested where it has none")
def test_missing_gpu_falls_back_to_cpu_and_says_so():
    code = ("import warnings, taichi_xray as tx\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    got = tx.init('cuda')\n"
            "print('ARCH', got, [str(x.message) for x in w if x.category.__name__ == 'BackendFallbackWarning'])\n")
    p = run(code)
    assert "ARCH cpu" in p.stdout, p.stderr
    assert "'cuda' is not available here; running on the CPU" in p.stdout


def test_auto_picks_something_that_runs_a_kernel():
    code = ("import numpy as np, taichi_xray as tx\n"
            "got = tx.init('auto')\n"
            "from reference import icosphere\n"
            "cam = tx.Camera.c_arm(sid=500, sdd=800, width=16, height=16, pixel_spacing=4.0)\n"
            "L = tx.path_length(tx.Mesh(*icosphere(30.0, 1)), cam)\n"
            "print('ARCH', got, float(L.max()) > 0)\n")
    env_code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})\n" + code
    p = run(env_code)
    assert "True" in p.stdout.split("ARCH", 1)[-1], p.stderr
