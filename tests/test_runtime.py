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


def run(code, env_arch=None, fresh=False):
    env = dict(os.environ)
    env.pop("TAICHI_XRAY_ARCH", None)
    if fresh:  # as a new shell: without what importing taichi_xray in this process set
        for k in ("OMP_WAIT_POLICY", "ENABLE_TAICHI_HEADER_PRINT"):
            env.pop(k, None)
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


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA; the missing-GPU error is tested where it has none")
def test_explicit_missing_gpu_raises_with_the_reason_and_auto_falls_back():
    p = run("import taichi_xray as tx; tx.init('cuda')")
    assert p.returncode != 0
    assert "BackendError" in p.stderr and "'cuda' cannot be used" in p.stderr and "libcuda" in p.stderr, p.stderr
    code = ("import logging, taichi_xray as tx\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "print('ARCH', tx.init('auto'))\n")
    p = run(code)
    assert "ARCH" in p.stdout, p.stderr
    if "ARCH cpu" in p.stdout:  # the log says why no GPU backend was taken
        assert "no GPU backend (cuda: " in p.stderr, p.stderr


def test_quiet_start_and_torch_first_is_as_fast():
    """No Taichi banner; importing torch first limits torch's spinning OpenMP threads."""
    p = run("import torch; import taichi_xray as tx; tx.init('cpu'); import torch; print('T', torch.get_num_threads())",
            fresh=True)
    assert p.returncode == 0, p.stderr
    assert "[Taichi]" not in p.stdout + p.stderr
    assert "T 1" in p.stdout
    p = run("import taichi_xray as tx; import torch; tx.init('cpu'); import os; print('P', os.environ['OMP_WAIT_POLICY'])",
            fresh=True)
    assert "P PASSIVE" in p.stdout, p.stderr


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
