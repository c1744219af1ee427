"""DICOM projection X-ray images (XA, RF, DX, CR) with pydicom: tags -> C-arm geometry, shutters,
pixel calibration; and a writer for DRRs.

pydicom (https://pydicom.github.io) parses and writes the files; this module only interprets the
attributes. References are to DICOM PS3.3 (Information Object Definitions):

* C.8.7.5 XA Positioner Module, C.8.7.5.1.2 Positioner Primary and Secondary Angles: angles are
  patient based. "At a 0 angle for both ... the patient faces the Image Intensifier or digital
  detector"; the primary angle (0018,1510) is like longitude in the transaxial plane, +90 = the
  patient's left hand side (LAO), -90 = RAO; the secondary angle (0018,1511) is like latitude in
  the sagittal plane, +90 = cranial. The unit vector from the isocentre toward the detector is then
  ``(sin a cos b, -cos a cos b, sin b)`` in LPS, exactly :meth:`~taichi_xray.Camera.c_arm`'s
  beam direction for ``lao = a, cran = b``. C.8.7.5.1.3: the angle increments (0018,1520/1521) hold
  either one value (the average change per frame) or one offset from the first frame per frame.
  Distance Source to Patient (0018,1111) is "source to center of field of view", for cardiac
  C-arms the isocentre: our ``sid``. Distance Source to Detector (0018,1110) is our ``sdd``.
* PS3.3 Annex FFF / A.14: in the XA IOD "the image is assumed to be patient-oriented (i.e.
  heads-up display)": image rows run toward the feet. At AP the patient's right is on the image's
  left, i.e. ``Camera.c_arm(radiological=True)``. Patient Orientation (0020,0020), when present,
  decides the left-right sense (our writer always writes it).
* C.8.7.1 X-Ray Image Module: Photometric Interpretation "Only MONOCHROME2 may be used"; Pixel
  Intensity Relationship (0028,1040) LIN / LOG / DISP; for XA/XRF the Modality LUT of a LOG image
  scales the pixels back to values proportional to beam intensity (a LUT, applied backwards; it
  is not used for display).
* C.8.11.3.1.2 (DX Image Module): Pixel Intensity Relationship Sign (0028,1041): +1 = lower pixel
  values mean less X-ray intensity, -1 = higher pixel values mean less intensity; Rescale Slope /
  Intercept are an identity transformation in DX.
* C.7.6.11 Display Shutter Module (0018,1600..1620) and C.8.7.3 X-Ray Collimator Module
  (0018,1700..1720): rectangular edges / circle centre and radius / polygon vertices in 1-based
  (row, column) pixel coordinates; several shapes are combined by intersection.
* Imager Pixel Spacing (0018,1164) (C.8.7.2 X-Ray Acquisition / DX Detector): spacing at the
  detector's front plane, (row, column) in mm. Fallbacks: Detector Element Spacing (0018,7022) x
  Detector Binning (0018,701A); Pixel Spacing (0028,0030) (with a warning: it may be calibrated to
  the patient plane).

Read but not used for the geometry (recorded in ``meta``, with a warning when non-zero): Detector
Primary/Secondary Angle (0018,1530/1531, a detector tilt), Table Vertical/Lateral/Longitudinal
Increment (0018,1135..1137) and Table Angle (0018,1138) (table motion during a run: the patient
moves against the isocentre), the Enhanced XA equipment-based Isocenter Reference System angles
(0018,9463..9465) and Table Top positions (300A,0128..012A), which need the patient-to-equipment
registration that the XA tags do not carry. The isocentre's position in the patient is not in any
XA tag: ``isocenter=`` gives it (default the world origin).
"""
from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np

from ..camera import Camera

__all__ = ["write_dicom", "carm_parameters", "DicomTagError", "PRIVATE_CREATOR", "PRIVATE_GROUP"]

#: Private block used by :func:`write_dicom` for what standard tags cannot hold exactly.
PRIVATE_GROUP = 0x0071
PRIVATE_CREATOR = "TAICHI_XRAY 1"
# element offsets inside the block
_P_VERSION, _P_MATRIX, _P_KIND, _P_SLOPE, _P_INTERCEPT, _P_ISO = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06

_SOP_CLASS = {
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",   # X-Ray Angiographic Image Storage
    "RF": "1.2.840.10008.5.1.4.1.1.12.2",   # X-Ray Radiofluoroscopic Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",    # Digital X-Ray Image Storage - For Presentation
}
_SHUTTER_TAGS = {  # Display Shutter (C.7.6.11) and X-Ray Collimator (C.8.7.3) keyword stems
    "shutter": ("ShutterShape", "ShutterLeftVerticalEdge", "ShutterRightVerticalEdge",
                "ShutterUpperHorizontalEdge", "ShutterLowerHorizontalEdge", "CenterOfCircularShutter",
                "RadiusOfCircularShutter", "VerticesOfThePolygonalShutter"),
    "collimator": ("CollimatorShape", "CollimatorLeftVerticalEdge", "CollimatorRightVerticalEdge",
                   "CollimatorUpperHorizontalEdge", "CollimatorLowerHorizontalEdge",
                   "CenterOfCircularCollimator", "RadiusOfCircularCollimator",
                   "VerticesOfThePolygonalCollimator"),
}


class DicomTagError(ValueError):
    """A DICOM attribute needed to read the image is missing, empty or unusable."""


def _tagname(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    t = tag_for_keyword(keyword)
    words = "".join(" " + c if c.isupper() else c for c in keyword).strip()
    return f"{words} ({t >> 16:04X},{t & 0xFFFF:04X})" if t is not None else keyword


def missing(path, keyword: str, argument: str, extra: str = "") -> DicomTagError:
    """The error for a missing tag: names the tag and the keyword argument that supplies it."""
    return DicomTagError(f"{path}: {_tagname(keyword)} is missing or empty; pass {argument} to read_xray"
                         + (f" ({extra})" if extra else ""))


# ----------------------------------------------------------------------------- reading
def load(path):
    """Read a DICOM file (with or without the 128-byte preamble) -> pydicom Dataset with pixel data."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = pydicom.dcmread(path, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable DICOM file ({exc})") from exc
    if "PixelData" not in ds:
        raise ValueError(f"{path}: not a DICOM image (no Pixel Data (7FE0,0010))")
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare data set without file meta
        implicit, little = getattr(ds, "original_encoding", (None, None))
        ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    return ds


def _empty(v) -> bool:
    return v is None or (isinstance(v, (str, bytes)) and v.strip() == "") or (
        hasattr(v, "__len__") and not isinstance(v, (str, bytes)) and len(v) == 0)


def _search(item, keyword: str, depth: int):
    if keyword in item and not _empty(item[keyword].value):
        return item[keyword].value
    if depth > 0:
        for el in item:
            if el.VR == "SQ" and el.value:
                for sub in el.value:
                    v = _search(sub, keyword, depth - 1)
                    if v is not None:
                        return v
    return None


def find(ds, keyword: str, frame: int = 0):
    """Value of ``keyword`` for ``frame``: per-frame functional group, then the shared functional
    group (Enhanced XA/XRF, C.7.6.16), then the top level. None when absent or empty."""
    for seq in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        items = ds.get(seq)
        if items:
            item = items[frame] if seq.startswith("PerFrame") and frame < len(items) else items[0]
            v = _search(item, keyword, 2)
            if v is not None:
                return v
    v = ds.get(keyword)
    return None if _empty(v) else v


def _floats(v) -> list[float]:
    if v is None:
        return []
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        return [float(v)]
    return [float(x) for x in v]


def n_frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def frame_pixels(ds, frame: int, path) -> np.ndarray:
    """Stored pixel values (H, W) of ``frame`` (pydicom masks them to Bits Stored)."""
    n = n_frames(ds)
    if not isinstance(frame, (int, np.integer)) or isinstance(frame, bool):
        raise TypeError(f"frame must be an integer, got {frame!r}")
    if not 0 <= frame < n:
        raise ValueError(f"{path}: frame={frame} is out of range: the file has {n} frame(s) (0..{n - 1})")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise ValueError(f"{path}: Samples per Pixel (0028,0002) is {ds.SamplesPerPixel}: "
                         "only grey-scale X-ray images are supported")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises several types for undecodable data
        raise ValueError(f"{path}: cannot decode Pixel Data ({exc}); a compressed transfer syntax "
                         "may need pylibjpeg / gdcm installed") from exc
    if n > 1:
        arr = arr[frame]
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D frame, got pixel data of shape {arr.shape}")
    return arr


def modality_values(ds, raw: np.ndarray, frame: int, rescale=None) -> tuple[np.ndarray, dict]:
    """Stored values -> modality values (float64) by Rescale Slope/Intercept (or the Modality LUT
    Sequence, via ``pydicom.pixels.apply_modality_lut``). Returns the values and a dict with
    ``how``, ``slope``, ``intercept``, ``step`` (modality units per stored unit) and ``full``
    (the modality value of the largest storable pixel, zero intensity for LIN with sign -1)."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    info = {"bits_stored": bits}
    if rescale is not None:
        slope, icpt = (float(x) for x in rescale)
        info["how"] = "rescale (argument)"
    elif ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        m = apply_modality_lut(raw, ds).astype(np.float64)
        lut = ds.ModalityLUTSequence[0]
        nbits = int(lut.LUTDescriptor[2])
        info.update(how="Modality LUT Sequence (0028,3000)", slope=None, intercept=None, step=1.0,
                    full=float(2**nbits - 1), lut_type=str(lut.get("ModalityLUTType", "")))
        return m, info
    else:
        s, b = find(ds, "RescaleSlope", frame), find(ds, "RescaleIntercept", frame)
        slope = 1.0 if s is None else float(s)
        icpt = 0.0 if b is None else float(b)
        info["how"] = "Rescale Slope/Intercept (0028,1053/1052)" if s is not None else "identity (no rescale)"
    if not (np.isfinite(slope) and np.isfinite(icpt)) or slope == 0:
        raise DicomTagError(f"unusable rescale slope {slope} / intercept {icpt}; pass rescale=(slope, intercept)")
    info.update(slope=slope, intercept=icpt, step=abs(slope), full=slope * qmax + icpt)
    return raw.astype(np.float64) * slope + icpt, info


def private_calibration(ds) -> dict | None:
    """What :func:`write_dicom` stored in its private block, or None."""
    try:
        blk = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    try:
        out = {"kind": str(blk[_P_KIND].value).upper(), "slope": float(blk[_P_SLOPE].value),
               "intercept": float(blk[_P_INTERCEPT].value)}
        if _P_MATRIX in blk:
            out["P"] = np.asarray(_floats(blk[_P_MATRIX].value), dtype=np.float64).reshape(3, 4)
        if _P_ISO in blk:
            out["isocenter"] = np.asarray(_floats(blk[_P_ISO].value), dtype=np.float64)
    except (KeyError, ValueError, TypeError):
        return None
    return out if out["kind"] in ("LOG", "LIN") else None


# ----------------------------------------------------------------------------- geometry
def _orientation_vector(code: str) -> np.ndarray:
    axes = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}
    v = np.zeros(3)
    for k, ch in enumerate(code.strip().upper()):
        if ch in axes:
            v += np.asarray(axes[ch], dtype=float) / (1 + k)  # the first letter is the principal one
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def orientation_code(vec) -> str:
    """Patient Orientation letters (C.7.6.1.1.1) of an LPS direction: principal letter first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    v = np.asarray(vec, dtype=float)
    order = np.argsort(-np.abs(v))
    return "".join(letters[i][0 if v[i] > 0 else 1] for i in order if abs(v[i]) > 1e-6)


def _angle(ds, keyword: str, inc_keyword: str, frame: int, nf: int, path, arg: str):
    base = find(ds, keyword, frame)
    if base is None:
        return None, None
    inc = _floats(find(ds, inc_keyword, frame)) if nf > 1 and "PerFrameFunctionalGroupsSequence" not in ds else []
    if not inc:
        return float(base), None
    if len(inc) == 1:
        return float(base) + frame * inc[0], inc
    if len(inc) != nf:
        raise DicomTagError(f"{path}: {_tagname(inc_keyword)} has {len(inc)} values for {nf} frames "
                            f"(C.8.7.5.1.3 allows 1 or {nf}); pass {arg}")
    return float(base) + inc[frame], inc


def geometry(ds, *, frame: int, width: int, height: int, path, sid=None, sdd=None, pixel_spacing=None,
             lao=None, cran=None, isocenter=None, radiological=None) -> tuple[Camera, dict]:
    """C-arm camera of ``frame`` from the standard tags, each value overridable. Returns (camera, meta)."""
    meta: dict = {"overridden": []}
    nf = n_frames(ds)
    modality = str(ds.get("Modality", "")).upper()
    ptype = find(ds, "PositionerType", frame)
    meta["positioner_type"] = "CARM (assumed: no Positioner Type (0018,1508))" if ptype is None else str(ptype)
    if ptype is not None and str(ptype).upper() != "CARM" and (lao is None or cran is None):
        raise DicomTagError(f"{path}: Positioner Type (0018,1508) is {ptype}: its angles are not the "
                            "patient-based C-arm angles of C.8.7.5; pass lao= and cran=")

    def pick(name, value, from_tags, argument, keyword, extra=""):
        if value is not None:
            meta["overridden"].append(name)
            return value
        if from_tags is None:
            raise missing(path, keyword, argument, extra)
        return from_tags

    a_tag, a_inc = _angle(ds, "PositionerPrimaryAngle", "PositionerPrimaryAngleIncrement", frame, nf, path, "lao=")
    b_tag, b_inc = _angle(ds, "PositionerSecondaryAngle", "PositionerSecondaryAngleIncrement", frame, nf, path,
                          "cran=")
    view = ds.get("ViewPosition")
    hint = f"View Position (0018,5101) is {view}" if view else ""
    lao_v = float(pick("lao", lao, a_tag, "lao=<degrees, LAO +, RAO ->", "PositionerPrimaryAngle", hint))
    cran_v = float(pick("cran", cran, b_tag, "cran=<degrees, CRAN +, CAUD ->", "PositionerSecondaryAngle", hint))
    meta.update(lao=lao_v, cran=cran_v, angle_increments=(a_inc, b_inc))

    sdd_t = find(ds, "DistanceSourceToDetector", frame)
    sdd_v = float(pick("sdd", sdd, None if sdd_t is None else float(sdd_t), "sdd=<mm>", "DistanceSourceToDetector"))
    sid_t = find(ds, "DistanceSourceToPatient", frame)
    if sid_t is None:
        sid_t = find(ds, "DistanceSourceToIsocenter", frame)  # Enhanced XA X-Ray Geometry Sequence
    sid_v = float(pick("sid", sid, None if sid_t is None else float(sid_t), "sid=<mm>", "DistanceSourceToPatient",
                       "or Distance Source to Isocenter (0018,9402)"))
    meta.update(sdd=sdd_v, sid=sid_v)

    if pixel_spacing is not None:
        meta["overridden"].append("pixel_spacing")
        ps = _floats(pixel_spacing) if hasattr(pixel_spacing, "__len__") else [float(pixel_spacing)]
        meta["pixel_spacing_source"] = "argument"
    else:
        ps, src = _floats(find(ds, "ImagerPixelSpacing", frame)), "Imager Pixel Spacing (0018,1164)"
        if not ps:
            ps = _floats(find(ds, "DetectorElementSpacing", frame))
            binning = _floats(find(ds, "DetectorBinning", frame)) or [1.0, 1.0]
            if ps:
                ps = [p * b for p, b in zip(ps, binning * (2 // len(binning)))]
                src = "Detector Element Spacing (0018,7022) x Detector Binning (0018,701A)"
        if not ps:
            ps = _floats(find(ds, "PixelSpacing", frame))
            src = "Pixel Spacing (0028,0030)"
            if ps:
                warnings.warn(f"{path}: no Imager Pixel Spacing (0018,1164); using Pixel Spacing (0028,0030) "
                              f"{ps} mm as the detector pixel size (it may be calibrated to the patient plane; "
                              "pass pixel_spacing= if so)", UserWarning, stacklevel=3)
        if not ps:
            raise missing(path, "ImagerPixelSpacing", "pixel_spacing=<mm>",
                          "also looked for Detector Element Spacing (0018,7022) and Pixel Spacing (0028,0030)")
        meta["pixel_spacing_source"] = src
    if len(ps) == 2 and not math.isclose(ps[0], ps[1], rel_tol=1e-6):
        raise DicomTagError(f"{path}: non-square pixels {ps} mm (row, column): Camera.c_arm needs one pixel "
                            "spacing; resample the image or pass pixel_spacing=")
    meta["pixel_spacing"] = float(ps[0])

    # what we read but do not model
    ignored = {}
    for kw in ("DetectorPrimaryAngle", "DetectorSecondaryAngle", "TableAngle"):
        v = _floats(find(ds, kw, frame))
        if v and abs(v[0]) > 1e-9:
            ignored[kw] = v[0]
    for kw in ("TableVerticalIncrement", "TableLateralIncrement", "TableLongitudinalIncrement"):
        v = _floats(find(ds, kw, frame))
        if v:
            val = v[0] * frame if len(v) == 1 else (v[frame] if frame < len(v) else 0.0)
            if abs(val) > 1e-9:
                ignored[kw] = val
    if ignored:
        warnings.warn(f"{path}: ignored (not part of the C-arm model): {ignored}", UserWarning, stacklevel=3)
    meta["ignored"] = ignored

    iso = (0.0, 0.0, 0.0) if isocenter is None else tuple(float(x) for x in np.ravel(isocenter))
    if isocenter is not None:
        meta["overridden"].append("isocenter")
    meta["isocenter"] = iso

    def cam(rad):
        return Camera.c_arm(sid=sid_v, sdd=sdd_v, width=width, height=height, pixel_spacing=meta["pixel_spacing"],
                            lao=lao_v, cran=cran_v, isocenter=iso, radiological=rad)

    po = ds.get("PatientOrientation")
    po = [str(x) for x in po] if po is not None and not isinstance(po, str) else ([po] if po else [])
    meta["patient_orientation"] = po
    if radiological is not None:
        meta["overridden"].append("radiological")
        rad, meta["radiological_source"] = bool(radiological), "argument"
    else:
        rad, meta["radiological_source"] = True, "XA convention (patient's right on the image's left at AP)"
        if len(po) == 2:
            c = cam(True)
            col_dir, row_dir = c.R[0], c.R[1]  # world directions of increasing column / row
            pc, pr = _orientation_vector(po[0]), _orientation_vector(po[1])
            if pr @ row_dir < -0.3:
                raise DicomTagError(f"{path}: Patient Orientation (0020,0020) {po} puts the patient's head toward "
                                    "the bottom of the image; Camera.c_arm needs heads-up images (flip the image "
                                    "with numpy.flipud) or pass radiological= to ignore the tag")
            if pc @ col_dir < -0.3:
                rad = False
            if abs(pc @ col_dir) >= 0.3:
                meta["radiological_source"] = f"Patient Orientation (0020,0020) {po}"
    meta["radiological"] = rad
    camera = cam(rad)
    meta["patient_orientation_expected"] = [orientation_code(camera.R[0]), orientation_code(camera.R[1])]
    return camera, meta


def carm_parameters(camera: Camera, *, rtol: float = 1e-9) -> dict:
    """Recover ``Camera.c_arm`` parameters from ``camera`` and check ``P`` equals the C-arm's.

    Returns dict(sid, sdd, lao, cran, pixel_spacing, isocenter, radiological). The isocentre is the
    point of the principal axis nearest to the world origin (a C-arm's ``P`` does not fix it along
    the axis; DICOM's isocentre is the patient frame's origin). Raises ValueError naming what
    cannot be expressed with the XA positioner tags (detector roll, skew, non-square pixels, an
    off-centre principal point, a missing pixel spacing, a beam along the patient's long axis).
    """
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a taichi_xray.Camera, got {type(camera).__name__}")
    if camera.pixel_spacing is None:
        raise ValueError("the camera has no pixel_spacing, so the source-detector distance is unknown; build it "
                         "with pixel_spacing= (Camera.from_projection_matrix(P, W, H, pixel_spacing=...))")
    d = np.asarray(camera.view_direction, dtype=np.float64)
    S = camera.source
    ps = camera.pixel_spacing
    cran = math.degrees(math.asin(float(np.clip(d[2], -1.0, 1.0))))
    if abs(math.cos(math.radians(cran))) < 1e-9:
        raise ValueError("the beam runs along the patient's long axis (cran = +-90): the XA positioner angles "
                         "cannot express the image orientation")
    lao = math.degrees(math.atan2(d[0], -d[1]))
    sdd = camera.focal_length_px * ps
    iso = S + (-(S @ d)) * d  # foot of the perpendicular from the world origin
    sid = float((iso - S) @ d)
    if np.linalg.norm(iso) <= 1e-9 * max(sdd, 1.0):
        iso = np.zeros(3)
    if not 0 < sid < sdd:
        raise ValueError(f"the world origin projects onto the beam axis at {sid:.6g} mm from the source, outside "
                         f"(0, sdd = {sdd:.6g} mm): it cannot be the C-arm's isocentre (is P's sign flipped? "
                         "try camera.flipped())")
    rad = camera.mirrored
    ref = Camera.c_arm(sid=sid, sdd=sdd, width=camera.width, height=camera.height, pixel_spacing=ps,
                       lao=lao, cran=cran, isocenter=iso, radiological=rad)
    err = float(np.max(np.abs(ref.P - camera.P)) / np.max(np.abs(camera.P)))
    if not err <= rtol:
        K = camera.K
        why = []
        if abs(K[0, 1]) > 1e-9 * K[0, 0]:
            why.append(f"skewed pixels (K[0,1] = {K[0, 1]:.3g})")
        if not math.isclose(K[0, 0], K[1, 1], rel_tol=1e-9):
            why.append(f"non-square pixels (fx = {K[0, 0]:.9g}, fy = {K[1, 1]:.9g} px)")
        c = ((camera.width - 1) / 2, (camera.height - 1) / 2)
        if abs(K[0, 2] - c[0]) > 1e-6 or abs(K[1, 2] - c[1]) > 1e-6:
            why.append(f"principal point ({K[0, 2]:.6g}, {K[1, 2]:.6g}) off the detector centre ({c[0]:g}, {c[1]:g})")
        r_cam, r_ref = camera.R[1], ref.R[1]
        roll = math.degrees(math.atan2(float(np.cross(r_ref, r_cam) @ d), float(r_ref @ r_cam)))
        if abs(roll) > 1e-6:
            why.append(f"detector rolled by {roll:.4g} degrees about the beam (C-arm image rows run toward the feet)")
        if not why:
            why.append("P differs from the C-arm with the same source, beam axis and focal length")
        raise ValueError(f"this camera is not a C-arm that DICOM's XA positioner tags (0018,1510/1511/1110/1111, "
                         f"0018,1164) can express: {'; '.join(why)} (relative difference {err:.3g} > {rtol:g})")
    return {"sid": sid, "sdd": sdd, "lao": lao, "cran": cran, "pixel_spacing": ps, "isocenter": iso,
            "radiological": rad, "error": err}


# ----------------------------------------------------------------------------- shutters
def _shape_mask(ds, frame, keys, H, W):
    shape_kw, lv, rv, uh, lh, cc, rc, vp = keys
    shapes = find(ds, shape_kw, frame)
    if shapes is None:
        return None, []
    shapes = [str(s).upper() for s in ([shapes] if isinstance(shapes, str) else shapes)]
    rr, cc_ = np.mgrid[0:H, 0:W]
    mask = np.ones((H, W), dtype=bool)
    used = []
    for s in shapes:
        if s == "RECTANGULAR":
            e = [find(ds, k, frame) for k in (lv, rv, uh, lh)]
            if any(x is None for x in e):
                raise DicomTagError(f"{shape_kw} is RECTANGULAR but an edge tag is missing; pass shutter=")
            left, right, up, low = (float(x) - 1 for x in e)  # 1-based -> 0-based pixel indices
            mask &= (cc_ >= left) & (cc_ <= right) & (rr >= up) & (rr <= low)
            used.append(f"RECTANGULAR columns {e[0]}..{e[1]}, rows {e[2]}..{e[3]}")
        elif s == "CIRCULAR":
            c, r = _floats(find(ds, cc, frame)), _floats(find(ds, rc, frame))
            if len(c) != 2 or len(r) != 1:
                raise DicomTagError(f"{shape_kw} is CIRCULAR but its centre/radius is missing; pass shutter=")
            mask &= (rr - (c[0] - 1)) ** 2 + (cc_ - (c[1] - 1)) ** 2 <= r[0] ** 2
            used.append(f"CIRCULAR centre (row, col) {c}, radius {r[0]}")
        elif s == "POLYGONAL":
            v = _floats(find(ds, vp, frame))
            if len(v) < 6 or len(v) % 2:
                raise DicomTagError(f"{shape_kw} is POLYGONAL but its vertices are missing; pass shutter=")
            from skimage.draw import polygon2mask

            verts = np.asarray(v, dtype=float).reshape(-1, 2) - 1.0
            mask &= polygon2mask((H, W), verts)
            used.append(f"POLYGONAL {len(verts)} vertices")
        elif s == "BITMAP":
            used.append("BITMAP (ignored: an overlay-plane shutter)")
        else:
            raise DicomTagError(f"{_tagname(shape_kw)} has an unknown value {s!r}")
    return mask, used


def shutter_from_tags(ds, frame: int, H: int, W: int):
    """Mask (H, W) bool (True = visible) from the Display Shutter and X-Ray Collimator tags, or None."""
    out, desc = None, []
    for name, keys in _SHUTTER_TAGS.items():
        m, used = _shape_mask(ds, frame, keys, H, W)
        if m is not None:
            out = m if out is None else out & m
            desc += [f"{name}: {u}" for u in used]
    return out, desc


def _mask_to_shutter(mask: np.ndarray) -> tuple[dict, float]:
    """Display Shutter attributes for a mask: RECTANGULAR when exact, else CIRCULAR when the integer
    circle matches (IoU >= 0.99), else POLYGONAL (integer vertices of the outline). Returns (attrs, IoU)."""
    H, W = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, r1, c0, c1 = rows[0], rows[-1], cols[0], cols[-1]
    box = np.zeros_like(mask)
    box[r0:r1 + 1, c0:c1 + 1] = True
    if np.array_equal(box, mask):
        return {"ShutterShape": "RECTANGULAR", "ShutterLeftVerticalEdge": int(c0 + 1),
                "ShutterRightVerticalEdge": int(c1 + 1), "ShutterUpperHorizontalEdge": int(r0 + 1),
                "ShutterLowerHorizontalEdge": int(r1 + 1)}, 1.0

    def iou(m):
        return float((m & mask).sum() / (m | mask).sum())

    rr, cc = np.nonzero(mask)
    cr, ccol = int(round(rr.mean())), int(round(cc.mean()))
    rad = int(round(math.sqrt(mask.sum() / math.pi)))
    g_r, g_c = np.mgrid[0:H, 0:W]
    circ = (g_r - cr) ** 2 + (g_c - ccol) ** 2 <= rad**2
    if iou(circ) >= 0.99:
        return {"ShutterShape": "CIRCULAR", "CenterOfCircularShutter": [cr + 1, ccol + 1],
                "RadiusOfCircularShutter": rad}, iou(circ)
    from skimage.draw import polygon2mask
    from skimage.measure import approximate_polygon, find_contours

    contour = max(find_contours(np.pad(mask, 1).astype(float), 0.5), key=len) - 1.0
    poly = np.rint(approximate_polygon(contour, tolerance=0.5)[:-1]).astype(int)
    return {"ShutterShape": "POLYGONAL", "VerticesOfThePolygonalShutter": (poly + 1).ravel().tolist()}, \
        iou(polygon2mask((H, W), poly.astype(float)))


# ----------------------------------------------------------------------------- writing
def _ds_str(x: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(x))


def write_dicom(path, image, camera: Camera | None, *, kind: str = "line_integral", bits: int = 16,
                photometric: str = "MONOCHROME2", log_stored: bool = True, modality: str = "XA",
                mask=None, overwrite: bool = False, patient_name: str = "ANONYMOUS^DRR",
                patient_id: str = "TAICHI_XRAY", study_description: str = "taichi_xray DRR",
                series_description: str = "", study_instance_uid: str | None = None,
                series_instance_uid: str | None = None, instance_number: int = 1,
                extra: dict | None = None) -> Path:
    """Write a DRR as a DICOM XA, RF or DX image (Explicit VR Little Endian, with file meta).

    Parameters
    ----------
    image : (H, W) float array (numpy or torch): a line integral ``-ln(I/I0)`` (``kind="line_integral"``,
        finite) or a transmission ``I/I0 >= 0`` (``kind="transmission"``).
    camera : a :class:`~taichi_xray.Camera` of size (W, H) that is a C-arm (checked with
        :func:`carm_parameters`, 1e-9 relative on P), or None to write no geometry.
    bits : Bits Stored, 8, 10, 12 or 16 (Bits Allocated 8 for 8, else 16).
    photometric : "MONOCHROME2" or "MONOCHROME1" (DX only: C.8.7.1 allows only MONOCHROME2 in XA/RF).
    log_stored : True -> Pixel Intensity Relationship LOG (the pixels are a linear function of the
        line integral); False -> LIN (a linear function of the transmission I/I0).
    modality : "XA", "RF" or "DX" (Digital X-Ray For Presentation).
    mask : optional (H, W) bool field of view, written as a Display Shutter (C.7.6.11).
    extra : more attributes {keyword: value} set last.

    Pixel coding. ``top = 2**bits - 1``; ``step`` spans the value range in ``top`` steps (LOG: the
    line integral's range; LIN: ``[0, max T]``, so zero intensity is representable). XA/RF
    (MONOCHROME2, higher pixel = more intensity, as in fluoroscopy): Rescale Slope/Intercept map the
    pixels to ``ln(I/I0) = -L`` (LOG) or ``I/I0`` (LIN); Pixel Intensity Relationship Sign +1. DX
    (Rescale identity, as C.8.11.3.1.2 requires): MONOCHROME2 stores higher pixel = denser (Sign -1),
    MONOCHROME1 higher pixel = more intensity (Sign +1), so both display dense anatomy bright. The
    exact float mapping ``value = a * pixel + b`` (value = L for LOG, I/I0 for LIN) and the full
    ``P`` (float64) go into a private block (group 0x0071, creator "TAICHI_XRAY 1"): a private tag
    rather than a ``.P.txt`` sidecar so that the file stays self-contained (a sidecar is lost when
    a file goes through a PACS); anonymisers may strip private tags, which is why the geometry must
    also be expressible by the standard tags. Quantisation: LOG ``|dL| <= step/2``; LIN
    ``|dT| <= step/2``, so ``|dL| <= -ln(1 - step / (2 T))``.

    Never overwrites an existing file unless ``overwrite=True``. Returns the path.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.exists():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    modality = str(modality).upper()
    if modality not in _SOP_CLASS:
        raise ValueError(f"modality must be one of {sorted(_SOP_CLASS)}, got {modality!r}")
    photometric = str(photometric).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if modality in ("XA", "RF") and photometric != "MONOCHROME2":
        raise ValueError(f"{modality}: the X-Ray Image Module (PS3.3 C.8.7.1) allows only MONOCHROME2; "
                         "use modality='DX' for MONOCHROME1")
    if bits not in (8, 10, 12, 16):
        raise ValueError(f"bits must be 8, 10, 12 or 16, got {bits!r}")
    if kind not in ("line_integral", "transmission"):
        raise ValueError(f"kind must be 'line_integral' or 'transmission', got {kind!r}")
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinity")
    H, W = a.shape
    if camera is not None and (camera.height, camera.width) != (H, W):
        raise ValueError(f"image shape {a.shape} does not match the camera's (height, width) = "
                         f"({camera.height}, {camera.width})")
    if kind == "transmission":
        if (a < 0).any():
            raise ValueError("a transmission image must be >= 0")
        if log_stored and (a <= 0).any():
            raise ValueError("the transmission has zeros: their line integral is infinite; clip it or write "
                             "log_stored=False")
        T = a
        L = -np.log(a) if log_stored else None
    else:
        L = a
        T = np.exp(-a) if not log_stored else None
    geo = carm_parameters(camera) if camera is not None else None
    if geo is not None and np.any(geo["isocenter"] != 0):
        warnings.warn(f"the C-arm's isocentre {np.round(geo['isocenter'], 6).tolist()} mm is not the world "
                      "origin: no XA tag holds it; it is kept in the private block (and P), and a reader using "
                      "only standard tags must pass isocenter=", UserWarning, stacklevel=2)

    # ---- quantisation
    top = 2**bits - 1
    dx = modality == "DX"
    sign = -1 if (dx and photometric == "MONOCHROME2") else +1
    if log_stored:
        lo, hi = float(L.min()), float(L.max())
        step = (hi - lo) / top if hi > lo else 1.0 / top
        if not dx:  # rescale output ln(I/I0) = -L = slope * q + intercept
            slope, icpt = float(_ds_str(step)), float(_ds_str(-hi))
            q = np.rint((-L - icpt) / slope)
            a_p, b_p = -slope, -icpt
        elif sign > 0:  # MONOCHROME1: higher q = less dense
            q = np.rint((hi - L) / step)
            a_p, b_p = -step, hi
        else:
            q = np.rint((L - lo) / step)
            a_p, b_p = step, lo
    else:
        tmax = float(T.max())
        step = tmax / top if tmax > 0 else 1.0 / top
        if not dx:
            slope, icpt = float(_ds_str(step)), 0.0
            q = np.rint(T / slope)
            a_p, b_p = slope, 0.0
        elif sign > 0:
            q = np.rint(T / step)
            a_p, b_p = step, 0.0
        else:
            q = top - np.rint(T / step)
            a_p, b_p = -step, step * top
    q = np.clip(q, 0, top).astype(np.uint8 if bits == 8 else np.uint16)

    # ---- data set
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "TAICHI_XRAY_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.set_pixel_data(q, photometric, bits)
    import datetime

    now = datetime.datetime.now()
    ds.SOPClassUID, ds.SOPInstanceUID = _SOP_CLASS[modality], sop_uid
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", ""
    ds.StudyDescription, ds.SeriesDescription = study_description, series_description
    ds.SeriesNumber, ds.InstanceNumber = 1, int(instance_number)
    ds.Manufacturer, ds.ManufacturerModelName = "taichi_xray", "DRR"
    ds.ImageType = ["DERIVED", "PRIMARY", "" if dx else "SINGLE A"]
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.PixelIntensityRelationship = "LOG" if log_stored else "LIN"
    ds.PixelIntensityRelationshipSign = sign
    if dx:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "0", "US"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
        ds.ImageLaterality, ds.DetectorType, ds.ViewPosition, ds.BodyPartExamined = "U", "", "", ""
        vmin, vmax = float(q.min()), float(q.max())
    else:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = _ds_str(slope), _ds_str(icpt), "US"
        ds.RadiationSetting, ds.KVP = "GR", ""
        vmin, vmax = float(q.min()) * slope + icpt, float(q.max()) * slope + icpt
    ds.WindowCenter = _ds_str((vmin + vmax) / 2)
    ds.WindowWidth = _ds_str(max(vmax - vmin, 1e-12 if not dx else 1.0))
    if geo is not None:
        ds.PositionerPrimaryAngle = _ds_str(geo["lao"])
        ds.PositionerSecondaryAngle = _ds_str(geo["cran"])
        ds.DistanceSourceToDetector = _ds_str(geo["sdd"])
        ds.DistanceSourceToPatient = _ds_str(geo["sid"])
        ds.EstimatedRadiographicMagnificationFactor = _ds_str(geo["sdd"] / geo["sid"])
        ds.ImagerPixelSpacing = [_ds_str(geo["pixel_spacing"])] * 2
        ds.PatientOrientation = [orientation_code(camera.R[0]), orientation_code(camera.R[1])]
        if dx:
            ds.PositionerType = "CARM"
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != (H, W) or m.dtype != bool:
            raise ValueError(f"mask must be a bool array of shape {(H, W)}, got {m.dtype} {m.shape}")
        if not m.any():
            raise ValueError("mask is empty (no visible pixel)")
        if not m.all():
            attrs, fit = _mask_to_shutter(m)
            if fit < 0.98:
                warnings.warn(f"the mask is written as a {attrs['ShutterShape']} shutter with IoU {fit:.3f}",
                              UserWarning, stacklevel=2)
            for k, v in attrs.items():
                setattr(ds, k, v)
    blk = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    blk.add_new(_P_VERSION, "LO", "taichi_xray DRR 1")
    blk.add_new(_P_KIND, "CS", "LOG" if log_stored else "LIN")
    blk.add_new(_P_SLOPE, "FD", float(a_p))
    blk.add_new(_P_INTERCEPT, "FD", float(b_p))
    if camera is not None:
        blk.add_new(_P_MATRIX, "FD", [float(x) for x in np.asarray(camera.P).ravel()])
        blk.add_new(_P_ISO, "FD", [float(x) for x in geo["isocenter"]])
    for k, v in (extra or {}).items():
        setattr(ds, k, v)

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    with open(path, "wb" if overwrite else "xb") as f:
        f.write(buf.getvalue())
    return path
