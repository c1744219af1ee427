"""Cone-beam camera geometry.

Conventions
-----------
* World coordinates are in mm. Phantoms and C-arm angles use the patient
  frame of DICOM (LPS): +x toward the patient's left, +y posterior,
  +z superior (toward the head).
* A projection matrix ``P`` (3, 4) maps homogeneous world points to pixel
  coordinates with OpenCV's pixel convention: ``(u, v, 1) ~ P @ (x, y, z, 1)``
  and the pixel at row ``r``, column ``c`` has its centre at ``u = c``,
  ``v = r``. Images are indexed ``[row, column]``, shape ``(height, width)``.
* ``w = P[2] @ (x, y, z, 1)`` must be positive for points in front of the
  source (the side the detector is on). :class:`Camera` rescales ``P`` so that
  ``|P[2, :3]| = 1``; ``w`` is then the depth in mm along the principal axis.
* ``P = K [R | t]`` with ``K`` upper triangular, positive focal lengths and
  ``K[2, 2] = 1``. ``R`` is orthogonal; ``det(R) = -1`` means a mirrored
  detector (for instance the radiological display convention of
  :meth:`Camera.c_arm`, which shows the patient's right on the image's left).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Camera", "rq_decomposition"]


def _as_matrix(name: str, a, shape) -> np.ndarray:
    try:
        arr = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric array of shape {shape}") from exc
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _positive_int(name: str, val) -> int:
    if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val <= 0:
        raise ValueError(f"{name} must be a positive integer, got {val!r}")
    return int(val)


def _positive_mm(name: str, val) -> float:
    try:
        x = float(val)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a number of mm, got {val!r}") from exc
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive finite number of mm, got {val!r}")
    return x


def rq_decomposition(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 3x3 matrix into ``M = K @ R``.

    ``K`` is upper triangular with a positive diagonal; ``R`` is orthogonal
    (``det(R) = sign(det(M))``): scipy's RQ decomposition, with the signs of
    ``K``'s diagonal moved into ``R``.
    """
    from scipy.linalg import rq

    K, R = rq(np.asarray(M, dtype=np.float64))
    sign = np.sign(np.diag(K))
    sign[sign == 0] = 1.0
    d = np.diag(sign)
    return K @ d, d @ R


@dataclass(frozen=True, eq=False)
class Camera:
    """A cone-beam (pinhole) X-ray camera: point source and flat detector.

    Build it with :meth:`from_projection_matrix`, :meth:`from_intrinsics` or
    :meth:`c_arm`. ``pixel_spacing`` (mm) is optional; when given, the
    detector plane sits at ``detector_distance = focal_length_px *
    pixel_spacing`` from the source and :meth:`ray_lengths` is defined.
    """

    P: np.ndarray
    width: int
    height: int
    pixel_spacing: float | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ----------------------------------------------------------------- build
    def __post_init__(self):
        P = _as_matrix("P", self.P, (3, 4))
        for name in ("width", "height"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
        M = P[:, :3]
        # scale-invariant test: |det| relative to the product of the row norms (Hadamard bound)
        rows = np.linalg.norm(M, axis=1)
        if not np.all(rows > 0) or abs(np.linalg.det(M / rows[:, None])) < 1e-12:
            raise ValueError("P[:, :3] is singular: not a projection matrix of a finite source")
        P = P / rows[2]
        P.setflags(write=False)
        object.__setattr__(self, "P", P)
        if self.pixel_spacing is not None:
            object.__setattr__(self, "pixel_spacing", _positive_mm("pixel_spacing", self.pixel_spacing))

    @classmethod
    def from_projection_matrix(cls, P, width: int, height: int, pixel_spacing: float | None = None,
                               front=None) -> "Camera":
        """Camera from a 3x4 projection matrix (world mm -> pixels, OpenCV convention).

        ``P`` is defined up to scale, and calibration tools hand it over with either
        sign: ``P`` and ``-P`` send every point to the same pixel but put opposite
        half-spaces in front of the source (``w > 0``). Give ``front`` (points (N, 3) that
        must lie in front, e.g. the scene's vertices or its centre) to normalise the sign:
        if they all have ``w < 0``, ``-P`` is used. Without ``front`` the sign is taken as
        given; the :class:`~taichi_xray.pipeline.Pipeline` normalises it against the scene.
        """
        cam = cls(np.array(_as_matrix("P", P, (3, 4)), copy=True), width, height, pixel_spacing)
        if front is not None:
            _, w = cam.project(np.atleast_2d(np.asarray(front, dtype=np.float64)))
            if np.all(w < 0):
                cam = cam.flipped()
        return cam

    def flipped(self) -> "Camera":
        """The camera with ``-P``: the same pixel of every point, the other half-space in front."""
        return type(self)(-np.asarray(self.P), self.width, self.height, self.pixel_spacing)

    @classmethod
    def from_intrinsics(cls, K, R, t, width: int, height: int, pixel_spacing: float | None = None) -> "Camera":
        """Camera from intrinsics ``K`` (3, 3) and extrinsics ``R`` (3, 3), ``t`` (3,).

        ``x_cam = R @ x_world + t``; ``(u, v, 1) ~ K @ x_cam``.
        """
        K = _as_matrix("K", K, (3, 3))
        R = _as_matrix("R", R, (3, 3))
        t = _as_matrix("t", np.ravel(t), (3,))
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-6):
            raise ValueError("R must be orthogonal")
        return cls(K @ np.hstack([R, t[:, None]]), width, height, pixel_spacing)

    @classmethod
    def c_arm(
        cls,
        *,
        sid: float,
        sdd: float,
        width: int,
        height: int,
        pixel_spacing: float,
        lao: float = 0.0,
        cran: float = 0.0,
        isocenter=(0.0, 0.0, 0.0),
        principal_point=None,
        radiological: bool = True,
    ) -> "Camera":
        """A C-arm geometry in the patient frame (LPS, mm, degrees).

        At ``lao = cran = 0`` the source is posterior (``+y``) and the
        detector anterior: a PA beam, the usual under-table C-arm. ``lao``
        (negative = RAO) turns the detector toward the patient's left about
        the superior axis; ``cran`` (negative = CAUD) tilts it toward the head.

        Parameters
        ----------
        sid, sdd : source-isocentre and source-detector distances (mm).
        width, height : detector size in pixels.
        pixel_spacing : detector pixel size (mm).
        principal_point : (u, v) of the foot of the perpendicular from the
            source on the detector; default the detector centre
            ``((width - 1) / 2, (height - 1) / 2)``.
        radiological : show the patient as a radiologist reads a frontal
            film (patient's right on the image's left, head up). The camera
            is then mirrored (``det(R) = -1``). ``False`` gives the view from
            the source (patient's right on the right for a PA beam).
        """
        sid, sdd = _positive_mm("sid", sid), _positive_mm("sdd", sdd)
        if not sdd > sid:
            raise ValueError(f"need 0 < sid < sdd, got sid={sid}, sdd={sdd}")
        ps = _positive_mm("pixel_spacing", pixel_spacing)
        width, height = _positive_int("width", width), _positive_int("height", height)
        angles = _as_matrix("lao, cran", [lao, cran], (2,))
        a, b = np.deg2rad(angles)
        # Beam direction (source -> detector) at rest is anterior: -y.
        # LAO: detector rotates toward +x (patient's left) about +z.
        # CRAN: detector tilts toward +z.
        d = np.array([np.sin(a) * np.cos(b), -np.cos(a) * np.cos(b), np.sin(b)])
        down = np.array([0.0, 0.0, -1.0])  # image rows run toward the feet
        y_cam = down - d * (down @ d)
        if np.linalg.norm(y_cam) < 1e-9:
            raise ValueError(f"cran={cran} puts the beam along the patient's long axis: image rows are undefined")
        y_cam /= np.linalg.norm(y_cam)
        x_cam = np.cross(y_cam, d)  # right-handed camera frame
        if radiological:
            x_cam = -x_cam
        R = np.stack([x_cam, y_cam, d])
        iso = _as_matrix("isocenter", np.ravel(isocenter), (3,))
        source = iso - sid * d
        t = -R @ source
        f = sdd / ps
        if principal_point is None:
            principal_point = ((width - 1) / 2.0, (height - 1) / 2.0)
        cx, cy = _as_matrix("principal_point", np.ravel(principal_point), (2,))
        K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
        return cls(K @ np.hstack([R, t[:, None]]), width, height, ps)

    # ------------------------------------------------------------ properties
    def _decomp(self):
        if "krt" not in self._cache:
            M = self.P[:, :3]
            K, R = rq_decomposition(M)
            s = K[2, 2]
            K = K / s
            t = np.linalg.solve(K, self.P[:, 3]) / s
            for a in (K, R, t):
                a.setflags(write=False)
            self._cache["krt"] = (K, R, t)
        return self._cache["krt"]

    @property
    def K(self) -> np.ndarray:
        """Intrinsics (3, 3): upper triangular, positive diagonal, ``K[2,2] = 1``."""
        return self._decomp()[0]

    @property
    def R(self) -> np.ndarray:
        """World-to-camera rotation (3, 3); ``det = -1`` for a mirrored detector."""
        return self._decomp()[1]

    @property
    def t(self) -> np.ndarray:
        """World-to-camera translation (3,) in mm."""
        return self._decomp()[2]

    @property
    def mirrored(self) -> bool:
        return bool(np.linalg.det(self.R) < 0)

    @property
    def source(self) -> np.ndarray:
        """Source (camera centre) position (3,) in world mm."""
        return -np.linalg.solve(self.P[:, :3], self.P[:, 3])

    @property
    def view_direction(self) -> np.ndarray:
        """Unit principal axis (3,), pointing from the source to the detector."""
        return self.P[2, :3].copy()

    @property
    def focal_length_px(self) -> float:
        K = self.K
        return float(0.5 * (K[0, 0] + K[1, 1]))

    @property
    def principal_point(self) -> tuple[float, float]:
        return float(self.K[0, 2]), float(self.K[1, 2])

    @property
    def detector_distance(self) -> float | None:
        """Source-to-detector distance along the principal axis (mm), if known."""
        if self.pixel_spacing is None:
            return None
        return self.focal_length_px * self.pixel_spacing

    @property
    def M_inv(self) -> np.ndarray:
        """``inv(P[:, :3])`` (3, 3): ``M_inv @ (u, v, 1)`` is the ray of pixel (u, v),
        scaled so that it advances the depth ``w`` by 1 mm per unit."""
        if "minv" not in self._cache:
            minv = np.linalg.inv(self.P[:, :3])
            minv.setflags(write=False)
            self._cache["minv"] = minv
        return self._cache["minv"]

    # ------------------------------------------------------------ operations
    def project(self, points) -> tuple[np.ndarray, np.ndarray]:
        """Project world points (N, 3) mm -> pixel coordinates (N, 2) ``(u, v)`` and depth ``w`` (N,) mm."""
        X = np.asarray(points, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != 3:
            raise ValueError(f"points must have shape (N, 3), got {X.shape}")
        h = X @ self.P[:, :3].T + self.P[:, 3]
        w = h[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = h[:, :2] / w[:, None]
        return uv, w

    def pixel_rays(self, normalize: bool = True) -> np.ndarray:
        """Ray directions (H, W, 3) from the source through every pixel centre.

        With ``normalize=False`` a ray advances the depth ``w`` by 1 mm per unit.
        """
        v, u = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        pix = np.stack([u, v, np.ones_like(u)], axis=-1)
        d = pix @ self.M_inv.T
        if normalize:
            d /= np.linalg.norm(d, axis=-1, keepdims=True)
        return d

    def ray_lengths(self) -> np.ndarray:
        """Distance (H, W) in mm from the source to each pixel centre on the detector.

        Needs ``pixel_spacing`` (to place the detector plane).
        """
        D = self.detector_distance
        if D is None:
            raise ValueError("ray_lengths needs the camera's pixel_spacing (the detector's distance is unknown)")
        return D * np.linalg.norm(self.pixel_rays(normalize=False), axis=-1)

    def __repr__(self) -> str:
        s = self.source
        return (
            f"Camera({self.width}x{self.height}, source=({s[0]:.1f}, {s[1]:.1f}, {s[2]:.1f}) mm, "
            f"f={self.focal_length_px:.1f} px{', mirrored' if self.mirrored else ''}"
            f"{'' if self.pixel_spacing is None else f', pixel {self.pixel_spacing:g} mm'})"
        )
