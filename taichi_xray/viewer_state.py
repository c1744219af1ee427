"""State and input handling of the interactive viewer, without a window.

Everything the GGUI front end (:mod:`taichi_xray.viewer`) does with user input
goes through the functions and the :class:`ViewerState` methods of this
module, so they can be tested without Vulkan or a display:

* mouse drag on the X-ray pane -> C-arm angles (:func:`drag_to_angles`),
  right drag -> window/level (:meth:`ViewerState.level_drag`);
* key presses -> angle steps and toggles (:meth:`ViewerState.handle_key`);
* sliders -> scene parameters (:meth:`ViewerState.set_param`), turned into a
  :class:`~taichi_xray.camera.Camera` (:meth:`ViewerState.camera`) and a
  :class:`~taichi_xray.physics.spectra.Spectrum` (:meth:`ViewerState.spectrum`);
* window/level and log/linear display (:func:`window_to_uint8`,
  :func:`display_quantity`);
* the scripted camera path of the off-screen mode (:func:`camera_path`);
* numbered file names that never overwrite (:func:`unique_stem`).

Angles are in degrees (LAO positive, RAO negative; CRAN positive, CAUD
negative, as :meth:`Camera.c_arm`), distances in mm, tube voltage in kV.
Change detection: :meth:`ViewerState.geometry_key`, :meth:`material_key`
and :meth:`spectrum_key` change only when the rasterization, the per-object
material weights or the spectrum must be recomputed.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ViewerState", "drag_to_angles", "wrap_angle", "window_to_uint8", "display_quantity",
    "camera_path", "unique_stem", "DISPLAY_KINDS", "KEY_HELP", "CRAN_LIMIT", "FILTERS", "IMAGING_STAGES",
    "imaging_stages",
]

DISPLAY_KINDS = ("line_integral", "transmission", "intensity")
CRAN_LIMIT = 89.0  # |cran| = 90 puts the beam along the patient's long axis (undefined image rows)
FILTERS = ("Al", "Cu")  # filters always offered by the sliders (besides the scene's own)
KVP_RANGE = (40, 150)  # TASMIP tungsten spectra
FILTER_MAX_MM = {"Al": 10.0, "Cu": 1.0}
SCALE_RANGE = (0.0, 5.0)
PHOTONS_RANGE = (1e2, 1e7)

SEED_MAX = 2 ** 31 - 1

# imaging-stage switches (name, key, text): on only for the stages the scene sets up
# ([source] focal_spot / heel / falloff, [scatter], [detector] mtf); see imaging_stages()
IMAGING_STAGES = (
    ("focal_spot", "f", "focal spot"),
    ("heel", "h", "heel effect"),
    ("falloff", "o", "falloff"),
    ("scatter", "c", "scatter"),
    ("blur", "b", "detector blur (MTF)"),
)
_STAGE_KEYS = {k: name for name, k, _ in IMAGING_STAGES}
_STAGE_TEXT = {name: text for name, _, text in IMAGING_STAGES}

KEY_HELP = (
    "drag X-ray: C-arm LAO/RAO, CRAN/CAUD | right-drag X-ray: window/level | drag 3D: orbit view | "
    "arrows: 5 deg steps (shift: 1 deg) | s: save | a: auto window | l: log/linear | i: invert | "
    "n: noise (the detector model's when it has noise) | f/h/o/c/b: focal spot/heel/falloff/scatter/"
    "detector blur on/off (scenes with them) | r: reset | Esc: quit"
)


def imaging_stages(imaging) -> dict:
    """{stage: True} for the switchable stages an :class:`~taichi_xray.physics.imaging.Imaging`
    has (focal_spot, heel, falloff, scatter, blur = a detector model with an MTF); {} for None."""
    if imaging is None:
        return {}
    det = imaging.detector
    have = {"focal_spot": imaging.focal_spot is not None, "heel": bool(imaging.heel),
            "falloff": bool(imaging.falloff), "scatter": imaging.scatter is not None,
            "blur": det is not None and getattr(det, "mtf", None) is not None}
    return {name: True for name, _, _ in IMAGING_STAGES if have[name]}


# ----------------------------------------------------------------------------------------
# pure functions
# ----------------------------------------------------------------------------------------
def wrap_angle(a: float) -> float:
    """Angle in degrees wrapped to [-180, 180)."""
    return float((float(a) + 180.0) % 360.0 - 180.0)


def drag_to_angles(lao: float, cran: float, dx_px: float, dy_px: float, pane_px: float,
                   deg_per_pane: float = 180.0) -> tuple[float, float]:
    """New (lao, cran) after dragging the X-ray image by (dx_px, dy_px) screen pixels.

    The detector follows the drag on a radiological display: dragging right (dx > 0,
    toward the patient's left) turns the C-arm toward LAO, dragging up (dy < 0, rows
    grow downward) tilts it CRAN. A drag across the whole pane (``pane_px``) turns
    by ``deg_per_pane`` degrees. LAO wraps to [-180, 180); CRAN is clamped to
    +-``CRAN_LIMIT``.
    """
    if not pane_px > 0:
        raise ValueError(f"pane_px must be > 0, got {pane_px}")
    k = float(deg_per_pane) / float(pane_px)
    lao = wrap_angle(lao + k * float(dx_px))
    cran = float(np.clip(cran - k * float(dy_px), -CRAN_LIMIT, CRAN_LIMIT))
    return lao, cran


def window_to_uint8(image, lo: float, hi: float, invert: bool = False) -> np.ndarray:
    """Display mapping: round(255 * clip((x - lo) / (hi - lo), 0, 1)) as uint8 (H, W).

    Same rule as :func:`taichi_xray.imageio.to_uint` with 8 bits; NaN -> 0; a flat
    window (hi == lo) maps everything to 0 (255 inverted).
    """
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"window must be finite with lo <= hi, got ({lo}, {hi})")
    a = np.asarray(image, dtype=np.float64)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    x = np.nan_to_num(np.clip((a - lo) * scale, 0.0, 255.0), nan=0.0)
    if invert:
        x = 255.0 - x
    return np.rint(x).astype(np.uint8)


def display_quantity(transmission, kind: str, I0: float = 1.0, floor: float | None = None):
    """The displayed image from a transmission T (H, W) (numpy or torch).

    kind : "line_integral" (log display, -ln T), "transmission" (linear, T) or
    "intensity" (linear, T * I0). ``floor`` bounds T from below before the log
    (default: the smallest positive normal number of the dtype).
    """
    if kind not in DISPLAY_KINDS:
        raise ValueError(f"display kind must be one of {DISPLAY_KINDS}, got {kind!r}")
    T = transmission
    if kind == "transmission":
        return T
    if kind == "intensity":
        return T * float(I0)
    if hasattr(T, "clamp"):  # torch
        import torch

        f = torch.finfo(T.dtype).tiny if floor is None else floor
        return -torch.log(T.clamp(min=f))
    a = np.asarray(T)
    f = np.finfo(a.dtype if a.dtype.kind == "f" else np.float64).tiny if floor is None else floor
    return -np.log(np.maximum(a, f))


def camera_path(n: int, kind: str = "lao", start: float = -45.0, stop: float = 45.0,
                lao: float = 0.0, cran: float = 0.0) -> list[tuple[float, float]]:
    """(lao, cran) for the ``n`` frames of a scripted off-screen sweep.

    kind : "lao" (LAO from ``start`` to ``stop`` at the given ``cran``), "cran"
    (CRAN from ``start`` to ``stop`` at the given ``lao``) or "orbit" (a full LAO
    turn from ``start``, ``n`` distinct angles, at the given ``cran``).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"number of frames must be a positive integer, got {n!r}")
    if kind == "lao":
        return [(wrap_angle(a), float(cran)) for a in np.linspace(start, stop, n)]
    if kind == "cran":
        if max(abs(start), abs(stop)) > CRAN_LIMIT:
            raise ValueError(f"a CRAN sweep must stay within +-{CRAN_LIMIT} deg, got {start}..{stop}")
        return [(wrap_angle(lao), float(c)) for c in np.linspace(start, stop, n)]
    if kind == "orbit":
        return [(wrap_angle(start + 360.0 * i / n), float(cran)) for i in range(n)]
    raise ValueError(f"camera path kind must be 'lao', 'cran' or 'orbit', got {kind!r}")


def unique_stem(directory, base: str, exts, digits: int = 3) -> Path:
    """``directory / f"{base}_{NNN}"`` with the smallest NNN >= 1 such that no
    ``stem + ext`` exists for any ext in ``exts`` (one number for a PNG/NPY/P set),
    and larger than every number already used for ``base`` (a deleted file's number
    is not reused). The directory must exist.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"output directory {d} does not exist")
    base = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(base)) or "xray"
    pat = re.compile(re.escape(base) + r"_(\d+)")
    used = [int(m.group(1)) for p in d.iterdir() if (m := pat.match(p.name))]
    n = max(used, default=0) + 1
    while True:
        stem = d / f"{base}_{n:0{digits}d}"
        if not any(Path(str(stem) + e).exists() for e in exts):
            return stem
        n += 1


# ----------------------------------------------------------------------------------------
# state
# ----------------------------------------------------------------------------------------
@dataclass
class ViewerState:
    """Everything the user can change. Build it with :meth:`from_scene`.

    Geometry: lao, cran (deg), sdd, sid (mm), size (width, height) px.
    Spectrum: kvp (kV, None when the scene's spectrum is not a tungsten tube),
    filtration {material: mm}. Objects: visible (P bools), mu_scale (P factors).
    Display: kind (one of DISPLAY_KINDS), window (lo, hi) in units of kind,
    auto_window, invert, noise, photons (per pixel), seed.
    Imaging stages: ``stages`` {stage: on} for the switchable stages the scene has
    (:data:`IMAGING_STAGES`: focal_spot, heel, falloff, scatter, blur); ``imaging_noise``
    is True when the scene's detector model has noise: then ``noise`` and ``seed`` switch
    and seed that noise (``photons`` is unused) instead of the viewer's Poisson noise.
    3D view: orbit_az, orbit_el (deg), zoom.
    """

    lao: float = 0.0
    cran: float = 0.0
    sdd: float = 1000.0
    sid: float = 750.0
    size: tuple = (256, 256)
    kvp: float | None = 80.0
    filtration: dict = field(default_factory=dict)
    bin_width: float = 1.0
    visible: list = field(default_factory=list)
    mu_scale: list = field(default_factory=list)
    kind: str = "line_integral"
    window: tuple = (0.0, 1.0)
    auto_window: bool = True
    invert: bool = False
    noise: bool = False
    photons: float = 1e4
    seed: int = 0
    orbit_az: float = 35.0
    orbit_el: float = 20.0
    zoom: float = 1.0
    step_deg: float = 5.0
    fine_step_deg: float = 1.0
    c_arm: bool = True
    names: list = field(default_factory=list)
    stages: dict = field(default_factory=dict)
    imaging_noise: bool = False
    _initial: dict | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_scene(cls, scene, size=None, lao=None, cran=None, kvp=None) -> "ViewerState":
        """Initial state from a loaded :class:`~taichi_xray.scene.Scene` (its camera,
        spectrum and [output]); ``size = (width, height)`` overrides the detector size
        (the physical detector width is kept); ``lao``, ``cran`` (deg) and ``kvp`` override
        the scene's initial values."""
        cs, ss, out = scene.camera_spec, scene.spectrum_spec, scene.output
        w, h = (cs.width, cs.height) if size is None else (int(size[0]), int(size[1]))
        if w <= 0 or h <= 0:
            raise ValueError(f"detector size must be positive, got {w}x{h}")
        c_arm = cs.kind == "c_arm"
        im = getattr(scene, "imaging", None)
        im_noise = im is not None and im.noise is not None
        st = cls(
            lao=float(cs.lao) if c_arm else 0.0,
            cran=float(cs.cran) if c_arm else 0.0,
            sdd=float(cs.sdd) if c_arm else 0.0,
            sid=float(cs.sid) if c_arm else 0.0,
            size=(w, h),
            kvp=float(ss.kvp) if ss.kind == "tungsten" else None,
            filtration=dict(ss.filtration or {}) if ss.kind == "tungsten" else {},
            bin_width=float(ss.bin_width),
            visible=[True] * len(scene.objects),
            mu_scale=[1.0] * len(scene.objects),
            kind=out.kind,
            window=tuple(out.window) if out.window is not None else (0.0, 1.0),
            auto_window=out.window is None,
            invert=bool(out.invert),
            noise=out.noise is not None or im_noise,
            photons=float(out.noise[0]) if out.noise is not None else 1e4,
            seed=int(im.seed) if im_noise else int(out.noise[1]) if out.noise is not None else 0,
            c_arm=c_arm,
            names=list(scene.names),
            stages=imaging_stages(im),
            imaging_noise=im_noise,
        )
        if st.kvp is not None:
            for f in FILTERS:
                st.filtration.setdefault(f, 0.0)
        for name, v in (("lao", lao), ("cran", cran), ("kvp", kvp)):
            if v is not None:
                st.set_param(name, v)
        st._initial = st._snapshot()
        return st

    def _snapshot(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "_initial"}
        return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v) for k, v in d.items()}

    def reset(self) -> None:
        """Back to the state the viewer started with."""
        if self._initial is None:
            raise ValueError("reset() needs a state built with ViewerState.from_scene")
        for k, v in self._initial.items():
            setattr(self, k, list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)

    # ------------------------------------------------------------------ change keys
    def geometry_key(self) -> tuple:
        """Changes iff the camera changes (re-rasterize)."""
        return (round(self.lao, 9), round(self.cran, 9), round(self.sdd, 9), tuple(self.size))

    def material_key(self) -> tuple:
        """Changes iff the per-object material weights change (visibility, attenuation scale)."""
        return (tuple(bool(v) for v in self.visible), tuple(round(float(s), 9) for s in self.mu_scale))

    def spectrum_key(self) -> tuple:
        """Changes iff the spectrum must be rebuilt (kVp, filtration)."""
        return (self.kvp, tuple(sorted((k, round(float(v), 6)) for k, v in self.filtration.items())))

    def noise_key(self) -> tuple:
        return (bool(self.noise), float(self.photons), int(self.seed))

    def imaging_key(self) -> tuple:
        """Changes iff an imaging-stage switch changes."""
        return tuple(sorted((k, bool(v)) for k, v in self.stages.items()))

    # ------------------------------------------------------------------ builders
    def camera(self, camera_spec):
        """The :class:`Camera` for the current angles, SDD and size (a raw-matrix camera
        ignores angles and SDD, which the viewer does not offer for it)."""
        if not self.c_arm:
            return camera_spec.build(size=self.size)
        spec = dataclasses.replace(camera_spec, sdd=float(self.sdd), sid=float(self.sid))
        return spec.build(lao=self.lao, cran=self.cran, size=self.size)

    def spectrum(self, spectrum_spec):
        """The :class:`Spectrum`: a tungsten tube at ``kvp`` with ``filtration`` (filters of
        0 mm left out), or the scene's own spectrum when it is not a tungsten tube."""
        if self.kvp is None:
            return spectrum_spec.build()
        from .physics.spectra import Spectrum

        filt = {k: float(v) for k, v in self.filtration.items() if float(v) > 0}
        return Spectrum.tungsten(float(self.kvp), filtration=filt, bin_width=self.bin_width)

    # ------------------------------------------------------------------ input
    def set_param(self, name: str, value, index: int | None = None) -> bool:
        """Apply one slider/checkbox. Returns True when the value changed.

        name : "sdd" (mm, > sid), "kvp" (kV, 40..150), "filter:<material>" (mm, >= 0),
        "visible" / "mu_scale" (with ``index``, the object), "noise" (bool), "photons"
        (per pixel, > 0), "window_lo" / "window_hi" (switch auto window off), "kind"
        (one of DISPLAY_KINDS), "invert" (bool), "lao" / "cran" (deg), "seed" (noise seed,
        integer >= 0), and the imaging stages the scene has: "focal_spot", "heel", "falloff",
        "scatter", "blur" (bool; a stage the scene lacks raises KeyError).
        Out-of-range numbers raise ValueError naming the parameter and the range.
        """
        def num(v, lo=-math.inf, hi=math.inf, lo_open=False):
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise TypeError(f"viewer parameter {name!r} must be a number, got {v!r}") from None
            if not math.isfinite(x) or x < lo or x > hi or (lo_open and x == lo):
                rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
                raise ValueError(f"viewer parameter {name!r} = {v!r} is outside {rng}")
            return x

        def obj_index():
            if index is None or not (0 <= int(index) < len(self.visible)):
                raise IndexError(f"viewer parameter {name!r} needs an object index in [0, {len(self.visible)}), "
                                 f"got {index!r}")
            return int(index)

        old = self._snapshot()
        if name == "sdd":
            if not self.c_arm:
                raise ValueError("the source-detector distance can only be changed on a C-arm camera")
            self.sdd = num(value, self.sid, lo_open=True)
        elif name in ("lao", "cran"):
            if not self.c_arm:
                raise ValueError("C-arm angles cannot be changed on a camera given by a raw matrix P")
            if name == "lao":
                self.lao = wrap_angle(num(value))
            else:
                self.cran = num(value, -CRAN_LIMIT, CRAN_LIMIT)
        elif name == "kvp":
            if self.kvp is None:
                raise ValueError("the kVp can only be changed for a tungsten spectrum ([spectrum] kvp = ...)")
            self.kvp = num(value, *KVP_RANGE)
        elif name.startswith("filter:"):
            if self.kvp is None:
                raise ValueError("filtration can only be changed for a tungsten spectrum")
            mat = name.split(":", 1)[1]
            if mat not in self.filtration:
                raise KeyError(f"unknown filter {mat!r}; this viewer offers {', '.join(self.filtration)}")
            self.filtration[mat] = num(value, 0.0, FILTER_MAX_MM.get(mat, 10.0))
        elif name == "visible":
            self.visible[obj_index()] = bool(value)
        elif name == "mu_scale":
            self.mu_scale[obj_index()] = num(value, *SCALE_RANGE)
        elif name == "noise":
            self.noise = bool(value)
        elif name == "photons":
            self.photons = num(value, 0.0, lo_open=True)
        elif name in ("window_lo", "window_hi"):
            x = num(value)
            lo, hi = self.window
            self.window = (min(x, hi), hi) if name == "window_lo" else (lo, max(x, lo))
            self.auto_window = False
        elif name == "kind":
            if value not in DISPLAY_KINDS:
                raise ValueError(f"display kind must be one of {DISPLAY_KINDS}, got {value!r}")
            if value != self.kind:
                self.kind = value
                self.auto_window = True  # other units
        elif name == "invert":
            self.invert = bool(value)
        elif name == "seed":
            x = num(value, 0, SEED_MAX)
            if x != int(x):
                raise ValueError(f"viewer parameter 'seed' must be an integer, got {value!r}")
            self.seed = int(x)
        elif name in _STAGE_TEXT:
            if name not in self.stages:
                raise KeyError(f"this scene has no {_STAGE_TEXT[name]} to switch "
                               f"({'no imaging stages' if not self.stages else 'it has: ' + ', '.join(self.stages)})")
            self.stages[name] = bool(value)
        else:
            raise KeyError(f"unknown viewer parameter {name!r}")
        return self._snapshot() != old

    def drag(self, dx_px: float, dy_px: float, pane_px: float) -> None:
        """Left drag on the X-ray pane: turn the C-arm (see :func:`drag_to_angles`)."""
        if self.c_arm:
            self.lao, self.cran = drag_to_angles(self.lao, self.cran, dx_px, dy_px, pane_px)

    def orbit(self, dx_px: float, dy_px: float, pane_px: float) -> None:
        """Drag on the 3D pane: orbit the overview camera (180 deg per pane)."""
        k = 180.0 / float(pane_px)
        self.orbit_az = wrap_angle(self.orbit_az - k * dx_px)
        self.orbit_el = float(np.clip(self.orbit_el + k * dy_px, -85.0, 85.0))

    def level_drag(self, dx_px: float, dy_px: float, pane_px: float) -> None:
        """Right drag on the X-ray pane: horizontal = window width (right widens, by the
        current width per pane, multiplicatively), vertical = level (down raises the
        centre by one width per pane). Switches the auto window off."""
        lo, hi = self.window
        c, w = 0.5 * (lo + hi), max(hi - lo, 1e-12)
        w = w * math.exp(float(dx_px) / float(pane_px))
        c = c + w * float(dy_px) / float(pane_px)
        self.window = (c - 0.5 * w, c + 0.5 * w)
        self.auto_window = False

    def toggle_log(self) -> None:
        """Log (line integral) <-> linear (transmission) display; the window becomes automatic."""
        self.set_param("kind", "transmission" if self.kind == "line_integral" else "line_integral")

    def handle_key(self, key: str, shift: bool = False) -> str | None:
        """Apply a key press. Returns an action the front end must do itself
        ("save", "quit") or None. Keys: arrows (LAO/RAO, CRAN/CAUD steps of
        ``step_deg``, ``fine_step_deg`` with shift), a, l, i, n, r, s, Escape, and
        f, h, o, c, b (imaging stages, :data:`IMAGING_STAGES`; ignored for a stage the scene
        lacks)."""
        k = key.lower() if isinstance(key, str) else key
        step = self.fine_step_deg if shift else self.step_deg
        arrows = {"left": (-step, 0.0), "right": (step, 0.0), "up": (0.0, step), "down": (0.0, -step)}
        if k in arrows:
            if self.c_arm:
                da, dc = arrows[k]
                self.lao = wrap_angle(self.lao + da)
                self.cran = float(np.clip(self.cran + dc, -CRAN_LIMIT, CRAN_LIMIT))
            return None
        if k == "a":
            self.auto_window = True
        elif k == "l":
            self.toggle_log()
        elif k == "i":
            self.invert = not self.invert
        elif k == "n":
            self.noise = not self.noise
        elif k in _STAGE_KEYS:
            name = _STAGE_KEYS[k]
            if name in self.stages:
                self.stages[name] = not self.stages[name]
        elif k == "r":
            self.reset()
        elif k == "s":
            return "save"
        elif k in ("escape", "q"):
            return "quit"
        return None

    def label(self) -> str:
        """Short text for file names and the status line, e.g. 'lao+30_cran-10', followed by
        the imaging stages switched on when the scene has any ('lao+30_cran-10_focal_spot+heel',
        '_no-stages' when all are off)."""
        base = f"lao{self.lao:+.0f}_cran{self.cran:+.0f}"
        if not self.stages:
            return base
        on = [k for k, _, _ in IMAGING_STAGES if self.stages.get(k)]
        return base + "_" + ("+".join(on) if on else "no-stages")

    def stages_text(self) -> str:
        """HUD line of the imaging stages: 'imaging: focal spot, heel effect (off: scatter)' ('' without)."""
        if not self.stages and not self.imaging_noise:
            return ""
        on = [t for k, _, t in IMAGING_STAGES if self.stages.get(k)]
        off = [t for k, _, t in IMAGING_STAGES if k in self.stages and not self.stages[k]]
        if self.imaging_noise:
            (on if self.noise else off).append("detector noise")
        return "imaging: " + (", ".join(on) or "none") + (f" (off: {', '.join(off)})" if off else "")
