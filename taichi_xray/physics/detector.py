"""Detector energy response.

``Detector.response(E) = eta(E) * w(E)`` (shape (E,), float64) where
w(E) = E (keV) for an energy-integrating detector and 1 for photon counting,
and eta(E) = 1 - exp(-mu_scint(E) * t) is the fraction of photons absorbed in
a scintillator of thickness t mm (eta = 1 for an ideal detector, scintillator=None).
"""
from __future__ import annotations

import numpy as np

from .materials import check_energies, get_material

_SCINT_ALIASES = {"csi": "csi", "cesium_iodide": "csi"}


class Detector:
    """kind: "energy" (energy integrating) or "counting" (photon counting).

    scintillator: None (ideal absorber) or (material, thickness_mm), e.g. ("CsI", 0.6).
    The material is any spec accepted by get_material; "CsI" means NIST caesium iodide (4.51 g/cm^3).
    """

    def __init__(self, kind: str = "energy", scintillator=None):
        if kind not in ("energy", "counting"):
            raise ValueError(f"detector kind must be 'energy' or 'counting', got {kind!r}")
        self.kind = kind
        self.scintillator = None
        if scintillator is not None:
            try:
                mat, t = scintillator
            except (TypeError, ValueError):
                raise TypeError("scintillator must be None or (material, thickness_mm)") from None
            t = float(t)
            if not (t > 0 and np.isfinite(t)):
                raise ValueError(f"scintillator thickness must be > 0 mm, got {t}")
            if isinstance(mat, str):
                mat = _SCINT_ALIASES.get(mat.strip().lower(), mat)
            self.scintillator = (get_material(mat), t)

    def __repr__(self):
        s = "ideal" if self.scintillator is None else f"{self.scintillator[0].name} {self.scintillator[1]:g} mm"
        return f"Detector(kind={self.kind!r}, {s})"

    def efficiency(self, energies_keV) -> np.ndarray:
        """Absorbed fraction eta(E), shape (E,)."""
        e = check_energies(energies_keV)
        if self.scintillator is None:
            return np.ones_like(e)
        mat, t = self.scintillator
        return -np.expm1(-mat.mu(e) * t)

    def response(self, energies_keV) -> np.ndarray:
        """eta(E) * w(E), shape (E,), float64; w = E in keV (energy) or 1 (counting)."""
        e = check_energies(energies_keV)
        w = e if self.kind == "energy" else np.ones_like(e)
        return self.efficiency(e) * w
