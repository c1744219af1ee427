"""DiffDRR 0.6.1 and nanodrr 0.1.x geometry <-> :class:`~taichi_xray.camera.Camera`.

Read from the peers' code (DiffDRR 0.6.1 wheel: ``diffdrr/detector.py``,
``drr.py``, ``pose.py``, ``data.py``; nanodrr 0.1.6/0.1.7:
``camera/intrinsics.py``, ``camera/extrinsics.py``, ``drr/renderer.py``,
``geometry/se3.py``, ``data/subject.py``). The frames, in their words and ours:

DiffDRR 0.6.1
    *World*: the volume's torchio affine, i.e. **RAS** mm, shifted so that the
    volume's centre (``Image.get_center()``, voxel index (n - 1)/2) is at the
    origin when ``read(..., center_volume=True)`` (the default).
    *Camera* ("D-camera"): source at the origin, detector plane at z = sdd.
    Pixel (row r, column c) is the point
    ``(delx * s_c + x0, dely * t_r + y0, sdd)`` with ``t_r = (H - 1)/2 - r``
    (rows go toward -y) and ``s_c = (W - 1)/2 - c`` when ``reverse_x_axis``
    (the ``DRR`` default) else ``c - (W - 1)/2``.
    *Pose*: camera -> world ``pose.matrix @ reorient`` (``Detector.forward``),
    ``reorient`` from ``read(orientation=...)`` ("AP", "PA" or None; "PA" is a
    reflection). ``convert(rotation, translation, parameterization,
    convention)`` builds ``pose.matrix = [[R, R @ translation], [0, 1]]``;
    Euler conventions are pytorch3d's: "ZXY" is ``Rz(a0) Rx(a1) Ry(a2)``
    (= scipy's intrinsic "ZXY"), radians unless ``degrees=True``.
    ``DRR.perspective_projection`` returns our (u + 0.5, v + 0.5).

nanodrr
    *World*: the torchio affine (**RAS** mm), not recentred; poses may rotate
    about ``isocenter`` (RAS, usually ``subject.isocenter``).
    *Camera*: OpenCV's (x along columns, y along rows, z toward the detector);
    ``K`` has ``cx = x0/delx + W/2`` with pixel centres at ``c + 0.5``, so our
    ``cx = x0/delx + (W - 1)/2``.
    *Pose*: camera -> world ``rt_inv = [[R, R @ t + isocenter], [0, 1]] @ reorient``
    with ``R`` = roma's ``euler_to_rotmat("ZXY", deg)`` (= scipy intrinsic "ZXY")
    and its own ``reorient`` matrices ("PA" is a reflection).

In both the volume's voxel centres sit at integer indices (DiffDRR with the
default ``voxel_shift=0.5``; nanodrr's ``grid_sample(align_corners=False)``),
as in :class:`taichi_xray.ct.projector.CTVolume`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..camera import Camera
from .frames import LPS_FROM_RAS, _array, as_transform, rigid

__all__ = [
    "DIFFDRR_REORIENT",
    "NANODRR_REORIENT",
    "DiffDRRGeometry",
    "NanoDRRGeometry",
    "diffdrr_pose_matrix",
    "diffdrr_pose_parameters",
    "camera_from_diffdrr",
    "diffdrr_from_camera",
    "nanodrr_rt_inv",
    "camera_from_nanodrr",
    "nanodrr_from_camera",
]

#: DiffDRR 0.6.1 ``diffdrr.data.read(orientation=...)`` frame-of-reference matrices (4, 4).
DIFFDRR_REORIENT = {
    "AP": np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64),
    "PA": np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64),
    None: np.eye(4),
}
#: nanodrr ``camera.extrinsics._ORIENTATION_MATRICES`` (4, 4).
NANODRR_REORIENT = {
    "AP": np.array([[-1, 0, 0, 0], [0, 0, -1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64),
    "PA": np.array([[-1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64),
    None: np.diag([-1.0, -1.0, 1.0, 1.0]),
}
for _m in (*DIFFDRR_REORIENT.values(), *NANODRR_REORIENT.values()):
    _m.setflags(write=False)

_PARAMETERIZATIONS = ("matrix", "euler_angles", "axis_angle", "quaternion", "rotation_6d")


def _spacing(sdd: float, K: np.ndarray) -> float:
    """Camera.pixel_spacing that puts the detector plane at ``sdd``: ``sdd / mean(fx, fy)``
    (``delx`` for square pixels)."""
    return float(2.0 * sdd / (K[0, 0] + K[1, 1]))


def _reorient(table: dict, orientation, tool: str) -> np.ndarray:
    if orientation not in table:
        raise ValueError(f"{tool} orientation must be 'AP', 'PA' or None, got {orientation!r}")
    return table[orientation]


def _rotation_matrix(rotation, parameterization: str, convention, degrees: bool) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    r = _array("rotation", rotation)
    if parameterization == "matrix":
        if r.shape != (3, 3):
            raise ValueError(f"a 'matrix' rotation must have shape (3, 3), got {r.shape}")
        return r
    if parameterization == "euler_angles":
        if not (isinstance(convention, str) and len(convention) == 3 and set(convention) <= set("XYZ")
                and convention[1] not in (convention[0], convention[2])):
            raise ValueError(f"convention must be 3 letters from X, Y, Z (pytorch3d/DiffDRR style, "
                             f"e.g. 'ZXY'), got {convention!r}")
        return Rotation.from_euler(convention, r.reshape(3), degrees=degrees).as_matrix()
    if parameterization == "axis_angle":
        return Rotation.from_rotvec(r.reshape(3)).as_matrix()
    if parameterization == "quaternion":  # pytorch3d: real part first (w, x, y, z)
        q = r.reshape(4)
        return Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
    if parameterization == "rotation_6d":  # pytorch3d: first two rows, Gram-Schmidt
        a1, a2 = r.reshape(6)[:3], r.reshape(6)[3:]
        b1 = a1 / np.linalg.norm(a1)
        b2 = a2 - (b1 @ a2) * b1
        b2 /= np.linalg.norm(b2)
        return np.stack([b1, b2, np.cross(b1, b2)])
    raise ValueError(f"parameterization must be one of {_PARAMETERIZATIONS}, got {parameterization!r}")


def diffdrr_pose_matrix(rotation, translation, parameterization: str = "euler_angles",
                        convention: str | None = "ZXY", degrees: bool = False) -> np.ndarray:
    """DiffDRR 0.6.1's ``convert(rotation, translation, parameterization, convention, degrees)``
    as a (4, 4) numpy matrix ``[[R, R @ translation], [0, 1]]`` (one pose, unbatched).

    parameterization : "matrix", "euler_angles" (pytorch3d convention, radians unless
        ``degrees``), "axis_angle" (radians), "quaternion" (w, x, y, z) or "rotation_6d".
    translation : (3,) mm, in DiffDRR's sense (the world position of the source is ``R @ t``
        before ``reorient``).
    """
    R = _rotation_matrix(rotation, parameterization, convention, degrees)
    t = _array("translation", np.ravel(translation), (3,))
    return rigid(R, R @ t)


def diffdrr_pose_parameters(pose, parameterization: str = "euler_angles", convention: str | None = "ZXY",
                            degrees: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`diffdrr_pose_matrix` (like ``RigidTransform.convert``): (rotation,
    translation) numpy arrays that give ``pose`` (4, 4, proper rotation) back."""
    from scipy.spatial.transform import Rotation

    T = as_transform("pose", pose)
    R = T[:3, :3]
    if np.linalg.det(R) < 0:
        raise ValueError("pose has a reflection (det -1); rotations cannot parameterize it")
    translation = R.T @ T[:3, 3]
    rot = Rotation.from_matrix(R)
    if parameterization == "matrix":
        return R.copy(), translation
    if parameterization == "euler_angles":
        _rotation_matrix(np.zeros(3), parameterization, convention, degrees)  # validates convention
        return rot.as_euler(convention, degrees=degrees), translation
    if parameterization == "axis_angle":
        return rot.as_rotvec(), translation
    if parameterization == "quaternion":
        x, y, z, w = rot.as_quat()
        q = np.array([w, x, y, z])
        return (q if w >= 0 else -q), translation
    if parameterization == "rotation_6d":
        return R[:2].reshape(6).copy(), translation
    raise ValueError(f"parameterization must be one of {_PARAMETERIZATIONS}, got {parameterization!r}")


@dataclass(frozen=True)
class DiffDRRGeometry:
    """Everything DiffDRR 0.6.1 needs to reproduce a Camera.

    ``DRR(subject, **geometry.drr_kwargs())`` with ``subject = read(..., orientation=
    geometry.orientation)`` and ``drr(geometry.pose[None])`` (as a float tensor, or
    ``*geometry.pose_parameters(...)`` with ``parameterization=...``).
    center : LPS (3,) mm of DiffDRR's world origin (the volume centre for ``center_volume=True``).
    """

    sdd: float
    height: int
    width: int
    delx: float
    dely: float
    x0: float
    y0: float
    reverse_x_axis: bool
    orientation: str | None
    pose: np.ndarray
    center: np.ndarray

    def drr_kwargs(self) -> dict:
        """Keyword arguments of ``diffdrr.drr.DRR`` (besides the subject)."""
        return dict(sdd=float(self.sdd), height=int(self.height), width=int(self.width), delx=float(self.delx),
                    dely=float(self.dely), x0=float(self.x0), y0=float(self.y0),
                    reverse_x_axis=bool(self.reverse_x_axis))

    def pose_parameters(self, parameterization: str = "euler_angles", convention: str | None = "ZXY",
                        degrees: bool = False):
        """(rotation, translation) for ``drr(rotation[None], translation[None], parameterization=...,
        convention=..., degrees=...)``."""
        return diffdrr_pose_parameters(self.pose, parameterization, convention, degrees)


def _world_from_lps(center) -> np.ndarray:
    """(4, 4) LPS -> (RAS shifted so that ``center`` (LPS) is the origin)."""
    c = _array("center", np.ravel(center), (3,))
    T = LPS_FROM_RAS.copy()  # its own inverse: LPS -> RAS
    T[:3, 3] = -(LPS_FROM_RAS[:3, :3] @ c)
    return T


def _diffdrr_flip(reverse_x_axis: bool) -> np.ndarray:
    """(4, 4) map between DiffDRR's camera frame and OpenCV's (its own inverse)."""
    return np.diag([-1.0 if reverse_x_axis else 1.0, -1.0, 1.0, 1.0])


def camera_from_diffdrr(pose, *, sdd: float, height: int, delx: float, width: int | None = None,
                        dely: float | None = None, x0: float = 0.0, y0: float = 0.0,
                        reverse_x_axis: bool = True, orientation: str | None = "AP",
                        center=(0.0, 0.0, 0.0)) -> Camera:
    """Camera of a DiffDRR 0.6.1 ``DRR`` rendering with pose ``pose``.

    pose : (4, 4) camera -> world matrix (``RigidTransform.matrix``, (1, 4, 4) accepted), e.g.
        from :func:`diffdrr_pose_matrix`.
    sdd, height, delx, width, dely, x0, y0, reverse_x_axis : the ``DRR`` arguments, same defaults.
    orientation : the ``read(orientation=...)`` of the subject ("AP", "PA" or None).
    center : LPS (3,) mm of DiffDRR's world origin: the volume's centre
        (:func:`~taichi_xray.geometry.frames.volume_center`, ``CTVolume.center``) when the subject
        was read with ``center_volume=True`` (the default), (0, 0, 0) otherwise.
    """
    width = height if width is None else width
    dely = delx if dely is None else dely
    for name, v in (("sdd", sdd), ("delx", delx), ("dely", dely)):
        if not float(v) > 0:
            raise ValueError(f"{name} must be positive, got {v!r}")
    A = as_transform("pose", pose) @ _reorient(DIFFDRR_REORIENT, orientation, "DiffDRR")  # D-camera -> world
    cam_from_lps = _diffdrr_flip(reverse_x_axis) @ np.linalg.inv(A) @ _world_from_lps(center)
    sx = 1.0 if reverse_x_axis else -1.0
    K = np.array([[sdd / delx, 0.0, (width - 1) / 2.0 + sx * x0 / delx],
                  [0.0, sdd / dely, (height - 1) / 2.0 + y0 / dely],
                  [0.0, 0.0, 1.0]])
    ps = _spacing(sdd, K)
    return Camera.from_projection_matrix(K @ cam_from_lps[:3], int(width), int(height), ps)


def _k_params(cam: Camera, sdd: float | None, tool: str):
    K = cam.K
    if abs(K[0, 1]) > 1e-9 * K[0, 0]:
        raise ValueError(f"camera has skew K[0,1] = {K[0, 1]:.3g} px, which {tool} cannot represent")
    if sdd is None:
        sdd = cam.detector_distance
        if sdd is None:
            raise ValueError(f"{tool} needs a source-detector distance: the camera has no pixel_spacing, "
                             "so pass sdd=... (mm)")
    sdd = float(sdd)
    if not sdd > 0:
        raise ValueError(f"sdd must be positive, got {sdd}")
    return sdd, sdd / K[0, 0], sdd / K[1, 1], K[0, 2], K[1, 2]


def diffdrr_from_camera(cam: Camera, *, orientation: str | None = "AP", center=(0.0, 0.0, 0.0),
                        sdd: float | None = None) -> DiffDRRGeometry:
    """DiffDRR 0.6.1 detector and pose that reproduce ``cam`` (inverse of :func:`camera_from_diffdrr`).

    ``reverse_x_axis`` is chosen so that the pose is a proper rotation: True for a
    non-mirrored camera with orientation "AP" or None. sdd defaults to
    ``cam.detector_distance`` (needs ``pixel_spacing``); delx = sdd / fx, dely = sdd / fy.
    """
    sdd, delx, dely, cx, cy = _k_params(cam, sdd, "DiffDRR")
    reo = _reorient(DIFFDRR_REORIENT, orientation, "DiffDRR")
    reverse = bool(np.linalg.det(cam.R) * np.linalg.det(reo[:3, :3]) > 0)
    sx = 1.0 if reverse else -1.0
    x0 = sx * (cx - (cam.width - 1) / 2.0) * delx
    y0 = (cy - (cam.height - 1) / 2.0) * dely
    E = rigid(cam.R, cam.t)  # LPS -> OpenCV camera
    A = np.linalg.inv(_diffdrr_flip(reverse) @ E @ np.linalg.inv(_world_from_lps(center)))  # D-cam -> world
    pose = A @ np.linalg.inv(reo)
    pose[3] = (0.0, 0.0, 0.0, 1.0)
    return DiffDRRGeometry(sdd=sdd, height=cam.height, width=cam.width, delx=delx, dely=dely, x0=x0, y0=y0,
                           reverse_x_axis=reverse, orientation=orientation, pose=pose,
                           center=_array("center", np.ravel(center), (3,)))


# ---------------------------------------------------------------------------------- nanodrr
@dataclass(frozen=True)
class NanoDRRGeometry:
    """nanodrr parameters of a Camera: ``DRR.from_carm_intrinsics(sdd, delx, dely, x0, y0, height,
    width)`` and ``rt_inv`` (4, 4 camera -> RAS world), or equivalently ``make_rt_inv(rotation[None],
    translation[None], orientation, isocenter)`` with ``rotation`` ZXY Euler angles in degrees."""

    sdd: float
    delx: float
    dely: float
    x0: float
    y0: float
    height: int
    width: int
    rt_inv: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    orientation: str | None
    isocenter: np.ndarray

    def intrinsics_kwargs(self) -> dict:
        """Keyword arguments of ``nanodrr.drr.DRR.from_carm_intrinsics``."""
        return dict(sdd=float(self.sdd), delx=float(self.delx), dely=float(self.dely), x0=float(self.x0),
                    y0=float(self.y0), height=int(self.height), width=int(self.width))


def nanodrr_rt_inv(rotation_deg, translation, orientation: str | None = "AP", isocenter=None) -> np.ndarray:
    """nanodrr's ``make_rt_inv`` for one pose: camera -> RAS world (4, 4).

    rotation_deg : (3,) ZXY Euler angles in degrees (roma/scipy intrinsic convention).
    translation : (3,) mm; isocenter : (3,) RAS mm (default 0).
    """
    from scipy.spatial.transform import Rotation

    R = Rotation.from_euler("ZXY", _array("rotation_deg", np.ravel(rotation_deg), (3,)), degrees=True).as_matrix()
    t = R @ _array("translation", np.ravel(translation), (3,))
    if isocenter is not None:
        t = t + _array("isocenter", np.ravel(isocenter), (3,))
    return rigid(R, t) @ _reorient(NANODRR_REORIENT, orientation, "nanodrr")


def camera_from_nanodrr(rt_inv, *, sdd: float, delx: float, height: int, width: int,
                        dely: float | None = None, x0: float = 0.0, y0: float = 0.0) -> Camera:
    """Camera of a nanodrr rendering: ``DRR.from_carm_intrinsics(sdd, delx, dely, x0, y0, height, width)``
    and camera -> RAS-world pose ``rt_inv`` (4, 4), e.g. from :func:`nanodrr_rt_inv`."""
    dely = delx if dely is None else dely
    for name, v in (("sdd", sdd), ("delx", delx), ("dely", dely)):
        if not float(v) > 0:
            raise ValueError(f"{name} must be positive, got {v!r}")
    cam_from_lps = np.linalg.inv(as_transform("rt_inv", rt_inv)) @ LPS_FROM_RAS
    K = np.array([[sdd / delx, 0.0, x0 / delx + (width - 1) / 2.0],
                  [0.0, sdd / dely, y0 / dely + (height - 1) / 2.0],
                  [0.0, 0.0, 1.0]])
    ps = _spacing(sdd, K)
    return Camera.from_projection_matrix(K @ cam_from_lps[:3], int(width), int(height), ps)


def nanodrr_from_camera(cam: Camera, *, orientation: str | None = "auto", isocenter=None,
                        sdd: float | None = None) -> NanoDRRGeometry:
    """nanodrr intrinsics and pose reproducing ``cam``.

    orientation : "AP", "PA", None, or "auto" ("AP" for a non-mirrored camera, "PA", whose
        reorientation is a reflection, for a mirrored one). The Euler angles need
        ``det(rt_inv R) * det(reorient) = +1``; a mismatch raises.
    isocenter : (3,) RAS mm as nanodrr's ``make_rt_inv`` takes it (default 0).
    """
    from scipy.spatial.transform import Rotation

    sdd, delx, dely, cx, cy = _k_params(cam, sdd, "nanodrr")
    x0 = (cx - (cam.width - 1) / 2.0) * delx
    y0 = (cy - (cam.height - 1) / 2.0) * dely
    rt_inv = LPS_FROM_RAS @ np.linalg.inv(rigid(cam.R, cam.t))
    rt_inv[3] = (0.0, 0.0, 0.0, 1.0)
    if orientation == "auto":
        orientation = "PA" if cam.mirrored else "AP"
    reo = _reorient(NANODRR_REORIENT, orientation, "nanodrr")[:3, :3]
    R_pose = rt_inv[:3, :3] @ reo.T
    if np.linalg.det(R_pose) < 0:
        kind = "mirrored" if cam.mirrored else "non-mirrored"
        raise ValueError(f"orientation {orientation!r} does not fit this {kind} camera (the pose would be "
                         "a reflection); use orientation='auto'")
    iso = np.zeros(3) if isocenter is None else _array("isocenter", np.ravel(isocenter), (3,))
    translation = R_pose.T @ (rt_inv[:3, 3] - iso)
    rotation = Rotation.from_matrix(R_pose).as_euler("ZXY", degrees=True)
    return NanoDRRGeometry(sdd=sdd, delx=delx, dely=dely, x0=x0, y0=y0, height=cam.height, width=cam.width,
                           rt_inv=rt_inv, rotation=rotation, translation=translation, orientation=orientation,
                           isocenter=iso)
