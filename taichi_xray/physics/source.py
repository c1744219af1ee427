"""The X-ray source: focal spot, anode heel effect, SpekPy spectra and photons per pixel.

Everything here is numpy (float64) and independent of the renderer: functions take
arrays and parameters and return arrays that the rendering pipeline multiplies in.

Focal spot
----------
:class:`FocalSpot` is the *effective* focal spot seen along the central ray, sized as in
IEC 60336 (width perpendicular to the anode-cathode axis, length along it, in mm). Its
points lie on the anode's target face, which makes the anode angle ``theta`` with the
central ray, so a point ``s`` mm toward the anode (in the projected length coordinate)
also sits ``s / tan(theta)`` mm further along the central ray.  :meth:`FocalSpot.samples`
returns sub-source offsets (world mm) and weights; render one image per sub-source with
:func:`shifted_camera` (the source moves, the detector and its pixel grid do not) and sum
the images with the weights: the depth-dependent penumbra of a cone beam then comes out
exactly (an edge at source distance SOD gets the penumbra ``f (SDD - SOD) / SOD``).

Heel effect
-----------
X-rays leave the target from a production depth below its surface and are filtered by
the tungsten on their way out, along ``depth / sin(alpha)``, where the take-off angle
``alpha = theta - psi`` (``psi``: emission angle from the central ray toward the anode).
:func:`heel_factors` uses the depth model of Tucker, Barnes & Chakraborty (Med. Phys. 18,
402, 1991): electrons slow down along the Thomson-Whiddington law
``T^2 = T0^2 - rho C x`` (``C(T0)`` of Tucker et al.) and emit bremsstrahlung of energy
``E`` with Kramers' thin-target cross section, which makes the emission uniform in the
electron energy ``T`` between ``E`` and ``T0``; the depth is scaled by
:data:`HEEL_DEPTH_SCALE` (about 0.54: electrons diffuse sideways, so the depth is shorter
than the path), fitted to SpekPy v2's heel profiles (Poludniowski et al., Med. Phys. 48,
3630, 2021; casim model with Monte-Carlo electron depth distributions), which it then
reproduces within 0.7 % rms (2.6 % at worst) in fluence at 50-140 kVp, 7-20 deg anodes,
take-off angles >= 1.5 deg.  ``model="spekpy"`` takes the factors from SpekPy itself (optional package).

Fluence
-------
TASMIP (``Spectrum.tungsten``) and :func:`spekpy_spectrum` both give photons per mm^2
per mAs at 1 m per energy bin; :func:`photons_per_pixel` scales that by mAs, the inverse
square law and the pixel area, so noise levels follow from mAs (TASMIP's absolute output
is 5-10 % below SpekPy's at 60-120 kVp).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np

from .materials import check_energies, get_material
from .spectra import Spectrum

__all__ = [
    "FocalSpot", "shifted_camera", "detector_frame", "penumbra_width",
    "HeelCutoffWarning", "HEEL_DEPTH_SCALE", "target_escape_fraction", "heel_factors", "heel_angles",
    "heel_weights", "spekpy_spectrum", "photons_per_pixel", "fluence_falloff",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Thomson-Whiddington constant for tungsten, keV^2 cm^2 / g, vs tube voltage (Tucker et al. 1991).
_TW_KV = np.array([50.0, 75.0, 100.0, 150.0, 200.0])
_TW_C = np.array([5.4e5, 6.25e5, 7.0e5, 8.4e5, 1.0e6])
_W_DENSITY = 19.3  # g/cm^3 (NIST, as in materials.py)
#: depth of X-ray production relative to the Thomson-Whiddington path, ``k0 + k1 (kVp - 100)`` with the
#: kVp clamped to [50, 140]: fitted to SpekPy v2 casim heel profiles (50-140 kVp, anode 7-20 deg, take-off
#: >= 1.5 deg): fluence within 0.7 % rms, 2.6 % at worst; see tests/test_source_detector.py
HEEL_DEPTH_SCALE = (0.541, -7.8e-4)

_ANODE_SIDES = ("top", "bottom", "left", "right")


class HeelCutoffWarning(UserWarning):
    """Part of the detector lies beyond the anode's heel (take-off angle <= 0): no direct beam there."""


# ------------------------------------------------------------------------------------------
# small checks
# ------------------------------------------------------------------------------------------
def _num(name, x, *, positive=False, nonneg=False, lo=None, hi=None) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {x!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {x!r}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {x!r}")
    if nonneg and v < 0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")
    if lo is not None and v < lo or hi is not None and v > hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {x!r}")
    return v


def _unit(name, v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be a finite 3-vector, got {v!r}")
    n = np.linalg.norm(a)
    if n == 0:
        raise ValueError(f"{name} must not be zero")
    return a / n


def _camera_like(camera):
    for attr in ("P", "M_inv", "source", "view_direction", "pixel_spacing", "width", "height"):
        if not hasattr(camera, attr):
            raise TypeError(f"camera must be a taichi_xray.Camera, got {type(camera).__name__}")


# ------------------------------------------------------------------------------------------
# detector geometry and shifted sources
# ------------------------------------------------------------------------------------------
def detector_frame(camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel grid of ``camera`` in the world: ``X(u, v) = origin + u * du + v * dv`` (mm).

    ``origin`` (3,) is the centre of pixel (0, 0) on the detector plane, ``du``/``dv`` (3,)
    the steps of one column / one row. The plane is at ``camera.detector_distance`` from the
    source along the principal axis, so the camera needs ``pixel_spacing``.
    """
    _camera_like(camera)
    D = camera.detector_distance
    if D is None:
        raise ValueError("the camera has no pixel_spacing: the detector plane (and so the focal-spot "
                         "geometry) is unknown")
    Mi = camera.M_inv
    S = camera.source
    return S + D * Mi[:, 2], D * Mi[:, 0], D * Mi[:, 1]


def shifted_camera(camera, offset_mm):
    """The camera with its source moved by ``offset_mm`` (3,) world mm, same detector and pixels.

    The detector plane, its pixel grid and ``pixel_spacing`` stay where they are: a world
    point on the detector projects to the same pixel before and after. Returns a new
    :class:`~taichi_xray.camera.Camera` (its ``P`` is rescaled so that ``w`` is the depth in mm
    along the new principal axis, the normal of the same detector plane).
    """
    _camera_like(camera)
    o = np.asarray(offset_mm, dtype=np.float64).reshape(-1)
    if o.shape != (3,) or not np.all(np.isfinite(o)):
        raise ValueError(f"offset_mm must be a finite 3-vector (mm), got {offset_mm!r}")
    origin, du, dv = detector_frame(camera)
    S2 = camera.source + o
    if (origin - S2) @ camera.view_direction <= 0:
        raise ValueError(f"offset {o.tolist()} mm moves the source onto or through the detector plane")
    M = np.linalg.inv(np.column_stack([du, dv, origin - S2]))  # (u w, v w, w) -> X - S2, inverted
    P = np.hstack([M, (-M @ S2)[:, None]])
    return type(camera).from_projection_matrix(P, camera.width, camera.height, camera.pixel_spacing)


def penumbra_width(focal_size_mm: float, sod_mm: float, sdd_mm: float) -> float:
    """Geometric penumbra on the detector (mm) of an edge at ``sod_mm`` from the source:
    ``f (SDD - SOD) / SOD`` (the full width for a uniform spot of size f, the FWHM for a
    Gaussian one of FWHM f)."""
    f = _num("focal_size_mm", focal_size_mm, nonneg=True)
    sod = _num("sod_mm", sod_mm, positive=True)
    sdd = _num("sdd_mm", sdd_mm, positive=True)
    if sdd <= sod:
        raise ValueError(f"need sod < sdd, got sod={sod}, sdd={sdd}")
    return f * (sdd - sod) / sod


# ------------------------------------------------------------------------------------------
# focal spot
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FocalSpot:
    """Effective focal spot of an X-ray tube (IEC 60336 style), seen along the central ray.

    width_mm : size perpendicular to the anode-cathode axis (mm, >= 0).
    length_mm : size along the anode-cathode axis, projected on the plane perpendicular to
        the central ray (mm, >= 0); the length on the target is ``length_mm / sin(anode_angle)``.
    shape : "uniform" (a rectangle of width x length), "gaussian" (width and length are
        FWHM) or a 2-D intensity map (rows along the length from the cathode side (row 0) to
        the anode side, columns along the width from -w to +w, see :meth:`axes`), covering
        the width x length rectangle.
    anode_angle_deg : angle between the target face and the central ray (degrees, (0, 90]).
    central_ray, anode_direction : world unit vectors (source -> detector; cathode -> anode),
        set by :meth:`oriented`; ``anode_direction`` is made perpendicular to ``central_ray``.
    """

    width_mm: float
    length_mm: float
    shape: object = "uniform"
    anode_angle_deg: float = 12.0
    central_ray: tuple | None = None
    anode_direction: tuple | None = None
    _map: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        w = _num("width_mm", self.width_mm, nonneg=True)
        ln = _num("length_mm", self.length_mm, nonneg=True)
        if w == 0 and ln == 0:
            raise ValueError("focal spot width and length are both 0: use a point source (no FocalSpot)")
        object.__setattr__(self, "width_mm", w)
        object.__setattr__(self, "length_mm", ln)
        th = _num("anode_angle_deg", self.anode_angle_deg)
        if not 0 < th <= 90:
            raise ValueError(f"anode_angle_deg must be in (0, 90], got {th}")
        object.__setattr__(self, "anode_angle_deg", th)
        if isinstance(self.shape, str):
            if self.shape not in ("uniform", "gaussian"):
                raise ValueError(f"focal spot shape must be 'uniform', 'gaussian' or a 2-D array, got {self.shape!r}")
        else:
            m = np.asarray(self.shape, dtype=np.float64)
            if m.ndim != 2 or m.size == 0:
                raise ValueError(f"a focal spot map must be a non-empty 2-D array, got shape {m.shape}")
            if not np.all(np.isfinite(m)) or np.any(m < 0) or m.sum() <= 0:
                raise ValueError("a focal spot map must be finite, >= 0 and not all zero")
            m = m / m.sum()
            m.setflags(write=False)
            object.__setattr__(self, "_map", m)
            object.__setattr__(self, "shape", "map")
        if (self.central_ray is None) != (self.anode_direction is None):
            raise ValueError("give both central_ray and anode_direction, or neither")
        if self.central_ray is not None:
            d = _unit("central_ray", self.central_ray)
            a = np.asarray(self.anode_direction, dtype=np.float64).reshape(-1)
            a = _unit("anode_direction", a)
            a = a - d * (a @ d)
            if np.linalg.norm(a) < 1e-6:
                raise ValueError("anode_direction is parallel to the central ray")
            object.__setattr__(self, "central_ray", tuple(d))
            object.__setattr__(self, "anode_direction", tuple(a / np.linalg.norm(a)))

    # ---- orientation -----------------------------------------------------------------
    def oriented(self, camera, anode: str = "top") -> "FocalSpot":
        """Copy oriented for ``camera``: central ray = the camera's principal axis, anode toward
        the image's ``anode`` side ("top" = row 0, "bottom", "left" = column 0, "right")."""
        _camera_like(camera)
        if anode not in _ANODE_SIDES:
            raise ValueError(f"anode must be one of {_ANODE_SIDES}, got {anode!r}")
        d = camera.view_direction
        a = _anode_vector(camera, anode)
        return replace(self, shape=self._map if self.shape == "map" else self.shape,
                       central_ray=tuple(d), anode_direction=tuple(a), _map=None)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World unit vectors (w, a, d): width axis ``w = a x d``, anode direction ``a``, central ray ``d``."""
        if self.central_ray is None:
            raise ValueError("the focal spot has no orientation: use FocalSpot.oriented(camera, anode=...) "
                             "or give central_ray and anode_direction")
        d = np.asarray(self.central_ray)
        a = np.asarray(self.anode_direction)
        return np.cross(a, d), a, d

    # ---- sampling --------------------------------------------------------------------
    def _plane_samples(self, n, seed):
        """Offsets (k, 2) in (width, projected length) mm and weights (k,)."""
        W, L = self.width_mm, self.length_mm
        if seed is None:
            nw, nl = _grid_counts(n, W, L)
            if self.shape == "gaussian":
                xw, ww = _hermite(nw, W / FWHM_PER_SIGMA)
                xl, wl = _hermite(nl, L / FWHM_PER_SIGMA)
            else:
                xw, ww = _midpoints(nw, W)
                xl, wl = _midpoints(nl, L)
            XW, XL = np.meshgrid(xw, xl, indexing="xy")
            wts = np.outer(wl, ww)
            if self.shape == "map":
                wts = wts * self._map_value(XW, XL)
            pts, wts = np.stack([XW.ravel(), XL.ravel()], 1), wts.ravel()
            keep = wts > 0
            pts, wts = pts[keep], wts[keep]
        else:
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
                raise ValueError(f"with a seed, n must be a positive integer, got {n!r}")
            rng = np.random.default_rng(seed)
            if self.shape == "gaussian":
                pts = rng.standard_normal((n, 2)) * np.array([W, L]) / FWHM_PER_SIGMA
            elif self.shape == "uniform":
                pts = (rng.random((n, 2)) - 0.5) * np.array([W, L])
            else:
                m = self._map
                idx = rng.choice(m.size, size=n, p=m.ravel())
                r, c = np.unravel_index(idx, m.shape)
                jit = rng.random((n, 2))
                pts = np.stack([((c + jit[:, 0]) / m.shape[1] - 0.5) * W,
                                ((r + jit[:, 1]) / m.shape[0] - 0.5) * L], 1)
            wts = np.full(n, 1.0 / n)
        if wts.sum() <= 0:
            raise ValueError("the focal spot map has no intensity at the sample points: use more samples")
        return pts, wts / wts.sum()

    def _map_value(self, xw, xl):
        m = self._map
        W, L = self.width_mm, self.length_mm
        c = np.floor((xw / W + 0.5) * m.shape[1]).astype(int) if W > 0 else np.zeros(np.shape(xw), int)
        r = np.floor((xl / L + 0.5) * m.shape[0]).astype(int) if L > 0 else np.zeros(np.shape(xl), int)
        return m[np.clip(r, 0, m.shape[0] - 1), np.clip(c, 0, m.shape[1] - 1)]

    def samples(self, n, seed=None) -> tuple[np.ndarray, np.ndarray]:
        """Sub-source positions over the spot: offsets (k, 3) world mm from the nominal source, weights (k,).

        seed=None: deterministic quadrature on a grid, ``n`` = an int (a perfect square, or any
        count when the spot is a line) or ``(n_width, n_length)``; midpoint rule for "uniform"
        and maps, Gauss-Hermite for "gaussian"; map points with zero intensity are dropped (so
        k <= n). seed=int: ``n`` seeded random samples with equal weights.
        Weights sum to 1. A point ``s`` mm toward the anode (projected length coordinate)
        lies ``s / tan(anode_angle)`` mm further along the central ray (on the target face).
        """
        w, a, d = self.axes()
        pts, wts = self._plane_samples(n, seed)
        cot = 1.0 / math.tan(math.radians(self.anode_angle_deg))
        off = pts[:, :1] * w + pts[:, 1:] * a + (pts[:, 1:] * cot) * d
        return off, wts

    def penumbra(self, sod_mm: float, sdd_mm: float) -> tuple[float, float]:
        """Geometric penumbra (mm on the detector) across the width and across the length axis."""
        return penumbra_width(self.width_mm, sod_mm, sdd_mm), penumbra_width(self.length_mm, sod_mm, sdd_mm)


def _grid_counts(n, W, L):
    if isinstance(n, (tuple, list)):
        if len(n) != 2:
            raise ValueError(f"n must be an int or (n_width, n_length), got {n!r}")
        nw, nl = n
    else:
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer or (n_width, n_length), got {n!r}")
        n = int(n)
        if W == 0:
            nw, nl = 1, n
        elif L == 0:
            nw, nl = n, 1
        else:
            k = int(round(math.sqrt(n)))
            if k * k != n:
                raise ValueError(f"deterministic focal-spot quadrature needs a square number of samples "
                                 f"(or n=(n_width, n_length)), got {n}")
            nw = nl = k
    for name, v in (("n_width", nw), ("n_length", nl)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return (1 if W == 0 else int(nw)), (1 if L == 0 else int(nl))


def _midpoints(k, size):
    if size == 0:
        return np.zeros(1), np.ones(1)
    return ((np.arange(k) + 0.5) / k - 0.5) * size, np.full(k, 1.0 / k)


def _hermite(k, sigma):
    if sigma == 0:
        return np.zeros(1), np.ones(1)
    x, w = np.polynomial.hermite_e.hermegauss(k)
    return x * sigma, w / w.sum()


def _anode_vector(camera, anode):
    """World unit vector toward the image side ``anode``, perpendicular to the principal axis."""
    Mi = camera.M_inv
    d = camera.view_direction
    v = {"top": -Mi[:, 1], "bottom": Mi[:, 1], "left": -Mi[:, 0], "right": Mi[:, 0]}[anode]
    v = v - d * (v @ d)
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------------------------------
# heel effect
# ------------------------------------------------------------------------------------------
def _tw_constant(kvp):
    return float(np.interp(kvp, _TW_KV, _TW_C))


def _depth_scale(kvp):
    k0, k1 = HEEL_DEPTH_SCALE
    return k0 + k1 * (min(max(kvp, 50.0), 140.0) - 100.0)


def target_escape_fraction(energies_keV, kvp: float, takeoff_deg, n_quad: int = 48,
                           depth_scale: float | None = None) -> np.ndarray:
    """Fraction of the bremsstrahlung of energy E made in a thick tungsten target that escapes it.

    F(E, alpha) = 1/(T0 - E) * int_E^T0 exp(-mu_W(E) x(T) / sin(alpha)) dT, with the production
    depth ``x(T) = depth_scale * (T0^2 - T^2) / (rho C(T0))`` (Thomson-Whiddington, C of Tucker
    et al. 1991; ``depth_scale`` default from :data:`HEEL_DEPTH_SCALE`) and emission uniform in the
    electron energy T (Kramers). Gauss-Legendre in T.

    energies_keV (E,), takeoff_deg scalar or (A,) degrees from the target surface; returns
    (A, E) (or (E,) for a scalar angle), float64; 0 where alpha <= 0, 1 where E >= kVp.
    """
    e = check_energies(energies_keV)
    T0 = _num("kvp", kvp, positive=True)
    scalar = np.ndim(takeoff_deg) == 0
    alpha = np.atleast_1d(np.asarray(takeoff_deg, dtype=np.float64))
    if alpha.ndim != 1 or not np.all(np.isfinite(alpha)):
        raise ValueError("takeoff_deg must be a finite scalar or 1-D array (degrees)")
    mu = get_material("tungsten").mu(e) * 10.0  # 1/cm
    if depth_scale is None:
        depth_scale = _depth_scale(T0)
    x, wq = np.polynomial.legendre.leggauss(int(n_quad))
    Ec = np.minimum(e, T0)
    T = 0.5 * (T0 - Ec)[:, None] * (x + 1.0) + Ec[:, None]  # (E, Q)
    depth = depth_scale * (T0 ** 2 - T ** 2) / (_W_DENSITY * _tw_constant(T0))  # cm
    tau = mu[:, None] * depth  # (E, Q) optical depth along the normal
    sa = np.sin(np.radians(np.clip(alpha, 1e-9, 90.0)))
    F = np.einsum("q,aeq->ae", 0.5 * wq, np.exp(-tau[None] / sa[:, None, None]))
    F[:, e >= T0] = 1.0
    F[alpha <= 0] = 0.0
    return F[0] if scalar else F


def heel_factors(energies_keV, kvp: float, anode_angle_deg: float, angles_deg, model: str = "tucker",
                 spekpy_physics: str = "casim") -> np.ndarray:
    """Heel-effect spectral factors relative to the central ray, (A, E) float64.

    angles_deg (A,) : emission angle from the central ray, positive toward the anode
    (take-off angle ``anode_angle - angle``). The factor multiplies the central-ray spectrum
    (TASMIP's or SpekPy's, which already contain the self-filtration at the central ray).
    model : "tucker" (dependency-free, see the module docstring) or "spekpy" (ratio of SpekPy
    spectra at the off-axis angles; needs the spekpy package).
    """
    e = check_energies(energies_keV)
    th = _num("anode_angle_deg", anode_angle_deg)
    if not 0 < th <= 90:
        raise ValueError(f"anode_angle_deg must be in (0, 90], got {th}")
    psi = np.atleast_1d(np.asarray(angles_deg, dtype=np.float64))
    if psi.ndim != 1 or not np.all(np.isfinite(psi)):
        raise ValueError("angles_deg must be a finite 1-D array (degrees)")
    if model == "tucker":
        F = target_escape_fraction(e, kvp, th - psi)
        F0 = target_escape_fraction(e, kvp, th)
        return F / np.where(F0 > 0, F0, 1.0)[None]
    if model == "spekpy":
        sp = _import_spekpy()
        s = sp.Spek(kvp=_num("kvp", kvp, positive=True), th=th, dk=1.0, physics=spekpy_physics, obli=False)
        k0, p0 = s.get_spectrum(diff=False)
        out = np.empty((psi.size, e.size))
        for i, a in enumerate(psi):
            if a >= th:
                out[i] = 0.0
                continue
            xcm = -100.0 * math.tan(math.radians(a))  # SpekPy's x > 0 is toward the cathode
            k, p = s.get_spectrum(diff=False, x=xcm, z=100.0)
            p = p * (1.0 + (xcm / 100.0) ** 2)  # undo SpekPy's inverse-square factor
            r = np.where(p0 > 0, p / np.where(p0 > 0, p0, 1.0), np.nan)
            good = np.isfinite(r)
            out[i] = np.interp(e, k0[good], r[good]) if good.any() else 1.0
        return out
    raise ValueError(f"heel model must be 'tucker' or 'spekpy', got {model!r}")


def heel_angles(camera, anode: str = "top") -> np.ndarray:
    """Emission angle (degrees, positive toward the anode) of each detector row ("top"/"bottom")
    or column ("left"/"right"), measured on the line through the principal point: (H,) or (W,)."""
    _camera_like(camera)
    if anode not in _ANODE_SIDES:
        raise ValueError(f"anode must be one of {_ANODE_SIDES}, got {anode!r}")
    Mi = camera.M_inv
    d = camera.view_direction
    a = _anode_vector(camera, anode)
    cx, cy = camera.principal_point
    if anode in ("top", "bottom"):
        idx = np.arange(camera.height, dtype=np.float64)
        pix = np.stack([np.full_like(idx, cx), idx, np.ones_like(idx)], 1)
    else:
        idx = np.arange(camera.width, dtype=np.float64)
        pix = np.stack([idx, np.full_like(idx, cy), np.ones_like(idx)], 1)
    rays = pix @ Mi.T
    return np.degrees(np.arctan2(rays @ a, rays @ d))


def heel_weights(spectrum: Spectrum, camera, anode_angle_deg: float, anode: str = "top", kvp: float | None = None,
                 model: str = "tucker", warn: bool = True) -> np.ndarray:
    """Per-row (anode "top"/"bottom") or per-column ("left"/"right") heel factors, (H or W, E).

    Multiply them into the Beer-Lambert weights (photons x detector response) of the same
    energies: ``w[r, e] = photons[e] * response[e] * heel[r, e]``. Row 0 is the image's top.
    kvp : tube voltage (default: the upper edge of the spectrum's highest non-empty bin).
    Rows beyond the heel (take-off angle <= 0) get 0, with a :class:`HeelCutoffWarning`.
    """
    if not isinstance(spectrum, Spectrum):
        raise TypeError(f"spectrum must be a taichi_xray Spectrum, got {type(spectrum).__name__}")
    e = spectrum.energies
    if kvp is None:
        half = 0.5 * (e[-1] - e[-2]) if e.size > 1 else 0.5
        kvp = float(e[spectrum.photons > 0][-1] + half)
    psi = heel_angles(camera, anode)
    th = _num("anode_angle_deg", anode_angle_deg)
    h = heel_factors(e, kvp, th, psi, model=model)
    cut = psi >= th
    if cut.any() and warn:
        warnings.warn(f"{int(cut.sum())} detector {'rows' if anode in ('top', 'bottom') else 'columns'} lie "
                      f"beyond the anode heel (emission angle >= anode angle {th:g} deg): no direct beam there",
                      HeelCutoffWarning, stacklevel=2)
    return h


# ------------------------------------------------------------------------------------------
# SpekPy spectra and absolute fluence
# ------------------------------------------------------------------------------------------
def _import_spekpy():
    try:
        import spekpy
    except ImportError as exc:
        raise ImportError("this needs the optional spekpy package (pip install spekpy==2.5.4)") from exc
    return spekpy


def spekpy_spectrum(kvp: float, anode_angle_deg: float = 12.0, filtration=None, bin_width: float = 1.0,
                    off_axis_deg: float = 0.0, physics: str = "casim") -> Spectrum:
    """Tungsten spectrum from SpekPy v2 (Poludniowski et al., Med. Phys. 48, 3630, 2021).

    Photons per mm^2 per mAs at 1 m per bin of ``bin_width`` keV, after ``filtration``
    {material spec: mm} applied with this package's xraylib materials (the *total* filtration:
    SpekPy's spectrum leaves the target unfiltered; default ``{"Al": 2.5}``, a typical total
    filtration). off_axis_deg : emission angle toward the anode (the heel effect). Needs spekpy.
    """
    sp = _import_spekpy()
    kvp = _num("kvp", kvp, positive=True)
    th = _num("anode_angle_deg", anode_angle_deg)
    if not 0 < th <= 90:
        raise ValueError(f"anode_angle_deg must be in (0, 90], got {th}")
    dk = _num("bin_width", bin_width, positive=True)
    psi = _num("off_axis_deg", off_axis_deg)
    if psi >= th:
        raise ValueError(f"off_axis_deg={psi} is beyond the anode heel (anode angle {th} deg)")
    s = sp.Spek(kvp=kvp, th=th, dk=dk, physics=physics, obli=False)
    xcm = -100.0 * math.tan(math.radians(psi))
    k, phi = s.get_spectrum(diff=False, x=xcm, z=100.0)
    phi = np.asarray(phi, float) * (1.0 + (xcm / 100.0) ** 2) / 100.0  # per cm^2 at r -> per mm^2 at 1 m
    k = np.asarray(k, float)
    keep = (phi > 0) & (k >= 1.0)
    spec = Spectrum(k[keep], phi[keep])
    for mat, t in ({"Al": 2.5} if filtration is None else dict(filtration)).items():
        t = _num(f"filtration[{mat!r}]", t, nonneg=True)
        if t > 0:
            spec = spec.filtered(mat, t)
    return spec


def photons_per_pixel(spectrum: Spectrum, mAs: float, sdd_mm: float, pixel_area_mm2: float) -> np.ndarray:
    """Expected photons per energy bin reaching one pixel at the detector centre, (E,) float64.

    ``spectrum.photons`` must be photons/mm^2/mAs at 1 m (``Spectrum.tungsten``, i.e. TASMIP,
    and :func:`spekpy_spectrum` are): ``N_E = photons_E * mAs * (1000 / sdd)^2 * area``.
    Off-centre pixels get :func:`fluence_falloff` on top, and the heel factors.
    """
    if not isinstance(spectrum, Spectrum):
        raise TypeError(f"spectrum must be a taichi_xray Spectrum, got {type(spectrum).__name__}")
    mAs = _num("mAs", mAs, positive=True)
    sdd = _num("sdd_mm", sdd_mm, positive=True)
    area = _num("pixel_area_mm2", pixel_area_mm2, positive=True)
    return spectrum.photons * mAs * (1000.0 / sdd) ** 2 * area


def fluence_falloff(camera, obliquity: bool = True) -> np.ndarray:
    """Photons per pixel relative to the principal point, (H, W): ``(D / r)^2`` (inverse square)
    times ``D / r`` (the slant of the rays on a flat detector) with ``obliquity``; r is the
    source-pixel distance and D the source-detector distance along the principal axis."""
    _camera_like(camera)
    r = camera.ray_lengths()
    c = camera.detector_distance / r
    return c ** 3 if obliquity else c ** 2
