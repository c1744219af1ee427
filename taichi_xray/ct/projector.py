"""CT volume projector: water- and bone-equivalent path lengths by ray marching.

Each voxel's Hounsfield value is split into two basis materials, water and
cortical bone (ICRP, 1.85 g/cm^3), so that

    mu(E, voxel) = f_w * mu_water(E) + f_b * mu_bone(E)

holds at every energy, and a polychromatic image is exact per energy given the
two line integrals ``L_w = int f_w ds`` and ``L_b = int f_b ds`` (mm) that
:meth:`CTVolume.project` returns::

    I(E) / I0(E) = exp(-(mu_water(E) * L_w + mu_bone(E) * L_b))

HU -> fractions (piecewise linear, :func:`hu_to_materials`):

* ``HU <= -1000``: air, ``f_w = f_b = 0`` (air's mu is ~0.1 % of water's).
* ``-1000 < HU <= 0``: water at density ``1 + HU/1000``:
  ``f_w = 1 + HU/1000``, ``f_b = 0``. This is the definition of HU
  (``mu = mu_water (1 + HU/1000)``) with water's energy dependence; fat and
  soft tissue follow water's spectrum closely.
* ``0 < HU < hu_bone``: a volume mixture of water and cortical bone:
  ``f_b = HU/hu_bone``, ``f_w = 1 - f_b``.
* ``HU >= hu_bone``: bone denser than the reference: ``f_w = 0``,
  ``f_b = (1000 + HU)/(1000 + hu_bone)`` (metal is therefore treated as very
  dense bone).

So at the reference energy (where cortical bone has CT number ``hu_bone``)
``f_w mu_water + f_b mu_bone = mu_water (1 + HU/1000)`` for every HU >= -1000:
the decomposition reproduces the measured CT exactly there and extrapolates
to other energies with the water and bone spectra.

The breakpoint ``hu_bone`` is the CT number of cortical bone at the scanner's
effective energy, ``1000 (mu_bone/mu_water - 1)``. With xraylib's NIST data
(ICRP cortical bone, 1.85 g/cm^3) it is 1788 HU at 60 keV, 1594 HU at 65 keV
and 1445 HU at 70 keV; a 120 kVp clinical scan has an effective energy of about
60-70 keV, and measured cortical bone lies at roughly 1500-2000 HU. The
default 1600 HU corresponds to 65 keV.

Geometry: the volume is the box of its voxels, voxel centres at integer
indices, extending half a voxel beyond the outer centres. The field is
interpolated trilinearly between voxel centres and held constant (edge value)
in the outer half-voxel rim; it is zero outside the box. Each pixel's ray
(from ``camera.source`` through the pixel centre) is clipped to the box, and
the clipped chord is split into ``n = ceil(length / step_mm)`` equal steps
sampled at their midpoints, so a uniform volume gives the exact chord length.
"""

import math
import os

import numpy as np
import taichi as ti

from ..runtime import ensure_init
from .labels import nifti_affine_to_lps

__all__ = ["CTVolume", "hu_to_materials", "HU_BONE_DEFAULT"]

HU_BONE_DEFAULT = 1600.0


def hu_to_materials(hu, hu_bone: float = HU_BONE_DEFAULT) -> np.ndarray:
    """Water and bone volume fractions of Hounsfield values.

    Parameters
    ----------
    hu : array (...), HU
    hu_bone : CT number of cortical bone (> 0).

    Returns
    -------
    array (..., 2) float32: ``[..., 0]`` = f_w, ``[..., 1]`` = f_b
    (dimensionless; f_b exceeds 1 above ``hu_bone``).
    """
    hu_bone = float(hu_bone)
    if not (hu_bone > 0 and math.isfinite(hu_bone)):
        raise ValueError(f"hu_bone must be a positive number of HU, got {hu_bone!r}")
    h = np.asarray(hu, dtype=np.float64)
    fw = np.where(h <= 0, np.clip(1.0 + h / 1000.0, 0.0, 1.0), np.clip(1.0 - h / hu_bone, 0.0, 1.0))
    fb = np.where(h <= 0, 0.0, np.where(h < hu_bone, h / hu_bone, (1000.0 + h) / (1000.0 + hu_bone)))
    return np.stack([fw, fb], axis=-1).astype(np.float32)


@ti.kernel
def _march(
    vol: ti.types.ndarray(dtype=ti.f32, ndim=4),  # (X, Y, Z, 2)
    geo: ti.types.ndarray(dtype=ti.f32, ndim=1),  # see CTVolume._geometry
    out: ti.types.ndarray(dtype=ti.f32, ndim=3),  # (2, H, W)
    max_steps: ti.i32,
):
    nx, ny, nz = vol.shape[0], vol.shape[1], vol.shape[2]
    H, W = out.shape[1], out.shape[2]
    step = geo[21]
    for r, c in ti.ndrange(H, W):
        u, v = ti.cast(c, ti.f32), ti.cast(r, ti.f32)
        # world direction of the pixel ray, then unit length
        dw = ti.Vector([
            geo[0] * u + geo[1] * v + geo[2],
            geo[3] * u + geo[4] * v + geo[5],
            geo[6] * u + geo[7] * v + geo[8],
        ])
        dw = dw / dw.norm()
        # voxel-index direction (per mm of world path) and origin
        d = ti.Vector([
            geo[9] * dw[0] + geo[10] * dw[1] + geo[11] * dw[2],
            geo[12] * dw[0] + geo[13] * dw[1] + geo[14] * dw[2],
            geo[15] * dw[0] + geo[16] * dw[1] + geo[17] * dw[2],
        ])
        o = ti.Vector([geo[18], geo[19], geo[20]])
        n = ti.Vector([ti.cast(nx, ti.f32), ti.cast(ny, ti.f32), ti.cast(nz, ti.f32)])
        t0 = 0.0  # rays start at the source
        t1 = 3.0e38
        for a in ti.static(range(3)):
            lo = -0.5
            hi = n[a] - 0.5
            if ti.abs(d[a]) < 1e-12:
                if o[a] < lo or o[a] > hi:
                    t1 = -1.0
            else:
                ta = (lo - o[a]) / d[a]
                tb = (hi - o[a]) / d[a]
                t0 = ti.max(t0, ti.min(ta, tb))
                t1 = ti.min(t1, ti.max(ta, tb))
        acc_w = 0.0
        acc_b = 0.0
        if t1 > t0:
            length = t1 - t0
            ns = ti.min(ti.max(ti.cast(ti.ceil(length / step), ti.i32), 1), max_steps)
            h = length / ns
            for k in range(ns):
                p = o + d * (t0 + (k + 0.5) * h)
                # clamp into the centre hull (edge value in the outer half voxel)
                x = ti.min(ti.max(p[0], 0.0), n[0] - 1.0)
                y = ti.min(ti.max(p[1], 0.0), n[1] - 1.0)
                z = ti.min(ti.max(p[2], 0.0), n[2] - 1.0)
                i0 = ti.min(ti.cast(ti.floor(x), ti.i32), nx - 1)
                j0 = ti.min(ti.cast(ti.floor(y), ti.i32), ny - 1)
                k0 = ti.min(ti.cast(ti.floor(z), ti.i32), nz - 1)
                fx, fy, fz = x - i0, y - j0, z - k0
                i1 = ti.min(i0 + 1, nx - 1)
                j1 = ti.min(j0 + 1, ny - 1)
                k1 = ti.min(k0 + 1, nz - 1)
                for m in ti.static(range(2)):
                    c00 = vol[i0, j0, k0, m] * (1 - fx) + vol[i1, j0, k0, m] * fx
                    c10 = vol[i0, j1, k0, m] * (1 - fx) + vol[i1, j1, k0, m] * fx
                    c01 = vol[i0, j0, k1, m] * (1 - fx) + vol[i1, j0, k1, m] * fx
                    c11 = vol[i0, j1, k1, m] * (1 - fx) + vol[i1, j1, k1, m] * fx
                    val = (c00 * (1 - fy) + c10 * fy) * (1 - fz) + (c01 * (1 - fy) + c11 * fy) * fz
                    if ti.static(m == 0):
                        acc_w += val
                    else:
                        acc_b += val
            acc_w *= h
            acc_b *= h
        out[0, r, c] = acc_w
        out[1, r, c] = acc_b


class CTVolume:
    """A CT volume as water/bone volume fractions on a voxel grid.

    Parameters
    ----------
    hu : array (X, Y, Z), Hounsfield units (any real dtype).
    affine : array (4, 4)
        Voxel index (i, j, k) -> world mm. Default identity (index = LPS mm).
    space : {"RAS", "LPS"}
        Frame of ``affine``: "RAS" (NIfTI, the default; converted to LPS by
        negating the x and y rows) or "LPS" (DICOM, used as is).
    hu_bone : CT number of cortical bone, see :func:`hu_to_materials`.

    Attributes
    ----------
    fractions : (X, Y, Z, 2) float32, [..., 0] water, [..., 1] bone.
    affine : (4, 4) float64, voxel index -> LPS mm.
    spacing : (3,) voxel size in mm.
    """

    def __init__(self, hu, affine=None, space: str = "RAS", hu_bone: float = HU_BONE_DEFAULT):
        try:
            h = np.asarray(hu)
        except Exception as exc:  # pragma: no cover
            raise TypeError("hu must be a numeric array (X, Y, Z)") from exc
        if h.ndim != 3:
            raise ValueError(f"hu must be a 3-D array (X, Y, Z), got shape {h.shape}")
        if min(h.shape) < 1:
            raise ValueError(f"hu is empty, shape {h.shape}")
        if not np.issubdtype(h.dtype, np.number) or np.issubdtype(h.dtype, np.complexfloating):
            raise TypeError(f"hu must hold real numbers, got dtype {h.dtype}")
        if not np.all(np.isfinite(h)):
            raise ValueError("hu contains NaN or inf")
        self.affine = np.eye(4) if affine is None else nifti_affine_to_lps(affine, space)
        self.shape = tuple(int(s) for s in h.shape)
        self.hu_bone = float(hu_bone)
        self.fractions = np.ascontiguousarray(hu_to_materials(h, hu_bone))
        self.spacing = np.linalg.norm(self.affine[:3, :3], axis=0)

    @classmethod
    def from_nifti(cls, ct_path, hu_bone: float = HU_BONE_DEFAULT) -> "CTVolume":
        """Load a NIfTI CT in HU; its RAS affine is converted to LPS."""
        import nibabel as nib

        path = os.fspath(ct_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"CT volume not found: {path}")
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        return cls(data, img.affine, space="RAS", hu_bone=hu_bone)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        return f"CTVolume({'x'.join(map(str, self.shape))}, spacing=({sp}) mm)"

    @property
    def corners(self) -> np.ndarray:
        """The 8 corners (8, 3) of the volume's box in LPS mm."""
        n = np.array(self.shape, dtype=np.float64)
        c = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
        idx = -0.5 + c * n
        return idx @ self.affine[:3, :3].T + self.affine[:3, 3]

    @property
    def center(self) -> np.ndarray:
        """Centre (3,) of the volume's box in LPS mm."""
        return self.corners.mean(axis=0)

    def _geometry(self, camera, step_mm: float) -> np.ndarray:
        Ainv = np.linalg.inv(self.affine)
        o = Ainv[:3, :3] @ np.asarray(camera.source, dtype=np.float64) + Ainv[:3, 3]
        geo = np.concatenate([camera.M_inv.ravel(), Ainv[:3, :3].ravel(), o, [step_mm]])
        return geo.astype(np.float32)

    def project(self, camera, step_mm: float | None = None, out=None):
        """Water- and bone-equivalent path lengths of every pixel's ray.

        Parameters
        ----------
        camera : :class:`taichi_xray.camera.Camera`
        step_mm : ray-marching step in mm (default half the smallest voxel
            size). The clipped chord is divided into equal steps no longer
            than this.
        out : optional float32 array (2, H, W), numpy or torch (on the
            Taichi device), written in place and returned.

        Returns
        -------
        (2, H, W) float32, mm: ``[0]`` = L_w (water-equivalent length),
        ``[1]`` = L_b (cortical-bone-equivalent length).
        """
        if step_mm is None:
            step_mm = 0.5 * float(self.spacing.min())
        step_mm = float(step_mm)
        if not (step_mm > 0 and math.isfinite(step_mm)):
            raise ValueError(f"step_mm must be a positive number of mm, got {step_mm!r}")
        H, W = int(camera.height), int(camera.width)
        if out is None:
            out = np.zeros((2, H, W), dtype=np.float32)
        else:
            if tuple(out.shape) != (2, H, W):
                raise ValueError(f"out must have shape (2, {H}, {W}), got {tuple(out.shape)}")
            if str(out.dtype) not in ("float32", "torch.float32"):
                raise TypeError(f"out must be float32, got {out.dtype}")
        # a ray crosses at most the box diagonal
        diag_mm = float(np.linalg.norm(self.corners.max(0) - self.corners.min(0)))
        max_steps = int(math.ceil(diag_mm / step_mm)) + 2
        ensure_init()
        _march(self.fractions, self._geometry(camera, step_mm), out, max_steps)
        return out
