"""PyTorch bridge: differentiable path lengths and X-ray images of meshes."""
from .function import PipelineFunction, path_lengths
from .renderer import XRayRenderer
