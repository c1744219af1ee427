"""OpenCV pinhole cameras <-> :class:`~taichi_xray.camera.Camera`.

OpenCV's model (``cv2.projectPoints`` without distortion) is
``x_cam = R @ X + t``, ``u = fx x/z + cx``, ``v = fy y/z + cy`` with the
camera's z axis pointing into the scene (here: from the X-ray source toward
the detector), x along image columns, y along image rows, and the pixel at row
r, column c centred at ``(u, v) = (c, r)``. That pixel convention and the
frame are taichi_xray's, so the conversion is ``P = K [R | t]`` both ways.

Two things OpenCV cannot express, and what we do:

* **Mirrored cameras** (``det R = -1``, e.g. ``Camera.c_arm(radiological=True)``
  for a PA beam): OpenCV's ``R`` is a proper rotation (``cv2.Rodrigues``).
  :func:`to_opencv` raises by default; with ``mirrored="flip_columns"`` it
  returns the camera of the column-flipped image ``img[:, ::-1]``
  (u -> W - 1 - u) and sets ``flip_columns=True`` on the result, so you must
  give OpenCV ``img[:, ::-1]`` and flip its 2-D outputs back
  (``u = W - 1 - u_cv``). :func:`from_opencv` with ``flip_columns=True``
  undoes it exactly.
* **Skew** (``K[0, 1] != 0``): ``cv2.projectPoints`` reads only fx, fy, cx, cy,
  so a camera with skew above ``1e-9 fx`` is refused. Lens distortion is not
  modelled: undistort the image first (``cv2.undistort``); non-zero
  distortion coefficients are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..camera import Camera
from .frames import _array
from .frames import flip_columns as _flip_columns

__all__ = ["OpenCVCamera", "to_opencv", "from_opencv"]

_SKEW_TOL = 1e-9


@dataclass(frozen=True)
class OpenCVCamera:
    """An OpenCV pinhole camera.

    K : (3, 3) intrinsics, pixels (``K[0, 1] = 0``).
    R : (3, 3) world -> camera rotation, ``det = +1``.
    t : (3,) world -> camera translation, mm.
    width, height : image size in pixels.
    flip_columns : True when this camera describes the column-flipped image
        ``img[:, ::-1]`` of a mirrored taichi_xray camera.
    pixel_spacing : detector pixel size in mm, or None (OpenCV has no such field;
        kept so that a round trip preserves it).
    """

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int
    flip_columns: bool = False
    pixel_spacing: float | None = None

    @property
    def rvec(self) -> np.ndarray:
        """Rotation vector (3,) in radians, as ``cv2.Rodrigues(R)`` returns it (flattened)."""
        from scipy.spatial.transform import Rotation

        return Rotation.from_matrix(self.R).as_rotvec()

    @property
    def tvec(self) -> np.ndarray:
        """``t`` as a (3, 1) column, the shape ``cv2.projectPoints`` takes."""
        return self.t.reshape(3, 1).copy()

    @property
    def dist(self) -> np.ndarray:
        """Distortion coefficients (5,): zeros (taichi_xray cameras are ideal pinholes)."""
        return np.zeros(5)

    def project(self, points) -> np.ndarray:
        """OpenCV's distortion-free projection of world points (N, 3) -> (N, 2) pixels,
        written out in numpy (equal to ``cv2.projectPoints(points, rvec, tvec, K, dist)``)."""
        X = _array("points", points)
        if X.ndim != 2 or X.shape[1] != 3:
            raise ValueError(f"points must have shape (N, 3), got {X.shape}")
        x = X @ self.R.T + self.t
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        return np.stack([fx * x[:, 0] / x[:, 2] + cx, fy * x[:, 1] / x[:, 2] + cy], axis=1)


def to_opencv(cam: Camera, mirrored: str = "raise") -> OpenCVCamera:
    """OpenCV camera (K, R, t) of a taichi_xray Camera.

    mirrored : "raise" (default) or "flip_columns": what to do when ``cam.mirrored``
        (det R = -1). "flip_columns" returns the camera of ``img[:, ::-1]`` with
        ``flip_columns=True``.
    """
    if not isinstance(cam, Camera):
        raise TypeError(f"cam must be a taichi_xray Camera, got {type(cam).__name__}")
    if mirrored not in ("raise", "flip_columns"):
        raise ValueError(f"mirrored must be 'raise' or 'flip_columns', got {mirrored!r}")
    flipped = False
    if cam.mirrored:
        if mirrored == "raise":
            raise ValueError(
                "camera is mirrored (det R = -1, e.g. Camera.c_arm(radiological=True)); OpenCV "
                "rotations are proper. Pass mirrored='flip_columns' to get the camera of the "
                "column-flipped image img[:, ::-1] (then flip OpenCV's u back: u = W - 1 - u_cv)")
        cam = _flip_columns(cam)
        flipped = True
    K = np.array(cam.K, dtype=np.float64)
    if abs(K[0, 1]) > _SKEW_TOL * K[0, 0]:
        raise ValueError(f"camera has skew K[0,1] = {K[0, 1]:.3g} px; OpenCV's projectPoints ignores "
                         "skew, so this camera cannot be expressed exactly")
    K[0, 1] = 0.0
    return OpenCVCamera(K=K, R=np.array(cam.R), t=np.array(cam.t), width=cam.width, height=cam.height,
                        flip_columns=flipped, pixel_spacing=cam.pixel_spacing)


def from_opencv(K, R, t, width: int, height: int, pixel_spacing: float | None = None,
                flip_columns: bool = False, dist=None) -> Camera:
    """taichi_xray Camera from OpenCV intrinsics and extrinsics.

    K : (3, 3) intrinsics (pixels; skew ignored by OpenCV is refused).
    R : (3, 3) rotation matrix or rotation vector (3,) / (3, 1) in radians (``rvec``).
    t : (3,) or (3, 1) translation in mm (``tvec``).
    width, height : image size in pixels.
    pixel_spacing : detector pixel size in mm (optional; places the detector plane).
    flip_columns : the OpenCV camera describes ``img[:, ::-1]`` (as returned by
        ``to_opencv(cam, mirrored="flip_columns")``); the result describes ``img``.
    dist : optional distortion coefficients; must be all zero.
    """
    K = _array("K", K, (3, 3))
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0 or K[2, 0] != 0:
        raise ValueError(f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {K.tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K's focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    if abs(K[0, 1]) > _SKEW_TOL * K[0, 0]:
        raise ValueError("K has skew (K[0,1] != 0), which OpenCV's projectPoints ignores")
    R = _array("R", R)
    if R.shape in ((3,), (3, 1), (1, 3)):
        from scipy.spatial.transform import Rotation

        R = Rotation.from_rotvec(R.ravel()).as_matrix()
    if R.shape != (3, 3):
        raise ValueError(f"R must be a (3, 3) rotation matrix or a rotation vector (3,), got {R.shape}")
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-6):
        raise ValueError("R is not orthogonal")
    if np.linalg.det(R) < 0:
        raise ValueError("R has det -1; OpenCV rotations are proper. A mirrored image is described "
                         "by the camera of img[:, ::-1] with flip_columns=True")
    t = _array("t", t)
    if t.size != 3:
        raise ValueError(f"t must have 3 elements, got shape {t.shape}")
    if dist is not None and np.any(_array("dist", dist) != 0):
        raise ValueError("lens distortion is not modelled: undistort the image first (cv2.undistort) "
                         "and pass dist=None")
    cam = Camera.from_intrinsics(K, R, t.ravel(), width, height, pixel_spacing)
    return _flip_columns(cam) if flip_columns else cam
