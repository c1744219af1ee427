"""Detector image formation after the Beer-Lambert stage: blur (MTF), noise, readout.

Torch operations throughout (numpy in -> numpy out), so every step but the exact Poisson
samplers is differentiable. Images are (..., H, W), indexed [row, column].

Inputs from the Beer-Lambert stage (per pixel, one pass with several weight vectors):

* energy integrating: ``S1 = sum_E N_E T_E eta(E) E`` (mean absorbed energy, keV) and
  ``S2 = sum_E N_E T_E eta(E) E^2`` (keV^2); :func:`signal_weights` gives both weight rows;
* photon counting: ``C_b = sum_E N_E T_E eta(E) R_b(E)`` per energy bin b, weights from
  :func:`counting_bin_weights`.

``N_E``: photons per pixel and bin (:func:`taichi_xray.physics.source.photons_per_pixel`),
``T_E``: transmission, ``eta``: absorbed fraction (:meth:`Detector.efficiency`).

Energy-integrating model (:class:`DetectorModel`), in this order:

1. quantum noise, compound Poisson: mean ``S1``, variance ``S2 / I`` with the Swank
   factor ``I`` (the spread of the signal per absorbed photon of one energy; Swank,
   J. Appl. Phys. 44, 4199, 1973); Gaussian ``S1 + sqrt(S2/I) eps`` (differentiable) or a
   moment-matched scaled Poisson (exact mean and variance, not differentiable);
2. blur by the presampled MTF, on signal and quantum noise alike: the light of each
   absorbed X-ray spreads in the scintillator, so the quantum noise is correlated and its
   NPS is ``(S2/I) |MTF(f)|^2`` (cascaded linear systems, Cunningham in Handbook of Medical
   Imaging vol. 1, ch. 2, SPIE 2000);
3. gain (ADU per keV) and offset, plus electronic (readout) noise, white Gaussian, added
   after the blur: it arises in the amplifiers, after the optical spread;
4. binning k x k (mean of the native pixels' readings: digital binning);
5. ADC: rounding (straight-through gradient) and clipping to ``[0, 2^bits - 1]``.

Photon counting (:class:`PhotonCountingModel`): expected counts per energy bin, blurred by
the MTF (charge sharing / PSF) *before* the noise, then independent Poisson counts per bin
(so their NPS is white), summed over binned pixels.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as Fnn

from .materials import check_energies

__all__ = [
    "MTF", "MTF_PRESETS", "signal_weights", "counting_bin_weights", "make_generator", "gaussian_noise",
    "poisson_noise", "scaled_poisson_noise", "bin_image", "quantize", "DetectorModel", "PhotonCountingModel",
    "DETECTOR_PRESETS",
]


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def _num(name, x, *, positive=False, nonneg=False) -> float:
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
    return v


def _to_torch(x, name):
    """(tensor, was_numpy). numpy -> float64 tensor; torch floats kept."""
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            x = x.to(torch.float64)
        return x, False
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a numeric array or torch tensor") from None
    return torch.from_numpy(np.ascontiguousarray(a)), True


def _back(x, was_np):
    return x.detach().cpu().numpy() if was_np else x


def _check_image(x, name, nonneg=True):
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (..., H, W), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinity")
    if nonneg and bool((x < 0).any()):
        raise ValueError(f"{name} must be >= 0")


# ------------------------------------------------------------------------------------------
# MTF
# ------------------------------------------------------------------------------------------
_KINDS = {"gaussian": 1, "exponential": 1, "stretched": 2}


class MTF:
    """Isotropic presampled MTF, a weighted sum of components (weights sum to 1, so MTF(0) = 1).

    Components (``(weight, kind, params)``), frequencies f in cycles/mm (lp/mm):

    * ``"gaussian", (sigma_mm,)``: Gaussian LSF, ``exp(-2 pi^2 sigma^2 f^2)``;
    * ``"exponential", (b_mm,)``: LSF ``exp(-|x|/b) / (2b)`` (turbid phosphors),
      ``1 / (1 + (2 pi b f)^2)``;
    * ``"stretched", (f0, p)``: ``exp(-(f/f0)^p)``, 0 < p <= 2 (a positive PSF).

    The LSF named is the line spread function along any direction (what an edge measures);
    the 2-D PSF is the isotropic one with that LSF, applied by FFT (:meth:`apply`).
    """

    def __init__(self, components, name: str = "custom", source: str = ""):
        comps = []
        for c in components:
            try:
                w, kind, params = c
            except (TypeError, ValueError):
                raise TypeError(f"an MTF component is (weight, kind, params), got {c!r}") from None
            if kind not in _KINDS:
                raise ValueError(f"MTF component kind must be one of {sorted(_KINDS)}, got {kind!r}")
            params = tuple(_num(f"{kind} parameter", p, positive=True) for p in np.atleast_1d(params))
            if len(params) != _KINDS[kind]:
                raise ValueError(f"a {kind} MTF component takes {_KINDS[kind]} parameter(s), got {params}")
            if kind == "stretched" and params[1] > 2:
                raise ValueError(f"stretched MTF exponent p must be in (0, 2] (else the PSF is not positive), "
                                 f"got {params[1]:g}")
            comps.append((_num("MTF component weight", w, positive=True), kind, params))
        if not comps:
            raise ValueError("an MTF needs at least one component")
        tot = sum(c[0] for c in comps)
        self.components = tuple((w / tot, k, p) for w, k, p in comps)
        self.name, self.source = name, source
        self._cache: dict = {}

    def __repr__(self):
        return f"MTF({self.name!r}, MTF50={self.mtf50():.3f} lp/mm)"

    # ---- constructors ------------------------------------------------------------------
    @classmethod
    def gaussian(cls, sigma_mm: float) -> "MTF":
        return cls([(1.0, "gaussian", (sigma_mm,))], name=f"gaussian({sigma_mm:g} mm)")

    @classmethod
    def exponential(cls, b_mm: float) -> "MTF":
        return cls([(1.0, "exponential", (b_mm,))], name=f"exponential({b_mm:g} mm)")

    @classmethod
    def stretched(cls, f0: float, p: float) -> "MTF":
        return cls([(1.0, "stretched", (f0, p))], name=f"stretched(f0={f0:g}, p={p:g})")

    @classmethod
    def from_points(cls, points: dict, model: str = "auto") -> "MTF":
        """MTF through measured values ``{f (lp/mm): MTF}`` with 0 < MTF < 1.

        model "auto": one point -> Gaussian; two or more -> stretched exponential (exact
        through two points, least squares in ``log(-log MTF)`` vs ``log f`` for more);
        "gaussian" / "stretched" force the family.
        """
        try:
            f = np.array([float(k) for k in points], dtype=np.float64)
            m = np.array([float(points[k]) for k in points], dtype=np.float64)
        except (TypeError, ValueError, AttributeError):
            raise TypeError("points must be a dict {frequency lp/mm: MTF value}") from None
        if f.size == 0:
            raise ValueError("points is empty")
        if not (np.all(np.isfinite(f)) and np.all(f > 0)):
            raise ValueError(f"MTF frequencies must be > 0 lp/mm, got {f.tolist()}")
        if not np.all((m > 0) & (m < 1)):
            raise ValueError(f"MTF values must be in (0, 1), got {m.tolist()}")
        if model == "auto":
            model = "gaussian" if f.size == 1 else "stretched"
        y = np.log(-np.log(m))
        if model == "gaussian":
            # exp(-2 pi^2 s^2 f^2): log(-log m) = log(2 pi^2 s^2) + 2 log f
            s2 = np.exp(np.mean(y - 2 * np.log(f))) / (2 * np.pi ** 2)
            return cls([(1.0, "gaussian", (math.sqrt(s2),))], name=f"gaussian through {dict(points)}")
        if model == "stretched":
            if f.size < 2 or np.unique(f).size < 2:
                raise ValueError("a stretched-exponential MTF needs two or more distinct frequencies")
            p, c = np.polyfit(np.log(f), y, 1)
            if not 0 < p <= 2:
                raise ValueError(f"these MTF points need exponent p={p:.3g}, outside (0, 2]: not a positive "
                                 "PSF; check the values (MTF must fall with frequency)")
            return cls([(1.0, "stretched", (math.exp(-c / p), p))], name=f"stretched through {dict(points)}")
        raise ValueError(f"model must be 'auto', 'gaussian' or 'stretched', got {model!r}")

    @classmethod
    def preset(cls, name: str) -> "MTF":
        """A published detector MTF: one of :data:`MTF_PRESETS` (aliases "csi", "gos")."""
        key = _MTF_ALIASES.get(name.strip().lower(), name.strip().lower()) if isinstance(name, str) else name
        if key not in MTF_PRESETS:
            raise KeyError(f"unknown MTF preset {name!r}; known: {sorted(MTF_PRESETS)} (aliases "
                           f"{sorted(_MTF_ALIASES)})")
        comps, src = MTF_PRESETS[key]
        return cls(comps, name=key, source=src)

    # ---- evaluation --------------------------------------------------------------------
    def __call__(self, f):
        """MTF at spatial frequencies ``f`` (lp/mm): numpy in -> numpy float64; torch in -> torch."""
        if isinstance(f, torch.Tensor):
            f = f.abs()
            out = torch.zeros_like(f)
            for w, kind, p in self.components:
                if kind == "gaussian":
                    out = out + w * torch.exp(-2 * math.pi ** 2 * p[0] ** 2 * f * f)
                elif kind == "exponential":
                    out = out + w / (1 + (2 * math.pi * p[0] * f) ** 2)
                else:
                    out = out + w * torch.exp(-(f / p[0]) ** p[1])
            return out
        f = np.abs(np.asarray(f, dtype=np.float64))
        out = np.zeros_like(f)
        for w, kind, p in self.components:
            if kind == "gaussian":
                out += w * np.exp(-2 * np.pi ** 2 * p[0] ** 2 * f * f)
            elif kind == "exponential":
                out += w / (1 + (2 * np.pi * p[0] * f) ** 2)
            else:
                out += w * np.exp(-(f / p[0]) ** p[1])
        return out

    def frequency_at(self, value: float) -> float:
        """Frequency (lp/mm) where the MTF falls to ``value`` (0 < value < 1), by bisection."""
        v = _num("value", value)
        if not 0 < v < 1:
            raise ValueError(f"value must be in (0, 1), got {value}")
        lo, hi = 0.0, 1.0
        while self(hi) > v:
            hi *= 2
            if hi > 1e6:
                raise ValueError(f"MTF never falls to {v}")
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if self(mid) > v else (lo, mid)
        return 0.5 * (lo + hi)

    def mtf50(self) -> float:
        """Frequency (lp/mm) where the MTF is 0.5."""
        return self.frequency_at(0.5)

    def lsf_radius_mm(self, fraction: float = 0.999) -> float:
        """Half-width (mm) of the interval holding ``fraction`` of the LSF's area."""
        key = ("radius", fraction)
        if key not in self._cache:
            fmax = self.frequency_at(1e-6) if self(1e3) < 1e-6 else 1e3
            n = 1 << 16
            df = fmax / n
            lsf = np.fft.irfft(self(np.arange(n + 1) * df)) * (2 * n * df)  # samples at x = j / (2 n df)
            dx = 1.0 / (2 * n * df)
            half = np.abs(lsf[: n]) * dx
            half[1:] *= 2.0  # both sides
            c = np.cumsum(half) / half.sum()
            self._cache[key] = float(np.searchsorted(c, fraction) * dx)
        return self._cache[key]

    def transfer(self, height: int, width: int, pixel_pitch_mm: float, dtype=torch.float64, device="cpu"):
        """MTF on the rfft2 grid of an (height, width) image with pixel pitch (mm): (height, width//2+1)."""
        key = (height, width, float(pixel_pitch_mm), dtype, str(device))
        if key not in self._cache:
            fy = torch.fft.fftfreq(height, d=pixel_pitch_mm, dtype=torch.float64)
            fx = torch.fft.rfftfreq(width, d=pixel_pitch_mm, dtype=torch.float64)
            T = self(torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)).to(dtype=dtype, device=device)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = T
        return self._cache[key]

    def apply(self, image, pixel_pitch_mm: float, pad: int | str = "auto"):
        """Blur ``image`` (..., H, W) by this MTF (FFT, edge-replicated padding; differentiable).

        pad : pixels of replicated border ("auto": the LSF's 99.9 % radius, at most max(H, W)).
        numpy in -> numpy float64 out; torch in -> torch (same dtype/device).
        """
        pitch = _num("pixel_pitch_mm", pixel_pitch_mm, positive=True)
        x, was_np = _to_torch(image, "image")
        _check_image(x, "image", nonneg=False)
        H, W = x.shape[-2:]
        if pad == "auto":
            p = min(max(H, W), int(math.ceil(self.lsf_radius_mm() / pitch)))
        else:
            p = int(pad)
            if p < 0:
                raise ValueError(f"pad must be >= 0 or 'auto', got {pad!r}")
        lead = x.shape[:-2]
        x4 = x.reshape(-1, 1, H, W)
        if p:
            x4 = Fnn.pad(x4, (p, p, p, p), mode="replicate")
        Hp, Wp = x4.shape[-2:]
        T = self.transfer(Hp, Wp, pitch, x4.dtype, x4.device)
        y = torch.fft.irfft2(torch.fft.rfft2(x4) * T, s=(Hp, Wp))
        y = y[..., p:p + H, p:p + W].reshape(*lead, H, W)
        return _back(y, was_np)


# Presampled MTFs, (components, source). Samei, Med. Phys. 30, 1747 (2003): two flat panels with
# 0.127 mm pixels, one with 0.6 mm structured CsI, one with a Lanex Regular (Gd2O2S:Tb) screen; "MTF
# 0.2 at ~2.5 and 0.1 at ~3.8 mm^-1 for both; below 2 mm^-1 the CsI MTF higher by an average of 0.07".
# GOS: exponential LSF (the classic turbid-screen Lorentzian MTF), b fitted to (2.5, 0.2) and (3.8, 0.1)
# (it passes within 1.2 % of both). CsI: Gaussian + exponential LSF through (2.5, 0.2), (3.8, 0.1) with
# mean(MTF_CsI - MTF_GOS) over (0, 2] lp/mm = 0.07 (solved exactly; tests/test_source_detector.py checks
# these constraints). Both include the 0.127 mm pixel aperture of the measured panels.
_SAMEI = ("Samei, Med. Phys. 30, 1747 (2003), abstract values (MTF 0.2 at 2.5/mm, 0.1 at 3.8/mm; CsI 0.07 "
          "above GOS below 2/mm); presampled, 0.127 mm pixels")
MTF_PRESETS = {
    "csi_samei2003": ([(0.85745205, "gaussian", (0.13792023,)), (0.14254795, "exponential", (0.02906608,))],
                      "0.6 mm structured CsI:Tl flat panel. " + _SAMEI),
    "gos_samei2003": ([(1.0, "exponential", (0.12638279,))],
                      "Lanex Regular Gd2O2S:Tb flat panel. " + _SAMEI),
}
_MTF_ALIASES = {"csi": "csi_samei2003", "gos": "gos_samei2003", "gd2o2s": "gos_samei2003",
                "lanex_regular": "gos_samei2003"}


# ------------------------------------------------------------------------------------------
# weights for the Beer-Lambert stage
# ------------------------------------------------------------------------------------------
def signal_weights(photons, energies_keV, detector) -> np.ndarray:
    """Weights (2, E) for the two sums the noise model needs, float64.

    Row 0: ``N_E * detector.response(E)`` (the mean signal: ``N eta E`` for "energy", ``N eta``
    for "counting"); row 1: the second moment, ``N eta E^2`` ("energy") or ``N eta`` ("counting").
    photons (E,): photons per pixel and bin (e.g. :func:`~taichi_xray.physics.source.photons_per_pixel`).
    """
    e = check_energies(energies_keV)
    n = np.asarray(photons, dtype=np.float64)
    if n.shape != e.shape:
        raise ValueError(f"photons {n.shape} and energies {e.shape} must have the same shape")
    if not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError("photons must be finite and >= 0")
    r = detector.response(e)
    second = r * e if detector.kind == "energy" else r
    return np.stack([n * r, n * second])


def counting_bin_weights(energies_keV, thresholds_keV, photons=None, efficiency=None,
                         energy_fwhm_keV: float = 0.0) -> np.ndarray:
    """Weights (B, E) of a photon-counting detector's B energy bins, float64.

    Bin b counts photons with (measured) energy in ``[t_b, t_{b+1})``, the last bin ``[t_B, inf)``.
    energy_fwhm_keV : Gaussian energy resolution (0 = ideal): a photon of energy E falls in bin b
    with probability ``Phi((t_{b+1}-E)/s) - Phi((t_b-E)/s)``. photons (E,) and efficiency (E,)
    (absorbed fraction) multiply in when given. Rows sum to the counts above the lowest threshold.
    """
    e = check_energies(energies_keV)
    t = np.atleast_1d(np.asarray(thresholds_keV, dtype=np.float64))
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) <= 0):
        raise ValueError(f"thresholds_keV must be increasing finite energies >= 0 keV, got {thresholds_keV!r}")
    fwhm = _num("energy_fwhm_keV", energy_fwhm_keV, nonneg=True)
    edges = np.append(t, np.inf)
    if fwhm == 0:
        R = ((e[None] >= edges[:-1, None]) & (e[None] < edges[1:, None])).astype(np.float64)
    else:
        from scipy.special import ndtr

        s = fwhm / (2 * math.sqrt(2 * math.log(2)))
        cdf = ndtr((edges[:, None] - e[None]) / s)  # (B+1, E)
        R = cdf[1:] - cdf[:-1]
    for name, v in (("photons", photons), ("efficiency", efficiency)):
        if v is not None:
            a = np.asarray(v, dtype=np.float64)
            if a.shape != e.shape or not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ValueError(f"{name} must be finite, >= 0, with shape {e.shape}")
            R = R * a[None]
    return R


# ------------------------------------------------------------------------------------------
# noise
# ------------------------------------------------------------------------------------------
def make_generator(seed, device="cpu") -> torch.Generator:
    """A torch.Generator on ``device`` seeded with the integer ``seed``."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def _gen(seed, generator, device):
    if generator is not None:
        return generator
    if seed is None:
        raise ValueError("noise must be reproducible: give a seed (int) or a torch.Generator")
    return make_generator(seed, device)


def gaussian_noise(mean, var, seed=None, generator=None):
    """``mean + sqrt(var) * eps``, eps ~ N(0, 1) seeded: the reparameterised (differentiable)
    Gaussian approximation of a counting process. Shapes broadcast; returns mean's kind."""
    m, was_np = _to_torch(mean, "mean")
    v, _ = _to_torch(var, "var")
    v = v.to(device=m.device, dtype=m.dtype)
    if bool((v < 0).any()):
        raise ValueError("var must be >= 0")
    g = _gen(seed, generator, m.device)
    shape = torch.broadcast_shapes(m.shape, v.shape)
    eps = torch.randn(shape, generator=g, dtype=m.dtype, device=m.device)
    return _back(m + torch.sqrt(torch.clamp(v, min=1e-300)) * eps, was_np)


def poisson_noise(mean, seed=None, generator=None):
    """Exact Poisson counts with the given mean (seeded; no gradient). Returns float counts."""
    m, was_np = _to_torch(mean, "mean")
    _check_image(m.reshape(1, -1), "mean")
    g = _gen(seed, generator, m.device)
    return _back(torch.poisson(m.detach(), generator=g), was_np)


def scaled_poisson_noise(mean, var, seed=None, generator=None):
    """Scaled Poisson ``(var/mean) * Poisson(mean^2/var)``: exact mean and variance of a compound
    Poisson signal, non-negative, no gradient. Pixels with mean 0 stay 0."""
    m, was_np = _to_torch(mean, "mean")
    v, _ = _to_torch(var, "var")
    v = v.to(device=m.device, dtype=m.dtype)
    m, v = torch.broadcast_tensors(m.detach(), v.detach())
    if bool((m < 0).any()) or bool((v < 0).any()):
        raise ValueError("mean and var must be >= 0")
    pos = (m > 0) & (v > 0)
    lam = torch.where(pos, m * m / torch.where(pos, v, torch.ones_like(v)), torch.zeros_like(m))
    scale = torch.where(pos, v / torch.where(pos, m, torch.ones_like(m)), torch.zeros_like(m))
    g = _gen(seed, generator, m.device)
    out = torch.poisson(lam, generator=g) * scale
    out = torch.where(pos, out, m)  # zero variance: the mean itself
    return _back(out, was_np)


def bin_image(image, k: int, mode: str = "mean", crop: bool = False):
    """k x k binning of (..., H, W): "mean" (readings averaged) or "sum" (counts added).

    H and W must be multiples of k unless ``crop`` (then the last rows/columns are dropped).
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"binning must be a positive integer, got {k!r}")
    if mode not in ("mean", "sum"):
        raise ValueError(f"binning mode must be 'mean' or 'sum', got {mode!r}")
    x, was_np = _to_torch(image, "image")
    if x.ndim < 2:
        raise ValueError(f"image must have shape (..., H, W), got {tuple(x.shape)}")
    if k == 1:
        return _back(x, was_np)
    H, W = x.shape[-2:]
    if (H % k or W % k) and not crop:
        raise ValueError(f"image size {H}x{W} is not a multiple of the binning {k} (pass crop=True)")
    H2, W2 = H // k, W // k
    if H2 == 0 or W2 == 0:
        raise ValueError(f"image size {H}x{W} is smaller than the binning {k}")
    x = x[..., : H2 * k, : W2 * k]
    y = x.reshape(*x.shape[:-2], H2, k, W2, k)
    y = y.sum(dim=(-3, -1)) if mode == "sum" else y.mean(dim=(-3, -1))
    return _back(y, was_np)


def quantize(image, bits: int, ste: bool = True):
    """ADC: round to integers and clip to [0, 2^bits - 1] (saturation). ``ste``: straight-through
    gradient for the rounding (identity), zero where clipped."""
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer in [1, 32], got {bits!r}")
    x, was_np = _to_torch(image, "image")
    r = torch.round(x)
    y = x + (r - x).detach() if ste else r
    y = torch.clamp(y, 0.0, float(2 ** bits - 1))
    return _back(y, was_np)


# ------------------------------------------------------------------------------------------
# detector models
# ------------------------------------------------------------------------------------------
@dataclass
class DetectorModel:
    """Energy-integrating flat panel: MTF blur, compound-Poisson + Swank quantum noise, gain/offset,
    electronic noise, binning, ADC. See the module docstring for the order and the equations.

    pixel_pitch_mm : native pixel pitch (mm). mtf : :class:`MTF` or None (no blur).
    swank : Swank factor I in (0, 1] (1 = no extra gain spread). gain : ADU per keV absorbed.
    offset : ADU (dark level). electronic_noise : ADU rms per native pixel.
    bits : ADC bit depth (None: no rounding or clipping). binning : k (k x k mean).
    """

    pixel_pitch_mm: float
    mtf: MTF | None = None
    swank: float = 1.0
    gain: float = 1.0
    offset: float = 0.0
    electronic_noise: float = 0.0
    bits: int | None = None
    binning: int = 1
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        self.pixel_pitch_mm = _num("pixel_pitch_mm", self.pixel_pitch_mm, positive=True)
        if self.mtf is not None and not isinstance(self.mtf, MTF):
            raise TypeError(f"mtf must be an MTF or None, got {type(self.mtf).__name__}")
        self.swank = _num("swank", self.swank, positive=True)
        if self.swank > 1:
            raise ValueError(f"the Swank factor must be in (0, 1], got {self.swank}")
        self.gain = _num("gain", self.gain, positive=True)
        self.offset = _num("offset", self.offset)
        self.electronic_noise = _num("electronic_noise", self.electronic_noise, nonneg=True)
        if self.bits is not None and (not isinstance(self.bits, (int, np.integer)) or isinstance(self.bits, bool)
                                      or not 1 <= self.bits <= 32):
            raise ValueError(f"bits must be None or an integer in [1, 32], got {self.bits!r}")
        if not isinstance(self.binning, (int, np.integer)) or isinstance(self.binning, bool) or self.binning < 1:
            raise ValueError(f"binning must be a positive integer, got {self.binning!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "DetectorModel":
        """A detector of :data:`DETECTOR_PRESETS` ("csi", "gos"), with fields overridden by keyword."""
        key = name.strip().lower() if isinstance(name, str) else name
        if key not in DETECTOR_PRESETS:
            raise KeyError(f"unknown detector preset {name!r}; known: {sorted(DETECTOR_PRESETS)}")
        kw = dict(DETECTOR_PRESETS[key])
        kw["mtf"] = MTF.preset(kw["mtf"])
        kw.update(overrides)
        return cls(name=key, **kw)

    @property
    def output_pitch_mm(self) -> float:
        return self.pixel_pitch_mm * self.binning

    def _blur(self, x):
        return x if self.mtf is None else self.mtf.apply(x, self.pixel_pitch_mm)

    def expected(self, S1):
        """Mean reading (ADU) without noise or ADC, (..., H/k, W/k): bin(gain * MTF * S1 + offset)."""
        x, was_np = _to_torch(S1, "S1")
        _check_image(x, "S1")
        y = self._blur(x) * self.gain + self.offset
        return _back(bin_image(y, self.binning), was_np)

    def __call__(self, S1, S2, seed=None, generator=None, method: str = "gaussian", adc: bool = True):
        """Noisy reading (ADU), (..., H/k, W/k).

        S1, S2 : (..., H, W) sums from the Beer-Lambert stage (:func:`signal_weights`), keV and keV^2.
        method : "gaussian" (reparameterised, differentiable in S1 and S2) or "poisson" (scaled
        Poisson, exact moments, no gradient through the noise). adc : round and clip when ``bits``.
        Seeded (``seed`` or ``generator``): the same seed gives the same image.
        """
        x1, was_np = _to_torch(S1, "S1")
        x2, _ = _to_torch(S2, "S2")
        x2 = x2.to(device=x1.device, dtype=x1.dtype)
        _check_image(x1, "S1")
        _check_image(x2, "S2")
        if x1.shape != x2.shape:
            raise ValueError(f"S1 {tuple(x1.shape)} and S2 {tuple(x2.shape)} must have the same shape")
        g = _gen(seed, generator, x1.device)
        var = x2 / self.swank
        if method == "gaussian":
            q = gaussian_noise(x1, var, generator=g)
        elif method == "poisson":
            q = scaled_poisson_noise(x1, var, generator=g)
        else:
            raise ValueError(f"method must be 'gaussian' or 'poisson', got {method!r}")
        y = self._blur(q) * self.gain + self.offset
        if self.electronic_noise > 0:
            y = y + self.electronic_noise * torch.randn(y.shape, generator=g, dtype=y.dtype, device=y.device)
        y = bin_image(y, self.binning)
        if adc and self.bits is not None:
            top = float(2 ** self.bits - 1)
            y = quantize(y, self.bits)
            if bool((y >= top).all()) or bool((y <= 0).all()):
                warnings.warn(f"every pixel is {'saturated' if bool((y >= top).all()) else 'at 0'} after the "
                              f"{self.bits}-bit ADC: check gain/offset and the exposure", RuntimeWarning, stacklevel=2)
        return _back(y, was_np)

    def noise_power_spectrum(self, height: int, width: int, S2: float) -> np.ndarray:
        """Predicted NPS (ADU^2 per pixel, (height, width//2+1) on the rfft2 grid) of a flat field of
        native pixels (before binning and ADC) with second-moment sum ``S2`` (keV^2):
        ``gain^2 (S2/I) |MTF|^2 + sigma_e^2``. Its mean over the full 2-D frequency grid is the
        pixel variance."""
        S2 = _num("S2", S2, nonneg=True)
        T2 = (np.ones((height, width // 2 + 1)) if self.mtf is None
              else self.mtf.transfer(height, width, self.pixel_pitch_mm).numpy() ** 2)
        return self.gain ** 2 * (S2 / self.swank) * T2 + self.electronic_noise ** 2


@dataclass
class PhotonCountingModel:
    """Photon-counting detector with energy thresholds.

    thresholds_keV : (B,) increasing; bin b counts energies in [t_b, t_{b+1}), the last bin up to inf.
    mtf : applied to the expected counts before the Poisson noise (charge sharing / PSF).
    energy_fwhm_keV : Gaussian energy resolution used by :meth:`weights`. binning : k x k sum.
    """

    pixel_pitch_mm: float
    thresholds_keV: tuple
    mtf: MTF | None = None
    energy_fwhm_keV: float = 0.0
    binning: int = 1

    def __post_init__(self):
        self.pixel_pitch_mm = _num("pixel_pitch_mm", self.pixel_pitch_mm, positive=True)
        t = np.atleast_1d(np.asarray(self.thresholds_keV, dtype=np.float64))
        if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(np.diff(t) <= 0):
            raise ValueError(f"thresholds_keV must be increasing energies >= 0 keV, got {self.thresholds_keV!r}")
        self.thresholds_keV = tuple(float(v) for v in t)
        if self.mtf is not None and not isinstance(self.mtf, MTF):
            raise TypeError(f"mtf must be an MTF or None, got {type(self.mtf).__name__}")
        self.energy_fwhm_keV = _num("energy_fwhm_keV", self.energy_fwhm_keV, nonneg=True)
        if not isinstance(self.binning, (int, np.integer)) or isinstance(self.binning, bool) or self.binning < 1:
            raise ValueError(f"binning must be a positive integer, got {self.binning!r}")

    def weights(self, photons, energies_keV, efficiency=None) -> np.ndarray:
        """(B, E) Beer-Lambert weights of the energy bins (see :func:`counting_bin_weights`)."""
        return counting_bin_weights(energies_keV, self.thresholds_keV, photons, efficiency, self.energy_fwhm_keV)

    def expected(self, counts):
        """Mean counts (B, H/k, W/k) from the per-bin sums (B, H, W): blurred, then binned (summed)."""
        x, was_np = _to_torch(counts, "counts")
        _check_image(x, "counts")
        y = x if self.mtf is None else self.mtf.apply(x, self.pixel_pitch_mm)
        return _back(bin_image(y, self.binning, mode="sum"), was_np)

    def __call__(self, counts, seed=None, generator=None, method: str = "poisson"):
        """Noisy counts per bin, (B, H/k, W/k): "poisson" (exact, integer-valued floats, no gradient)
        or "gaussian" (mean + sqrt(mean) eps, differentiable). Seeded."""
        x, was_np = _to_torch(counts, "counts")
        _check_image(x, "counts")
        g = _gen(seed, generator, x.device)
        lam = x if self.mtf is None else torch.clamp(self.mtf.apply(x, self.pixel_pitch_mm), min=0.0)
        if method == "poisson":
            y = poisson_noise(lam, generator=g)
        elif method == "gaussian":
            y = gaussian_noise(lam, lam, generator=g)
        else:
            raise ValueError(f"method must be 'poisson' or 'gaussian', got {method!r}")
        return _back(bin_image(y, self.binning, mode="sum"), was_np)


# Detector presets: MTF (see MTF_PRESETS) and the native pixel pitch of the measured panels.
# CsI Swank factor: 0.91-0.93 below the K edge for structured CsI:Tl (Zhao, Ristic & Rowlands,
# Med. Phys. 31, 2594, 2004); 0.91 taken. The GOS Swank factor is left at 1 (no value from the
# same source): set your own.
DETECTOR_PRESETS = {
    "csi": {"mtf": "csi_samei2003", "pixel_pitch_mm": 0.127, "swank": 0.91},
    "gos": {"mtf": "gos_samei2003", "pixel_pitch_mm": 0.127, "swank": 1.0},
}
