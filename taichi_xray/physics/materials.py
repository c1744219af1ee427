"""Materials and their X-ray attenuation (xraylib cross sections).

A :class:`Material` is a list of elements with mass fractions and a density
(g/cm^3).  ``Material.mu(E)`` gives the linear attenuation coefficient in
1/mm, total with coherent scattering (xraylib ``CS_Total``, the same data the
gVirtualXRay package uses); ``Material.mu_en(E)`` gives the linear energy
absorption coefficient (xraylib ``CS_Energy``), used for air kerma.

Built-in tissues: compositions (mass fractions) and densities from ICRU
Report 44 (1989), "Tissue Substitutes in Radiation Dosimetry and
Measurement", as reproduced in NIST's X-Ray Mass Attenuation Coefficients,
Table 2 (Hubbell & Seltzer, NIST SRD 126, NISTIR 5632):
soft_tissue, adipose, skeletal_muscle, lung tissue, blood, cortical_bone,
water and dry air.  ``lung`` is inflated lung: the ICRU-44 lung-tissue
composition at the ICRU-44 inflated-lung density 0.26 g/cm^3
(``lung_tissue`` keeps NIST's 1.05 g/cm^3).  ``trabecular_bone``
(alias ``spongiosa``) is the adult spongiosa of ICRU Report 46 (1992) /
Woodard & White, Br. J. Radiol. 59, 1209 (1986), density 1.18 g/cm^3
(transcribed from the report's table; NOT checked against NIST, which does
not list it).  Metals use the NIST Table 1 densities.  ``iodine_contrast`` is
a 10 mg I/mL aqueous solution (see :func:`iodine_solution`).

Energies are in keV and must lie in [E_MIN_KEV, E_MAX_KEV] = [1, 800] keV:
xraylib refuses to extrapolate CS_Total above ~850 keV, and this module never
extrapolates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import xraylib

E_MIN_KEV = 1.0
E_MAX_KEV = 800.0

# name -> (composition {symbol: mass fraction}, density g/cm^3, source)
_ICRU44 = "ICRU Report 44 (1989) via NIST SRD 126 Table 2"
_BUILTIN: dict[str, tuple[dict[str, float], float, str]] = {
    "air": ({"C": 0.000124, "N": 0.755268, "O": 0.231781, "Ar": 0.012827}, 1.20479e-3,
            "NIST SRD 126 Table 2, Air, Dry (near sea level)"),
    "water": ({"H": 0.111894, "O": 0.888106}, 1.0, "NIST SRD 126 Table 2, Water, Liquid"),
    "soft_tissue": ({"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.708, "Na": 0.002, "P": 0.003,
                     "S": 0.003, "Cl": 0.002, "K": 0.003}, 1.06, _ICRU44 + ", Tissue, Soft"),
    "adipose": ({"H": 0.114, "C": 0.598, "N": 0.007, "O": 0.278, "Na": 0.001, "S": 0.001,
                 "Cl": 0.001}, 0.95, _ICRU44 + ", Adipose Tissue"),
    "skeletal_muscle": ({"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.710, "Na": 0.001, "P": 0.002,
                         "S": 0.003, "Cl": 0.001, "K": 0.004}, 1.05, _ICRU44 + ", Muscle, Skeletal"),
    "lung_tissue": ({"H": 0.103, "C": 0.105, "N": 0.031, "O": 0.749, "Na": 0.002, "P": 0.002,
                     "S": 0.003, "Cl": 0.003, "K": 0.002}, 1.05, _ICRU44 + ", Lung Tissue"),
    "lung": ({"H": 0.103, "C": 0.105, "N": 0.031, "O": 0.749, "Na": 0.002, "P": 0.002,
              "S": 0.003, "Cl": 0.003, "K": 0.002}, 0.26,
             _ICRU44 + ", Lung Tissue composition at inflated-lung density 0.26"),
    "blood": ({"H": 0.102, "C": 0.110, "N": 0.033, "O": 0.745, "Na": 0.001, "P": 0.001,
               "S": 0.002, "Cl": 0.003, "K": 0.002, "Fe": 0.001}, 1.06, _ICRU44 + ", Blood, Whole"),
    "cortical_bone": ({"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002,
                       "P": 0.103, "S": 0.003, "Ca": 0.225}, 1.92, _ICRU44 + ", Bone, Cortical"),
    "trabecular_bone": ({"H": 0.085, "C": 0.404, "N": 0.028, "O": 0.367, "Na": 0.001, "Mg": 0.001,
                         "P": 0.034, "S": 0.002, "Cl": 0.002, "K": 0.001, "Ca": 0.074,
                         "Fe": 0.001}, 1.18, "ICRU Report 46 (1992), spongiosa (adult)"),
    "aluminium": ({"Al": 1.0}, 2.699, "NIST SRD 126 Table 1"),
    "copper": ({"Cu": 1.0}, 8.96, "NIST SRD 126 Table 1"),
    "titanium": ({"Ti": 1.0}, 4.54, "NIST SRD 126 Table 1"),
    "tungsten": ({"W": 1.0}, 19.3, "NIST SRD 126 Table 1"),
    "lead": ({"Pb": 1.0}, 11.35, "NIST SRD 126 Table 1"),
    "csi": ({"Cs": 0.511549, "I": 0.488451}, 4.51, "NIST SRD 126 Table 2, Cesium Iodide"),
}
_ALIASES = {
    "spongiosa": "trabecular_bone", "bone": "cortical_bone", "muscle": "skeletal_muscle",
    "tissue": "soft_tissue", "fat": "adipose", "adipose_tissue": "adipose",
    "aluminum": "aluminium", "cesium_iodide": "csi",
}


def _z(symbol: str) -> int:
    try:
        return int(xraylib.SymbolToAtomicNumber(symbol))
    except (ValueError, RuntimeError) as exc:
        raise KeyError(f"unknown element symbol {symbol!r}") from exc


def check_energies(energies_keV) -> np.ndarray:
    """Return energies as a 1-D float64 array, raising ValueError outside [1, 800] keV or on NaN."""
    e = np.atleast_1d(np.asarray(energies_keV, dtype=np.float64))
    if e.ndim != 1:
        raise ValueError(f"energies must be a 1-D array (keV), got shape {e.shape}")
    if not np.all(np.isfinite(e)):
        raise ValueError("energies contain NaN or infinity")
    bad = (e < E_MIN_KEV) | (e > E_MAX_KEV)
    if np.any(bad):
        raise ValueError(
            f"energies {e[bad][:5].tolist()} keV are outside the attenuation data range "
            f"[{E_MIN_KEV}, {E_MAX_KEV}] keV (no extrapolation)")
    return e


@dataclass(frozen=True)
class Material:
    """A homogeneous material.

    name : str
    composition : {element symbol: mass fraction}; fractions are normalised to sum 1.
    density : g/cm^3, > 0.
    """

    name: str
    composition: Mapping[str, float]
    density: float
    source: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __post_init__(self):
        if not self.composition:
            raise ValueError(f"material {self.name!r}: empty composition")
        comp = {}
        for sym, w in self.composition.items():
            _z(sym)  # validates the symbol
            w = float(w)
            if not np.isfinite(w) or w < 0:
                raise ValueError(f"material {self.name!r}: mass fraction of {sym} is {w}")
            comp[sym] = comp.get(sym, 0.0) + w
        total = sum(comp.values())
        if abs(total - 1.0) > 0.02:
            raise ValueError(f"material {self.name!r}: mass fractions sum to {total:.4f}, not 1")
        object.__setattr__(self, "composition", {k: v / total for k, v in comp.items()})
        d = float(self.density)
        if not np.isfinite(d) or d <= 0:
            raise ValueError(f"material {self.name!r}: density must be > 0 g/cm^3, got {self.density}")
        object.__setattr__(self, "density", d)

    def _mass_coeff(self, func, energies_keV) -> np.ndarray:
        e = check_energies(energies_keV)
        key = (func.__name__, e.tobytes())
        hit = self._cache.get(key)
        if hit is None:
            hit = np.zeros_like(e)
            for sym, w in self.composition.items():
                z = _z(sym)
                hit += w * np.array([func(z, float(x)) for x in e])
            self._cache[key] = hit
        return hit.copy()

    def mass_attenuation(self, energies_keV) -> np.ndarray:
        """mu/rho in cm^2/g, shape (E,), float64 (xraylib CS_Total)."""
        return self._mass_coeff(xraylib.CS_Total, energies_keV)

    def mu(self, energies_keV) -> np.ndarray:
        """Linear attenuation coefficient in 1/mm, shape (E,), float64."""
        return self.mass_attenuation(energies_keV) * self.density / 10.0

    def mu_en(self, energies_keV) -> np.ndarray:
        """Linear energy-absorption coefficient in 1/mm (xraylib CS_Energy), shape (E,)."""
        return self._mass_coeff(xraylib.CS_Energy, energies_keV) * self.density / 10.0


def iodine_solution(mg_per_ml: float = 10.0, solvent: str = "water") -> Material:
    """Iodine contrast modelled as iodine dissolved in ``solvent`` (water or blood).

    Approximation: adding c mg of iodine to 1 mL of solvent does not change its
    volume, so density = rho_solvent + c/1000 g/cm^3 and the iodine mass fraction
    is (c/1000) / density.  (Real iodinated agents also carry C, H, N, O of the
    carrier molecule; at clinical concentrations iodine dominates the contrast.)
    """
    c = float(mg_per_ml)
    if not np.isfinite(c) or c <= 0:
        raise ValueError(f"iodine concentration must be > 0 mg/mL, got {mg_per_ml}")
    base = get_material(solvent)
    rho = base.density + c / 1000.0
    wi = (c / 1000.0) / rho
    comp = {k: v * (1 - wi) for k, v in base.composition.items()}
    comp["I"] = comp.get("I", 0.0) + wi
    return Material(f"iodine_{c:g}mg_per_ml_in_{base.name}", comp, rho,
                    f"iodine solution, {c:g} mg I/mL in {base.name}")


def known_materials() -> list[str]:
    """Names accepted by :func:`get_material` besides symbols, formulas and dicts."""
    return sorted(set(_BUILTIN) | set(_ALIASES) | {"iodine_contrast"})


def get_material(spec, density: float | None = None) -> Material:
    """Build a :class:`Material` from

    - a :class:`Material` (returned unchanged, or with a new ``density``);
    - a built-in name (case-insensitive; see :func:`known_materials`);
    - an element symbol (``"Al"``, ``"I"``), density from xraylib unless given;
    - a chemical formula parsed by xraylib.CompoundParser (``"CaCO3"``); ``density`` required;
    - a dict ``{"elements": [...], "fractions": [...] (by weight), "density": g/cm^3}``
      (or ``{"composition": {sym: w}, "density": ...}``), optional ``"name"``.

    Unknown names raise KeyError listing the known names.
    """
    if isinstance(spec, Material):
        return spec if density is None else Material(spec.name, spec.composition, density, spec.source)
    if isinstance(spec, Mapping):
        if "composition" in spec:
            comp = dict(spec["composition"])
        elif "elements" in spec and "fractions" in spec:
            els, fr = list(spec["elements"]), list(spec["fractions"])
            if len(els) != len(fr):
                raise ValueError(f"material dict: {len(els)} elements but {len(fr)} fractions")
            comp = {}
            for s, w in zip(els, fr):
                if isinstance(s, (int, np.integer)):
                    s = xraylib.AtomicNumberToSymbol(int(s))
                comp[s] = comp.get(s, 0.0) + float(w)
        else:
            raise ValueError("material dict needs 'elements' and 'fractions' (or 'composition')")
        d = density if density is not None else spec.get("density")
        if d is None:
            raise ValueError("material dict needs a 'density' in g/cm^3")
        return Material(str(spec.get("name", "custom")), comp, d, "user dict")
    if not isinstance(spec, str):
        raise TypeError(f"material spec must be a str, dict or Material, got {type(spec).__name__}")
    key = spec.strip().lower()
    key = _ALIASES.get(key, key)
    if key == "iodine_contrast":
        m = iodine_solution(10.0)
        return m if density is None else get_material(m, density)
    if key in _BUILTIN:
        comp, d, src = _BUILTIN[key]
        return Material(key, comp, d if density is None else density, src)
    s = spec.strip()
    try:
        z = int(xraylib.SymbolToAtomicNumber(s))
    except (ValueError, RuntimeError):
        z = 0
    if z > 0:
        d = density if density is not None else xraylib.ElementDensity(z)
        return Material(s, {s: 1.0}, d, "element (xraylib)")
    try:
        parsed = xraylib.CompoundParser(s)
    except (ValueError, RuntimeError):
        parsed = None
    if parsed is not None and s[:1].isupper():
        if density is None:
            raise ValueError(f"chemical formula {s!r} needs a density in g/cm^3 (density=...)")
        comp = {xraylib.AtomicNumberToSymbol(z): w
                for z, w in zip(parsed["Elements"], parsed["massFractions"])}
        return Material(s, comp, density, "chemical formula (xraylib.CompoundParser)")
    raise KeyError(f"unknown material {spec!r}; known names: {', '.join(known_materials())}; "
                   "or give an element symbol, a chemical formula with density=, or a dict")


def mu_matrix(materials: Sequence | Iterable, energies_keV) -> np.ndarray:
    """Linear attenuation coefficients, shape (P, E), float64, 1/mm."""
    mats = [get_material(m) for m in materials]
    e = check_energies(energies_keV)
    if not mats:
        return np.zeros((0, e.size))
    return np.stack([m.mu(e) for m in mats])
