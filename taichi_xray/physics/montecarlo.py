"""Monte Carlo photon transport: a reference for scatter (Taichi kernel, numpy tallies).

Frame and units: mm, keV. The beam runs along +z from the source (by default at the
origin) to flat detector planes ``z = const`` perpendicular to z; images are indexed
``[row, column]`` with columns along +x and rows along +y, the detector centred on
``center`` (x, y). Outside the objects is vacuum (no air).

Example (runs as written)::

    from taichi_xray.physics.montecarlo import Slab, Source, DetectorTally, simulate
    res = simulate([Slab("water", 1000, 1200)], Source.point(field=(300, 300), field_z=1200),
                   60.0, [DetectorTally(z=1500, shape=(16, 16), pixel=25.0)], n_photons=100_000, seed=1)
    spr = res.tallies[0].spr(roi=4)              # scatter/primary (energy) in the central 4x4 pixels
    res.check_energy_conservation()               # raises if E_in != absorbed + escaped

Physics: see :mod:`taichi_xray.kernels.montecarlo` (photoelectric absorption without
fluorescence, Compton with Klein-Nishina x S(q, Z), Rayleigh with F(q, Z)^2; xraylib
cross sections, form factors and incoherent scattering functions, mixed by mass
fraction in the independent-atom approximation, no molecular interference).

Tallies: every photon that leaves the scene going toward +z is projected on each
:class:`DetectorTally` plane (a straight line in vacuum). A pixel adds, per photon,
``w = response(E) * T_grid``: energy-integrating ``response = E`` (keV), photon
counting ``response = 1``, times an optional detector efficiency ``eta(E)``
(:class:`~taichi_xray.physics.detector.Detector`) and an optional anti-scatter grid
(:class:`~taichi_xray.physics.scatter.AntiScatterGrid`). Primary = photons that never
scattered; scatter = all others (any number of Compton/Rayleigh events). Sums of
``w^2`` give the Monte Carlo variance. Energy bookkeeping per photon:
``E_in = absorbed + escaped``, escaped split into transmitted primary (+z),
transmitted scatter (+z) and backscattered/sideways (dz <= 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import xraylib

from .materials import E_MAX_KEV, check_energies, get_material
from .scatter import AntiScatterGrid
from .spectra import Spectrum

HC_KEV_A = 12.398419843320026
BATCH = 1 << 17  # photons per kernel launch (the histories do not depend on it)
MAX_PRIMS = 64


# ----------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slab:
    """Box of ``material`` from z0 to z1 (mm); infinite in x and y unless x=(x0, x1), y=(y0, y1)."""

    material: object
    z0: float
    z1: float
    x: tuple = (-math.inf, math.inf)
    y: tuple = (-math.inf, math.inf)

    def row(self):
        lo = [self.x[0], self.y[0], self.z0]
        hi = [self.x[1], self.y[1], self.z1]
        for a, (l, h) in enumerate(zip(lo, hi)):
            if not (l < h):
                raise ValueError(f"Slab: extent along {'xyz'[a]} must satisfy lo < hi, got ({l}, {h})")
        r = [0.0, 0.0]
        for l, h in zip(lo, hi):
            r += [max(l, -1e30), min(h, 1e30)]
        return r + [0.0, 0.0]

    def z_max(self):
        return float(self.z1)

    def z_min(self):
        return float(self.z0)


@dataclass(frozen=True)
class Cylinder:
    """Cylinder of ``material``, radius (mm), axis along ``axis`` ("x", "y" or "z") through
    ``center`` (x, y, z), of ``length`` mm along the axis (default infinite)."""

    material: object
    radius: float
    center: tuple = (0.0, 0.0, 0.0)
    axis: str = "y"
    length: float = math.inf

    def row(self):
        if self.axis not in ("x", "y", "z"):
            raise ValueError(f"Cylinder.axis must be 'x', 'y' or 'z', got {self.axis!r}")
        if not (self.radius > 0 and self.length > 0):
            raise ValueError(f"Cylinder: radius and length must be > 0, got {self.radius}, {self.length}")
        a = "xyz".index(self.axis)
        others = [self.center[i] for i in range(3) if i != a]
        half = min(self.length / 2, 1e30)
        return [1.0, float(a), others[0], others[1], float(self.radius),
                max(self.center[a] - half, -1e30), min(self.center[a] + half, 1e30), 0.0, 0.0, 0.0]

    def z_max(self):
        return self.center[2] + (self.length / 2 if self.axis == "z" else self.radius)

    def z_min(self):
        return self.center[2] - (self.length / 2 if self.axis == "z" else self.radius)


@dataclass(frozen=True)
class Sphere:
    material: object
    radius: float
    center: tuple = (0.0, 0.0, 0.0)

    def row(self):
        if not self.radius > 0:
            raise ValueError(f"Sphere.radius must be > 0, got {self.radius}")
        return [2.0, 0.0, *map(float, self.center), float(self.radius), 0.0, 0.0, 0.0, 0.0]

    def z_max(self):
        return self.center[2] + self.radius

    def z_min(self):
        return self.center[2] - self.radius


# ----------------------------------------------------------------------------------------
# source and tallies
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Photon source. kind "point" (isotropic into the pyramid through the rectangle
    ``field`` = (width, height) mm centred on ``field_center`` at z = ``field_z``), "pencil"
    (along +z from ``position``) or "parallel" (along +z, uniform over ``field`` at z of
    ``position``)."""

    kind: str = "point"
    position: tuple = (0.0, 0.0, 0.0)
    field: tuple = (100.0, 100.0)
    field_z: float = 1000.0
    field_center: tuple = (0.0, 0.0)

    @classmethod
    def point(cls, field, field_z, position=(0.0, 0.0, 0.0), field_center=(0.0, 0.0)):
        return cls("point", tuple(position), tuple(field), float(field_z), tuple(field_center))

    @classmethod
    def pencil(cls, position=(0.0, 0.0, 0.0)):
        return cls("pencil", tuple(position))

    @classmethod
    def parallel(cls, field, z=0.0, field_center=(0.0, 0.0)):
        return cls("parallel", (field_center[0], field_center[1], float(z)), tuple(field), float(z),
                   tuple(field_center))

    def array(self) -> np.ndarray:
        kinds = {"point": 0, "pencil": 1, "parallel": 2}
        if self.kind not in kinds:
            raise ValueError(f"Source.kind must be one of {sorted(kinds)}, got {self.kind!r}")
        sx, sy, sz = map(float, self.position)
        fw, fh = map(float, self.field)
        if self.kind != "pencil" and not (fw > 0 and fh > 0):
            raise ValueError(f"Source.field must be positive (width, height) mm, got {self.field}")
        cx, cy = map(float, self.field_center)
        fx0, fx1, fy0, fy1 = cx - fw / 2, cx + fw / 2, cy - fh / 2, cy + fh / 2
        cos_max = 1.0
        if self.kind == "point":
            dz = float(self.field_z) - sz
            if not dz > 0:
                raise ValueError(f"Source.field_z ({self.field_z}) must lie beyond the source z ({sz})")
            cos_max = min(dz / math.sqrt((x - sx) ** 2 + (y - sy) ** 2 + dz * dz)
                          for x in (fx0, fx1) for y in (fy0, fy1))
            if not (fx0 < sx < fx1 and fy0 < sy < fy1):
                # directions are drawn in the cone around +z through the rectangle's far corners
                # and rejected outside it: an off-axis field would waste most draws
                raise ValueError("Source.point: the field rectangle must contain the foot of the source "
                                 "(x, y) (off-axis fields are not supported)")
        return np.array([{"point": 0, "pencil": 1, "parallel": 2}[self.kind], sx, sy, sz,
                         fx0, fx1, fy0, fy1, float(self.field_z), cos_max, 0.0, 0.0])


@dataclass(frozen=True)
class DetectorTally:
    """A flat detector plane z = ``z`` mm with ``shape`` (rows, cols) pixels of ``pixel`` mm
    (a number or (dy, dx)) centred on ``center`` (x, y); optional ``grid`` and ``detector``
    (a :class:`~taichi_xray.physics.detector.Detector` for its efficiency eta(E))."""

    z: float
    shape: tuple = (32, 32)
    pixel: object = 10.0
    center: tuple = (0.0, 0.0)
    grid: AntiScatterGrid | None = None
    detector: object = None

    def pixel_yx(self):
        p = self.pixel
        dy, dx = (float(p), float(p)) if np.isscalar(p) else (float(p[0]), float(p[1]))
        if not (dy > 0 and dx > 0):
            raise ValueError(f"DetectorTally.pixel must be > 0 mm, got {self.pixel}")
        return dy, dx


@dataclass
class TallyImages:
    """Images (rows, cols) float64 summed over photons (divide by ``n_photons`` for per
    incident photon): ``energy_primary``, ``energy_scatter`` (keV x response x grid),
    ``count_primary``, ``count_scatter`` (photons x eta x grid) and their ``*_sq`` sums of
    squared weights (variances of the sums); ``scatter_single`` / ``scatter_multiple``
    split the energy scatter by number of scattering events (1 or more)."""

    tally: DetectorTally
    n_photons: int
    energy_primary: np.ndarray
    energy_scatter: np.ndarray
    count_primary: np.ndarray
    count_scatter: np.ndarray
    energy_primary_sq: np.ndarray
    energy_scatter_sq: np.ndarray
    count_primary_sq: np.ndarray
    count_scatter_sq: np.ndarray
    scatter_single: np.ndarray
    scatter_multiple: np.ndarray

    def _roi(self, roi):
        H, W = self.energy_primary.shape
        if roi is None:
            return (slice(None), slice(None))
        if isinstance(roi, (int, np.integer)):
            r = int(roi)
            if not (0 < r <= min(H, W)):
                raise ValueError(f"roi must be in 1..{min(H, W)} pixels, got {roi}")
            r0, c0 = (H - r) // 2, (W - r) // 2
            return (slice(r0, r0 + r), slice(c0, c0 + r))
        return roi

    def spr(self, roi=None, kind: str = "energy") -> tuple[float, float]:
        """(SPR, its standard error) = scatter / primary summed over ``roi`` (an int: the
        central roi x roi pixels; a tuple of slices; None: the whole detector)."""
        if kind not in ("energy", "count"):
            raise ValueError(f"kind must be 'energy' or 'count', got {kind!r}")
        sl = self._roi(roi)
        S = getattr(self, f"{kind}_scatter")[sl].sum()
        P = getattr(self, f"{kind}_primary")[sl].sum()
        vS = getattr(self, f"{kind}_scatter_sq")[sl].sum()
        vP = getattr(self, f"{kind}_primary_sq")[sl].sum()
        if P <= 0:
            raise ValueError("no primary photons in the ROI: SPR undefined")
        spr = S / P
        return float(spr), float(spr * math.sqrt(vS / max(S, 1e-300) ** 2 + vP / P ** 2))


@dataclass
class MCResult:
    """Totals (energies in keV, summed over photons) and tally images."""

    n_photons: int
    seed: int
    totals: dict
    tallies: list = field(default_factory=list)
    histories: dict | None = None

    def check_energy_conservation(self, rtol: float = 1e-6) -> float:
        """Relative defect |E_in - (absorbed + primary + scatter + back)| / E_in; raises if > rtol."""
        t = self.totals
        out = t["e_absorbed"] + t["e_primary_out"] + t["e_scatter_out"] + t["e_back_out"]
        rel = abs(t["e_in"] - out) / t["e_in"]
        if rel > rtol:
            raise AssertionError(f"energy not conserved: E_in = {t['e_in']:.9g} keV, absorbed + escaped = "
                                 f"{out:.9g} keV (relative defect {rel:.3g} > {rtol:g})")
        return rel


# ----------------------------------------------------------------------------------------
# cross-section tables
# ----------------------------------------------------------------------------------------
def _sf(z: int, q: np.ndarray) -> np.ndarray:
    """Incoherent scattering function S(q, Z) (xraylib SF_Compt, q in 1/Angstrom); below
    q = 1e-3 (outside xraylib's table) S = S(1e-3) (q / 1e-3)^2 (S ~ q^2 at small q)."""
    q0 = 1e-3
    out = np.empty_like(q)
    lo = q < q0
    s0 = xraylib.SF_Compt(z, q0)
    out[lo] = s0 * (q[lo] / q0) ** 2
    out[~lo] = [xraylib.SF_Compt(z, float(x)) for x in q[~lo]]
    return out


def _ff(z: int, q: np.ndarray) -> np.ndarray:
    return np.array([xraylib.FF_Rayl(z, float(x)) for x in q])


@lru_cache(maxsize=64)
def _element_tables(z: int, e_key: tuple, q_key: tuple):
    e = np.array(e_key)
    q = np.array(q_key)
    cs = np.array([[xraylib.CS_Photo(z, x), xraylib.CS_Compt(z, x), xraylib.CS_Rayl(z, x)] for x in e])
    return cs, _sf(z, q), _ff(z, q) ** 2


@dataclass(frozen=True)
class Tables:
    """Interaction data for the kernel, float64 numpy.

    energies (NE,) keV on a uniform grid; mu (M, NE, 3) photo, Compton, Rayleigh in 1/mm;
    q (NQ,) 1/Angstrom with q_k = qtop (k / (NQ-1))^2; sf (M, NQ) = S_mix / Z_mix;
    fcum (M, NQ) = int_0^{q^2} F_mix^2 d(q^2) (per gram, arbitrary scale)."""

    materials: tuple
    energies: np.ndarray
    mu: np.ndarray
    q: np.ndarray
    sf: np.ndarray
    fcum: np.ndarray

    @property
    def egrid(self):
        e = self.energies
        return np.array([e[0], e[1] - e[0], float(e.size)])

    @property
    def qgrid(self):
        return np.array([self.q[-1], float(self.q.size)])


def build_tables(materials: Sequence, e_max: float, de: float = 0.5, nq: int = 1024,
                 interactions=("photo", "compton", "rayleigh")) -> Tables:
    """Tables for ``materials`` (specs for get_material) on 1 keV .. e_max (+ one step).

    interactions : the processes switched on; the others get zero cross section (the
    photon then never undergoes them and mu_tot excludes them).
    """
    known = ("photo", "compton", "rayleigh")
    bad = [i for i in interactions if i not in known]
    if bad:
        raise ValueError(f"unknown interaction(s) {bad}; choose from {known}")
    mats = [get_material(m) for m in materials]
    e_max = float(e_max)
    if not (1.0 < e_max <= E_MAX_KEV):
        raise ValueError(f"e_max must be in (1, {E_MAX_KEV}] keV, got {e_max}")
    n = int(math.ceil((e_max - 1.0) / de)) + 2
    e = 1.0 + de * np.arange(n)
    e = e[e <= E_MAX_KEV]
    qtop = e[-1] / HC_KEV_A * 1.0001
    q = qtop * (np.arange(nq) / (nq - 1.0)) ** 2
    M = len(mats)
    mu = np.zeros((M, e.size, 3))
    sf = np.zeros((M, nq))
    fcum = np.zeros((M, nq))
    for m, mat in enumerate(mats):
        s_mix = np.zeros(nq)
        f2_mix = np.zeros(nq)
        z_mix = 0.0
        for sym, w in mat.composition.items():
            z = int(xraylib.SymbolToAtomicNumber(sym))
            cs, s, f2 = _element_tables(z, tuple(e.tolist()), tuple(q.tolist()))
            mu[m] += w * cs * mat.density / 10.0
            a = xraylib.AtomicWeight(z)
            s_mix += w / a * s
            f2_mix += w / a * f2
            z_mix += w / a * z
        sf[m] = np.clip(s_mix / z_mix, 0.0, 1.0)
        u = q * q
        fcum[m, 1:] = np.cumsum(0.5 * (f2_mix[1:] + f2_mix[:-1]) * np.diff(u))
    for j, name in enumerate(known):
        if name not in interactions:
            mu[:, :, j] = 0.0
    return Tables(tuple(m.name for m in mats), e, mu, q, sf, fcum)


# ----------------------------------------------------------------------------------------
# simulation
# ----------------------------------------------------------------------------------------
def _spectrum(spectrum) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(spectrum, Spectrum):
        e, w = spectrum.energies, spectrum.photons
    elif np.isscalar(spectrum):
        e, w = np.array([float(spectrum)]), np.array([1.0])
    else:
        raise TypeError(f"spectrum must be a Spectrum or an energy in keV, got {type(spectrum).__name__}")
    e = check_energies(e)
    keep = w > 0
    e, w = e[keep], w[keep]
    cdf = np.cumsum(w) / w.sum()
    cdf[-1] = 1.0
    return e, cdf


def _response(det, e_grid):
    if det is None:
        return None
    return det.efficiency(e_grid)


def simulate(objects: Sequence, source: Source, spectrum, tallies: Sequence[DetectorTally] = (),
             n_photons: int = 100_000, seed: int = 0, dtype=np.float64,
             interactions=("photo", "compton", "rayleigh"), e_cut: float = 1.0,
             max_steps: int = 5000, keep_histories: bool = False, batch: int = BATCH,
             on_batch=None) -> MCResult:
    """Transport ``n_photons`` photons through ``objects`` (Slab/Cylinder/Sphere, later ones
    override earlier ones where they overlap) and tally them on ``tallies``.

    spectrum : a Spectrum (photons per bin at its bin energies) or one energy (keV).
    dtype : np.float32 or np.float64, the precision of the transport kernel.
    interactions : processes switched on (see build_tables).
    e_cut : photons below e_cut keV are absorbed on the spot (>= 1 keV, the table's start).
    keep_histories : also return the per-photon arrays (memory: ~90 bytes per photon).
    on_batch : optional callable, called with each batch's per-photon arrays (a dict of numpy
        views: e0, e_abs, e_out (n,), pos_out, dir_out (n, 3), counts (n, 4) int32 = status,
        first interaction, n Compton, n Rayleigh) for custom tallies; copy what you keep.
    The same (objects, source, spectrum, n_photons, seed, dtype) gives the same result.
    """
    import taichi as ti

    from ..kernels import montecarlo as K
    from ..runtime import ensure_init

    if not isinstance(n_photons, (int, np.integer)) or n_photons <= 0:
        raise ValueError(f"n_photons must be a positive integer, got {n_photons!r}")
    if not isinstance(seed, (int, np.integer)) or not (0 <= seed < 2 ** 32):
        raise ValueError(f"seed must be an integer in [0, 2^32), got {seed!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    real = ti.f64 if dtype == np.float64 else ti.f32
    objects = list(objects)
    if not objects or len(objects) > MAX_PRIMS:
        raise ValueError(f"need 1..{MAX_PRIMS} objects, got {len(objects)}")
    for o in objects:
        if not isinstance(o, (Slab, Cylinder, Sphere)):
            raise TypeError(f"objects must be Slab, Cylinder or Sphere, got {type(o).__name__}")
    if not isinstance(source, Source):
        raise TypeError(f"source must be a Source, got {type(source).__name__}")
    if not (e_cut >= 1.0):
        raise ValueError(f"e_cut must be >= 1 keV, got {e_cut}")
    z_obj_max = max(o.z_max() for o in objects)
    z_obj_min = min(o.z_min() for o in objects)
    if source.position[2] >= z_obj_min:
        raise ValueError(f"the source (z = {source.position[2]}) must lie before all objects (z >= {z_obj_min})")
    for t in tallies:
        if not isinstance(t, DetectorTally):
            raise TypeError(f"tallies must be DetectorTally, got {type(t).__name__}")
        if not t.z > z_obj_max:
            raise ValueError(f"detector plane z = {t.z} mm must lie beyond all objects (z_max = {z_obj_max} mm)")
        t.pixel_yx()
    e_spec, cdf = _spectrum(spectrum)
    mats, pmat = [], []
    for o in objects:
        m = get_material(o.material)
        names = [x.name for x in mats]
        if m.name in names and mats[names.index(m.name)] == m:
            pmat.append(names.index(m.name))
        else:
            mats.append(m)
            pmat.append(len(mats) - 1)
    tabs = build_tables(mats, float(e_spec.max()) + 1.0, interactions=tuple(interactions))
    ensure_init()
    src = source.array().astype(dtype)
    prims = np.ascontiguousarray(np.array([o.row() for o in objects]), dtype=dtype)
    pmat = np.array(pmat, dtype=np.int32)
    args = dict(spec_cdf=cdf.astype(dtype), spec_e=e_spec.astype(dtype), egrid=tabs.egrid.astype(dtype),
                mu=tabs.mu.astype(dtype), qgrid=tabs.qgrid.astype(dtype), sf=tabs.sf.astype(dtype),
                fcum=tabs.fcum.astype(dtype), params=np.array([e_cut, 1e-3, max_steps], dtype=dtype))
    batch = int(min(batch, n_photons))
    buf = dict(e0=np.zeros(batch, dtype), e_abs=np.zeros(batch, dtype), e_out=np.zeros(batch, dtype),
               pos_out=np.zeros((batch, 3), dtype), dir_out=np.zeros((batch, 3), dtype),
               counts=np.zeros((batch, 4), np.int32))
    acc = _Accumulator(tallies, e_spec)
    hist = {k: [] for k in buf} if keep_histories else None
    done = 0
    while done < n_photons:
        nb = min(batch, n_photons - done)
        K.transport(nb, int(seed), done & 0xFFFFFFFF, done >> 32, src, args["spec_cdf"], args["spec_e"],
                    args["egrid"], args["mu"], args["qgrid"], args["sf"], args["fcum"], prims, pmat,
                    args["params"], buf["e0"], buf["e_abs"], buf["e_out"], buf["pos_out"], buf["dir_out"],
                    buf["counts"], real)
        ti.sync()
        view = {k: v[:nb] for k, v in buf.items()}
        acc.add(view)
        if on_batch is not None:
            on_batch(view)
        if hist is not None:
            for k, v in view.items():
                hist[k].append(v.copy())
        done += nb
    res = MCResult(int(n_photons), int(seed), acc.totals(), acc.images(n_photons))
    if hist is not None:
        res.histories = {k: np.concatenate(v) for k, v in hist.items()}
    return res


class _Accumulator:
    """Running totals and images (float64, fixed summation order)."""

    def __init__(self, tallies, e_spec):
        self.tallies = list(tallies)
        self.t = dict(e_in=0.0, e_absorbed=0.0, e_primary_out=0.0, e_scatter_out=0.0, e_back_out=0.0,
                      n_absorbed=0, n_escaped=0, n_killed=0, n_primary_out=0, n_scatter_out=0, n_back_out=0,
                      n_first_photo=0, n_first_compton=0, n_first_rayleigh=0, n_compton=0, n_rayleigh=0)
        self.img = []
        for t in self.tallies:
            H, W = int(t.shape[0]), int(t.shape[1])
            if H <= 0 or W <= 0:
                raise ValueError(f"DetectorTally.shape must be positive, got {t.shape}")
            self.img.append({k: np.zeros(H * W) for k in (
                "energy_primary", "energy_scatter", "count_primary", "count_scatter", "energy_primary_sq",
                "energy_scatter_sq", "count_primary_sq", "count_scatter_sq", "scatter_single",
                "scatter_multiple")})
        e_grid = np.arange(1.0, E_MAX_KEV + 0.25, 0.5)
        self.eta = [None if t.detector is None else (e_grid, t.detector.efficiency(e_grid)) for t in self.tallies]

    def add(self, h):
        e0 = h["e0"].astype(np.float64)
        ea = h["e_abs"].astype(np.float64)
        eo = h["e_out"].astype(np.float64)
        c = h["counts"]
        status, first, nc, nr = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
        d = h["dir_out"].astype(np.float64)
        esc = status == 1
        fwd = esc & (d[:, 2] > 0)
        scat = (nc + nr) > 0
        prim_out = fwd & ~scat
        scat_out = fwd & scat
        back = esc & ~fwd
        t = self.t
        t["e_in"] += float(e0.sum())
        t["e_absorbed"] += float(ea.sum())
        t["e_primary_out"] += float(eo[prim_out].sum())
        t["e_scatter_out"] += float(eo[scat_out].sum())
        t["e_back_out"] += float(eo[back].sum())
        t["n_absorbed"] += int((status == 0).sum())
        t["n_escaped"] += int(esc.sum())
        t["n_killed"] += int((status == 2).sum())
        t["n_primary_out"] += int(prim_out.sum())
        t["n_scatter_out"] += int(scat_out.sum())
        t["n_back_out"] += int(back.sum())
        t["n_first_photo"] += int((first == 1).sum())
        t["n_first_compton"] += int((first == 2).sum())
        t["n_first_rayleigh"] += int((first == 3).sum())
        t["n_compton"] += int(nc.sum())
        t["n_rayleigh"] += int(nr.sum())
        if not self.tallies:
            return
        p = h["pos_out"][fwd].astype(np.float64)
        dd = d[fwd]
        E = eo[fwd]
        sc = scat[fwd]
        order = (nc + nr)[fwd]
        tx = dd[:, 0] / dd[:, 2]
        ty = dd[:, 1] / dd[:, 2]
        for k, tal in enumerate(self.tallies):
            H, W = int(tal.shape[0]), int(tal.shape[1])
            dy, dx = tal.pixel_yx()
            s = (tal.z - p[:, 2])
            x = p[:, 0] + s * tx
            y = p[:, 1] + s * ty
            col = np.floor((x - (tal.center[0] - W * dx / 2)) / dx).astype(np.int64)
            row = np.floor((y - (tal.center[1] - H * dy / 2)) / dy).astype(np.int64)
            ok = (col >= 0) & (col < W) & (row >= 0) & (row < H)
            if not ok.any():
                continue
            idx = row[ok] * W + col[ok]
            e = E[ok]
            wc = np.ones_like(e)
            if self.eta[k] is not None:
                wc = np.interp(e, *self.eta[k])
            if tal.grid is not None:
                wc = wc * tal.grid.transmission(e, tx[ok], ty[ok], x[ok], y[ok])
            we = wc * e
            s_ok = sc[ok]
            o_ok = order[ok]
            img = self.img[k]
            n = H * W
            for name, mask, w in (("energy_primary", ~s_ok, we), ("energy_scatter", s_ok, we),
                                  ("count_primary", ~s_ok, wc), ("count_scatter", s_ok, wc)):
                img[name] += np.bincount(idx[mask], weights=w[mask], minlength=n)
                img[name + "_sq"] += np.bincount(idx[mask], weights=w[mask] ** 2, minlength=n)
            img["scatter_single"] += np.bincount(idx[o_ok == 1], weights=we[o_ok == 1], minlength=n)
            img["scatter_multiple"] += np.bincount(idx[o_ok > 1], weights=we[o_ok > 1], minlength=n)

    def totals(self):
        return dict(self.t)

    def images(self, n_photons):
        out = []
        for tal, img in zip(self.tallies, self.img):
            H, W = int(tal.shape[0]), int(tal.shape[1])
            out.append(TallyImages(tal, int(n_photons), **{k: v.reshape(H, W) for k, v in img.items()}))
        return out
