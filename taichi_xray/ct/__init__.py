"""CT data: label maps to triangle meshes, and a ray-marching CT volume projector.

World frame: DICOM LPS in mm (+x patient's left, +y posterior, +z superior),
the frame of :mod:`taichi_xray.camera`. NIfTI affines map voxel indices to RAS
mm; both modules convert them to LPS by negating the x and y rows.
"""
from .labels import labels_to_meshes, load_label_names, nifti_affine_to_lps
from .projector import CTVolume, hu_to_materials

__all__ = ["labels_to_meshes", "load_label_names", "nifti_affine_to_lps", "CTVolume", "hu_to_materials"]
