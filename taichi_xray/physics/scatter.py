"""Scatter: a fast differentiable scatter estimate and an anti-scatter grid model.

Kernel model (:func:`scatter_estimate`, :class:`KernelScatterModel`)
---------------------------------------------------------------------
Thickness-dependent beam-scatter-kernel superposition (Ohnesorge et al., Eur. Radiol. 9,
563 (1999); Sun & Star-Lack, Phys. Med. Biol. 55, 6695 (2010); review: Ruhrnschopf &
Klingenbeck, Med. Phys. 38, 5186 (2011), eqs. 12-16)::

    S(u) = sum_u' P(u') A(t(u')) h_{t(u')}(u - u')

P: primary transmission (B, H, W) (energy-integrated I/I0 without scatter); t: water-
equivalent thickness (B, H, W) mm; A(t): the scatter-to-primary ratio of an infinite water
slab of thickness t (a pencil beam's scatter integrated over the detector, divided by its
primary); h_t: the pencil beam's normalised radial scatter profile on the detector,
h(r) = a1 e^(-r/b1)/(2 pi b1^2) + a2 e^(-r/b2)/(2 pi b2^2) + a3 e^(-r^2/2s^2)/(2 pi s^2).
Thickness enters through hat-function weights on the calibrated thickness groups
(piecewise linear in t), so S is differentiable w.r.t. P and t (torch autograd).

Three corrections carry the parallel-beam slab kernels over to divergent beams and finite
objects (each one global number, fitted to broad-field Monte Carlo runs):

* divergent beam (``sdd_mm`` given): a pencil's scatter leaves the object from an effective
  origin at z_s = sdd - kappa * gap - beta * t from the source, nearer the axis than the
  pencil's detector pixel, so each group's source image is shrunk about the principal
  point by M = sdd / z_s (and scaled by M^2, which keeps the scatter's total);
* lateral escape: sources are divided by 1 + eta |grad t| (near an object's side, scatter
  leaves sideways);
* asymmetric kernels (in the spirit of Sun & Star-Lack's adaptive kernels): a pencil at u'
  adds to u in proportion to 1 + gamma (t(u') - t(u)), i.e. S = (1 - gamma t) (q * h) +
  gamma ((q t) * h), clipped at 0.

The convolutions run with FFTs on a coarse grid (scatter is smooth; ``coarse_mm``, default
4 mm), sum over groups in the frequency domain, and come back by bilinear interpolation.
S is in the units of P (a transmission fraction). With a grid, the output is
S * Ts / Tp: the scatter in an image flat-fielded with the grid in place (the primary is
then P itself); Ts comes from a cos^n radiance model of the scatter integrated over the
grid's angular transmission, n calibrated per thickness and gap so that a 10:1 grid passes
the Monte Carlo's fraction of scatter.

The table :data:`CALIBRATION` (A, shape, n per kVp, thickness and gap; beta, kappa, eta,
gamma) was fitted to this package's Monte Carlo (:mod:`taichi_xray.physics.montecarlo`) by
``benchmarks/scatter_calibration.py``; its report, with the kernel/MC comparison, is
``benchmarks/results/scatter-calibration.md`` and docs/scatter.md explains the model.
Calibrated for Spectrum.tungsten(80..120 kVp) (TASMIP + 2.5 mm Al), water-equivalent
thicknesses up to 400 mm, air gaps 0..300 mm and an ideal energy-integrating detector.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .materials import get_material

E_TAB_MAX = 800.0


@lru_cache(maxsize=32)
def _mu_table(spec: str, density: float | None):
    """mu (1/mm) of a material on a 0.5 keV grid from 1 to 800 keV (for np.interp)."""
    e = np.arange(1.0, E_TAB_MAX + 0.25, 0.5)
    return e, get_material(spec, density).mu(e)


@dataclass(frozen=True)
class AntiScatterGrid:
    """A linear (1-D) anti-scatter grid, focused or parallel, in front of the detector.

    ratio : r = h / D, strip height over interspace width (e.g. 10 for 10:1).
    lines_per_cm : strip density N (e.g. 40); the period is P = 10 / N mm.
    strip_um : strip thickness d in micrometres (lead strips of grids with N = 36..80 /cm
        are 20..50 um thick); the interspace is D = P - d, the height h = r D.
    focal_mm : focusing distance (source to grid) in mm; ``None`` for a parallel grid.
    strips_along : "y" (strips parallel to the detector's y axis, so they select the
        photons' x angle) or "x".
    strip_material, interspace_material : material specs for get_material (default lead
        and aluminium; ``interspace_density`` overrides the density, e.g. 0.5 for a fibre
        interspace modelled as carbon).
    cover_mm, cover_material : total thickness of the two cover plates (default 0).

    Transmission model: Day & Dance (1983), "X-ray transmission formula for antiscatter
    grids", Phys. Med. Biol. 28, 1429: a photon crossing the grid at angle alpha (across
    the strips, relative to the local focusing direction) travels a path L = h / cos
    through the grid, a fraction g(x0) of it in lead, where x0 is its entry position within
    one period; T = exp(-mu_i L) <exp(-(mu_s - mu_i) L g(x0))>, averaged exactly over x0 in
    [0, P) (g is piecewise linear in x0). Septal penetration is included; the out-of-plane
    angle only lengthens L. Primary photons from the focus have alpha = 0:
    Tp = (D/P) exp(-mu_i h) + (d/P) exp(-mu_s h). Moving-grid (time-averaged) transmission;
    grid-line patterns of stationary grids are not modelled.
    """

    ratio: float = 10.0
    lines_per_cm: float = 40.0
    strip_um: float = 45.0
    focal_mm: float | None = None
    strips_along: str = "y"
    strip_material: str = "lead"
    interspace_material: str = "aluminium"
    interspace_density: float | None = None
    cover_mm: float = 0.0
    cover_material: str = "aluminium"

    def __post_init__(self):
        for name in ("ratio", "lines_per_cm", "strip_um"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"AntiScatterGrid.{name} must be > 0, got {getattr(self, name)!r}")
        if self.period_mm <= self.strip_um * 1e-3:
            raise ValueError(f"AntiScatterGrid: strips of {self.strip_um} um do not fit a period of "
                             f"{self.period_mm:.4g} mm ({self.lines_per_cm} lines/cm)")
        if self.focal_mm is not None and not (math.isfinite(self.focal_mm) and self.focal_mm > 0):
            raise ValueError(f"AntiScatterGrid.focal_mm must be > 0 or None, got {self.focal_mm!r}")
        if self.strips_along not in ("x", "y"):
            raise ValueError(f"AntiScatterGrid.strips_along must be 'x' or 'y', got {self.strips_along!r}")
        if not (math.isfinite(self.cover_mm) and self.cover_mm >= 0):
            raise ValueError(f"AntiScatterGrid.cover_mm must be >= 0, got {self.cover_mm!r}")
        for spec, d in ((self.strip_material, None), (self.interspace_material, self.interspace_density),
                        (self.cover_material, None)):
            get_material(spec, d)  # raises KeyError / ValueError naming the bad material

    @classmethod
    def from_dict(cls, d) -> "AntiScatterGrid":
        """Build from a mapping (scene-file table): ratio, lines_per_cm, strip_um, focal_mm, ..."""
        if isinstance(d, AntiScatterGrid):
            return d
        if not isinstance(d, dict):
            raise TypeError(f"grid must be a dict or AntiScatterGrid, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(d) - known)
        if bad:
            raise KeyError(f"unknown grid key(s) {bad}; known: {sorted(known)}")
        return cls(**d)

    @property
    def period_mm(self) -> float:
        return 10.0 / float(self.lines_per_cm)

    @property
    def strip_mm(self) -> float:
        return float(self.strip_um) * 1e-3

    @property
    def interspace_mm(self) -> float:
        return self.period_mm - self.strip_mm

    @property
    def height_mm(self) -> float:
        return float(self.ratio) * self.interspace_mm

    def _mu(self, which, e):
        spec, dens = {"strip": (self.strip_material, None),
                      "interspace": (self.interspace_material, self.interspace_density),
                      "cover": (self.cover_material, None)}[which]
        eg, mg = _mu_table(spec, dens)
        return np.interp(e, eg, mg)

    def transmission(self, energies, tan_x, tan_y, x_mm=None, y_mm=None) -> np.ndarray:
        """Transmission (N,) of photons of energies (N,) keV with direction slopes
        tan_x = dx/dz, tan_y = dy/dz (dz > 0 toward the detector) hitting the grid at
        (x_mm, y_mm) (needed for a focused grid; the focus is above the origin).
        """
        e = np.asarray(energies, dtype=np.float64)
        tx = np.broadcast_to(np.asarray(tan_x, dtype=np.float64), e.shape)
        ty = np.broadcast_to(np.asarray(tan_y, dtype=np.float64), e.shape)
        across, along = (tx, ty) if self.strips_along == "y" else (ty, tx)
        pos = x_mm if self.strips_along == "y" else y_mm
        if self.focal_mm is not None:
            if pos is None:
                raise ValueError("a focused grid needs the hit position (x_mm / y_mm)")
            s = np.broadcast_to(np.asarray(pos, dtype=np.float64), e.shape) / float(self.focal_mm)
            rel = (across - s) / (1.0 + across * s)  # tan of the angle to the local focusing direction
        else:
            rel = across
        secant = np.sqrt(1.0 + tx * tx + ty * ty)
        P, d, h = self.period_mm, self.strip_mm, self.height_mm
        L = h * secant
        mu_s, mu_i = self._mu("strip", e), self._mu("interspace", e)
        k = L * (mu_s - mu_i)
        delta = h * np.abs(rel)  # displacement across the strips over the grid height
        avg = _mean_exp_coverage(delta, k, P, d)
        T = np.exp(-mu_i * L) * avg
        if self.cover_mm > 0:
            T = T * np.exp(-self._mu("cover", e) * self.cover_mm * secant)
        return T

    def primary_transmission(self, energies) -> np.ndarray:
        """Tp (E,) at normal incidence along the focusing direction."""
        e = np.atleast_1d(np.asarray(energies, dtype=np.float64))
        z = np.zeros_like(e)
        return self.transmission(e, z, z, x_mm=z, y_mm=z)


def _mean_exp_coverage(delta, k, P, d):
    """(1/P) int_0^P exp(-k g(x0)) dx0 with g = (fraction of [x0, x0 + delta] inside the
    strips [jP, jP + d)); exact: g is piecewise linear in x0 between the breakpoints
    0, d, (-delta) mod P, (d - delta) mod P."""
    delta = np.asarray(delta, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    out = np.empty(np.broadcast(delta, k).shape)
    delta, k = np.broadcast_arrays(delta, k)
    small = delta < 1e-9 * P
    out[small] = (d / P) * np.exp(-k[small]) + (1.0 - d / P)
    dl, kl = delta[~small], k[~small]
    if dl.size:
        bp = np.stack([np.zeros_like(dl), np.full_like(dl, d), np.mod(-dl, P), np.mod(d - dl, P),
                       np.full_like(dl, P)], axis=1)
        bp.sort(axis=1)

        def cum(x):  # strip measure in [0, x]
            return np.floor(x / P) * d + np.minimum(np.mod(x, P), d)

        g = (cum(bp + dl[:, None]) - cum(bp)) / dl[:, None]
        x0, x1 = bp[:, :-1], bp[:, 1:]
        g0, g1 = g[:, :-1], g[:, 1:]
        kk = kl[:, None]
        dg = g1 - g0
        e0 = np.exp(-kk * g0)
        with np.errstate(divide="ignore", invalid="ignore"):
            seg = np.where(np.abs(kk * dg) > 1e-9, (e0 - np.exp(-kk * g1)) / (kk * dg), e0 * (1 - 0.5 * kk * dg))
        out[~small] = ((x1 - x0) * seg).sum(axis=1) / P
    return out


# ----------------------------------------------------------------------------------------
# kernel model
# ----------------------------------------------------------------------------------------
class ScatterCalibrationWarning(UserWarning):
    """A kernel-model setting lies outside the calibrated range (clamped)."""


# Fitted by benchmarks/scatter_calibration.py (run it with --write-table to regenerate this
# block); see docs/scatter.md. Monte Carlo: this package's transport, pencil beams along the
# axis of infinite water slabs, TASMIP tungsten spectra with 2.5 mm Al added
# (Spectrum.tungsten(kVp)), ideal energy-integrating detector, no air.
# params[kvp][i_thickness][i_gap] = (A, a1, b1, a2, b2, s, n):
#   A   scatter-to-primary ratio of an infinite slab (scatter within 1 m of the pencil)
#   a1, b1, a2, b2, s   kernel shape (mm), a3 = 1 - a1 - a2 (Gaussian weight)
#   n   exponent of a cos^n(theta) radiance model of the scatter at the detector, set so that
#       the model's transmission through a 10:1 grid equals the Monte Carlo's
# e_scatter_keV[kvp]: mean energy of the scatter reaching the detector (energy weighted).
# BEGIN CALIBRATION TABLE
# generated by benchmarks/scatter_calibration.py --photons 1000000 --seed 1000 --write-table
CALIBRATION = {
    "kvp": (80, 120),
    "thickness_mm": (25.0, 50.0, 100.0, 150.0, 200.0, 300.0, 400.0),
    "air_gap_mm": (0.0, 50.0, 100.0, 200.0, 300.0),
    "e_scatter_keV": {80: 48.75, 120: 60.34},
    # geometry (divergent beam, lateral escape, asymmetric kernels): fitted to broad fields
    "beta": 0.5512, "kappa": 0.7112, "eta": 0.2569, "gamma": 0.005002,
    "params": {
        80: [
            [(0.2948, 0.1982, 0.949, 0.6195, 6.659, 37.8, 2.921), (0.2941, 0.05545, 4.678, 0.8067, 31.79, 175.8, 3.387), (0.2919, 0.0482, 7.593, 0.8086, 55.64, 290.2, 4.531), (0.2831, 0.04137, 12.55, 0.7754, 97.96, 383.2, 8.49), (0.2701, 0.04061, 17.93, 0.6686, 129.2, 383.9, 14.26)],  # t = 25 mm
            [(0.6291, 0.1468, 1.45, 0.6319, 11.18, 53.74, 3.07), (0.6282, 0.04127, 4.59, 0.8571, 36.63, 181.3, 3.481), (0.6251, 0.03381, 6.643, 0.8657, 60.02, 297.8, 4.561), (0.6116, 0.06251, 17.22, 0.6827, 144.8, 116.2, 8.32), (0.5886, 0.0313, 16.05, 0.764, 139.6, 376.9, 13.75)],  # t = 50 mm
            [(1.424, 0.1099, 2.36, 0.6437, 19.29, 75.16, 3.469), (1.422, 0.02753, 4.758, 0.9186, 44.9, 213.3, 3.912), (1.417, 0.02041, 5.879, 0.9351, 67.63, 364.2, 4.994), (1.393, 0.04373, 16.61, 0.7164, 136.4, 124.9, 8.712), (1.352, 0.02051, 14.21, 0.874, 150.3, 336.4, 14.08)],  # t = 100 mm
            [(2.381, 0.08364, 3.051, 0.6621, 26.43, 91.76, 3.698), (2.379, 0.04918, 9.296, 0.7648, 60.88, 59.76, 4.231), (2.371, 0.05989, 15.45, 0.5654, 96.23, 91.75, 5.391), (2.335, 0.03752, 17.97, 0.6861, 138.4, 137.7, 9.191), (2.27, 0.02016, 16.52, 0.8451, 160.8, 223, 14.29)],  # t = 150 mm
            [(3.579, 0.03965, 2.059, 0.8864, 44.28, 14.89, 3.678), (3.576, 0.02871, 8.618, 0.8128, 63.98, 74.44, 4.236), (3.565, 0.02521, 11.58, 0.6797, 92.19, 97.32, 5.394), (3.513, 0.01397, 12.15, 0.7546, 133.7, 143.3, 8.953), (3.422, 0.007493, 10.7, 0.8091, 160.5, 233.2, 13.58)],  # t = 200 mm
            [(6.565, 0.03486, 3.483, 0.5768, 39.09, 122.7, 3.756), (6.555, 0.01161, 8.287, 0.8505, 71.1, 113.9, 4.465), (6.529, 0.01069, 9.348, 0.7483, 95.1, 122.7, 5.607), (6.437, 0.01367, 16.81, 0.67, 143.2, 165.3, 8.879), (6.259, 0.007035, 12.71, 0.6819, 164, 250.8, 13.3)],  # t = 300 mm
            [(11.67, 0.03591, 7.313, 0.7786, 71.35, 81.64, 4.545), (11.65, 0.03623, 85.17, 0.811, 85.17, 89.71, 5.548), (11.59, 8.345e-18, 165.8, 0.7059, 111.8, 108, 6.909), (11.41, 4.275e-07, 155.2, 0.6311, 155.2, 154, 9.677), (11.02, 0.2325, 166.5, 0.4146, 166.5, 233.5, 14.22)],  # t = 400 mm
        ],
        120: [
            [(0.2823, 0.1848, 0.9641, 0.6234, 6.746, 40.27, 1.059), (0.2815, 0.03772, 3.773, 0.8109, 31.92, 175.4, 1.349), (0.2793, 0.03201, 5.888, 0.8129, 56.03, 289.6, 2.025), (0.2702, 0.02764, 9.637, 0.7822, 99.32, 385.6, 4.261), (0.257, 0.0272, 13.45, 0.6864, 132.6, 387.3, 7.64)],  # t = 25 mm
            [(0.6085, 0.1389, 1.433, 0.6347, 11.58, 57.53, 1.209), (0.6075, 0.02899, 3.846, 0.859, 37.15, 183.9, 1.475), (0.6041, 0.02263, 5.255, 0.8725, 61.14, 302.8, 2.123), (0.5898, 0.04342, 14.6, 0.7079, 145.4, 114.9, 4.214), (0.5666, 0.02136, 12.68, 0.8029, 146.2, 376.3, 7.332)],  # t = 50 mm
            [(1.387, 0.1025, 2.369, 0.6645, 20.92, 83.39, 1.351), (1.385, 0.02002, 3.935, 0.9254, 47.06, 226.9, 1.635), (1.378, 0.01272, 4.161, 0.9448, 70.48, 382.6, 2.248), (1.353, 0.02732, 12.62, 0.7372, 138.9, 127.1, 4.214), (1.31, 0.01686, 12.42, 0.8735, 164.6, 224.1, 7.001)],  # t = 100 mm
            [(2.363, 0.07703, 3.019, 0.6771, 28.55, 100.7, 1.439), (2.36, 0.02766, 6.972, 0.8206, 62.46, 58.26, 1.748), (2.351, 0.02859, 10.31, 0.6695, 93.86, 89.77, 2.376), (2.312, 0.01858, 11.78, 0.7384, 138.2, 139.6, 4.215), (2.244, 0.01099, 11.1, 0.8049, 164.2, 238.1, 6.737)],  # t = 150 mm
            [(3.56, 0.0474, 2.804, 0.8787, 47.88, 19.05, 1.44), (3.556, 0.0163, 6.878, 0.9162, 65.59, 69.47, 1.794), (3.544, 0.01535, 9.029, 0.7678, 92.92, 98.21, 2.416), (3.487, 0.012, 11.8, 0.7394, 139.3, 149.6, 4.193), (3.389, 0.006154, 9.795, 0.7717, 165.4, 241.8, 6.747)],  # t = 200 mm
            [(6.764, 0.04328, 4.545, 0.7679, 53.29, 128.5, 1.479), (6.757, 0.008891, 5.926, 0.7926, 76.24, 109.9, 1.884), (6.732, 0.006277, 5.643, 0.695, 100.2, 126.9, 2.449), (6.63, 0.008383, 11.11, 0.6028, 146.3, 177, 4.122), (6.467, 7.927e-07, 163.5, 0.6384, 165.2, 261, 6.545)],  # t = 300 mm
            [(11.18, 0.07017, 12.59, 0.5562, 72.52, 122, 1.473), (11.17, 0.07999, 29.04, 0.4351, 93.82, 138.9, 1.81), (11.13, 0.1843, 56.33, 0.2362, 136.1, 165.9, 2.558), (10.95, 0.02451, 45.4, 0.5134, 145.4, 210.3, 3.923), (10.71, 7.393e-07, 159.4, 0.5255, 162.5, 281.2, 5.55)],  # t = 400 mm
        ],
    },
}
# END CALIBRATION TABLE


def _check_calibration():
    if CALIBRATION is None:
        raise RuntimeError("the scatter-kernel calibration table is missing; run "
                           "benchmarks/scatter_calibration.py --write-table")
    return CALIBRATION


def _lin_weights(grid, x):
    """(i0, i1, w1) for linear interpolation of x on the increasing sequence grid (clamped)."""
    g = np.asarray(grid, dtype=np.float64)
    x = float(np.clip(x, g[0], g[-1]))
    i1 = int(np.searchsorted(g, x, side="left"))
    i1 = min(max(i1, 1), g.size - 1)
    i0 = i1 - 1
    w1 = (x - g[i0]) / (g[i1] - g[i0])
    return i0, i1, w1


def calibrated_parameters(kvp: float, air_gap_mm: float) -> tuple[np.ndarray, list]:
    """(thickness groups (T,) mm, [(weight, params (T, 7)), ...]): the calibrated settings
    that bracket ``kvp`` and ``air_gap_mm`` with their bilinear weights (clamped to the
    calibrated ranges with a :class:`ScatterCalibrationWarning`). The model mixes the
    *kernels* of these settings (their fitted shape parameters need not vary smoothly).
    Columns: A, a1, b1, a2, b2, s, n."""
    import warnings

    cal = _check_calibration()
    kv = np.asarray(cal["kvp"], dtype=np.float64)
    gp = np.asarray(cal["air_gap_mm"], dtype=np.float64)
    for name, v in (("kvp", kvp), ("air_gap_mm", air_gap_mm)):
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if air_gap_mm < 0:
        raise ValueError(f"air_gap_mm must be >= 0, got {air_gap_mm}")
    for name, v, rng in (("kvp", kvp, kv), ("air_gap_mm", air_gap_mm, gp)):
        if v < rng[0] - 1e-9 or v > rng[-1] + 1e-9:
            warnings.warn(f"scatter kernel: {name} = {v:g} is outside the calibrated range "
                          f"[{rng[0]:g}, {rng[-1]:g}]; using the nearest calibrated value",
                          ScatterCalibrationWarning, stacklevel=3)
    k0, k1, wk = _lin_weights(kv, kvp)
    g0, g1, wg = _lin_weights(gp, air_gap_mm)
    combos = []
    for k, w1 in ((k0, 1 - wk), (k1, wk)):
        tab = np.asarray(cal["params"][int(kv[k])], dtype=np.float64)  # (T, G, 7)
        for g, w2 in ((g0, 1 - wg), (g1, wg)):
            if w1 * w2 > 0:
                combos.append((w1 * w2, tab[:, g]))
    return np.asarray(cal["thickness_mm"], dtype=np.float64), combos


def scatter_energy_keV(kvp: float) -> float:
    cal = _check_calibration()
    kv = np.asarray(cal["kvp"], dtype=np.float64)
    es = np.array([cal["e_scatter_keV"][int(k)] for k in kv])
    return float(np.interp(kvp, kv, es))


def _encircled(r, a1, b1, a2, b2, s):
    """Fraction of the normalised kernel within radius r (mm)."""
    r = np.asarray(r, dtype=np.float64)
    a3 = 1.0 - a1 - a2
    return (a1 * (1 - (1 + r / b1) * np.exp(-r / b1)) + a2 * (1 - (1 + r / b2) * np.exp(-r / b2))
            + a3 * (1 - np.exp(-0.5 * (r / s) ** 2)))


def _kernel_density(r, a1, b1, a2, b2, s):
    a3 = 1.0 - a1 - a2
    return (a1 * np.exp(-r / b1) / (2 * np.pi * b1 * b1) + a2 * np.exp(-r / b2) / (2 * np.pi * b2 * b2)
            + a3 * np.exp(-0.5 * (r / s) ** 2) / (2 * np.pi * s * s))


def kernel_image(shape_params, h: int, w: int, pitch_yx) -> np.ndarray:
    """Pixel-integrated kernel on a (2h, 2w) grid in FFT order (offset (0, 0) at [0, 0],
    negative offsets wrapped), offsets |dy| < h, |dx| < w pixels of pitch_yx mm, float64.
    Midpoint rule with 2 x 2 points per pixel, 8 x 8 within 5 pixels of the centre and
    48 x 48 in the central 3 x 3 pixels, where the narrow components vary within a pixel."""
    a1, b1, a2, b2, s = (float(v) for v in shape_params)
    py, px = (float(v) for v in pitch_yx)

    def integrate(oy, ox, k):
        sub = (np.arange(k) + 0.5) / k - 0.5
        yy = (oy[:, None] + sub[None, :] * py).reshape(-1)
        xx = (ox[:, None] + sub[None, :] * px).reshape(-1)
        dens = _kernel_density(np.hypot(yy[:, None], xx[None, :]), a1, b1, a2, b2, s)
        return dens.reshape(oy.size, k, ox.size, k).mean(axis=(1, 3)) * (py * px)

    iy = np.arange(-(h - 1), h)
    ix = np.arange(-(w - 1), w)
    K = integrate(iy * py, ix * px, 2)
    for half, k in ((5, 8), (1, 48)):
        cy = np.arange(-min(half, h - 1), min(half, h - 1) + 1)
        cx = np.arange(-min(half, w - 1), min(half, w - 1) + 1)
        K[np.ix_(cy + h - 1, cx + w - 1)] = integrate(cy * py, cx * px, k)
    out = np.zeros((2 * h, 2 * w))
    out[np.ix_(iy % (2 * h), ix % (2 * w))] = K
    return out


def grid_scatter_transmission(grid: AntiScatterGrid, n: float, energy_keV: float, nodes: int = 48) -> float:
    """Mean transmission of scatter whose radiance at the detector goes as cos^n(theta)
    (photons per unit area and solid angle ~ cos^(n+1)), through ``grid`` at its centre."""
    mu, wmu = np.polynomial.legendre.leggauss(nodes)
    mu = 0.5 * (mu + 1.0)
    wmu = 0.5 * wmu * mu ** (float(n) + 1.0)
    phi = (np.arange(2 * nodes) + 0.5) * (2 * np.pi / (2 * nodes))
    M, PH = np.meshgrid(mu, phi, indexing="ij")
    W = np.broadcast_to(wmu[:, None], M.shape)
    sn = np.sqrt(1 - M * M)
    tx = sn * np.cos(PH) / M
    ty = sn * np.sin(PH) / M
    z = np.zeros(M.size)
    T = grid.transmission(np.full(M.size, float(energy_keV)), tx.ravel(), ty.ravel(), z, z)
    return float((T * W.ravel()).sum() / W.sum())


def water_equivalent_thickness(path_lengths, mus, mu_water):
    """Water-equivalent thickness sum_m L_m mu_m / mu_water, mm.

    path_lengths : (M, H, W) or (B, M, H, W) exclusive path lengths per material, mm
    (numpy or torch; torch keeps autograd). mus : (M,) linear attenuation of each material
    at an effective energy, 1/mm. mu_water : water's mu at that energy, 1/mm.
    Returns (H, W) or (B, H, W) in the input's kind and dtype.
    """
    mu_w = float(mu_water)
    if not (np.isfinite(mu_w) and mu_w > 0):
        raise ValueError(f"mu_water must be > 0 1/mm, got {mu_water}")
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    is_t = torch is not None and isinstance(path_lengths, torch.Tensor)
    L = path_lengths
    if L.ndim not in (3, 4):
        raise ValueError(f"path_lengths must have shape (M, H, W) or (B, M, H, W), got {tuple(L.shape)}")
    M = L.shape[-3]
    m = np.asarray(mus.detach().cpu() if (torch is not None and isinstance(mus, torch.Tensor)) else mus,
                   dtype=np.float64).reshape(-1)
    if m.size != M:
        raise ValueError(f"mus must have {M} entries (one per material), got {m.size}")
    if not np.all(np.isfinite(m)):
        raise ValueError("mus contain NaN or infinity")
    if is_t:
        mt = (mus if isinstance(mus, torch.Tensor) else torch.as_tensor(m)).to(L.dtype).to(L.device)
        return torch.einsum("...mhw,m->...hw", L, mt) / mu_w
    return np.einsum("...mhw,m->...hw", np.asarray(L), m.astype(np.asarray(L).dtype)) / mu_w


class KernelScatterModel:
    """Scatter-kernel superposition (see the module docstring) for one setting.

    kvp : tube voltage (calibrated 80..120 kVp; TASMIP + 2.5 mm Al spectra).
    air_gap_mm : distance from the object's exit surface to the detector (0..300 mm).
    grid : None, an AntiScatterGrid or a dict for AntiScatterGrid.from_dict.
    coarse_mm : pitch (detector mm) of the grid the convolutions run on.
    sdd_mm : source-to-detector distance for a divergent beam (None: parallel beam, no
        divergence correction).
    beta, kappa, eta, gamma : override the calibrated geometry parameters (tests, fits).

    Call ``model(primary, wet_mm, pixel_spacing_mm, magnification=1.0, principal_point=None)``:
    primary (H, W) or (B, H, W) transmission, wet_mm the water-equivalent thickness in mm,
    same shape; numpy or torch, float32 or float64 (torch: differentiable w.r.t. both).
    pixel_spacing_mm: a number or (dy, dx), the pixel pitch in the plane the images are given
    in; magnification: detector plane / that plane (1 when the pitch is the detector's);
    principal_point: (u, v) pixel of the foot of the source's perpendicular on the detector
    (default: the image centre). Returns S, same shape, kind and dtype.
    """

    def __init__(self, kvp: float = 80.0, air_gap_mm: float = 0.0, grid=None, coarse_mm: float = 4.0,
                 sdd_mm: float | None = None, beta: float | None = None, gamma: float | None = None,
                 kappa: float | None = None, eta: float | None = None):
        if not (np.isfinite(coarse_mm) and coarse_mm > 0):
            raise ValueError(f"coarse_mm must be > 0, got {coarse_mm}")
        if sdd_mm is not None and not (np.isfinite(sdd_mm) and sdd_mm > air_gap_mm):
            raise ValueError(f"sdd_mm must be > air_gap_mm ({air_gap_mm}), got {sdd_mm}")
        cal = _check_calibration()
        self.sdd_mm = None if sdd_mm is None else float(sdd_mm)
        self.beta = float(cal.get("beta", 0.0) if beta is None else beta)
        self.gamma = float(cal.get("gamma", 0.0) if gamma is None else gamma)
        self.kappa = float(cal.get("kappa", 1.0) if kappa is None else kappa)
        self.eta = float(cal.get("eta", 0.0) if eta is None else eta)
        self.kvp = float(kvp)
        self.air_gap_mm = float(air_gap_mm)
        self.grid = None if grid is None else AntiScatterGrid.from_dict(grid)
        self.coarse_mm = float(coarse_mm)
        self.thickness, self.combos = calibrated_parameters(self.kvp, self.air_gap_mm)
        G = self.thickness.size
        # per thickness group and calibrated setting: weight * A * grid factor (Ts(n) / Tp)
        self.scale = np.zeros((len(self.combos), G))
        es = scatter_energy_keV(self.kvp)
        tp = 1.0 if self.grid is None else float(self.grid.primary_transmission([es])[0])
        for c, (wc, par) in enumerate(self.combos):
            for g in range(G):
                ts = 1.0 if self.grid is None else grid_scatter_transmission(self.grid, par[g, 6], es)
                self.scale[c, g] = wc * par[g, 0] * ts / tp
        self._cache = {}

    def amplitude(self, thickness_mm):
        """Scatter-to-primary ratio of an infinite uniform slab of water-equivalent thickness
        thickness_mm (an array), as the model computes it (grid included)."""
        tg = np.concatenate([[0.0], self.thickness])
        amp = np.concatenate([[0.0], self.scale.sum(axis=0)])
        return np.interp(np.asarray(thickness_mm, dtype=np.float64), tg, amp)

    def _kernels_fft(self, h, w, pitch, torch, dtype, device):
        key = (h, w, pitch, dtype, str(device))
        hit = self._cache.get(key)
        if hit is None:
            G = self.thickness.size
            ks = np.zeros((G, 2 * h, 2 * w))
            for c, (_, par) in enumerate(self.combos):
                for g in range(G):
                    ks[g] += self.scale[c, g] * kernel_image(par[g, 1:6], h, w, pitch)
            hit = torch.fft.rfft2(torch.as_tensor(ks, dtype=dtype, device=device))
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def scatter_magnification(self) -> np.ndarray:
        """(G,) sdd / z_s, z_s = sdd - kappa * air_gap - beta * t: the distance from the source
        to each thickness group's effective scatter origin; 1 without sdd_mm (parallel beam)."""
        if self.sdd_mm is None:
            return np.ones(self.thickness.size)
        zs = self.sdd_mm - self.kappa * self.air_gap_mm - self.beta * self.thickness
        if np.any(zs <= 0.1 * self.sdd_mm):
            raise ValueError("scatter kernel: the effective scatter origin lies behind the source "
                             f"(sdd {self.sdd_mm} mm too small for the calibrated thicknesses)")
        return self.sdd_mm / zs

    def _demagnify(self, q, H, W, fy, fx, principal_point, F, torch):
        """q_g(v) <- M_g^2 q_g(pp + M_g (v - pp)): the scatter sources of a divergent beam sit
        closer to the axis than the primary pixels they come from (see the module docstring)."""
        B, G, h, w = q.shape
        pu, pv = ((W - 1) / 2.0, (H - 1) / 2.0) if principal_point is None else map(float, principal_point)
        cu, cv = (pu + 0.5) / fx - 0.5, (pv + 0.5) / fy - 0.5  # principal point on the coarse grid
        M = torch.as_tensor(self.scatter_magnification(), dtype=q.dtype, device=q.device)  # (G,)
        M = M.repeat(G // M.numel())  # the asymmetric term's second source set uses the same M
        ys = torch.arange(h, dtype=q.dtype, device=q.device)
        xs = torch.arange(w, dtype=q.dtype, device=q.device)
        yin = cv + M[:, None] * (ys[None, :] - cv)  # (G, h) source rows
        xin = cu + M[:, None] * (xs[None, :] - cu)
        gy = (2 * yin + 1) / h - 1  # align_corners=False normalisation
        gx = (2 * xin + 1) / w - 1
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # (G, h, w, 2)
        grid = grid[None].expand(B, G, h, w, 2).reshape(B * G, h, w, 2)
        out = F.grid_sample(q.reshape(B * G, 1, h, w), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out.reshape(B, G, h, w) * (M * M)[None, :, None, None]

    def __call__(self, primary, wet_mm, pixel_spacing_mm, magnification: float = 1.0, principal_point=None):
        import torch
        import torch.nn.functional as F

        was_np = not isinstance(primary, torch.Tensor)
        if was_np != (not isinstance(wet_mm, torch.Tensor)):
            raise TypeError("primary and wet_mm must both be numpy arrays or both torch tensors")
        P = torch.as_tensor(primary) if was_np else primary
        T = torch.as_tensor(wet_mm) if was_np else wet_mm
        if P.dtype not in (torch.float32, torch.float64):
            P = P.to(torch.float64)
        T = T.to(dtype=P.dtype, device=P.device)
        if tuple(P.shape) != tuple(T.shape) or P.ndim not in (2, 3):
            raise ValueError(f"primary {tuple(P.shape)} and wet_mm {tuple(T.shape)} must have the same "
                             "shape (H, W) or (B, H, W)")
        pmin, pmax = torch.aminmax(P.detach())
        tmin, tmax = torch.aminmax(T.detach())
        lims = torch.stack([pmin, pmax, tmin, tmax]).cpu().tolist()  # one host transfer; NaN propagates
        if not all(np.isfinite(lims)):
            raise ValueError("primary or wet_mm contain NaN or infinity")
        if lims[0] < 0 or lims[2] < -1e-6:
            raise ValueError("primary and wet_mm must be >= 0")
        squeeze = P.ndim == 2
        if squeeze:
            P, T = P[None], T[None]
        ps = pixel_spacing_mm
        dy, dx = (float(ps), float(ps)) if np.isscalar(ps) else (float(ps[0]), float(ps[1]))
        m = float(magnification)
        if not (dy > 0 and dx > 0 and np.isfinite(dy * dx)) or not (m > 0 and np.isfinite(m)):
            raise ValueError(f"pixel_spacing_mm and magnification must be > 0, got {pixel_spacing_mm}, {magnification}")
        dy, dx = dy * m, dx * m
        if lims[3] > self.thickness[-1] * 1.05:
            import warnings

            warnings.warn(f"scatter kernel: water-equivalent thickness up to {lims[3]:.0f} mm exceeds "
                          f"the calibrated {self.thickness[-1]:.0f} mm; the largest group is used",
                          ScatterCalibrationWarning, stacklevel=2)
        B, H, W = P.shape
        fy = max(1, int(round(self.coarse_mm / dy)))
        fx = max(1, int(round(self.coarse_mm / dx)))
        # hat weights on the thickness groups (0, t_1, ..., t_G): each pixel feeds the two groups
        # around its thickness, linearly (group 0 has no scatter and is dropped)
        tg = torch.as_tensor(np.concatenate([[0.0], self.thickness]), dtype=P.dtype, device=P.device)
        G = self.thickness.size
        Tc = torch.clamp(T, min=0.0, max=float(self.thickness[-1]))
        i1 = torch.clamp(torch.bucketize(Tc.detach(), tg, right=False), 1, G)  # tg[i1-1] < T <= tg[i1]
        lo = tg[i1 - 1]
        frac = (Tc - lo) / (tg[i1] - lo)
        # the groups' sources pooled onto the coarse grid in one pass: each fine pixel adds its two
        # hat-weighted shares to (group, coarse cell), i.e. avg_pool2d of the zero-padded per-group
        # images without building them at full resolution (the same sums, G times less memory traffic)
        Hp, Wp = -(-H // fy) * fy, -(-W // fx) * fx
        h, w = Hp // fy, Wp // fx
        cell = ((torch.arange(H, device=P.device) // fy)[:, None] * w
                + (torch.arange(W, device=P.device) // fx)[None, :]).reshape(1, -1)  # (1, H W)
        sets = 2 if self.gamma != 0 else 1  # second source set P t for the asymmetric term
        hi_part, lo_part = (P * frac).reshape(B, -1), (P * (1 - frac)).reshape(B, -1)
        src = [hi_part, lo_part]
        idx = [(i1.reshape(B, -1)) * (h * w) + cell, (i1.reshape(B, -1) - 1) * (h * w) + cell]
        if sets == 2:
            tflat = Tc.reshape(B, -1)
            src += [hi_part * tflat, lo_part * tflat]
            off = (G + 1) * h * w
            idx += [idx[0] + off, idx[1] + off]
        q = torch.zeros((B, sets * (G + 1) * h * w), dtype=P.dtype, device=P.device)
        q = q.scatter_add(1, torch.cat(idx, 1), torch.cat(src, 1)) / (fy * fx)
        q = q.reshape(B, sets, G + 1, h, w)[:, :, 1:].reshape(B, sets * G, h, w)  # group 0: no scatter
        if self.eta != 0:
            # pencils where the object's thickness changes fast sit near its lateral surface, where
            # scatter escapes sideways: their amplitude is divided by 1 + eta |grad t| (coarse grid)
            Tq = F.avg_pool2d(F.pad(Tc[:, None], (0, Wp - W, 0, Hp - H)), (fy, fx)) if (fy, fx) != (1, 1) \
                else Tc[:, None]
            Tp_ = F.pad(Tq, (1, 1, 1, 1), mode="replicate")
            gy = (Tp_[:, :, 2:, 1:-1] - Tp_[:, :, :-2, 1:-1]) / (2 * dy * fy)
            gx = (Tp_[:, :, 1:-1, 2:] - Tp_[:, :, 1:-1, :-2]) / (2 * dx * fx)
            q = q / (1 + self.eta * torch.sqrt(gx * gx + gy * gy + 1e-12))
        if self.sdd_mm is not None:
            q = self._demagnify(q, H, W, fy, fx, principal_point, F, torch)
        Kf = self._kernels_fft(h, w, (dy * fy, dx * fx), torch, P.dtype, P.device)
        Qf = torch.fft.rfft2(q, s=(2 * h, 2 * w))
        if self.gamma != 0:
            Qf = Qf.reshape(B, 2, G, *Qf.shape[-2:])
            S = torch.fft.irfft2((Qf * Kf[None, None]).sum(dim=2), s=(2 * h, 2 * w))[..., :h, :w]  # (B, 2, h, w)
        else:
            S = torch.fft.irfft2((Qf * Kf[None]).sum(dim=1), s=(2 * h, 2 * w))[:, None, :h, :w]
        if (fy, fx) != (1, 1):
            S = F.interpolate(S, scale_factor=(fy, fx), mode="bilinear", align_corners=False)
        S = S[..., :H, :W]
        if self.gamma != 0:
            # asymmetric kernels: a pencil at u' adds to u in proportion to 1 + gamma (t(u') - t(u))
            S = torch.clamp((1 - self.gamma * Tc) * S[:, 0] + self.gamma * S[:, 1], min=0.0)
        else:
            S = S[:, 0]
        if squeeze:
            S = S[0]
        if was_np:
            return S.detach().cpu().numpy()
        return S


def scatter_estimate(primary, wet_mm, pixel_spacing_mm, *, air_gap_mm: float = 0.0, kvp: float = 80.0,
                     grid=None, sdd_mm: float | None = None, magnification: float = 1.0,
                     principal_point=None, coarse_mm: float = 4.0):
    """Scatter image (same shape, kind and dtype as ``primary``) by kernel superposition;
    see :class:`KernelScatterModel` for the arguments (a one-off convenience: build the
    model once to reuse its cached kernels)."""
    model = KernelScatterModel(kvp=kvp, air_gap_mm=air_gap_mm, grid=grid, coarse_mm=coarse_mm, sdd_mm=sdd_mm)
    return model(primary, wet_mm, pixel_spacing_mm, magnification, principal_point)
