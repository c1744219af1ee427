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
sampled at their midpoints, so a uniform volume gives the exact chord length. The projection
is :class:`taichi_xray.objects.volume_project.VolumeProjector` (``method="trilinear"``) with
these fractions as its basis weights; for new code use :class:`~taichi_xray.objects.volume.Volume`
and ``VolumeProjector`` (Siddon or trilinear, any HU conversion, differentiable) directly.
"""

import math
import os

import numpy as np

from ..runtime import ensure_init
from ..runtime import torch_device as runtime_device
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
    fractions : (X, Y, Z, 2) float32, [..., 0] water, [..., 1] bone (read-only: assign a new array
        to change it; the projector keeps a device copy of it).
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
        self.fractions.flags.writeable = False  # the device copy is made once: replace the array to change it
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
        # the trilinear projector of taichi_xray.objects (one volume kernel in the package), fed
        # these fractions as its two basis weights
        import torch

        from ..objects.volume import Volume
        from ..objects.volume_project import VolumeProjector

        ensure_init()
        # the grid and the fractions on the kernels' device, made once (again only if fractions or
        # affine are replaced): no full-size allocation or host->device copy per call
        key = (id(self.fractions), self.affine.tobytes())
        cache = getattr(self, "_device", None)
        if cache is None or cache[0] != key:
            vol = Volume(np.zeros(self.shape, np.float32), self.affine, space="LPS")
            dens = torch.tensor(np.asarray(self.fractions, np.float32),
                                   device=runtime_device())
            cache = self._device = (key, vol, dens)
        _, vol, dens = cache
        proj = VolumeProjector(vol, camera, hu_conversion="water_bone", method="trilinear", step_mm=step_mm)
        with torch.no_grad():
            res = proj(densities=dens)[0]
        if isinstance(out, np.ndarray):
            out[...] = res.cpu().numpy()
        else:
            out.copy_(res.to(out.device))
        return out
