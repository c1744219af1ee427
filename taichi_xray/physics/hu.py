"""Hounsfield units -> densities of basis materials (for exact polychromatic Beer-Lambert).

A conversion maps every voxel's CT number ``HU`` to ``B`` non-negative weights
``c_m(HU) = rho_m(x) / rho_m,ref``: the density of basis material ``m`` in the
voxel relative to that material's reference density. The voxel's linear
attenuation at every energy is then

    mu(E, x) = sum_m c_m(HU(x)) * mu_m,ref(E)

with ``mu_m,ref`` the attenuation of the reference material
(:meth:`taichi_xray.physics.Material.mu`), so the only thing the physics needs
from a CT is, per ray, ``L_m = int c_m ds`` in mm ("mm of basis material m at
its reference density"), which it multiplies by ``mu_m,ref(E)`` exactly like a
mesh material's path length.

Every conversion here is piecewise linear in HU (:class:`HUConversion`): linear
between consecutive points, constant below the first point, and linearly
extrapolated above the last one; a point repeated at the same HU gives a jump.
Linear interpolation of the weights between two points holding pure materials
is the two-component mixing rule of Schneider, Bortfeld & Schlegel (2000),
*Correlation between CT numbers and tissue parameters needed for Monte Carlo
simulations of clinical dose distributions*, Phys. Med. Biol. 45:459-478: a
voxel with CT number ``H`` between those of tissues 1 and 2 (``H1 < H < H2``)
holds the volume fractions ``v1 = (H2 - H)/(H2 - H1)`` and ``v2 = 1 - v1``, whose
mass fraction ``w1 = rho1 (H2 - H) / ((rho1 H2 - rho2 H1) + (rho2 - rho1) H)`` is
their Eq. for two-component mixtures; with ``c_m = rho w_m / rho_m = v_m`` the
weights are the volume fractions.

Built-in conversions (:func:`get_hu_conversion`):

``"air_water_bone"`` (default), B = 3: air (NIST dry air), water, cortical bone
(ICRU-44, 1.92 g/cm^3):

* HU <= -1000: air (``c = (1, 0, 0)``);
* -1000 .. 0: air/water volume mixture, ``c_air = -HU/1000``, ``c_w = 1 + HU/1000``;
* 0 .. hu_bone: water/bone mixture, ``c_b = HU/hu_bone``, ``c_w = 1 - c_b``;
* above hu_bone: bone at density ``(1000 + HU)/(1000 + hu_bone)`` times its reference.

HU 0 is water and HU -1000 air. At the effective energy ``E_eff`` where the
bone reference has CT number ``hu_bone = 1000 (mu_b - mu_w)/(mu_w - mu_air)``,
``sum_m c_m mu_m = mu_w + HU (mu_w - mu_air)/1000`` for every HU in
[-1000, hu_bone]: the definition of the Hounsfield scale. The default
``hu_bone`` is computed at ``E_eff = 65 keV`` from xraylib (1725 HU for ICRU-44
cortical bone; 1938 HU at 60 keV, 1561 HU at 70 keV; a 120 kVp CT has an
effective energy of about 60-70 keV).

``"water_bone"``, B = 2: the same without air (air is vacuum, ``c = 0`` at
-1000 HU), as the former :class:`taichi_xray.ct.projector.CTVolume` did.

``"schneider"``, B = 5: a simplified Schneider et al. (2000) conversion. The
density calibration and the tissue compositions are transcribed from OpenGATE's
tables of that paper, ``opengate/data/Schneider2000DensitiesTable.txt`` and
``Schneider2000MaterialsTable.txt`` (github.com/OpenGATE/opengate, commit
d37427e2d7abcb90c0f708e9dc2fc8b61b62692c); they were not re-checked against
the paper's own tables. Basis materials, each at the calibration's density at
its CT number: air (table row "Air", 0.00121 g/cm^3 at -1000 HU), adipose
tissue (row "AT_AG_SI1", 0.93 at -98 HU), soft tissue (row "SoftTissus", 1.03
at 14 HU), marrow-rich bone (row "Marrow_Bone01", 1.0762 at 101 HU) and
cortical bone (row "Marrow_Bone15", identical to ICRU-44 cortical bone, 1.9642
at 1600 HU). Between these CT numbers neighbouring materials mix by
Schneider's two-component rule, which reproduces the calibration's piecewise
linear density exactly at the listed points; soft tissue between 14 and 100 HU
keeps its composition and follows the calibration's density (1.031 at 23 HU,
1.1199 at 100 HU), then turns into marrow between 100 and 101 HU (the
calibration's drop to 1.0762 g/cm^3); above 1600 HU
cortical bone's density follows GATE's extension (2.8 g/cm^3 at 3000 HU).
Simplifications against the paper's 24 composition bins: lung (-950..-120 HU)
is an air/adipose mixture rather than lung tissue, and the adipose and bone
bins are interpolated between their end members (the paper's bins are
themselves such interpolations).

Custom conversions: ``HUConversion(materials, points)`` or, from a scene file,
a dict ``{"materials": [...], "points": [[hu, [c_1, ..., c_B]], ...]}``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .materials import Material, get_material

__all__ = ["HUConversion", "get_hu_conversion", "hu_conversions", "air_water_bone", "water_bone", "schneider",
           "bone_ct_number", "E_EFF_DEFAULT_KEV"]

E_EFF_DEFAULT_KEV = 65.0

_GATE = "OpenGATE Schneider2000MaterialsTable.txt (Schneider et al. 2000)"
# mass percent, rows of OpenGATE's Schneider2000MaterialsTable.txt (commit d37427e)
_SCHNEIDER_MATERIALS = {
    "schneider_air": ({"N": 75.5, "O": 23.2, "Ar": 1.3}, 0.00121, "row Air"),
    "schneider_adipose": ({"H": 11.6, "C": 68.1, "N": 0.2, "O": 19.8, "Na": 0.1, "S": 0.1, "Cl": 0.1}, 0.93,
                          "row AT_AG_SI1"),
    "schneider_soft_tissue": ({"H": 10.3, "C": 13.4, "N": 3.0, "O": 72.3, "Na": 0.2, "P": 0.2, "S": 0.2,
                               "Cl": 0.2, "K": 0.2}, 1.03, "row SoftTissus"),
    "schneider_marrow": ({"H": 9.5, "C": 45.5, "N": 2.5, "O": 35.5, "Na": 0.1, "P": 2.1, "S": 0.1, "Cl": 0.1,
                          "K": 0.1, "Ca": 4.5}, 1.0762, "row Marrow_Bone01"),
    "schneider_cortical_bone": ({"H": 3.4, "C": 15.5, "N": 4.2, "O": 43.5, "Na": 0.1, "Mg": 0.2, "P": 10.3,
                                 "S": 0.3, "Ca": 22.5}, 1.9642, "row Marrow_Bone15"),
}


class HUConversion:
    """Piecewise-linear map HU -> ``B`` basis-material weights ``c_m = rho_m / rho_m,ref``.

    Parameters
    ----------
    materials : B material specs (:func:`taichi_xray.physics.get_material`): the basis
        materials at their reference densities.
    points : sequence of ``(hu, weights)`` with ``weights`` of length B, HU non-decreasing.
        Weights are interpolated linearly between consecutive points; a repeated HU is a
        jump (the second point holds from that HU on). Below the first point the first
        weights hold; above the last point the last segment is extrapolated linearly
        (``extrapolate=True``) or held constant. The last two HU must differ.
    name : label (messages, ``repr``).

    Weights must be non-negative at every point (and stay so when extrapolated).
    """

    def __init__(self, materials, points, *, name: str = "custom", extrapolate: bool = True):
        mats = [get_material(m) for m in materials]
        if not mats:
            raise ValueError("an HU conversion needs at least one basis material")
        B = len(mats)
        pts = list(points)
        if len(pts) < 2:
            raise ValueError(f"HU conversion {name!r}: need at least two points, got {len(pts)}")
        xs, ws = [], []
        for i, p in enumerate(pts):
            try:
                hu, w = p
                hu = float(hu)
                w = np.asarray(w, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"HU conversion {name!r}: point {i} must be (hu, [weights]), got {p!r}") from exc
            if w.size != B:
                raise ValueError(f"HU conversion {name!r}: point {i} has {w.size} weights for {B} materials")
            if not (np.isfinite(hu) and np.all(np.isfinite(w))):
                raise ValueError(f"HU conversion {name!r}: point {i} is not finite")
            if np.any(w < 0):
                raise ValueError(f"HU conversion {name!r}: point {i} has negative weights {w.tolist()}")
            xs.append(hu)
            ws.append(w)
        xs = np.array(xs)
        if np.any(np.diff(xs) < 0):
            raise ValueError(f"HU conversion {name!r}: point HU must be non-decreasing, got {xs.tolist()}")
        if np.any((xs[2:] == xs[1:-1]) & (xs[1:-1] == xs[:-2])):
            raise ValueError(f"HU conversion {name!r}: an HU value appears more than twice")
        if xs[-1] == xs[-2]:
            raise ValueError(f"HU conversion {name!r}: the last two points must have different HU")
        ws = np.stack(ws)
        if extrapolate:
            slope = (ws[-1] - ws[-2]) / (xs[-1] - xs[-2])
            if np.any(slope < 0):
                raise ValueError(f"HU conversion {name!r}: extrapolating the last segment would make weights "
                                 "negative at high HU (use extrapolate=False or add a point)")
        self.materials: list[Material] = mats
        self.names = [m.name for m in mats]
        self.name = str(name)
        self.extrapolate = bool(extrapolate)
        self.hu = xs
        self.weights_at = ws
        # segment s covers [hu[s], hu[s+1]): c = a[s] + b[s] * HU (zero-width segments are never selected)
        dx = np.diff(xs)
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.where(dx[:, None] > 0, np.diff(ws, axis=0) / dx[:, None], 0.0)
        a = ws[:-1] - b * xs[:-1, None]
        self._a, self._b = a, b
        self._torch = {}

    @property
    def B(self) -> int:
        return len(self.materials)

    def __repr__(self) -> str:
        return f"HUConversion({self.name!r}, materials={self.names})"

    def _segment(self, h):
        s = np.searchsorted(self.hu, h, side="right") - 1
        return np.clip(s, 0, len(self.hu) - 2)

    def __call__(self, hu) -> np.ndarray:
        """Weights (..., B) float64 of HU values (...)."""
        h = np.asarray(hu, dtype=np.float64)
        lo, hi = self.hu[0], (np.inf if self.extrapolate else self.hu[-1])
        hc = np.clip(h, lo, hi)
        s = self._segment(hc)
        return self._a[s] + self._b[s] * hc[..., None]

    def derivative(self, hu) -> np.ndarray:
        """d weights / d HU (..., B) float64 (0 below the first point; one-sided at points)."""
        h = np.asarray(hu, dtype=np.float64)
        s = self._segment(h)
        d = self._b[s]
        out = (h < self.hu[0]) | ((h > self.hu[-1]) & (not self.extrapolate))
        return np.where(out[..., None], 0.0, d)

    def torch(self, hu):
        """Weights (..., B) of a torch tensor of HU, differentiable (d/dHU piecewise constant)."""
        import torch

        key = (hu.dtype, hu.device)
        if key not in self._torch:
            self._torch[key] = tuple(torch.as_tensor(x, dtype=hu.dtype, device=hu.device)
                                     for x in (self.hu, self._a, self._b))
        xs, a, b = self._torch[key]
        hc = torch.clamp(hu, min=float(self.hu[0]), max=(None if self.extrapolate else float(self.hu[-1])))
        s = torch.clamp(torch.searchsorted(xs, hc.detach().contiguous(), right=True) - 1, 0, len(self.hu) - 2)
        return a[s] + b[s] * hc[..., None]

    def mu(self, energies_keV) -> np.ndarray:
        """Attenuation (B, E) in 1/mm of the basis materials at their reference densities."""
        return np.stack([m.mu(energies_keV) for m in self.materials])

    def key(self):
        """Hashable identity (for caches)."""
        return (self.name, tuple(self.names), self.hu.tobytes(), self.weights_at.tobytes(), self.extrapolate)


def bone_ct_number(energy_keV: float = E_EFF_DEFAULT_KEV, bone="cortical_bone") -> float:
    """CT number ``1000 (mu_b - mu_w) / (mu_w - mu_air)`` of ``bone`` at ``energy_keV`` (xraylib)."""
    w, a, b = (get_material(m).mu([energy_keV])[0] for m in ("water", "air", bone))
    return float(1000.0 * (b - w) / (w - a))


def _bone(hu_bone, energy_keV, bone):
    if hu_bone is None:
        hu_bone = bone_ct_number(energy_keV, bone)
    hu_bone = float(hu_bone)
    if not (np.isfinite(hu_bone) and hu_bone > 0):
        raise ValueError(f"hu_bone must be a positive number of HU, got {hu_bone!r}")
    return hu_bone


def air_water_bone(hu_bone: float | None = None, energy_keV: float = E_EFF_DEFAULT_KEV,
                   bone="cortical_bone") -> HUConversion:
    """Air / water / bone volume mixtures (see the module docstring); ``hu_bone`` defaults to the bone
    reference's CT number at ``energy_keV``."""
    hb = _bone(hu_bone, energy_keV, bone)
    top = hb + 1000.0
    return HUConversion(["air", "water", bone], [
        (-1000.0, [1, 0, 0]), (0.0, [0, 1, 0]), (hb, [0, 0, 1]), (top, [0, 0, (1000.0 + top) / (1000.0 + hb)])],
        name="air_water_bone")


def water_bone(hu_bone: float | None = None, energy_keV: float = E_EFF_DEFAULT_KEV,
               bone="cortical_bone") -> HUConversion:
    """Water / bone without air: HU -1000 is vacuum (``c = 0``)."""
    hb = _bone(hu_bone, energy_keV, bone)
    top = hb + 1000.0
    return HUConversion(["water", bone], [
        (-1000.0, [0, 0]), (0.0, [1, 0]), (hb, [0, 1]), (top, [0, (1000.0 + top) / (1000.0 + hb)])],
        name="water_bone")


def schneider() -> HUConversion:
    """Simplified Schneider et al. (2000) conversion, 5 basis materials (see the module docstring)."""
    mats = [Material(k, {e: w / 100.0 for e, w in comp.items()}, rho, f"{_GATE}, {row}")
            for k, (comp, rho, row) in _SCHNEIDER_MATERIALS.items()]
    r_soft = 1.03

    def c(i, x=1.0):
        w = [0.0] * 5
        w[i] = x
        return w

    pts = [(-1000.0, c(0)), (-98.0, c(1)), (14.0, c(2)), (23.0, c(2, 1.031 / r_soft)),
           (100.0, c(2, 1.1199 / r_soft)), (101.0, c(3)), (1600.0, c(4)), (3000.0, c(4, 2.8 / 1.9642))]
    # between 100 and 101 HU the calibration drops from 1.1199 to 1.0762 g/cm^3: soft tissue mixes into
    # marrow over that one HU, as the table's linear interpolation does
    return HUConversion(mats, pts, name="schneider")


_PRESETS = {"air_water_bone": air_water_bone, "water_bone": water_bone, "schneider": schneider}


def hu_conversions() -> list[str]:
    """Names of the built-in conversions."""
    return sorted(_PRESETS)


def get_hu_conversion(spec=None, **kw) -> HUConversion:
    """An :class:`HUConversion` from ``None`` (the default, ``"air_water_bone"``), a built-in name
    (``"air_water_bone"``, ``"water_bone"``, ``"schneider"``; keyword arguments go to it, e.g.
    ``hu_bone=1500``), an :class:`HUConversion`, or a dict ``{"materials": [...], "points":
    [[hu, [c...]], ...], "extrapolate": true}`` (or ``{"name": "air_water_bone", "hu_bone": ...}``)."""
    if spec is None:
        spec = "air_water_bone"
    if isinstance(spec, HUConversion):
        if kw:
            raise TypeError(f"keyword arguments {sorted(kw)} cannot modify a given HUConversion")
        return spec
    if isinstance(spec, Mapping):
        d = dict(spec)
        if "points" in d:
            unknown = set(d) - {"materials", "points", "extrapolate", "name"}
            if unknown:
                raise KeyError(f"HU conversion dict: unknown keys {sorted(unknown)} "
                               "(expected materials, points, extrapolate, name)")
            if "materials" not in d:
                raise KeyError("HU conversion dict needs 'materials' with 'points'")
            return HUConversion(d["materials"], d["points"], extrapolate=bool(d.get("extrapolate", True)),
                                name=str(d.get("name", "custom")))
        if "name" not in d:
            raise KeyError("HU conversion dict needs 'name' (a built-in) or 'materials' and 'points'")
        name = d.pop("name")
        return get_hu_conversion(name, **{**d, **kw})
    if not isinstance(spec, str):
        raise TypeError(f"hu_conversion must be a name, a dict or an HUConversion, got {type(spec).__name__}")
    key = spec.strip().lower()
    if key not in _PRESETS:
        raise KeyError(f"unknown HU conversion {spec!r}; built-in: {', '.join(hu_conversions())}")
    try:
        return _PRESETS[key](**kw)
    except TypeError as exc:
        raise TypeError(f"HU conversion {key!r}: {exc}") from None

