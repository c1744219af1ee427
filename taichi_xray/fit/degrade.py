"""Make clean DRRs look like fluoroscopy: scatter haze, quantum noise, detector blur, collimator
shutters and a dense wire that is not in the model (for registration experiments and tests).

:func:`degrade` takes a line integral ``L = -ln(I/I0)`` (H, W) (what the renderer gives) and
returns a :class:`Degraded` image in the same domain, with the true collimated field and the
wire's pixels. The steps act on intensities, in the order the physics does:

1. **Wire** (optional): a smooth curve (a circular arc across the field, seeded) of a cylinder
   of diameter ``wire_width_px`` pixels; its line integral ``wire_peak * sqrt(1 - (2d/w)^2)``
   (``d`` = distance to the curve, 4x4 supersampled per pixel) is added to ``L``. The default
   ``wire_peak = 1.0`` is the chord of a ~4 mm steel K-wire at 60 keV (iron mu ~ 0.3 /mm at
   ~55 keV effective, xraylib) -- a dense object far beyond what soft tissue gives over 2 px.
2. **Collimator**: a rectangle (aspect ``shutter_aspect``, rotated by ``shutter_angle_deg``,
   centred with a seeded offset of up to ``shutter_shift`` of the image size) sized so that it
   keeps ``field_fraction`` of the image's pixels (bisection on the scale); outside it the
   primary is multiplied by ``leakage`` (lead blades transmit ~0.1-1 %). The blade edge is
   4x4 supersampled (its partial-volume pixels are part of the field's edge).
3. **Scatter**: ``S = k * G_s * (P L)``: a broad low-pass (Gaussian ``G_s`` of
   ``scatter_sigma_px``, default 1/8 of the smaller image side) of the scatter source
   ``P L = T ln(1/T)`` per collimated ray (``P`` the collimated primary transmission, ``L`` the
   line integral): the kernel-superposition form of scatter models (e.g. Boone & Seibert,
   Med. Phys. 15, 721 (1988); Ohnesorge et al., Eur. Radiol. 9, 563 (1999)) -- no scatter from
   rays through air or stopped by the blades, scatter tails under the blades' shadow. ``k`` is
   chosen so that the **median** of the local ratio ``S / P`` over the field's pixels behind
   the patient (``T < 0.5``) equals ``spr`` (scatter-to-primary ratio; 0.5-1 is typical of a
   20-30 cm patient with a grid, several without). Where the primary is lower than its
   neighbourhood (bone, thick parts) the local ratio is higher, as with real scatter.
4. **Detector blur**: Gaussian of ``blur_px`` pixels (sigma) on primary + scatter.
5. **Quantum noise**: Poisson counts; ``photons`` is the number of quanta (primary + scatter)
   a pixel of median brightness in the field receives, as automatic exposure control sets the
   dose from the signal behind the patient: ``N0 = photons / median_field(P + S)`` quanta per
   unattenuated pixel, ``L_out = -ln(max(n, 0.5) / N0)`` (a pixel with no counts gets half a
   quantum). The flat field has no scatter (gain calibration without an object), so air pixels
   with scatter have ``L < 0``; readers clip it to 0.

Everything is numpy/scipy, float64, seeded (``seed``; several views: pass different seeds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Degraded", "degrade", "rectangle_field", "wire_line_integral", "FLUORO_DEFAULTS"]

# the degradation of issue 10 ("targets made to look like fluoroscopy")
FLUORO_DEFAULTS = dict(spr=0.75, photons=3000.0, blur_px=1.0, field_fraction=0.75, wire=True)


@dataclass
class Degraded:
    """Output of :func:`degrade`.

    line_integral : (H, W) float64, ``-ln(I / I0)`` of the degraded reading.
    field : (H, W) bool, True where the collimator leaves more than half of a pixel open.
    wire : (H, W) bool, pixels where the wire adds more than 5 % of its peak line integral.
    params : the parameters used (JSON-serialisable).
    """

    line_integral: np.ndarray
    field: np.ndarray
    wire: np.ndarray
    params: dict = field(default_factory=dict)


def _check_image(L) -> np.ndarray:
    if hasattr(L, "detach"):
        L = L.detach().cpu().numpy()
    a = np.asarray(L, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 8:
        raise ValueError(f"line_integral must be a 2-D image of at least 8x8 pixels, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("line_integral contains NaN or infinity")
    return a


def _supersampled(H: int, W: int, n: int = 4):
    """Sub-pixel sample coordinates (rows, cols), each (H*n, W*n): pixel (r, c) covers [r-1/2, r+1/2]."""
    o = (np.arange(n) + 0.5) / n - 0.5
    rr = (np.arange(H)[:, None] + o[None, :]).ravel()
    cc = (np.arange(W)[:, None] + o[None, :]).ravel()
    return np.meshgrid(rr, cc, indexing="ij")


def _box_mean(x: np.ndarray, n: int) -> np.ndarray:
    H, W = x.shape[0] // n, x.shape[1] // n
    return x.reshape(H, n, W, n).mean((1, 3))


def rectangle_field(shape, fraction: float = 0.75, *, angle_deg: float = 0.0, aspect: float = 1.0,
                    centre=None, n_sub: int = 4) -> np.ndarray:
    """Open fraction (H, W) float64 in [0, 1] of each pixel for a rectangular collimator.

    The rectangle has sides ``a`` (along the rotated column axis) and ``a / aspect``, is rotated
    by ``angle_deg`` (counter-clockwise on the displayed image) about ``centre`` (row, col; default
    the image centre) and is scaled (bisection) so that the mean open fraction over the image is
    ``fraction``. ``n_sub`` x ``n_sub`` samples per pixel give the partial pixels at the edges."""
    H, W = (int(s) for s in shape)
    if not 0.05 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0.05, 1], got {fraction!r}")
    if not aspect > 0:
        raise ValueError(f"aspect must be > 0, got {aspect!r}")
    if fraction == 1.0:
        return np.ones((H, W))
    cr, cc = ((H - 1) / 2.0, (W - 1) / 2.0) if centre is None else (float(centre[0]), float(centre[1]))
    rr, cc_ = _supersampled(H, W, n_sub)
    th = math.radians(angle_deg)
    x = (cc_ - cc) * math.cos(th) - (rr - cr) * math.sin(th)   # display: rows go down
    y = (cc_ - cc) * math.sin(th) + (rr - cr) * math.cos(th)

    def open_at(a):
        return ((np.abs(x) <= a / 2) & (np.abs(y) <= a / (2 * aspect))).astype(np.float64)

    lo, hi = 0.0, 4.0 * max(H, W) * max(1.0, aspect)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if open_at(mid).mean() < fraction:
            lo = mid
        else:
            hi = mid
    return _box_mean(open_at(hi), n_sub)


def wire_line_integral(shape, *, width_px: float = 2.0, peak: float = 1.0, seed=0, n_sub: int = 4) -> np.ndarray:
    """Line integral (H, W) float64 of a thin dense cylinder along a seeded circular arc.

    The arc enters through one image side and leaves through another (radius 1-3 image sizes,
    seeded), like a guide wire or K-wire across the field; the cylinder's diameter is
    ``width_px`` pixels and its central chord gives ``peak``: ``peak * sqrt(1 - (2 d / w)^2)`` at
    distance ``d`` from the arc, averaged over ``n_sub`` x ``n_sub`` samples per pixel."""
    H, W = (int(s) for s in shape)
    if not width_px > 0 or not peak >= 0:
        raise ValueError(f"wire width_px must be > 0 and peak >= 0, got {width_px!r}, {peak!r}")
    rng = np.random.default_rng(seed)
    size = float(max(H, W))
    # a chord through a random point of the central half, random direction; the arc bulges sideways
    p = np.array([H * rng.uniform(0.3, 0.7), W * rng.uniform(0.3, 0.7)])
    phi = rng.uniform(0, np.pi)
    d = np.array([math.sin(phi), math.cos(phi)])
    nrm = np.array([-d[1], d[0]])
    R = size * rng.uniform(1.0, 3.0)
    centre = p + nrm * R * rng.choice([-1.0, 1.0])
    rr, cc = _supersampled(H, W, n_sub)
    dist = np.abs(np.hypot(rr - centre[0], cc - centre[1]) - R)
    prof = peak * np.sqrt(np.clip(1.0 - (2.0 * dist / width_px) ** 2, 0.0, None))
    return _box_mean(prof, n_sub)


def degrade(line_integral, *, spr: float = 0.75, scatter_sigma_px: float | None = None,
            photons: float | None = 3000.0, blur_px: float = 1.0, field_fraction: float = 0.75,
            shutter_angle_deg: float | None = None, shutter_aspect: float | None = None,
            shutter_shift: float = 0.05, leakage: float = 0.005, wire: bool = True,
            wire_width_px: float = 2.0, wire_peak: float = 1.0, seed: int = 0) -> Degraded:
    """Degrade a clean line integral (H, W) as fluoroscopy is degraded (module docstring).

    spr : scatter-to-primary ratio over the field (0 = no scatter). scatter_sigma_px : width of
    the scatter low-pass (default min(H, W) / 8). photons : quanta per pixel of median brightness
    in the field (None = no noise). blur_px : detector blur sigma, pixels (0 = none). field_fraction :
    open fraction of the collimator (1 = no shutters). shutter_angle_deg / shutter_aspect : the
    rectangle's rotation and side ratio (None = seeded: angle in [-20, 20] deg, aspect in
    [0.8, 1.25]). shutter_shift : seeded centre offset, fraction of the image size. leakage :
    blade transmission. wire, wire_width_px, wire_peak : the dense wire. seed : everything random.
    """
    from scipy import ndimage

    L = _check_image(line_integral)
    H, W = L.shape
    for name, v in (("spr", spr), ("blur_px", blur_px), ("leakage", leakage), ("shutter_shift", shutter_shift)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if photons is not None and not photons > 0:
        raise ValueError(f"photons must be > 0 (or None for no noise), got {photons!r}")
    rng = np.random.default_rng(seed)
    angle = float(rng.uniform(-20, 20)) if shutter_angle_deg is None else float(shutter_angle_deg)
    aspect = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))) if shutter_aspect is None else float(shutter_aspect)
    shift = rng.uniform(-shutter_shift, shutter_shift, 2) * np.array([H, W])
    wire_seed = int(rng.integers(1 << 31))
    sigma_s = min(H, W) / 8.0 if scatter_sigma_px is None else float(scatter_sigma_px)

    Lw = wire_line_integral((H, W), width_px=wire_width_px, peak=wire_peak, seed=wire_seed) if wire \
        else np.zeros((H, W))
    T = np.exp(-(L + Lw))
    openf = rectangle_field((H, W), field_fraction, angle_deg=angle, aspect=aspect,
                            centre=((H - 1) / 2 + shift[0], (W - 1) / 2 + shift[1]))
    P = T * (openf + leakage * (1.0 - openf))
    fld = openf > 0.5
    if spr > 0:
        G = ndimage.gaussian_filter(P * (L + Lw).clip(0.0), sigma_s, mode="constant")
        behind = fld & (T < 0.5)
        sel = behind if behind.any() else fld
        k = spr / max(float(np.median(G[sel] / np.maximum(P[sel], 1e-300))), 1e-300)
        S = k * G
    else:
        S = 0.0
    I = P + S
    if blur_px > 0:
        I = ndimage.gaussian_filter(I, blur_px, mode="nearest")
    n0 = None
    if photons is not None:
        n0 = float(photons) / max(float(np.median(I[fld])), 1e-300)
        n = rng.poisson(I * n0).astype(np.float64)
        out = -np.log(np.maximum(n, 0.5) / n0)
    else:
        out = -np.log(np.maximum(I, 1e-300))
    params = dict(spr=float(spr), scatter_sigma_px=float(sigma_s), photons=None if photons is None else float(photons),
                  blur_px=float(blur_px), field_fraction=float(field_fraction), shutter_angle_deg=angle,
                  shutter_aspect=aspect, shutter_centre_offset_px=[float(shift[0]), float(shift[1])],
                  leakage=float(leakage), wire=bool(wire), wire_width_px=float(wire_width_px),
                  wire_peak=float(wire_peak), seed=int(seed),
                  photons_unattenuated=None if n0 is None else float(n0))
    return Degraded(out, fld, Lw > 0.05 * max(wire_peak, 1e-300), params)
