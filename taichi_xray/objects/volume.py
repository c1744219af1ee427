"""CT volumes as scene objects: Hounsfield values on a voxel grid placed in the world (LPS, mm).

A :class:`Volume` holds ``values`` (D0, D1, D2) float32 in HU and ``affine`` (4, 4)
float64 mapping voxel index ``(i, j, k, 1)`` to world LPS mm. Voxel centres sit at
integer indices; the volume is the box of its voxels, ``[-0.5, n - 0.5]`` per axis in
index space (as in DiffDRR, nanodrr and :mod:`taichi_xray.ct.projector`).

Loading (:meth:`Volume.load`):

* NIfTI (``.nii``, ``.nii.gz``) with nibabel; the scaled data (``scl_slope``/``scl_inter``
  applied) and nibabel's best affine (sform, else qform), RAS -> LPS by negating the x and y
  rows (:func:`taichi_xray.ct.labels.nifti_affine_to_lps`).
* A DICOM CT series: a folder of single-frame slices, read with pydicom. Slices are grouped by
  Series Instance UID (several series: error, choose one with ``series_uid=``), checked for
  one Image Orientation (Patient), one size and pixel spacing, sorted by the position
  (Image Position (Patient)) along the slice normal ``row x column``; the positions must
  advance along the normal only (else the series is sheared: gantry tilt, refused, as is a
  non-zero Gantry/Detector Tilt), with one spacing (a gap of about twice the spacing: missing
  slices; other differences: inconsistent spacing; repeated positions: duplicate slices). Each
  slice's Rescale Slope / Intercept gives HU. ``values[i, j, k]`` is column i, row j of slice
  k; the affine's columns are ``X * column spacing``, ``Y * row spacing``, ``n * slice
  spacing`` (X, Y the row and column direction cosines of Image Orientation (Patient), PS3.3
  C.7.6.2.1.1) and its origin the first slice's Image Position (Patient), which is the centre
  of the first pixel. DICOM's patient frame is LPS.
* ``.npy`` with a sidecar ``<stem>.affine.txt`` beside it (the 4x4 LPS affine as
  ``numpy.savetxt`` writes it; ``ct.npy`` -> ``ct.affine.txt``), or one ``.npz`` with arrays
  ``values`` (HU) and ``affine`` (LPS). :meth:`Volume.save` writes both forms.

Rigid transform (scene files' ``transform`` table, as for meshes): ``v' = R (v - centre) +
centre + translate`` with ``R = Rz Ry Rx`` from ``rotate_deg`` (about x first), applied to
the affine by :meth:`Volume.transformed`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..ct.labels import nifti_affine_to_lps

__all__ = ["Volume", "VolumeError", "rotation_deg"]


class VolumeError(ValueError):
    """A volume file or array cannot be used (with the reason)."""


def rotation_deg(deg) -> np.ndarray:
    """``R = Rz @ Ry @ Rx`` (3, 3) for angles (x, y, z) in degrees: the scene files' ``rotate_deg``."""
    ax, ay, az = np.deg2rad(np.asarray(deg, dtype=np.float64).reshape(3))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def _check_values(values, where: str) -> np.ndarray:
    try:
        v = np.asarray(values)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise TypeError(f"{where}: values must be a numeric array (D0, D1, D2)") from exc
    if v.dtype == object or not (np.issubdtype(v.dtype, np.number) or v.dtype == bool) or np.iscomplexobj(v):
        raise TypeError(f"{where}: values must be real numbers (HU), got dtype {v.dtype}")
    if v.ndim == 4 and v.shape[3] == 1:
        v = v[..., 0]
    if v.ndim != 3:
        raise VolumeError(f"{where}: values must be a 3-D array (D0, D1, D2), got shape {v.shape}")
    if v.size == 0:
        raise VolumeError(f"{where}: the volume is empty, shape {v.shape}")
    v = np.ascontiguousarray(v, dtype=np.float32)
    if not np.all(np.isfinite(v)):
        bad = int(np.count_nonzero(~np.isfinite(v)))
        raise VolumeError(f"{where}: values contain {bad} NaN or infinite voxels")
    return v


class Volume:
    """A CT volume in the world frame.

    Parameters
    ----------
    values : (D0, D1, D2) Hounsfield units (any real dtype; stored float32).
    affine : (4, 4) voxel index -> world mm, LPS (``space="LPS"``, default) or RAS
        (``space="RAS"``, NIfTI's frame; converted).
    name : label used in messages and scene files.
    """

    def __init__(self, values, affine, name: str = "volume", space: str = "LPS"):
        self.name = str(name)
        self.values = _check_values(values, f"volume {self.name!r}")
        try:
            A = nifti_affine_to_lps(affine, space)
        except ValueError as exc:
            raise VolumeError(f"volume {self.name!r}: {exc}") from None
        self.affine = A
        self.affine.setflags(write=False)
        self.values.setflags(write=False)
        self._cache: dict = {}

    # ------------------------------------------------------------------ geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.values.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (3,) in mm along the index axes."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def corners(self) -> np.ndarray:
        """The 8 corners (8, 3) of the voxel box in world mm."""
        n = np.array(self.shape, dtype=np.float64)
        c = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)
        return self.index_to_world(-0.5 + c * n)

    @property
    def centre(self) -> np.ndarray:
        """Centre (3,) of the voxel box in world mm (index ``(n - 1) / 2``)."""
        return self.index_to_world((np.array(self.shape, dtype=np.float64) - 1) / 2.0)

    def index_to_world(self, ijk) -> np.ndarray:
        """Voxel indices (..., 3) -> world LPS mm (..., 3)."""
        p = np.asarray(ijk, dtype=np.float64)
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def world_to_index(self, xyz) -> np.ndarray:
        """World LPS mm (..., 3) -> (fractional) voxel indices (..., 3)."""
        p = np.asarray(xyz, dtype=np.float64)
        Ai = np.linalg.inv(self.affine)
        return p @ Ai[:3, :3].T + Ai[:3, 3]

    def transformed(self, R=None, translate=None, centre=None, name: str | None = None) -> "Volume":
        """Rigidly moved copy: ``v' = R (v - centre) + centre + translate`` (the mesh convention).

        R : (3, 3) rotation (det +1), e.g. :func:`rotation_deg`; translate, centre : (3,) mm.
        """
        R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64)
        t = np.zeros(3) if translate is None else np.asarray(translate, dtype=np.float64).reshape(-1)
        c = np.zeros(3) if centre is None else np.asarray(centre, dtype=np.float64).reshape(-1)
        if t.size != 3 or c.size != 3:
            raise ValueError(f"translate and centre must be 3-vectors (mm), got sizes {t.size} and {c.size}")
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(c))):
            raise ValueError("translate and centre must be finite")
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0:
            raise ValueError("R must be a 3x3 rotation matrix (orthogonal, det +1)")
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = c + t - R @ c
        v = Volume.__new__(Volume)
        v.name = self.name if name is None else str(name)
        v.values = self.values  # read-only, shared
        v.affine = T @ self.affine
        v.affine.setflags(write=False)
        v._cache = self._cache  # densities do not depend on the pose
        return v

    def with_transform(self, translate=(0.0, 0.0, 0.0), rotate_deg=(0.0, 0.0, 0.0), centre=(0.0, 0.0, 0.0)):
        """:meth:`transformed` with the scene files' keys (``rotate_deg``: R = Rz Ry Rx, x first)."""
        return self.transformed(rotation_deg(rotate_deg), translate, centre)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:g}" for s in self.spacing)
        return f"Volume({self.name!r}, {'x'.join(map(str, self.shape))}, spacing=({sp}) mm)"

    # ------------------------------------------------------------------ densities
    def densities(self, conversion=None, dtype=None, device=None):
        """Basis-material weights (D0, D1, D2, B) as a contiguous torch tensor on the kernels'
        device, computed once per (conversion, dtype, device) and kept there.

        conversion : see :func:`taichi_xray.physics.hu.get_hu_conversion` (default air/water/bone).
        dtype : torch.float32 (default) or torch.float64.
        """
        import torch

        from ..physics.hu import get_hu_conversion
        from ..runtime import torch_device

        conv = get_hu_conversion(conversion)
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        device = torch.device(torch_device() if device is None else device)
        key = ("dens", conv.key(), dtype, str(device))
        hit = self._cache.get(key)
        if hit is None:
            w = conv(self.values)  # float64 on the host, one pass
            hit = torch.from_numpy(np.ascontiguousarray(w)).to(device=device, dtype=dtype).contiguous()
            self._cache[key] = hit
        return hit

    # ------------------------------------------------------------------ I/O
    @classmethod
    def load(cls, path, name: str | None = None, *, series_uid: str | None = None) -> "Volume":
        """Read a NIfTI file, a DICOM series folder, a ``.npy`` (+ ``.affine.txt``) or a ``.npz``."""
        p = Path(os.fspath(path))
        if not p.exists():
            raise FileNotFoundError(f"CT volume not found: {p}")
        nm = name if name is not None else p.name.split(".")[0]
        if p.is_dir():
            values, affine = _read_dicom_series(p, series_uid)
            return cls(values, affine, nm)
        low = p.name.lower()
        if low.endswith(".nii") or low.endswith(".nii.gz"):
            values, affine = _read_nifti(p)
            return cls(values, affine, nm, space="RAS")
        if low.endswith(".npy"):
            side = p.with_name(p.name[:-4] + ".affine.txt")
            if not side.is_file():
                raise FileNotFoundError(f"{p}: the affine sidecar {side.name} (4x4 voxel index -> LPS mm, "
                                        "numpy.savetxt format) is missing")
            try:
                A = np.loadtxt(side, dtype=np.float64, ndmin=2)
            except ValueError as exc:
                raise VolumeError(f"{side}: not a 4x4 matrix of numbers ({exc})") from None
            return cls(np.load(p, allow_pickle=False), A, nm)
        if low.endswith(".npz"):
            with np.load(p, allow_pickle=False) as z:
                missing = {"values", "affine"} - set(z.files)
                if missing:
                    raise KeyError(f"{p}: missing arrays {sorted(missing)} (has {sorted(z.files)})")
                return cls(z["values"], z["affine"], nm)
        if low.endswith(".dcm"):
            raise VolumeError(f"{p}: give the folder of the DICOM series, not one file")
        raise VolumeError(f"{p}: unknown CT format (expected .nii, .nii.gz, .npy + .affine.txt, .npz, "
                          "or a folder of DICOM slices)")

    def save(self, path, overwrite: bool = False) -> Path:
        """Write ``.npz`` (values, affine) or ``.npy`` + ``.affine.txt``; refuses to overwrite unless told."""
        p = Path(os.fspath(path))
        low = p.name.lower()
        targets = [p]
        if low.endswith(".npy"):
            targets.append(p.with_name(p.name[:-4] + ".affine.txt"))
        elif not low.endswith(".npz"):
            raise VolumeError(f"{p}: save writes .npz or .npy (+ .affine.txt)")
        for t in targets:
            if t.exists() and not overwrite:
                raise FileExistsError(f"{t} exists (pass overwrite=True)")
        if low.endswith(".npz"):
            with open(p, "wb") as f:
                np.savez(f, values=self.values, affine=np.asarray(self.affine))
        else:
            np.save(p, self.values)
            np.savetxt(targets[1], np.asarray(self.affine), fmt="%.17g")
        return p


# ---------------------------------------------------------------------------------------- readers
def _read_nifti(p: Path):
    import nibabel as nib

    try:
        img = nib.load(str(p))
    except Exception as exc:
        raise VolumeError(f"{p}: not a readable NIfTI file ({exc})") from None
    data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{p}: expected a 3-D image, got shape {data.shape}")
    return data, np.asarray(img.affine, dtype=np.float64)


def _f(ds, kw, n=None, where=""):
    val = ds.get(kw)
    if val is None or val == "":
        raise VolumeError(f"{where}: the attribute {kw} is missing")
    try:
        arr = np.asarray([float(x) for x in (val if n is not None else [val])], dtype=np.float64)
    except (TypeError, ValueError):
        raise VolumeError(f"{where}: {kw} = {val!r} is not numeric") from None
    if n is not None and arr.size != n:
        raise VolumeError(f"{where}: {kw} must have {n} values, got {arr.size}")
    return arr if n is not None else float(arr[0])


def _read_dicom_series(folder: Path, series_uid: str | None):
    import pydicom
    from pydicom.errors import InvalidDicomError

    slices = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(f)
        except (InvalidDicomError, OSError, EOFError):
            continue  # not DICOM
        if "PixelData" not in ds:
            continue  # DICOMDIR, structured reports, ...
        slices.append((f, ds))
    if not slices:
        raise VolumeError(f"{folder}: no DICOM images found")
    series: dict[str, list] = {}
    for f, ds in slices:
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in series:
            raise VolumeError(f"{folder}: no series {series_uid!r}; present: {sorted(series)}")
        items = series[series_uid]
    elif len(series) > 1:
        desc = "; ".join(f"{uid} ({len(v)} files, {v[0][1].get('SeriesDescription', '')!r})"
                         for uid, v in sorted(series.items()))
        raise VolumeError(f"{folder}: mixed series ({len(series)} Series Instance UIDs): {desc}; "
                          "pass series_uid=... or keep one series per folder")
    else:
        items = next(iter(series.values()))
    where0 = str(folder)
    first = items[0][1]
    if int(first.get("NumberOfFrames", 1) or 1) > 1:
        raise VolumeError(f"{items[0][0]}: multi-frame (enhanced) images are not supported; "
                          "convert the series to single-frame slices or NIfTI")
    iop = _f(first, "ImageOrientationPatient", 6, str(items[0][0]))
    X, Y = iop[:3], iop[3:]
    if abs(np.linalg.norm(X) - 1) > 1e-3 or abs(np.linalg.norm(Y) - 1) > 1e-3 or abs(X @ Y) > 1e-3:
        raise VolumeError(f"{items[0][0]}: ImageOrientationPatient {iop.tolist()} is not two orthonormal vectors")
    nrm = np.cross(X, Y)
    rows, cols = int(first.Rows), int(first.Columns)
    ps = _f(first, "PixelSpacing", 2, str(items[0][0]))  # (row spacing, column spacing)
    pos = []
    for f, ds in items:
        w = str(f)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f"{w}: multi-frame images are not supported")
        tilt = ds.get("GantryDetectorTilt")
        if tilt not in (None, "") and abs(float(tilt)) > 1e-3:
            raise VolumeError(f"{w}: gantry tilt {float(tilt):g} deg; tilted (sheared) series are not supported, "
                              "resample it to an orthogonal grid first (e.g. dcm2niix)")
        if not np.allclose(_f(ds, "ImageOrientationPatient", 6, w), iop, atol=1e-4):
            raise VolumeError(f"{w}: ImageOrientationPatient differs from {items[0][0].name}'s (mixed orientations)")
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise VolumeError(f"{w}: {int(ds.Rows)}x{int(ds.Columns)} pixels, {items[0][0].name} has {rows}x{cols}")
        if not np.allclose(_f(ds, "PixelSpacing", 2, w), ps, rtol=1e-4):
            raise VolumeError(f"{w}: PixelSpacing differs from {items[0][0].name}'s")
        pos.append(_f(ds, "ImagePositionPatient", 3, w))
    pos = np.array(pos)
    order = np.argsort(pos @ nrm, kind="stable")
    pos = pos[order]
    items = [items[i] for i in order]
    n = len(items)
    if n == 1:
        dz = first.get("SpacingBetweenSlices") or first.get("SliceThickness")
        if dz in (None, "") or not float(dz) > 0:
            raise VolumeError(f"{where0}: one slice without SpacingBetweenSlices or SliceThickness")
        step = nrm * float(dz)
    else:
        dpos = np.diff(pos, axis=0)
        along = dpos @ nrm
        if np.any(along < 1e-3):
            i = int(np.argmin(along))
            raise VolumeError(f"{where0}: duplicate slice position {pos[i].tolist()} ({items[i][0].name}, "
                              f"{items[i + 1][0].name}); two acquisitions in one series?")
        across = np.linalg.norm(dpos - along[:, None] * nrm, axis=1)
        if np.any(across > 1e-3 * along + 1e-3):
            ang = np.degrees(np.arctan2(across.max(), along[np.argmax(across)]))
            raise VolumeError(f"{where0}: slice positions are sheared against the slice normal by {ang:.2f} deg "
                              "(gantry tilt); tilted series are not supported, resample it to an orthogonal grid "
                              "first (e.g. dcm2niix)")
        med = float(np.median(along))
        gap = along > 1.5 * med
        if np.any(gap):
            i = int(np.argmax(gap))
            raise VolumeError(f"{where0}: missing slices: a gap of {along[i]:.4g} mm between {items[i][0].name} "
                              f"and {items[i + 1][0].name} where the spacing is {med:.4g} mm "
                              f"(about {int(round(along[i] / med)) - 1} slice(s) missing)")
        if np.any(np.abs(along - med) > 1e-2 * med + 1e-3):
            raise VolumeError(f"{where0}: inconsistent slice spacing ({along.min():.4g} to {along.max():.4g} mm); "
                              "resample the series to a regular grid first")
        step = nrm * float(np.mean(along))
    vol = np.empty((cols, rows, n), dtype=np.float32)
    for k, (f, ds) in enumerate(items):
        try:
            px = ds.pixel_array
        except Exception as exc:
            raise VolumeError(f"{f}: cannot decode the pixel data ({exc}); compressed transfer syntaxes need "
                              "pydicom's optional decoders (pylibjpeg / gdcm)") from None
        if px.shape != (rows, cols):
            raise VolumeError(f"{f}: pixel array shape {px.shape}, expected ({rows}, {cols})")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        icpt = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        vol[:, :, k] = (px.astype(np.float64) * slope + icpt).T
    A = np.eye(4)
    A[:3, 0] = X * ps[1]
    A[:3, 1] = Y * ps[0]
    A[:3, 2] = step
    A[:3, 3] = pos[0]
    return vol, A
