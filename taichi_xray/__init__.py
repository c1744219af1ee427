"""taichi_xray: differentiable X-ray projections of triangle meshes on Taichi.

Units: lengths in mm, energies in keV, linear attenuation in 1/mm. Images are
indexed [row, column]; the pixel at row r, column c has its centre at
(u, v) = (c, r) (OpenCV). See README.md for the conventions in full.
"""
import os as _os
import sys as _sys

# torch's OpenMP threads spin after each parallel region by default and then fight Taichi's
# CPU threads for the cores: measured here, a 256x256 torch backward took 364 ms instead of
# 5 ms next to Taichi kernels. Passive waiting fixes it; it must be set before torch loads
# OpenMP, so only when torch is not imported yet, and never over the user's own setting.
_TORCH_WAS_IMPORTED = "torch" in _sys.modules
if not _TORCH_WAS_IMPORTED:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Taichi prints a version banner on import unless told not to (it is the caller's choice when set)
_os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "false")
from .runtime import init, arch, BackendError
from .camera import Camera
from .mesh import Mesh, MeshReport, MeshWarning
from .rasterize import Raster, Rasterizer, rasterize, path_length, GeometryError, KOverflowWarning
from .pipeline import Pipeline

__version__ = "0.1.0"
