"""PyTorch bridge: differentiable path lengths and X-ray images of meshes."""
from .function import PathLengthFunction, path_lengths
from .renderer import XRayRenderer
