"""DeepDRR devices (``MobileCArm``, ``SimpleDevice``, any ``Device``) -> :class:`~taichi_xray.camera.Camera`.

Read from DeepDRR (arcadelab/deepdrr, commit cb2cb3a, 2025-09:
``deepdrr/device/device.py``, ``mobile_carm.py``, ``simple_device.py``,
``projector/project_kernel.cu``) and killeengeo 0.0.5 (``core.py``,
``CameraIntrinsicTransform``):

* *camera3d* frame: source at the origin, z from the source toward the
  detector, x along image columns, y along rows: OpenCV's frame.
* ``index_from_world = K @ camera3d_from_world`` with
  ``K = [[sdd/px, 0, W/2], [0, sdd/py, H/2], [0, 0, 1]]``
  (``CameraIntrinsicTransform.from_sizes``). The CUDA kernel traces pixel
  (row v, column u) through index ``(u + 0.5, v + 0.5)`` (pixel corners at
  integers), so our ``cx = W/2 - 0.5``: :func:`camera_from_deepdrr` shifts by
  half a pixel. Images are returned as ``[row, column]`` (``swapaxes`` after the kernel).
* *world*: whatever the user placed the volume in. A ``Volume.from_nifti`` with the
  default ``world_from_anatomical`` (identity) has world = the file's **RAS**;
  ``faceup()`` and friends change it. Give it with ``world=``: "RAS", "LPS", or a
  (4, 4) ``lps_from_world`` matrix.
* ``MobileCArm``: ``camera3d_from_device = G(gamma) @ Rz(90 deg if rotate_camera_left)
  @ T(0, -horizontal_offset, vertical_distance) @ inv(T(isocenter) @ R)`` with
  ``R = Rotation.from_euler("xy", [alpha, beta])`` (extrinsic x then y, i.e.
  ``Ry(beta) @ Rx(alpha)``); ``camera3d_from_world = camera3d_from_device @ device_from_world``.
"""
from __future__ import annotations

import numpy as np

from ..camera import Camera
from .frames import LPS_FROM_RAS, _array, as_transform, rigid

__all__ = ["camera_from_deepdrr", "deepdrr_from_camera", "camera_from_deepdrr_carm"]


def _lps_from_world(world) -> np.ndarray:
    if isinstance(world, str):
        w = world.upper()
        if w == "RAS":
            return LPS_FROM_RAS.copy()
        if w == "LPS":
            return np.eye(4)
        raise ValueError(f"world must be 'RAS', 'LPS' or a (4, 4) lps_from_world matrix, got {world!r}")
    return as_transform("world (lps_from_world)", world)


def camera_from_deepdrr(intrinsic, camera3d_from_world, sensor_width: int, sensor_height: int, *,
                        world, pixel_size: float | None = None) -> Camera:
    """Camera of any DeepDRR device: ``intrinsic = device.camera_intrinsics.data`` (3, 3, DeepDRR's
    index convention: pixel centres at ``c + 0.5``) and ``camera3d_from_world =
    device.camera3d_from_world.data`` (4, 4).

    world : the frame of DeepDRR's world: "RAS" (a NIfTI volume with the default
        ``world_from_anatomical``), "LPS", or a (4, 4) matrix ``lps_from_world``.
    pixel_size : mm (square pixels; places the detector plane). Optional.
    """
    K = _array("intrinsic", intrinsic, (3, 3))
    E = as_transform("camera3d_from_world", camera3d_from_world)
    shift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    P = shift @ K @ (E @ np.linalg.inv(_lps_from_world(world)))[:3]
    return Camera.from_projection_matrix(P, int(sensor_width), int(sensor_height), pixel_size)


def deepdrr_from_camera(cam: Camera, *, world) -> dict:
    """DeepDRR ``intrinsic`` (3, 3, index convention) and ``camera3d_from_world`` (4, 4, a proper
    rigid transform) reproducing ``cam``, plus ``sensor_width``, ``sensor_height`` and
    ``pixel_size`` (``cam.pixel_spacing``). Build ``geo.CameraIntrinsicTransform(intrinsic,
    sensor_height, sensor_width)`` and ``geo.FrameTransform(camera3d_from_world)`` from them.

    A mirrored camera (det R = -1) is expressed with a negative ``intrinsic[0, 0]`` and
    x axis reversed in camera3d, so that camera3d_from_world stays a rotation;
    DeepDRR's projector only uses ``world_from_index`` and accepts this.
    """
    K, R, t = np.array(cam.K), np.array(cam.R), np.array(cam.t)
    if cam.mirrored:
        D = np.diag([-1.0, 1.0, 1.0])
        K, R, t = K @ D, D @ R, D @ t
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    E = rigid(R, t) @ _lps_from_world(world)
    return dict(intrinsic=shift @ K, camera3d_from_world=E, sensor_width=cam.width,
                sensor_height=cam.height, pixel_size=cam.pixel_spacing)


def camera_from_deepdrr_carm(*, world, alpha: float = 0.0, beta: float = 0.0, gamma: float = 0.0,
                             degrees: bool = True, isocenter=(0.0, 0.0, 0.0), world_from_device=None,
                             source_to_detector_distance: float = 1020.0,
                             source_to_isocenter_vertical_distance: float = 530.0,
                             source_to_isocenter_horizontal_offset: float = 0.0,
                             sensor_height: int = 1536, sensor_width: int = 1536, pixel_size: float = 0.194,
                             rotate_camera_left: bool = True) -> Camera:
    """Camera of ``deepdrr.MobileCArm(...)`` with these arguments (same names and defaults: a
    Siemens Cios Fusion), computed without DeepDRR.

    alpha, beta, gamma : orbital (alpha > 0: RAO in DeepDRR's words), angulation (beta > 0:
        CAU) and detector rotation about the principal ray, in degrees unless ``degrees=False``.
    isocenter : (3,) mm in the device frame; world_from_device : (4, 4), default identity.
    world : the frame of DeepDRR's world, see :func:`camera_from_deepdrr`.
    Note: DeepDRR clips alpha to [-40, 110] and beta to [-225, 225] degrees; this does not.
    """
    from scipy.spatial.transform import Rotation

    a, b, g = (np.deg2rad(x) if degrees else float(x) for x in (alpha, beta, gamma))
    iso = _array("isocenter", np.ravel(isocenter), (3,))
    device_from_arm = rigid(Rotation.from_euler("xy", [a, b]).as_matrix(), iso)
    cam3d_from_arm = rigid(np.eye(3), [0.0, -float(source_to_isocenter_horizontal_offset),
                                       float(source_to_isocenter_vertical_distance)])
    if rotate_camera_left:
        cam3d_from_arm = rigid(Rotation.from_euler("z", 90, degrees=True).as_matrix()) @ cam3d_from_arm
    cam3d_from_device = rigid(Rotation.from_euler("z", g).as_matrix()) @ cam3d_from_arm @ np.linalg.inv(device_from_arm)
    wfd = np.eye(4) if world_from_device is None else as_transform("world_from_device", world_from_device)
    sdd, ps = float(source_to_detector_distance), float(pixel_size)
    if not (sdd > 0 and ps > 0):
        raise ValueError(f"source_to_detector_distance and pixel_size must be positive, got {sdd}, {ps}")
    K = np.array([[sdd / ps, 0.0, sensor_width / 2.0], [0.0, sdd / ps, sensor_height / 2.0], [0.0, 0.0, 1.0]])
    return camera_from_deepdrr(K, cam3d_from_device @ np.linalg.inv(wfd), sensor_width, sensor_height,
                               world=world, pixel_size=ps)
