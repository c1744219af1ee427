"""Per-sample parameters: every random number of sample ``index`` comes from ``(seed, index)``.

:func:`draw` makes a ``numpy.random.Generator`` from ``SeedSequence([seed, index])`` (a
re-draw after a failed attempt ``a >= 1`` uses ``SeedSequence([seed, index, a])``) and
draws the parameters in a fixed order (:func:`parameter_names`): scene, C-arm (lao, cran,
sid, sdd, isocentre x/y/z), kVp, filtration (sorted by material), dose (photons per
pixel or mAs), electronic noise, scatter air gap, poses (in file order: rx, ry, rz, tx, ty, tz), shape
coefficients (in file order), and last the seed of the image noise. A constant draws
nothing, every distribution draws once, so a sample depends on nothing but
``(seed, index, attempt)`` and the dataset file: not on the worker, the order in which
samples are made, or how many there are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .spec import DatasetSpec

__all__ = ["SampleParams", "seed_sequence", "draw", "parameter_names", "check_seed"]

NOISE_SEED_BITS = 53  # stored as float64 with the other parameters: exact below 2^53


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def seed_sequence(seed: int, index: int, attempt: int = 0) -> np.random.SeedSequence:
    """``SeedSequence([seed, index])`` for the first draw of a sample, ``[seed, index, attempt]``
    for re-draws after failures (attempt >= 1)."""
    seed = check_seed(seed)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"sample index must be a non-negative integer, got {index!r}")
    key = [seed, int(index)] if attempt == 0 else [seed, int(index), int(attempt)]
    return np.random.SeedSequence(key)


@dataclass
class SampleParams:
    """The parameters of one sample (mm, degrees, kVp). NaN where a quantity does not apply
    (e.g. C-arm angles of a scene given by a raw projection matrix, kVp of a monochromatic
    spectrum, dose without noise).

    poses : per [[pose]] (rotation (3,) degrees, translation (3,) mm).
    shapes : object name -> coefficients (K,) in units of standard deviations.
    """

    index: int
    attempt: int
    scene: int
    lao: float
    cran: float
    sid: float
    sdd: float
    isocenter: np.ndarray
    kvp: float
    filtration: dict
    photons_per_pixel: float
    mAs: float
    electronic_noise: float
    air_gap_mm: float = math.nan  # drawn, or set by the renderer ("auto"); NaN without scatter
    poses: list = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    noise_seed: int = 0
    nesting_px: float = math.nan  # set by the renderer: pixels of the worst nesting conflict it ignored

    def vector(self, spec: DatasetSpec) -> np.ndarray:
        """(Q,) float64 in the order of :func:`parameter_names`."""
        v = [self.scene, self.lao, self.cran, self.sid, self.sdd, *self.isocenter, self.kvp]
        v += [self.filtration.get(m, 0.0) for m in spec.filtration_materials()]
        v += [self.photons_per_pixel, self.mAs, self.electronic_noise, self.air_gap_mm]
        for rot, tr in self.poses:
            v += [*rot, *tr]
        for obj in spec.shapes:
            v += list(self.shapes[obj])
        v += [float(self.noise_seed), float(self.attempt), float(self.nesting_px)]
        return np.asarray(v, dtype=np.float64)


def parameter_names(spec: DatasetSpec) -> list[str]:
    """Column names of :meth:`SampleParams.vector`."""
    names = ["scene", "lao", "cran", "sid", "sdd", "isocenter_x", "isocenter_y", "isocenter_z", "kvp"]
    names += [f"filtration.{m}" for m in spec.filtration_materials()]
    names += ["photons_per_pixel", "mAs", "electronic_noise", "air_gap_mm"]
    for p in spec.poses:
        names += [f"pose.{p.name}.{k}" for k in ("rx", "ry", "rz", "tx", "ty", "tz")]
    for obj, s in spec.shapes.items():
        names += [f"shape.{obj}.b{k}" for k in range(len(s.coefficients))]
    names += ["noise_seed", "attempt", "nesting_conflict_px"]
    return names


def draw(spec: DatasetSpec, seed: int, index: int, attempt: int = 0) -> SampleParams:
    """The parameters of sample ``index`` (attempt ``attempt``); see the module docstring."""
    rng = np.random.default_rng(seed_sequence(seed, index, attempt))
    n = len(spec.scenes)
    if n > 1:
        p = None
        if spec.scene_weights is not None:
            w = np.asarray(spec.scene_weights, dtype=np.float64)
            p = w / w.sum()
        s = int(rng.choice(n, p=p))
    else:
        s = 0
    scene = spec.scenes[s]
    cs = scene.camera_spec
    cam = spec.camera
    nan = math.nan
    carm = cs.kind == "c_arm"

    def val(key, base):
        return cam[key].sample(rng) if key in cam else base

    lao = val("lao", cs.lao if carm else nan)
    cran = val("cran", cs.cran if carm else nan)
    sid = val("sid", cs.sid if carm else nan)
    sdd = val("sdd", cs.sdd if carm else nan)
    iso = np.asarray(cs.isocenter if carm else (nan, nan, nan), dtype=np.float64).copy()
    if "isocenter_offset" in cam:
        iso = iso + np.array([d.sample(rng) for d in cam["isocenter_offset"]])
    ss = scene.spectrum_spec
    tungsten = ss.kind == "tungsten"
    kvp = spec.kvp.sample(rng) if spec.kvp is not None else (ss.kvp if tungsten else nan)
    filt = dict(ss.filtration or {}) if tungsten else {}
    for m in sorted(spec.filtration):
        filt[m] = spec.filtration[m].sample(rng)
    ppp = mas = nan
    if spec.noise is not None:
        if spec.noise.photons_per_pixel is not None:
            ppp = spec.noise.photons_per_pixel.sample(rng)
        else:
            mas = spec.noise.mAs.sample(rng)
    en = spec.detector_model.electronic_noise.sample(rng) if spec.detector_model is not None else nan
    gap = nan
    if spec.scatter is not None and spec.scatter.air_gap_mm != "auto":
        gap = spec.scatter.air_gap_mm.sample(rng)
    poses = []
    for p in spec.poses:
        rot = np.array([d.sample(rng) for d in p.rotate_deg])
        tr = np.array([d.sample(rng) for d in p.translate])
        poses.append((rot, tr))
    shapes = {obj: np.array([d.sample(rng) for d in sh.coefficients]) for obj, sh in spec.shapes.items()}
    noise_seed = int(rng.integers(0, 2 ** NOISE_SEED_BITS))
    return SampleParams(int(index), int(attempt), s, float(lao), float(cran), float(sid), float(sdd), iso,
                        float(kvp), filt, float(ppp), float(mas), float(en), float(gap), poses, shapes, noise_seed)
