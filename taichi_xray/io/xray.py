"""Real X-ray images with their geometry: :class:`XRayImage`, :func:`read_xray`, :func:`shutter_mask`.

``read_xray`` turns a stored projection image (DICOM XA/RF/DX/CR, or PNG/TIFF/NPY with an
``IMAGE.P.txt`` projection matrix beside it) into what the renderer produces: the line integral
``L = -ln(I / I0)`` (H, W) float64, a mask of the usable (collimated) field and a
:class:`~taichi_xray.Camera`. See ``docs/xray-images.md`` and :mod:`taichi_xray.io.dicom` for the
tags and the DICOM sections they come from.

Pixel values -> line integral
-----------------------------
1. Stored values (masked to Bits Stored by pydicom) -> *modality values* ``m`` by Rescale Slope /
   Intercept or the Modality LUT (``rescale=`` overrides). Files written by
   :func:`~taichi_xray.io.dicom.write_dicom` carry an exact private calibration used instead.
2. ``sigma = +1`` when ``m`` grows with the X-ray intensity, ``-1`` when it falls: from
   ``polarity=``, else Pixel Intensity Relationship Sign (0028,1041), else (XA/RF) +1 because
   C.8.7.1 defines LIN/LOG as proportional to the beam intensity, else detected from the image
   (:func:`detect_polarity`), else the modality's usual display (DX/CR/PNG: dense is bright).
   ``polarity`` ("dense_bright" / "dense_dark") describes the image as displayed after the
   photometric interpretation (MONOCHROME1 shows low values bright).
3. ``log_stored`` (``m`` linear in ``ln I``) from the argument, else (0028,1040) LOG/LIN (DISP is
   taken as LOG, with a warning), else an error naming the tag and the keyword.
4. ``I0``: the modality value of an unattenuated pixel. Unless given, it is estimated inside the
   mask as the median of the brightest 1 % of the intensity-like values (after a 1.5-pixel
   Gaussian smoothing that keeps noise out of the percentile). With no unattenuated region in the
   field (anatomy everywhere) this underestimates I0: pass ``I0=``.
5. LOG: ``L = log_scale * sigma * (m0 - m)`` (``log_scale`` = line-integral units per modality unit,
   default 1: a third-party log image gives L only up to this scale). LIN: intensity
   ``s = m`` (sigma = +1) or ``full - m`` (sigma = -1, ``full`` = the modality value of the largest
   storable pixel, i.e. zero intensity), ``L = -ln(max(s, floor) / s0)``; ``floor`` defaults to half
   a quantisation step (so L <= ln(2 s0 / step), about 11.8 for full-range 16-bit data).
   Negative L (noise above I0) is set to 0; both clips are counted in ``meta``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..camera import Camera

__all__ = ["XRayImage", "read_xray", "shutter_mask", "detect_polarity", "sidecar_path"]

_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
_POLARITIES = ("dense_bright", "dense_dark")


@dataclass(frozen=True, eq=False)
class XRayImage:
    """An X-ray image in the renderer's domain, with its geometry.

    line_integral : (H, W) float64, ``-ln(I / I0)`` (dimensionless, >= 0; up to ``meta["log_scale"]``
        for log images of unknown scale). Pixels outside ``mask`` are not meaningful.
    mask : (H, W) bool, True inside the collimated / shutter field (usable pixels).
    camera : :class:`~taichi_xray.Camera` of size (W, H) in the DICOM patient frame (LPS, mm), or
        None when no geometry was read (``geometry=False``).
    I0 : float, the modality value (stored value after rescale / Modality LUT) of an unattenuated
        pixel used for the conversion (given, from the file's calibration, or estimated).
    raw : (H, W) the stored pixel values of the frame, as stored (integer or float).
    meta : dict of what was read and decided: modality, photometric, polarity (and its source),
        log_stored, angles, distances, pixel spacing, shutter, ``overridden`` (keywords that replaced
        tag values), clipping counts...
    source : the file read.
    """

    line_integral: np.ndarray
    mask: np.ndarray
    camera: Camera | None
    I0: float
    raw: np.ndarray
    meta: dict = field(default_factory=dict)
    source: Path | None = None

    @property
    def polarity(self) -> str:
        """"dense_bright" or "dense_dark": how dense anatomy looks in the displayed image."""
        return self.meta["polarity"]

    @property
    def shape(self) -> tuple[int, int]:
        return self.line_integral.shape


def sidecar_path(path) -> Path:
    """``image.png`` -> ``image.P.txt`` (the convention of ``taichi-xray render``)."""
    p = Path(path)
    return p.with_name(p.stem + ".P.txt")


# ----------------------------------------------------------------------------- shutter detection
def _largest_component(m: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    lab, n = ndimage.label(m)
    if n == 0:
        return m
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def shutter_mask(image, *, kind: str = "line_integral", smooth: float = 2.0, min_border: float = 0.15,
                 return_info: bool = False):
    """Detect the collimated field of an X-ray image: (H, W) bool, True inside the field.

    Collimator blades leave strongly attenuated (or blanked, exactly constant) near-uniform borders
    with straight edges. Method, on intensities (collimator penumbra and detector blur act on the
    intensity, so the true edge is the 50 % point of the blurred intensity step):

    1. smooth (Gaussian, ``smooth`` px); the border level ``b`` is the dark end (5th percentile) of
       the image's outermost frame, or its most frequent exact value (a blanked border);
    2. a shutter needs at least ``min_border`` of the frame within a noise tolerance of ``b``
       (6 sigma of the smoothed noise + 5 % of the 1..99 % range) and ``b`` below the field's
       median (an air border is the bright end: no shutter);
    3. a pixel is in the field when it rises above ``b`` by more than the tolerance and by more than
       half the local field level (the maximum over a ``6 * smooth + 1`` px window): the local 50 %
       point of the edge, robust to anatomy of any density near the edge;
    4. keep the largest component, fill its holes, take its convex hull (collimator fields are
       convex: rectangles, circles, polygons).

    image : (H, W) array. kind : "line_integral" (values ``-ln(I/I0)``, dense = high; turned into
        relative intensities ``exp(-(L - min L))``, or used negated when their range exceeds 50,
        i.e. an unknown log scale), "intensity" (dense = low) or "any" (the values as they are,
        the border at either end; for a blanked border of unknown meaning). Returns an all-True
        mask when no shutter is found; with ``return_info`` also a dict (found, reason, level...).
    """
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 8:
        raise ValueError(f"image must be 2-D and at least 8x8, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinity")
    if kind not in ("line_integral", "intensity", "any"):
        raise ValueError(f"kind must be 'line_integral', 'intensity' or 'any', got {kind!r}")
    H, W = a.shape
    full = np.ones((H, W), dtype=bool)
    domain = kind
    if kind == "line_integral":
        span = float(a.max() - a.min())
        a, domain = (np.exp(-(a - a.min())), "intensity") if span <= 50 else (-a, "negated values")

    def done(mask, **info):
        info["domain"] = domain
        return (mask, info) if return_info else mask

    lo, hi = np.percentile(a, [1, 99])
    R = hi - lo
    if R <= 0:
        return done(full, found=False, reason="flat image")
    g = ndimage.gaussian_filter(a, smooth, mode="nearest")
    # noise from horizontal differences (robust to edges), then its size after smoothing
    sig = 1.4826 * np.median(np.abs(np.diff(a, axis=1))) / math.sqrt(2)
    tol = 6 * sig / (2 * math.sqrt(math.pi) * smooth) + 0.05 * R
    frame_g = np.concatenate([g[0], g[-1], g[1:-1, 0], g[1:-1, -1]])
    frame_a = np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])
    vals, counts = np.unique(frame_a, return_counts=True)
    blank = counts.max() >= min_border * frame_a.size  # one exact value over much of the frame
    if blank:
        candidates = [float(vals[np.argmax(counts)])]
    else:
        candidates = [float(np.percentile(frame_g, 5))] + ([float(np.percentile(frame_g, 95))] if kind == "any" else [])
    best = None
    for b in candidates:
        frac = counts.max() / frame_a.size if blank else float(np.mean(np.abs(frame_g - b) <= tol))
        if frac >= min_border and (best is None or frac > best[1]):
            best = (b, frac)
    if best is None:
        return done(full, found=False, reason="no uniform border")
    b = best[0]
    field0 = ndimage.binary_fill_holes(_largest_component(np.abs(g - b) > tol))
    if field0.mean() < 0.02:
        return done(full, found=False, reason="no field left inside the border")
    med = float(np.median(g[field0]))
    if kind != "any" and b >= med:  # also for blanked borders: a noise-free air plateau is exactly constant
        return done(full, found=False, reason="uniform border on the unattenuated side (air, not a collimator)")
    h = (g - b) * (1.0 if med > b else -1.0)  # rise above the border level, >= 0 in the field
    f_loc = ndimage.maximum_filter(h, size=int(6 * smooth) + 1, mode="nearest")
    field = (h > 0.5 * f_loc) & (h > tol)
    field = ndimage.binary_fill_holes(_largest_component(field))
    if field.mean() < 0.02:
        return done(full, found=False, reason="threshold left no field")
    hull = convex_hull_image(field, offset_coordinates=False)  # hull of pixel centres: no outward bias
    if hull.mean() > 0.995:
        return done(full, found=False, reason="field covers the image")
    return done(hull, found=True, level=b, border_fraction=best[1], blanked=bool(blank))


# ----------------------------------------------------------------------------- polarity
def detect_polarity(brightness, mask=None) -> str | None:
    """Guess how dense anatomy is displayed, from where the unattenuated plateau lies.

    brightness : (H, W) values as displayed (after the photometric interpretation: larger =
    brighter). The direct exposure (air) is a flat plateau at one end of the histogram: after a
    2-pixel Gaussian smoothing, at least 5 % of the pixels lie within 5 % of the robust range
    (0.5..99.5 %) of that end, at least half of those within 1 % (a plateau, not the smooth top of
    a dense object), and more than twice as many as at the other end. Pixels inside ``mask``
    (default the central 70 % box, inside usual collimation) are used. Returns "dense_bright",
    "dense_dark" or None when undecided.
    """
    from scipy import ndimage

    b = ndimage.gaussian_filter(np.asarray(brightness, dtype=np.float64), 2.0, mode="nearest")
    H, W = b.shape
    if mask is None:
        mask = np.zeros((H, W), dtype=bool)
        mask[int(0.15 * H):int(0.85 * H) + 1, int(0.15 * W):int(0.85 * W) + 1] = True
    v = b[mask]
    if v.size < 16:
        return None
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi <= lo:
        return None
    R = hi - lo
    f5 = {"lo": float(np.mean(v <= lo + 0.05 * R)), "hi": float(np.mean(v >= hi - 0.05 * R))}
    f1 = {"lo": float(np.mean(v <= lo + 0.01 * R)), "hi": float(np.mean(v >= hi - 0.01 * R))}
    plateau = {k: f5[k] >= 0.05 and f1[k] >= 0.5 * f5[k] for k in f5}
    if plateau["lo"] and f5["lo"] >= 2 * f5["hi"]:
        return "dense_bright"  # the dark end is the air plateau
    if plateau["hi"] and f5["hi"] >= 2 * f5["lo"]:
        return "dense_dark"
    return None


def _sigma(polarity: str, photometric: str) -> int:
    """+1 if modality values grow with intensity, given the displayed polarity."""
    mono2 = photometric != "MONOCHROME1"
    return -1 if (polarity == "dense_bright") == mono2 else +1


def _polarity(sigma: int, photometric: str) -> str:
    mono2 = photometric != "MONOCHROME1"
    return "dense_bright" if (sigma < 0) == mono2 else "dense_dark"


# ----------------------------------------------------------------------------- conversion
def _estimate_reference(s: np.ndarray, mask: np.ndarray) -> float:
    from scipy import ndimage

    g = ndimage.gaussian_filter(s, 1.5, mode="nearest")
    gm = g[mask]
    thr = np.percentile(gm, 99)
    return float(np.median(s[mask & (g >= thr)]))


def _line_integral(m, *, mask, log_stored, sigma, I0, full, log_scale, floor, step, meta):
    if log_stored:
        y = sigma * m
        if I0 is None:
            y0 = _estimate_reference(y, mask)
            meta["I0_source"] = "estimated: median of the brightest 1 % inside the mask"
            I0 = sigma * y0
        y0 = sigma * I0
        L = log_scale * (y0 - y)
        meta["floor"] = None
        n_floor = 0
    else:
        s = m if sigma > 0 else full - m
        if I0 is None:
            s0 = _estimate_reference(s, mask)
            meta["I0_source"] = "estimated: median of the brightest 1 % inside the mask"
            I0 = s0 if sigma > 0 else full - s0
        s0 = I0 if sigma > 0 else full - I0
        if not s0 > 0:
            raise ValueError(f"the unattenuated intensity is {s0:g} (I0 = {I0:g} in modality units): it must be "
                             "positive; pass I0= (and check polarity=)")
        if floor is None:
            floor = 0.5 * step if step else s0 * 1e-12
        floor = min(float(floor), s0)
        meta["floor"] = floor
        n_floor = int(np.count_nonzero(s < floor))
        L = -np.log(np.maximum(s, floor) / s0)
    neg = L < 0
    meta["n_clipped_floor"], meta["n_clipped_negative"] = n_floor, int(np.count_nonzero(neg & mask))
    L = np.where(neg, 0.0, L)
    return L, float(I0)


def _read_array(path: Path) -> np.ndarray:
    suf = path.suffix.lower()
    if suf == ".npy":
        a = np.load(path, allow_pickle=False)
    elif suf in (".tif", ".tiff"):
        import tifffile

        a = tifffile.imread(path)
    else:
        from PIL import Image

        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.int64).astype(np.uint16)
            elif im.mode in ("L", "F"):
                a = np.asarray(im)
            else:
                raise ValueError(f"{path}: a {im.mode} PNG is not a grey-scale X-ray image")
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D grey image, got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)) or a.dtype == bool:
        raise ValueError(f"{path}: unsupported pixel type {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError(f"{path}: the image contains NaN or infinity")
    return a


def _is_dicom(path: Path) -> bool:
    """Anything that is not a PNG/TIFF/NPY is read as DICOM (with or without preamble)."""
    return path.suffix.lower() not in _IMAGE_SUFFIXES


def _check_kw(polarity, photometric):
    if polarity is not None and polarity not in _POLARITIES:
        raise ValueError(f"polarity must be one of {_POLARITIES}, got {polarity!r}")
    if photometric is not None and str(photometric).upper() not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")


# ----------------------------------------------------------------------------- reader
def read_xray(path, *, frame: int = 0, geometry: bool = True, sid=None, sdd=None, pixel_spacing=None,
              lao=None, cran=None, isocenter=None, radiological=None, P=None, log_stored=None, I0=None,
              polarity=None, photometric=None, rescale=None, log_scale=None, floor=None,
              shutter="auto") -> XRayImage:
    """Read an X-ray image and its geometry -> :class:`XRayImage`.

    path : DICOM (XA, RF, DX, CR; with or without preamble; multi-frame: ``frame``), or PNG/TIFF/NPY.
    geometry : False skips the geometry (``camera`` None); True requires it (a missing tag raises
        :class:`~taichi_xray.io.dicom.DicomTagError` naming the tag and the keyword).
    sid, sdd : source-isocentre and source-detector distances (mm) (0018,1111) / (0018,1110).
    pixel_spacing : detector pixel size (mm) (0018,1164). lao, cran : degrees (0018,1510) /
        (0018,1511) (with the per-frame increments). isocenter : LPS mm, default (0, 0, 0).
    radiological : image left-right sense (default from Patient Orientation (0020,0020), else True).
    P : (3, 4) projection matrix; for PNG/TIFF/NPY the ``IMAGE.P.txt`` beside the image is used
        (or sid/sdd/pixel_spacing/lao/cran together). Overrides every geometry tag for DICOM.
    log_stored, I0, polarity ("dense_bright" | "dense_dark"), photometric, rescale (slope,
        intercept), log_scale, floor : pixel calibration overrides (see the module docstring).
        Float PNG/TIFF/NPY arrays default to the renderer's output: the line integral itself
        (log_stored=True, dense_bright, I0=0).
    shutter : "auto" (DICOM shutter/collimator tags, else detection), "tags", "detect", "none", or
        an (H, W) bool mask.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    _check_kw(polarity, photometric)
    if isinstance(shutter, str) and shutter not in ("auto", "tags", "detect", "none"):
        raise ValueError(f"shutter must be 'auto', 'tags', 'detect', 'none' or a bool mask, got {shutter!r}")
    if _is_dicom(path):
        return _read_dicom(path, frame=frame, geometry=geometry, geo_kw=dict(
            sid=sid, sdd=sdd, pixel_spacing=pixel_spacing, lao=lao, cran=cran, isocenter=isocenter,
            radiological=radiological), P=P, log_stored=log_stored, I0=I0, polarity=polarity,
            photometric=photometric, rescale=rescale, log_scale=log_scale, floor=floor, shutter=shutter)
    return _read_plain(path, frame=frame, geometry=geometry, sid=sid, sdd=sdd, pixel_spacing=pixel_spacing,
                       lao=lao, cran=cran, isocenter=isocenter, radiological=radiological, P=P,
                       log_stored=log_stored, I0=I0, polarity=polarity, photometric=photometric,
                       rescale=rescale, log_scale=log_scale, floor=floor, shutter=shutter)


def _explicit_mask(shutter, shape):
    m = np.asarray(shutter)
    if m.shape != shape or m.dtype != bool:
        raise ValueError(f"shutter mask must be a bool array of shape {shape}, got {m.dtype} {m.shape}")
    if not m.any():
        raise ValueError("shutter mask is empty")
    return m


def _finish(path, raw, m, *, meta, mask_tags, shutter, log_stored, sigma, I0, full, log_scale, floor, step,
            camera, photometric):
    H, W = m.shape
    if not isinstance(shutter, str):
        mask, meta["mask_source"] = _explicit_mask(shutter, (H, W)), "argument"
    elif shutter == "none":
        mask, meta["mask_source"] = np.ones((H, W), dtype=bool), "none"
    elif mask_tags is not None and shutter in ("auto", "tags"):
        mask, meta["mask_source"] = mask_tags, "tags: " + "; ".join(meta.get("shutter_tags", []))
    elif shutter == "tags":
        mask, meta["mask_source"] = np.ones((H, W), dtype=bool), "no shutter tags"
    else:  # on intensities (LIN) or line integrals up to the offset (LOG)
        ls = 1.0 if log_scale is None else float(log_scale)
        det = (-ls * sigma * m, "line_integral") if log_stored else (m if sigma > 0 else full - m, "intensity")
        mask, info = shutter_mask(det[0], kind=det[1], return_info=True)
        meta["mask_source"] = "detected" if info["found"] else f"detection: none ({info['reason']})"
        meta["mask_detection"] = info
    L, I0 = _line_integral(m, mask=mask, log_stored=log_stored, sigma=sigma, I0=I0, full=full,
                           log_scale=1.0 if log_scale is None else float(log_scale), floor=floor, step=step,
                           meta=meta)
    meta.update(log_stored=bool(log_stored), sigma=int(sigma), polarity=_polarity(sigma, photometric),
                log_scale=1.0 if log_scale is None else float(log_scale), I0=I0)
    meta["mask_fraction"] = float(mask.mean())
    L.setflags(write=False)
    mask.setflags(write=False)
    return XRayImage(L, mask, camera, I0, raw, meta, path)


def _resolve_sigma(m, *, polarity, sign_tag, photometric, modality, pir, meta, mask=None):
    if polarity is not None:
        meta["polarity_source"] = "argument"
        meta["overridden"].append("polarity")
        return _sigma(polarity, photometric)
    if sign_tag is not None:
        meta["polarity_source"] = "Pixel Intensity Relationship Sign (0028,1041)"
        return 1 if int(sign_tag) > 0 else -1
    if modality in ("XA", "RF") and pir in ("LIN", "LOG", "DISP"):
        meta["polarity_source"] = "XA/RF: LIN/LOG are proportional to the beam intensity (PS3.3 C.8.7.1)"
        return 1
    bright = m if photometric != "MONOCHROME1" else -m
    guess = detect_polarity(bright, mask)
    if guess is not None:
        meta["polarity_source"] = "detected from the image (unattenuated plateau)"
        return _sigma(guess, photometric)
    default = "dense_dark" if modality in ("XA", "RF") else "dense_bright"
    meta["polarity_source"] = f"default for {modality or 'images'} (detection undecided)"
    warnings.warn(f"polarity undecided from the image; assuming {default} (pass polarity= to set it)",
                  UserWarning, stacklevel=4)
    return _sigma(default, photometric)


def _read_dicom(path, *, frame, geometry, geo_kw, P, log_stored, I0, polarity, photometric, rescale,
                log_scale, floor, shutter):
    from . import dicom as dc

    ds = dc.load(path)
    raw = dc.frame_pixels(ds, frame, path)
    H, W = raw.shape
    modality = str(ds.get("Modality", "")).upper()
    phot = str(photometric or ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if phot not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"{path}: Photometric Interpretation (0028,0004) is {phot}: not a grey-scale X-ray "
                         "image (pass photometric= if the tag is wrong)")
    pir = dc.find(ds, "PixelIntensityRelationship", frame)
    pir = None if pir is None else str(pir).upper()
    meta = {"format": "DICOM", "modality": modality, "sop_class": str(ds.get("SOPClassUID", "")),
            "photometric": phot, "pixel_intensity_relationship": pir, "frame": frame,
            "n_frames": dc.n_frames(ds), "rows": H, "columns": W, "overridden": []}
    if photometric is not None:
        meta["overridden"].append("photometric")
    if modality and modality not in ("XA", "RF", "DX", "CR"):
        warnings.warn(f"{path}: modality {modality} is not a projection X-ray (XA, RF, DX, CR)", UserWarning,
                      stacklevel=3)

    # ---- geometry
    camera = None
    priv = dc.private_calibration(ds)
    if geometry:
        if P is not None:
            ps = geo_kw.get("pixel_spacing")
            if ps is None:
                ps = (dc._floats(dc.find(ds, "ImagerPixelSpacing", frame)) or [None])[0]
            camera = Camera.from_projection_matrix(P, W, H, pixel_spacing=ps)
            meta["geometry_source"] = "argument P"
            meta["overridden"].append("P")
        elif priv is not None and "P" in priv and all(v is None for v in geo_kw.values()):
            ps = dc._floats(dc.find(ds, "ImagerPixelSpacing", frame))
            camera = Camera.from_projection_matrix(priv["P"], W, H, pixel_spacing=ps[0] if ps else None)
            meta["geometry_source"] = f"private P ({dc.PRIVATE_CREATOR})"
            try:  # the standard tags must agree (else the file was edited)
                iso = priv.get("isocenter")
                tag_cam, gmeta = dc.geometry(ds, frame=frame, width=W, height=H, path=path,
                                             isocenter=None if iso is None else iso)
                gmeta.pop("overridden", None)
                meta.update(gmeta)
                diff = float(np.max(np.abs(tag_cam.P - camera.P)) / np.max(np.abs(camera.P)))
                meta["tags_vs_private_P"] = diff
                if diff > 1e-6:
                    warnings.warn(f"{path}: the standard geometry tags differ from the private P by {diff:.3g} "
                                  "(relative); using the private P", UserWarning, stacklevel=3)
            except dc.DicomTagError as exc:
                meta["tags_vs_private_P"] = f"not comparable: {exc}"
        else:
            camera, gmeta = dc.geometry(ds, frame=frame, width=W, height=H, path=path, **geo_kw)
            meta["overridden"] += gmeta.pop("overridden")
            meta.update(gmeta)
            meta["geometry_source"] = "standard tags"

    # ---- shutter tags
    mask_tags = None
    if isinstance(shutter, str) and shutter in ("auto", "tags"):
        mask_tags, desc = dc.shutter_from_tags(ds, frame, H, W)
        meta["shutter_tags"] = desc

    # ---- calibration
    use_priv = priv is not None and all(v is None for v in (log_stored, I0, polarity, rescale, photometric))
    if use_priv:
        m = raw.astype(np.float64) * priv["slope"] + priv["intercept"]
        lg = priv["kind"] == "LOG"
        sigma = -1 if lg else 1  # m is L (LOG) or I/I0 (LIN)
        meta.update(calibration=f"private ({dc.PRIVATE_CREATOR}): value = {priv['slope']!r} * pixel + "
                                f"{priv['intercept']!r} = {'L' if lg else 'I/I0'}")
        dense_up = (priv["slope"] > 0) == lg  # does density grow with the stored pixel value?
        pol = "dense_bright" if dense_up == (phot == "MONOCHROME2") else "dense_dark"
        meta["polarity_source"] = "private calibration and photometric interpretation"
        img = _finish(path, raw, m, meta=meta, mask_tags=mask_tags, shutter=shutter, log_stored=lg, sigma=sigma,
                      I0=0.0 if lg else 1.0, full=0.0, log_scale=None, floor=floor,
                      step=abs(priv["slope"]), camera=camera, photometric="MONOCHROME2")
        meta["polarity"] = pol  # (the displayed polarity, from the file's photometric interpretation)
        meta["I0_source"] = "private calibration"
        return img
    m, minfo = dc.modality_values(ds, raw, frame, rescale)
    meta.update(calibration=minfo["how"], modality_lut=minfo)
    if rescale is not None:
        meta["overridden"].append("rescale")
    if log_stored is not None:
        lg = bool(log_stored)
        meta["overridden"].append("log_stored")
    elif pir == "LOG":
        lg = not minfo["how"].startswith("Modality LUT")  # XA/XRF: the LUT scales back to linear intensity
    elif pir == "LIN":
        lg = False
    elif pir == "DISP":
        lg = True
        warnings.warn(f"{path}: Pixel Intensity Relationship (0028,1040) is DISP (processed for display): taken "
                      "as logarithmic; pass log_stored= to decide", UserWarning, stacklevel=3)
    else:
        raise dc.missing(path, "PixelIntensityRelationship", "log_stored=True (log of intensity) or False (linear)")
    sign_tag = dc.find(ds, "PixelIntensityRelationshipSign", frame)
    sigma = _resolve_sigma(m, polarity=polarity, sign_tag=sign_tag, photometric=phot, modality=modality,
                           pir=pir, meta=meta)
    if I0 is not None:
        meta["overridden"].append("I0")
        meta["I0_source"] = "argument"
    return _finish(path, raw, m, meta=meta, mask_tags=mask_tags, shutter=shutter, log_stored=lg, sigma=sigma,
                   I0=None if I0 is None else float(I0), full=minfo["full"], log_scale=log_scale, floor=floor,
                   step=minfo["step"], camera=camera, photometric=phot)


def _read_plain(path, *, frame, geometry, sid, sdd, pixel_spacing, lao, cran, isocenter, radiological, P,
                log_stored, I0, polarity, photometric, rescale, log_scale, floor, shutter):
    if frame != 0:
        raise ValueError(f"{path}: frame={frame} is out of range: the file has 1 frame (0..0)")
    raw = _read_array(path)
    H, W = raw.shape
    phot = str(photometric or "MONOCHROME2").upper()
    is_float = np.issubdtype(raw.dtype, np.floating)
    meta = {"format": path.suffix.lower().lstrip("."), "modality": "", "photometric": phot, "frame": 0,
            "n_frames": 1, "rows": H, "columns": W, "overridden": [],
            "dtype": str(raw.dtype)}
    # ---- geometry
    camera = None
    carm = dict(sid=sid, sdd=sdd, pixel_spacing=pixel_spacing, lao=lao, cran=cran)
    side = sidecar_path(path)
    if geometry:
        given = [k for k, v in carm.items() if v is not None and k != "pixel_spacing"]
        if P is not None or (side.is_file() and not given):
            if P is None:
                from ..imageio import load_projection_matrix

                P = load_projection_matrix(side)
                meta["geometry_source"] = f"{side.name}"
            else:
                meta["geometry_source"] = "argument P"
            camera = Camera.from_projection_matrix(P, W, H, pixel_spacing=pixel_spacing)
        elif given or pixel_spacing is not None:
            need = [k for k, v in carm.items() if v is None]
            if need:
                raise ValueError(f"{path}: a C-arm geometry needs sid, sdd, pixel_spacing, lao and cran; missing "
                                 f"{', '.join(k + '=' for k in need)} (or give P= / write {side.name})")
            camera = Camera.c_arm(sid=sid, sdd=sdd, width=W, height=H, pixel_spacing=pixel_spacing, lao=lao,
                                  cran=cran, isocenter=(0, 0, 0) if isocenter is None else isocenter,
                                  radiological=True if radiological is None else bool(radiological))
            meta["geometry_source"] = "arguments (Camera.c_arm)"
            meta.update(carm)
        else:
            raise ValueError(f"{path}: no geometry: no {side.name} beside it and no P= or C-arm arguments "
                             "(sid=, sdd=, pixel_spacing=, lao=, cran=); pass geometry=False to read the "
                             "image without one")
    # ---- calibration
    m = raw.astype(np.float64)
    step = 0.0 if is_float else 1.0
    if rescale is not None:
        s, b = (float(x) for x in rescale)
        m = m * s + b
        step *= abs(s)
        meta["overridden"].append("rescale")
    if is_float:
        full = 0.0
    else:
        full = float(np.iinfo(raw.dtype).max) if rescale is None else float(np.iinfo(raw.dtype).max) * s + b
    lg = True if log_stored is None else bool(log_stored)
    if log_stored is not None:
        meta["overridden"].append("log_stored")
    if is_float and polarity is None and log_stored is None:
        sigma = -1
        meta["polarity_source"] = "float array: taken as the line integral (renderer output)"
        if I0 is None:
            I0 = 0.0
            meta["I0_source"] = "float array: the line integral itself (I0 = 0)"
    else:
        sigma = _resolve_sigma(m, polarity=polarity, sign_tag=None, photometric=phot, modality="", pir=None,
                               meta=meta)
    if I0 is not None and "I0_source" not in meta:
        meta["overridden"].append("I0")
        meta["I0_source"] = "argument"
    meta["calibration"] = "pixel values" + (" with rescale" if rescale is not None else "")
    return _finish(path, raw, m, meta=meta, mask_tags=None, shutter=shutter, log_stored=lg, sigma=sigma,
                   I0=None if I0 is None else float(I0), full=full, log_scale=log_scale, floor=floor, step=step,
                   camera=camera, photometric=phot)
