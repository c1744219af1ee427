"""Image formation after the Beer-Lambert stage: source, scatter and detector (:class:`Imaging`).

The :class:`~taichi_xray.pipeline.Pipeline` runs, per view:

1. Beer-Lambert with B weight sets ``w[b, row, E]`` (:meth:`Imaging.weights`): the detector
   signal (photons x detector response), and for a noisy energy-integrating detector also
   its second moment (``N eta E^2``, for the compound-Poisson variance); for a
   photon-counting detector one set per energy bin. Photons per pixel come from the
   spectrum's absolute fluence x ``mAs`` at the source-detector distance (inverse square),
   or stay in the spectrum's relative units without ``mAs``. The anode heel effect makes
   the weights differ per detector row (or column): :func:`~taichi_xray.physics.source.heel_weights`.
2. A finite focal spot: the view is rendered from several source positions over the spot
   (:meth:`~taichi_xray.physics.source.FocalSpot.samples`, each a camera with the same
   detector, :func:`~taichi_xray.physics.source.shifted_camera`) and the signals averaged
   with the samples' weights: the depth-dependent penumbra of a cone beam, exactly.
3. The inverse-square and obliquity falloff across the detector (``falloff``).
4. Scatter, added to the primary signal: :class:`~taichi_xray.physics.scatter.KernelScatterModel`
   (scatter-kernel superposition on the water-equivalent thickness, calibrated against the
   package's Monte Carlo; linear in the primary, so it takes the signal in any unit).
5. The detector model (:class:`~taichi_xray.physics.detector_model.DetectorModel` or
   :class:`~taichi_xray.physics.detector_model.PhotonCountingModel`): MTF blur, quantum and
   electronic noise, gain/offset, binning, ADC; noise seeded, Gaussian
   (reparameterised: differentiable) or Poisson.

Transmission and line integral are taken against the flat field (the same chain with
nothing in the beam, noise-free): ``T = (reading - offset) / (flat - offset)``.
Every step is a torch operation on the Beer-Lambert output, so gradients flow through it
(except the exact Poisson samplers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .detector import Detector
from .detector_model import DetectorModel, PhotonCountingModel, counting_bin_weights, make_generator
from .source import FocalSpot, fluence_falloff, heel_weights, photons_per_pixel, shifted_camera
from .spectra import Spectrum

__all__ = ["Imaging"]

_NOISE = (None, "gaussian", "poisson")


@dataclass
class Imaging:
    """What happens to the X-rays besides attenuation (all optional; the default adds nothing).

    mAs : tube current x time; with it the signal is in absolute photons (the spectrum's
        photons/mm^2/mAs at 1 m, inverse square to the detector, times the pixel area).
    falloff : inverse-square and obliquity falloff across the detector (needs pixel spacing).
    heel : anode heel effect with ``anode`` ("top", "bottom", "left", "right": the anode's side
        of the image) and ``anode_angle_deg``; ``kvp`` (the tube voltage; default: inferred from
        the spectrum's highest non-empty bin).
    focal_spot : :class:`FocalSpot` (sizes in mm) rendered with ``focal_samples`` source
        positions (a quadrature grid; ``focal_seed`` for seeded random samples instead).
    scatter : a :class:`~taichi_xray.physics.scatter.KernelScatterModel` (or any callable
        ``scatter(primary (H, W), water_equivalent_mm (H, W), pixel_spacing_mm, principal_point=(u, v))``).
    detector : :class:`DetectorModel` (energy integrating) or :class:`PhotonCountingModel`.
    noise : None (the expected image), "gaussian" (differentiable) or "poisson"; ``seed``.
    """

    mAs: float | None = None
    falloff: bool = False
    heel: bool = False
    anode: str = "top"
    anode_angle_deg: float = 12.0
    kvp: float | None = None
    focal_spot: FocalSpot | None = None
    focal_samples: int = 9
    focal_seed: int | None = None
    scatter: object | None = None
    detector: DetectorModel | PhotonCountingModel | None = None
    noise: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.noise not in _NOISE:
            raise ValueError(f"noise must be None, 'gaussian' or 'poisson', got {self.noise!r}")
        if self.noise is not None and self.detector is None:
            raise ValueError("noise needs a detector model (Imaging(detector=DetectorModel(...)))")
        if self.mAs is not None and not (float(self.mAs) > 0 and np.isfinite(self.mAs)):
            raise ValueError(f"mAs must be > 0, got {self.mAs}")
        if self.focal_spot is not None and not isinstance(self.focal_spot, FocalSpot):
            raise TypeError(f"focal_spot must be a FocalSpot, got {type(self.focal_spot).__name__}")
        if int(self.focal_samples) < 1:
            raise ValueError(f"focal_samples must be >= 1, got {self.focal_samples}")
        if self.detector is not None and not isinstance(self.detector, (DetectorModel, PhotonCountingModel)):
            raise TypeError("detector must be a DetectorModel or a PhotonCountingModel")

    @property
    def active(self) -> bool:
        return any((self.mAs is not None, self.falloff, self.heel, self.focal_spot is not None,
                    self.scatter is not None, self.detector is not None))

    @property
    def counting(self) -> bool:
        return isinstance(self.detector, PhotonCountingModel)

    # ------------------------------------------------------------------ stage 1: weights
    def weights(self, spectrum: Spectrum, response: Detector | None, camera) -> np.ndarray:
        """(B, R, E) Beer-Lambert weights for ``camera`` (R = 1, or H / W with the heel effect)."""
        e = spectrum.energies
        n = spectrum.photons.astype(np.float64)
        if self.mAs is not None:
            if camera.pixel_spacing is None:
                raise ValueError("mAs needs cameras with pixel_spacing (the pixel area and the distance)")
            n = photons_per_pixel(spectrum, self.mAs, camera.detector_distance, camera.pixel_spacing ** 2)
        det = response if response is not None else Detector("counting")  # ideal counter: weight 1
        if self.counting:
            d = self.detector
            w = counting_bin_weights(e, d.thresholds_keV, n, det.efficiency(e), d.energy_fwhm_keV)
        elif self.detector is not None and self.noise is not None:
            r = det.response(e)
            second = r * e if det.kind == "energy" else r
            w = np.stack([n * r, n * second])
        else:
            w = (n * det.response(e))[None]
        w = w[:, None, :]
        if self.heel:
            h = heel_weights(spectrum, camera, self.anode_angle_deg, self.anode, kvp=self.kvp)  # (H or W, E)
            w = w * h[None]
        return w

    @property
    def rows_mode(self) -> int:
        """The Beer-Lambert kernel's ``rows`` template: 0, 1 (per row) or 2 (per column)."""
        if not self.heel:
            return 0
        return 1 if self.anode in ("top", "bottom") else 2

    # ------------------------------------------------------------------ stage 2: sources
    def sources(self, camera):
        """[(camera, weight)] of the sub-sources of a view (one without a focal spot)."""
        if self.focal_spot is None:
            return [(camera, 1.0)]
        spot = self.focal_spot.oriented(camera, self.anode)
        off, wt = spot.samples(int(self.focal_samples), seed=self.focal_seed)
        return [(shifted_camera(camera, o), float(w)) for o, w in zip(off, wt)]

    # ------------------------------------------------------------------ stages 3-5
    def form(self, signal: torch.Tensor, camera, water_mm: torch.Tensor | None = None, noise: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Detector reading (B', H', W') from the Beer-Lambert sums (B, H, W) of one view (focal
        spot already averaged). ``noise=False`` gives the expected reading."""
        x = signal
        if self.falloff:
            if camera.pixel_spacing is None:
                raise ValueError("falloff needs cameras with pixel_spacing")
            x = x * torch.as_tensor(fluence_falloff(camera), dtype=x.dtype, device=x.device)
        if self.scatter is not None:
            if water_mm is None:
                raise ValueError("the scatter model needs the water-equivalent thickness")
            if camera.pixel_spacing is None:
                raise ValueError("scatter needs cameras with pixel_spacing (the kernels are in mm)")
            S = self.scatter(x[0], water_mm.to(x.dtype), camera.pixel_spacing, principal_point=camera.principal_point)
            x = torch.cat([x[:1] + S[None], x[1:]])
        d = self.detector
        if d is None:
            return x[:1]
        if self.counting:
            if noise and self.noise is not None:
                return d(x, generator=generator, method=self.noise)
            return d.expected(x)
        if noise and self.noise is not None:
            return d(x[0], x[1], generator=generator, method=self.noise)[None]
        return d.expected(x[0])[None]

    def generator(self, device) -> torch.Generator:
        return make_generator(int(self.seed), device)

    def reading_offset(self) -> float:
        d = self.detector
        return float(d.offset) if isinstance(d, DetectorModel) else 0.0
