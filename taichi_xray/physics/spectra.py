"""X-ray spectra: photons per energy bin.

``Spectrum.tungsten`` uses TASMIP (Boone & Seibert, Med. Phys. 24, 1661, 1997),
whose coefficient table ships in ``taichi_xray/data/tasmip_tungsten.csv``
(source cited there).  TASMIP is a fit to measured spectra of one tube, with
that tube's own inherent filtration already in the spectra (raw TASMIP at
80 kVp has HVL1 = 2.59 mm Al and mean 41.8 keV, close to SpekPy's 80 kVp beam
with 2.5 mm Al *total* filtration: HVL1 2.73 mm Al, 42.9 keV).  ``filtration``
and ``inherent_al_mm`` are therefore *added* on top of that built-in
filtration: the default {"Al": 2.5} gives HVL1 4.09 mm Al at 80 kVp.  Pass
``filtration={}`` for the raw TASMIP beam.  The fit covers 30..140 kV;
this module accepts 40..150 kVp and warns (``TasmipRangeWarning``) above
140 kVp, where the polynomials are evaluated outside their fit range and the
bins above 140 keV are empty.

Energies in keV (bin centres), photons per bin, float64.
"""
from __future__ import annotations

import csv
import math
import warnings
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from .materials import check_energies, get_material

KVP_MIN, KVP_MAX = 40.0, 150.0
TASMIP_FIT_MAX_KV = 140.0


class TasmipRangeWarning(UserWarning):
    """TASMIP evaluated above its 140 kV fit range."""


@lru_cache(maxsize=1)
def _tasmip_table():
    text = resources.files("taichi_xray").joinpath("data/tasmip_tungsten.csv").read_text()
    rows = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    arr = np.array([[float(v) for v in ln.split(",")] for ln in rows])
    return arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2:6]


def tasmip_unfiltered(kvp: float) -> tuple[np.ndarray, np.ndarray]:
    """Raw TASMIP spectrum: (energies 1..150 keV, photons/mm^2/mAs at 1 m per 1 keV bin)."""
    energies, nterms, coef = _tasmip_table()
    e_out = np.arange(1, 151, dtype=np.float64)
    phi = np.zeros_like(e_out)
    for E, n, a in zip(energies, nterms, coef):
        if E > kvp:  # no photon above the tube voltage
            continue
        val = a[0] + sum(a[j] * kvp**j for j in range(1, n))
        phi[E - 1] = max(val, 0.0)
    return e_out, phi


class Spectrum:
    """Photon spectrum: ``energies`` (E,) keV bin centres (increasing), ``photons`` (E,) per bin."""

    def __init__(self, energies, photons):
        e = np.atleast_1d(np.asarray(energies, dtype=np.float64)).copy()
        n = np.atleast_1d(np.asarray(photons, dtype=np.float64)).copy()
        if e.ndim != 1 or n.shape != e.shape:
            raise ValueError(f"energies {e.shape} and photons {n.shape} must be 1-D and equal length")
        if e.size == 0:
            raise ValueError("empty spectrum")
        if not (np.all(np.isfinite(e)) and np.all(np.isfinite(n))):
            raise ValueError("spectrum contains NaN or infinity")
        if np.any(e <= 0):
            raise ValueError("spectrum energies must be > 0 keV")
        if np.any(np.diff(e) <= 0):
            raise ValueError("spectrum energies must be strictly increasing")
        if np.any(n < 0):
            raise ValueError("spectrum photon counts must be >= 0")
        if n.sum() <= 0:
            raise ValueError("spectrum has no photons")
        self.energies, self.photons = e, n

    def __repr__(self):
        return (f"Spectrum({self.energies.size} bins, {self.energies[0]:g}..{self.energies[-1]:g} keV, "
                f"mean {self.mean_energy():.2f} keV)")

    def __len__(self):
        return self.energies.size

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def monochromatic(cls, energy_keV: float, photons: float = 1.0) -> "Spectrum":
        check_energies([energy_keV])
        return cls([energy_keV], [photons])

    @classmethod
    def tungsten(cls, kvp: float, filtration=None, bin_width: float = 1.0, model: str = "tasmip",
                 inherent_al_mm: float = 0.0, anode_angle_deg: float = 12.0) -> "Spectrum":
        """Tungsten-anode spectrum, photons/mm^2/mAs at 1 m per bin.

        kvp : 40..150 kVp.  filtration : {material spec: thickness mm}, default
        {"Al": 2.5, "Cu": 0.0}.  bin_width : keV, >= 1 (TASMIP is tabulated per 1 keV;
        wider bins via :meth:`rebinned`).  model : "tasmip" or "spekpy" (the optional spekpy
        package, :func:`taichi_xray.physics.source.spekpy_spectrum`; there ``filtration`` is the
        *total* filtration, since SpekPy's spectrum leaves the target unfiltered, while TASMIP's
        measured spectra already include the tube's inherent filtration and ``filtration`` is added).
        inherent_al_mm : extra Al filtration for the tube's inherent filtration.
        anode_angle_deg : used by spekpy only (TASMIP's tube is fixed).
        """
        kvp = float(kvp)
        if not (KVP_MIN <= kvp <= KVP_MAX):
            raise ValueError(f"kVp must be in [{KVP_MIN:g}, {KVP_MAX:g}], got {kvp:g}")
        if bin_width < 1.0 or not math.isfinite(bin_width):
            raise ValueError(f"bin_width must be >= 1 keV, got {bin_width}")
        if filtration is None:
            filtration = {"Al": 2.5, "Cu": 0.0}
        if inherent_al_mm < 0:
            raise ValueError(f"inherent_al_mm must be >= 0, got {inherent_al_mm}")
        if model == "tasmip":
            if kvp > TASMIP_FIT_MAX_KV:
                warnings.warn(f"TASMIP is fitted for 30..140 kV; {kvp:g} kVp is extrapolated and "
                              "bins above 140 keV are empty", TasmipRangeWarning, stacklevel=2)
            e, phi = tasmip_unfiltered(kvp)
        elif model == "spekpy":
            try:
                import spekpy  # noqa: F401
            except ImportError as exc:
                raise ImportError("model='spekpy' needs the optional spekpy package (pip install "
                                  "taichi-xray[spekpy]); or use model='tasmip'") from exc
            from .source import spekpy_spectrum

            # SpekPy's spectrum leaves the target unfiltered: the filtration is the total one
            spec = spekpy_spectrum(kvp, anode_angle_deg, filtration=filtration, bin_width=1.0)
            if inherent_al_mm > 0:
                spec = spec.filtered("Al", inherent_al_mm)
            return spec.rebinned(bin_width) if bin_width != 1.0 else spec
        else:
            raise ValueError(f"unknown spectrum model {model!r}; use 'tasmip' or 'spekpy'")
        keep = phi > 0
        spec = cls(e[keep], phi[keep])
        if inherent_al_mm > 0:
            spec = spec.filtered("Al", inherent_al_mm)
        for mat, t in filtration.items():
            if t < 0:
                raise ValueError(f"filtration thickness for {mat!r} must be >= 0 mm, got {t}")
            if t > 0:
                spec = spec.filtered(mat, t)
        if bin_width != 1.0:
            spec = spec.rebinned(bin_width)
        return spec

    @classmethod
    def from_csv(cls, path) -> "Spectrum":
        """Read 'energy_keV, photons' rows.  Lines starting with '#' and one header line are skipped."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"spectrum file not found: {path}")
        es, ns = [], []
        with path.open(newline="") as f:
            for lineno, row in enumerate(csv.reader(f), start=1):
                if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                    continue
                if len(row) < 2:
                    raise ValueError(f"{path}:{lineno}: expected 'energy_keV, photons', got {row!r}")
                try:
                    e, n = float(row[0]), float(row[1])
                except ValueError:
                    if not es and lineno == 1:
                        continue  # a header line
                    raise ValueError(f"{path}:{lineno}: not numbers: {row!r}") from None
                if not (math.isfinite(e) and math.isfinite(n)):
                    raise ValueError(f"{path}:{lineno}: NaN or infinite value")
                if e <= 0:
                    raise ValueError(f"{path}:{lineno}: energy must be > 0 keV, got {e}")
                if n < 0:
                    raise ValueError(f"{path}:{lineno}: photon count must be >= 0, got {n}")
                if es and e <= es[-1]:
                    raise ValueError(f"{path}:{lineno}: energies must increase ({e} after {es[-1]})")
                es.append(e)
                ns.append(n)
        if not es:
            raise ValueError(f"{path}: no data rows")
        return cls(es, ns)

    # ---- operations ---------------------------------------------------------------------
    def filtered(self, material, thickness_mm: float) -> "Spectrum":
        """Spectrum after a slab of ``material`` (spec for get_material) of ``thickness_mm``."""
        if not (thickness_mm >= 0):
            raise ValueError(f"filter thickness must be >= 0 mm, got {thickness_mm}")
        mu = get_material(material).mu(self.energies)
        return Spectrum(self.energies, self.photons * np.exp(-mu * thickness_mm))

    def normalized(self) -> "Spectrum":
        """Same shape, photons summing to 1."""
        return Spectrum(self.energies, self.photons / self.photons.sum())

    def mean_energy(self) -> float:
        """Fluence-weighted mean energy, keV."""
        return float((self.energies * self.photons).sum() / self.photons.sum())

    def air_kerma(self, al_mm: float = 0.0) -> np.ndarray | float:
        """Air kerma (arbitrary units): sum N(E) E mu_en,air(E)/rho exp(-mu_Al(E) t)."""
        air = get_material("air")
        k = self.photons * self.energies * air.mu_en(self.energies) / air.density
        t = np.atleast_1d(np.asarray(al_mm, dtype=np.float64))
        mu_al = get_material("aluminium").mu(self.energies)
        out = (k[None, :] * np.exp(-np.outer(t, mu_al))).sum(axis=1)
        return float(out[0]) if np.ndim(al_mm) == 0 else out

    def hvl1(self, material="aluminium") -> float:
        """First half-value layer in mm of ``material`` (default Al), air-kerma weighted."""
        mat = get_material(material)
        air = get_material("air")
        k = self.photons * self.energies * air.mu_en(self.energies)
        mu = mat.mu(self.energies)
        k0 = k.sum()

        def f(t):
            return (k * np.exp(-mu * t)).sum() - 0.5 * k0

        lo, hi = 0.0, 1.0
        while f(hi) > 0:
            hi *= 2.0
            if hi > 1e6:
                raise ValueError("half-value layer not found (spectrum too hard for this material)")
        for _ in range(200):  # bisection: f is monotone decreasing
            mid = 0.5 * (lo + hi)
            if f(mid) > 0:
                lo = mid
            else:
                hi = mid
            if hi - lo < 1e-10 * max(hi, 1.0):
                break
        return 0.5 * (lo + hi)

    def rebinned(self, bin_width: float) -> "Spectrum":
        """Photon-conserving rebin onto uniform bins of ``bin_width`` keV.

        Each old bin goes wholly to the new bin containing its centre (exact when the new
        width is a multiple of the old one).  New energies are the new bin centres; empty
        bins are dropped.
        """
        w = float(bin_width)
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"bin_width must be > 0 keV, got {bin_width}")
        e = self.energies
        half = 0.5 * (e[1] - e[0]) if e.size > 1 else 0.0
        lo = e[0] - half
        idx = np.floor((e - lo) / w + 1e-9).astype(int)
        n = np.bincount(idx, weights=self.photons)
        centres = lo + w * (np.arange(n.size) + 0.5)
        keep = n > 0
        return Spectrum(centres[keep], n[keep])

    def to_csv(self, path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True)")
        np.savetxt(path, np.column_stack([self.energies, self.photons]), delimiter=",",
                   header="energy_keV,photons", comments="# ")
        return path
