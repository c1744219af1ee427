"""taichi_xray: differentiable X-ray projections of triangle meshes on Taichi.

Units: lengths in mm, energies in keV, linear attenuation in 1/mm. Images are
indexed [row, column]; the pixel at row r, column c has its centre at
(u, v) = (c, r) (OpenCV). See README.md for the conventions in full.
"""
from .runtime import init, arch
from .camera import Camera
from .mesh import Mesh, MeshReport, MeshWarning
from .rasterize import Raster, rasterize, path_length, GeometryError, KOverflowWarning

__version__ = "0.1.0"
