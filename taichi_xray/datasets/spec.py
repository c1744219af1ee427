"""Dataset files: a TOML description of what ``taichi-xray generate`` samples and writes.

:func:`load_dataset` reads and validates a dataset file and returns a :class:`DatasetSpec`
with its scenes loaded (:func:`taichi_xray.scene.load_scene`) and its shape models read.
Every error is a :class:`DatasetError` (a ``ValueError``; a missing file is also a
``FileNotFoundError``, a wrong type also a ``TypeError``) whose message starts with the
dataset file, the table and the key, e.g.::

    data/chest.toml: [camera]: key 'lao': unknown distribution 'uniforn'; did you mean 'uniform'? ...

The format is documented in ``docs/datasets.md``. Units: mm, degrees, kVp, mAs. Scene and
shape-model files are resolved against the folder of the dataset file.

A sampled quantity is either a number (a constant) or a distribution table::

    lao = { dist = "uniform", low = -30, high = 30 }
    cran = { dist = "truncnormal", mean = 0, std = 10, low = -25, high = 25 }
    sdd = { dist = "normal", mean = 1200, std = 20 }
    photons_per_pixel = { dist = "loguniform", low = 1e3, high = 1e5 }
    Cu = { dist = "choice", values = [0.0, 0.1, 0.2], weights = [2, 1, 1] }

(:class:`Dist`). Quantities with physical bounds (kVp in [40, 150], |cran| < 90, sid and sdd
> 0 with sdd > sid, filtration >= 0, photons > 0) must be given by distributions whose
support lies inside them, so no sample can be invalid by construction.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ._validate import Ctx as _Ctx
from ._validate import DatasetError, DatasetFileNotFoundError, DatasetTypeError, _is_num
from ._validate import expand_objects as _expand
from .distributions import DIST_KINDS, Dist

__all__ = ["DatasetError", "DatasetFileNotFoundError", "DatasetTypeError", "Dist", "PoseSpec", "ShapeSpec",
           "PointLandmark", "PelvisLandmarkSpec", "NoiseSpec", "DetectorModelSpec", "ScatterSpec", "OutputSpec",
           "DatasetSpec",
           "load_dataset", "parse_dataset", "DIST_KINDS", "OUTPUT_KINDS"]

OUTPUT_KINDS = ("line_integral", "transmission", "intensity")
COMPRESSIONS = ("gzip", "lzf", "none")

_SECTIONS = ("dataset", "camera", "spectrum", "noise", "detector_model", "pose", "shape", "landmarks", "output",
             "scatter")
_DATASET_KEYS = ("name", "description", "scenes", "scene_weights", "size", "max_attempts", "nesting_tolerance_px")
_CAMERA_KEYS = ("lao", "cran", "sid", "sdd", "isocenter_offset")
_SPECTRUM_KEYS = ("kvp", "filtration")
_NOISE_KEYS = ("model", "photons_per_pixel", "mAs")
_DETMODEL_KEYS = ("preset", "blur", "swank", "gain", "offset", "electronic_noise", "method")
_POSE_KEYS = ("name", "objects", "children", "rotate_deg", "translate", "centre")
_SHAPE_KEYS = ("model", "coefficients", "components")
_LANDMARKS_KEYS = ("point", "pelvis")
_POINT_KEYS = ("name", "object", "position", "vertex")
_PELVIS_KEYS = ("hip_left", "hip_right", "sacrum")
_OUTPUT_KEYS = ("kind", "float32", "uint16", "masks", "path_lengths", "landmarks", "compression",
                "compression_level")
_UINT16_KEYS = ("window", "invert")


# ----------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoseSpec:
    """A rigid motion of a group of objects: rotation (degrees, ``R = Rz Ry Rx``, about x
    first) about ``centre`` (default: the group's volume centroid at that moment), then a
    translation (mm). ``objects``: names in the scene (``children``: their descendants too)."""

    name: str
    objects: tuple
    children: bool
    rotate_deg: tuple  # 3 Dist
    translate: tuple  # 3 Dist
    centre: tuple | None


@dataclass
class ShapeSpec:
    """Shape coefficients of one object, from a :class:`~taichi_xray.fit.ssm.ShapeModel` (.npz)."""

    object: str
    path: Path
    model: object
    coefficients: tuple  # K Dist


@dataclass(frozen=True)
class PointLandmark:
    """A named 3-D landmark on one object: ``position`` (world mm at rest; follows the
    object's poses) or ``vertex`` (index into the object's vertices; follows poses and
    shape models)."""

    name: str
    object: str
    position: tuple | None = None
    vertex: int | None = None


@dataclass(frozen=True)
class PelvisLandmarkSpec:
    """The 14 pelvis landmarks of :func:`taichi_xray.fit.landmarks.pelvis_landmarks`, on the
    concatenation of the named objects for each part (e.g. hip_left = the hip bone hip_L
    and its core of the built-in pelvis)."""

    hip_left: tuple
    hip_right: tuple
    sacrum: tuple


@dataclass(frozen=True)
class NoiseSpec:
    """Quantum noise. model "poisson": Poisson counts on the transmission with
    ``photons_per_pixel`` (or the photons of ``mAs``); "detector": the
    :class:`~taichi_xray.physics.detector_model.DetectorModel` of ``[detector_model]``."""

    model: str
    photons_per_pixel: Dist | None
    mAs: Dist | None


@dataclass(frozen=True)
class DetectorModelSpec:
    """A :class:`~taichi_xray.physics.detector_model.DetectorModel`: MTF ``preset`` (or
    "none"), Swank factor, gain (ADU/keV), offset (ADU), electronic noise (ADU rms, sampled),
    noise ``method``; the pixel pitch is the camera's."""

    preset: str
    blur: bool
    swank: float | None
    gain: float
    offset: float
    electronic_noise: Dist
    method: str


@dataclass(frozen=True)
class ScatterSpec:
    """Scatter by :class:`taichi_xray.physics.scatter.KernelScatterModel` (kernel superposition,
    calibrated on Monte Carlo): ``air_gap_mm`` "auto" (per sample: source-detector distance
    minus the farthest depth of the scene's top-level objects) or a Dist; ``grid`` an
    AntiScatterGrid or None; ``coarse_mm`` the pitch of the convolution grid; the kernels are
    evaluated at the kVp and air gap rounded to ``kvp_step`` / ``air_gap_step_mm`` (0: exact),
    since building a model's kernels costs seconds."""

    air_gap_mm: object
    grid: object
    coarse_mm: float
    kvp_step: float = 5.0
    air_gap_step_mm: float = 10.0


@dataclass(frozen=True)
class OutputSpec:
    """What each sample stores: the float image (``float32``) and/or a windowed 16-bit copy
    (``uint16``: window (lo, hi) or "auto" = 0.5/99.5 percentiles per image, ``invert``),
    binary masks and path-length maps of object groups (name -> object names), landmarks."""

    kind: str = "line_integral"
    float32: bool = True
    uint16: bool = False
    window: tuple | None = None
    invert: bool = False
    masks: dict = field(default_factory=dict)
    path_lengths: dict = field(default_factory=dict)
    landmarks: bool = True
    compression: str = "gzip"
    compression_level: int = 4


@dataclass
class DatasetSpec:
    """A validated dataset file. ``scenes``: loaded :class:`~taichi_xray.scene.Scene` objects;
    ``camera``: {key: Dist or tuple of Dist}; ``filtration``: {material: Dist};
    ``nesting_tolerance_px``: nesting conflicts of a pair of objects on at most this many
    pixels are ignored (see docs/datasets.md)."""

    path: Path | None
    name: str
    description: str
    scene_paths: list
    scenes: list
    scene_weights: tuple | None
    size: tuple | None
    max_attempts: int
    camera: dict
    kvp: Dist | None
    filtration: dict
    noise: NoiseSpec | None
    detector_model: DetectorModelSpec | None
    poses: list
    shapes: dict
    points: list
    pelvis: PelvisLandmarkSpec | None
    output: OutputSpec
    scatter: "ScatterSpec | None" = None
    nesting_tolerance_px: int = 1
    sha256: str = ""
    inputs_sha256: str = ""
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "<dataset>"

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of every image."""
        if self.size is not None:
            return self.size
        c = self.scenes[0].camera
        return c.width, c.height

    @property
    def landmark_names(self) -> list[str]:
        from ..fit.landmarks import PELVIS_LANDMARK_NAMES

        return ([p.name for p in self.points] + (list(PELVIS_LANDMARK_NAMES) if self.pelvis is not None else []))

    @property
    def moves_objects(self) -> bool:
        """Whether object geometry changes between samples (poses or shape models)."""
        return bool(self.poses) or bool(self.shapes)

    def filtration_materials(self) -> list[str]:
        """Sorted union of the filter materials of the scenes' spectra and of the dataset."""
        mats = set(self.filtration)
        for sc in self.scenes:
            if sc.spectrum_spec.kind == "tungsten":
                mats |= set(sc.spectrum_spec.filtration or {})
        return sorted(mats)


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------
def _dataset_table(ctx: _Ctx, d, folder: Path):
    from ..scene import SceneError, SceneFileNotFoundError, load_scene

    d = ctx.table(d, "dataset")
    ctx.keys(d, _DATASET_KEYS)
    name = ctx.string(d, "name", "")
    desc = ctx.string(d, "description", "")
    rel = ctx.strings(d, "scenes", required=True)
    paths, scenes = [], []
    for i, r in enumerate(rel):
        p = Path(r) if os.path.isabs(r) else folder / r
        if not p.is_file():
            raise ctx.err("scenes", f"scene file #{i + 1} not found: {p} (resolved against the dataset file's "
                                    "folder)", DatasetFileNotFoundError)
        try:
            sc = load_scene(p)
        except SceneFileNotFoundError as exc:
            raise ctx.err("scenes", f"scene #{i + 1}: {exc}", DatasetFileNotFoundError) from None
        except SceneError as exc:
            raise ctx.err("scenes", f"scene #{i + 1}: {exc}") from None
        paths.append(p)
        scenes.append(sc)
    weights = None
    if "scene_weights" in d:
        w = d["scene_weights"]
        if (not isinstance(w, list) or len(w) != len(scenes)
                or not all(_is_num(x) and math.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0):
            raise ctx.err("scene_weights", f"must be {len(scenes)} non-negative numbers (one per scene), not all 0, "
                                           f"got {w!r}")
        weights = tuple(float(x) for x in w)
    size = None
    if "size" in d:
        s = d["size"]
        if (not isinstance(s, list) or len(s) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in s)
                or min(s) <= 0):
            raise ctx.err("size", f"must be [width, height] in pixels (two positive integers), got {s!r}",
                          DatasetTypeError)
        size = (int(s[0]), int(s[1]))
    else:
        sizes = {(sc.camera.width, sc.camera.height) for sc in scenes}
        if len(sizes) > 1:
            raise ctx.err("scenes", f"the scenes have different detector sizes {sorted(sizes)}: give "
                                    "[dataset] size = [width, height]")
    attempts = ctx.integer(d, "max_attempts", 5, lo=1)
    tol = ctx.integer(d, "nesting_tolerance_px", 1, lo=0)
    return name, desc, paths, scenes, weights, size, attempts, tol


def _camera_table(ctx: _Ctx, d, scenes, paths) -> dict:
    d = ctx.table(d, "camera")
    ctx.keys(d, _CAMERA_KEYS)
    out = {}
    for k in ("lao", "cran", "sid", "sdd"):
        if k in d:
            out[k] = ctx.dist(d[k], k)
    if "isocenter_offset" in d:
        out["isocenter_offset"] = ctx.vector_dist(d["isocenter_offset"], "isocenter_offset")
    if out:
        for sc, p in zip(scenes, paths):
            if sc.camera_spec.kind != "c_arm":
                raise ctx.err(next(iter(out)), f"scene {p} has a raw projection matrix camera: C-arm parameters "
                                               "(lao, cran, sid, sdd, isocenter_offset) can only be sampled for a "
                                               "C-arm [camera]")
    if "cran" in out:
        ctx.bounded(out["cran"], "cran", -90.0, 90.0, True, True, "CRAN angles (degrees)")
    for k in ("sid", "sdd"):
        if k in out:
            ctx.bounded(out[k], k, 0.0, None, True, False, "distances (mm)")
    for sc, p in zip(scenes, paths):
        cs = sc.camera_spec
        if cs.kind != "c_arm":
            continue
        sid_hi = out["sid"].support()[1] if "sid" in out else cs.sid
        sdd_lo = out["sdd"].support()[0] if "sdd" in out else cs.sdd
        if not sdd_lo > sid_hi:
            key = "sdd" if "sdd" in out else "sid"
            raise ctx.err(key, f"source-detector distances must exceed source-isocentre distances in every sample; "
                               f"with scene {p}: sdd can be {sdd_lo:g} mm and sid {sid_hi:g} mm")
    return out


def _spectrum_table(ctx: _Ctx, d, scenes, paths):
    from ..physics.materials import get_material
    from ..physics.spectra import KVP_MAX, KVP_MIN

    d = ctx.table(d, "spectrum")
    ctx.keys(d, _SPECTRUM_KEYS)
    kvp = None
    if "kvp" in d:
        kvp = ctx.dist(d["kvp"], "kvp")
        ctx.bounded(kvp, "kvp", KVP_MIN, KVP_MAX, what="tube voltages (kVp)")
    filt = {}
    if "filtration" in d:
        f = ctx.table(d["filtration"], "filtration")
        for mat, v in f.items():
            name = f"filtration.{mat}"
            try:
                get_material(mat)
            except (KeyError, ValueError, TypeError) as exc:
                msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
                raise ctx.err(name, f"unknown filter material {mat!r} ({msg})") from None
            filt[mat] = ctx.dist(v, name)
            ctx.bounded(filt[mat], name, 0.0, None, what="filter thicknesses (mm)")
    if kvp is not None or filt:
        for sc, p in zip(scenes, paths):
            if sc.spectrum_spec.kind != "tungsten":
                raise ctx.err("kvp" if kvp is not None else "filtration",
                              f"scene {p} has a {sc.spectrum_spec.kind} spectrum: kVp and filtration can only be "
                              "sampled for a tungsten spectrum ([spectrum] kvp = ... in the scene)")
    return kvp, filt


def _noise_table(ctx: _Ctx, d, has_detector: bool) -> NoiseSpec:
    d = ctx.table(d, "noise")
    ctx.keys(d, _NOISE_KEYS)
    model = ctx.string(d, "model", "detector" if has_detector else "poisson", choices=("poisson", "detector"))
    if model == "detector" and not has_detector:
        raise ctx.err("model", "\"detector\" needs a [detector_model] table (preset, swank, electronic_noise, ...)")
    given = [k for k in ("photons_per_pixel", "mAs") if k in d]
    if len(given) != 1:
        raise ctx.err(None, f"give exactly one of photons_per_pixel (photons reaching a pixel without the patient) "
                            f"or mAs (tube current x time); got {', '.join(given) or 'none'}")
    k = given[0]
    dd = ctx.dist(d[k], k)
    ctx.bounded(dd, k, 0.0, None, True, False, "photon numbers" if k == "photons_per_pixel" else "mAs values")
    return NoiseSpec(model, dd if k == "photons_per_pixel" else None, dd if k == "mAs" else None)


def _detector_model_table(ctx: _Ctx, d) -> DetectorModelSpec:
    from ..physics.detector_model import DETECTOR_PRESETS

    d = ctx.table(d, "detector_model")
    ctx.keys(d, _DETMODEL_KEYS)
    presets = tuple(sorted(DETECTOR_PRESETS)) + ("none",)
    preset = ctx.string(d, "preset", "none", choices=presets)
    blur = ctx.boolean(d, "blur", preset != "none")
    if blur and preset == "none":
        raise ctx.err("blur", "blur = true needs an MTF: give preset = " + " or ".join(
            repr(p) for p in presets if p != "none"))
    swank = ctx.number(d, "swank", None, positive=True)
    if swank is not None and swank > 1:
        raise ctx.err("swank", f"the Swank factor must be in (0, 1], got {swank:g}")
    gain = ctx.number(d, "gain", 1.0, positive=True)
    offset = ctx.number(d, "offset", 0.0)
    en = ctx.dist(d.get("electronic_noise", 0.0), "electronic_noise")
    ctx.bounded(en, "electronic_noise", 0.0, None, what="electronic noise levels (ADU rms)")
    method = ctx.string(d, "method", "poisson", choices=("poisson", "gaussian"))
    return DetectorModelSpec(preset, blur, swank, gain, offset, en, method)


def _poses(ctx: _Ctx, entries, scenes, paths) -> list[PoseSpec]:
    if not isinstance(entries, list):
        raise ctx.sub("[[pose]]").err(None, "poses must be an array of tables: write each as [[pose]]",
                                      DatasetTypeError)
    out, seen = [], set()
    for i, d in enumerate(entries, start=1):
        c = ctx.sub(f"[[pose]] #{i}")
        c.table(d)
        c.keys(d, _POSE_KEYS)
        objs = c.strings(d, "objects", required=True)
        name = c.string(d, "name", objs[0] if len(objs) == 1 else f"pose{i}")
        if name in seen:
            raise c.err("name", f"duplicate pose name {name!r}")
        seen.add(name)
        c = ctx.sub(f"[[pose]] #{i} '{name}'")
        for sc, p in zip(scenes, paths):
            _expand(c, "objects", objs, sc.names, str(p))
        rot = c.vector_dist(d.get("rotate_deg", 0.0), "rotate_deg")
        tr = c.vector_dist(d.get("translate", 0.0), "translate")
        centre = None
        if "centre" in d:
            v = d["centre"]
            if not isinstance(v, list) or len(v) != 3 or not all(_is_num(x) and math.isfinite(x) for x in v):
                raise c.err("centre", f"must be [x, y, z] in mm, got {v!r}", DatasetTypeError)
            centre = tuple(float(x) for x in v)
        out.append(PoseSpec(name, objs, c.boolean(d, "children", True), rot, tr, centre))
    return out


def _shapes(ctx: _Ctx, d, folder: Path, scenes, paths) -> dict:
    from ..fit.ssm import ShapeModel

    d = ctx.table(d, "shape")
    out = {}
    for obj, t in d.items():
        c = ctx.sub(f"[shape.{obj}]")
        t = c.table(t)
        c.keys(t, _SHAPE_KEYS)
        rel = c.string(t, "model", required=True)
        p = Path(rel) if os.path.isabs(rel) else folder / rel
        if not p.is_file():
            raise c.err("model", f"shape model file not found: {p}", DatasetFileNotFoundError)
        try:
            model = ShapeModel.load(p)
        except (KeyError, ValueError, OSError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise c.err("model", f"cannot read shape model {p}: {msg}") from None
        for sc, sp in zip(scenes, paths):
            if obj not in sc.names:
                close = difflib.get_close_matches(obj, sc.names, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(repr(x) for x in close)}?" if close else ""
                raise c.err(None, f"no object {obj!r} in scene {sp}{hint}")
            m = sc.objects[sc.names.index(obj)].mesh
            if len(m.vertices) != model.n_vertices or len(m.faces) != len(model.faces):
                raise c.err("model", f"{p} has {model.n_vertices} vertices and {len(model.faces)} faces but object "
                                     f"{obj!r} of scene {sp} has {len(m.vertices)} and {len(m.faces)}: the model "
                                     "must be built on that mesh (same vertices and connectivity)")
        K = c.integer(t, "components", model.n_components, lo=1)
        if K > model.n_components:
            raise c.err("components", f"the model has {model.n_components} components, got {K}")
        coef = t.get("coefficients", {"dist": "normal", "mean": 0.0, "std": 1.0})
        coefs = c.vector_dist(coef, "coefficients", K) if isinstance(coef, list) else tuple(
            [c.dist(coef, "coefficients")] * K)
        out[obj] = ShapeSpec(obj, p, model, coefs)
    return out


def _landmarks(ctx: _Ctx, d, scenes, paths, shapes):
    d = ctx.table(d, "landmarks")
    ctx.keys(d, _LANDMARKS_KEYS)
    points = []
    if "point" in d:
        entries = d["point"]
        if not isinstance(entries, list):
            raise ctx.sub("[[landmarks.point]]").err(None, "write each point as [[landmarks.point]]",
                                                     DatasetTypeError)
        seen = set()
        for i, e in enumerate(entries, start=1):
            c = ctx.sub(f"[[landmarks.point]] #{i}")
            c.table(e)
            c.keys(e, _POINT_KEYS)
            name = c.string(e, "name", required=True)
            if name in seen:
                raise c.err("name", f"duplicate landmark name {name!r}")
            seen.add(name)
            c = ctx.sub(f"[[landmarks.point]] #{i} '{name}'")
            obj = c.string(e, "object", required=True)
            for sc, p in zip(scenes, paths):
                _expand(c, "object", [obj], sc.names, str(p))
            if ("position" in e) == ("vertex" in e):
                raise c.err(None, "give exactly one of position = [x, y, z] (mm, moves with the object's poses) or "
                                  "vertex = index (follows poses and shape models)")
            if "position" in e:
                v = e["position"]
                if not isinstance(v, list) or len(v) != 3 or not all(_is_num(x) and math.isfinite(x) for x in v):
                    raise c.err("position", f"must be [x, y, z] in mm, got {v!r}", DatasetTypeError)
                points.append(PointLandmark(name, obj, position=tuple(float(x) for x in v)))
            else:
                k = c.integer(e, "vertex", lo=0)
                for sc, p in zip(scenes, paths):
                    n = len(sc.objects[sc.names.index(obj)].mesh.vertices)
                    if k >= n:
                        raise c.err("vertex", f"object {obj!r} of scene {p} has {n} vertices, got index {k}")
                points.append(PointLandmark(name, obj, vertex=k))
    pelvis = None
    if "pelvis" in d:
        c = ctx.sub("[landmarks.pelvis]")
        t = c.table(d["pelvis"])
        c.keys(t, _PELVIS_KEYS)
        parts = {}
        for k in _PELVIS_KEYS:
            pats = c.strings(t, k, required=True)
            for sc, p in zip(scenes, paths):
                _expand(c, k, pats, sc.names, str(p))
            parts[k] = pats
        from ..fit.landmarks import pelvis_landmarks

        for sc, p in zip(scenes, paths):  # the landmarks must be computable on every scene
            vs = [np.concatenate([sc.objects[sc.names.index(n)].mesh.vertices
                                  for n in _expand(c, k, parts[k], sc.names, str(p))]) for k in _PELVIS_KEYS]
            try:
                pelvis_landmarks(*vs)
            except ValueError as exc:
                raise c.err(None, f"scene {p}: {exc}") from None
        pelvis = PelvisLandmarkSpec(**parts)
    return points, pelvis


def _output_table(ctx: _Ctx, d, scenes, paths) -> OutputSpec:
    d = ctx.table(d, "output")
    ctx.keys(d, _OUTPUT_KEYS)
    kind = ctx.string(d, "kind", "line_integral", choices=OUTPUT_KINDS)
    f32 = ctx.boolean(d, "float32", True)
    u16, window, invert = False, None, False
    if "uint16" in d:
        v = d["uint16"]
        if isinstance(v, bool):
            u16 = v
        else:
            t = ctx.table(v, "uint16")
            ctx.keys(t, _UINT16_KEYS, prefix="uint16.")
            u16 = True
            w = t.get("window", "auto")
            if w == "auto":
                window = None
            elif isinstance(w, list) and len(w) == 2 and all(_is_num(x) and math.isfinite(x) for x in w):
                if not w[1] > w[0]:
                    raise ctx.err("uint16.window", f"needs lo < hi, got {w!r}")
                window = (float(w[0]), float(w[1]))
            else:
                raise ctx.err("uint16.window", f"must be \"auto\" or [lo, hi], got {w!r}", DatasetTypeError)
            invert = ctx.boolean(t, "invert", False, name="uint16.invert")
    if not (f32 or u16):
        raise ctx.err("float32", "no image would be written: keep float32 = true or add uint16 = { window = ... }")
    groups = {}
    for key in ("masks", "path_lengths"):
        g = {}
        for gname, pats in ctx.table(d.get(key, {}), key).items():
            pats = ctx.strings({gname: pats}, gname, name=f"{key}.{gname}")
            for sc, p in zip(scenes, paths):
                _expand(ctx, f"{key}.{gname}", pats, sc.names, str(p))
            g[gname] = pats
        groups[key] = g
    comp = ctx.string(d, "compression", "gzip", choices=COMPRESSIONS)
    lvl = ctx.integer(d, "compression_level", 4, lo=0)
    if lvl > 9:
        raise ctx.err("compression_level", f"gzip levels are 0..9, got {lvl}")
    if "compression_level" in d and comp != "gzip":
        raise ctx.err("compression_level", f"only applies to compression = \"gzip\", not {comp!r}")
    return OutputSpec(kind, f32, u16, window, invert, groups["masks"], groups["path_lengths"],
                      ctx.boolean(d, "landmarks", True), comp, lvl)


_SCATTER_KEYS = ("model", "air_gap_mm", "grid", "coarse_mm", "kvp_step", "air_gap_step_mm")


def _scatter(ctx: _Ctx, d, scenes, paths, kvp) -> ScatterSpec:
    """[scatter]: passed to :class:`taichi_xray.physics.scatter.KernelScatterModel` per sample
    (kVp and source-detector distance of the sample); refused with a clear message when that
    model is not available."""
    try:
        from ..physics import scatter as sc
        needed = ("KernelScatterModel", "AntiScatterGrid", "water_equivalent_thickness", "scatter_energy_keV",
                  "CALIBRATION")
        if not all(hasattr(sc, n) for n in needed):
            raise ImportError(", ".join(n for n in needed if not hasattr(sc, n)))
    except ImportError as exc:
        raise ctx.err(None, f"scatter is not available yet: taichi_xray.physics.scatter lacks the kernel scatter "
                            f"model ({exc}); remove the [scatter] table") from None
    d = ctx.table(d, "scatter")
    ctx.keys(d, _SCATTER_KEYS)
    ctx.string(d, "model", "kernel", choices=("kernel",))
    cal = sc.CALIBRATION
    gap = d.get("air_gap_mm", "auto")
    if gap != "auto":
        gap = ctx.dist(gap, "air_gap_mm")
        ctx.bounded(gap, "air_gap_mm", float(cal["air_gap_mm"][0]), float(cal["air_gap_mm"][-1]),
                    what="air gaps (mm, the calibrated range of the scatter kernels)")
    grid = None
    if "grid" in d:
        g = ctx.table(d["grid"], "grid")
        try:
            grid = sc.AntiScatterGrid.from_dict(dict(g))
        except (KeyError, ValueError, TypeError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise ctx.err("grid", msg) from None
    coarse = ctx.number(d, "coarse_mm", 4.0, positive=True)
    kstep = ctx.number(d, "kvp_step", 5.0, nonneg=True)
    gstep = ctx.number(d, "air_gap_step_mm", 10.0, nonneg=True)
    klo, khi = float(cal["kvp"][0]), float(cal["kvp"][-1])
    for scn, p in zip(scenes, paths):
        if scn.spectrum_spec.kind != "tungsten":
            raise ctx.err(None, f"scene {p} has a {scn.spectrum_spec.kind} spectrum: the scatter kernels are "
                                "calibrated for tungsten tubes (kVp)")
        k = kvp if kvp is not None else Dist.constant(scn.spectrum_spec.kvp)
        a, b = k.support()
        if a < klo or b > khi:
            raise ctx.err(None, f"the scatter kernels are calibrated for {klo:g}..{khi:g} kVp but the tube voltages "
                                f"of scene {p} can be {a:g}..{b:g} kVp ([spectrum] kvp)")
    return ScatterSpec(gap, grid, coarse, kstep, gstep)


# ----------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------
def parse_dataset(data: dict, path=None, folder=None) -> DatasetSpec:
    """Validate a dataset given as a dict (the parsed TOML); ``path`` names it in messages and
    relative file names are resolved against ``folder`` (default: the folder of ``path``)."""
    label = str(path) if path is not None else "<dataset>"
    folder = Path(folder) if folder is not None else (Path(path).parent if path is not None else Path.cwd())
    top = _Ctx(label, "top level")
    top.table(data)
    top.keys(data, _SECTIONS)
    if "dataset" not in data:
        raise top.err("dataset", "missing table [dataset] (with scenes = [\"scene.toml\", ...])")
    name, desc, paths, scenes, weights, size, attempts, tol = _dataset_table(_Ctx(label, "[dataset]"), data["dataset"],
                                                                        folder)
    camera = _camera_table(_Ctx(label, "[camera]"), data.get("camera", {}), scenes, paths)
    kvp, filt = _spectrum_table(_Ctx(label, "[spectrum]"), data.get("spectrum", {}), scenes, paths)
    det = None
    if "detector_model" in data:
        det = _detector_model_table(_Ctx(label, "[detector_model]"), data["detector_model"])
    noise = _noise_table(_Ctx(label, "[noise]"), data["noise"], det is not None) if "noise" in data else None
    if det is not None and noise is None and det.electronic_noise.support()[1] > 0:
        raise _Ctx(label, "[detector_model]").err(
            "electronic_noise", "needs a [noise] table (photons_per_pixel or mAs): without it the detector model "
                                "only blurs")
    if det is not None and noise is not None and noise.model == "poisson":
        raise _Ctx(label, "[noise]").err("model", "\"poisson\" ignores [detector_model]: use model = \"detector\" "
                                                  "or remove [detector_model]")
    poses = _poses(top, data.get("pose", []), scenes, paths)
    shapes = _shapes(_Ctx(label, "[shape]"), data.get("shape", {}), folder, scenes, paths)
    points, pelvis = _landmarks(_Ctx(label, "[landmarks]"), data.get("landmarks", {}), scenes, paths, shapes)
    out = _output_table(_Ctx(label, "[output]"), data.get("output", {}), scenes, paths)
    scatter = None
    if "scatter" in data:
        scatter = _scatter(_Ctx(label, "[scatter]"), data["scatter"], scenes, paths, kvp)
    return DatasetSpec(Path(path) if path is not None else None, name or Path(label).stem, desc, paths, scenes,
                       weights, size, attempts, camera, kvp, filt, noise, det, poses, shapes, points, pelvis, out,
                       scatter=scatter, nesting_tolerance_px=tol, raw=data)


def load_dataset(path) -> DatasetSpec:
    """Read, validate and load a TOML dataset file (see ``docs/datasets.md``).

    ``sha256`` is the hash of the dataset file's bytes; ``inputs_sha256`` also covers the
    scene files, the mesh files they name and the shape models (what ``generate`` checks
    before resuming a run)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetFileNotFoundError(f"{p}: dataset file not found")
    raw = p.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DatasetError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{p}: not valid TOML (not UTF-8 text: {exc})") from None
    spec = parse_dataset(data, p)
    spec.sha256 = hashlib.sha256(raw).hexdigest()
    h = hashlib.sha256(raw)
    files = list(spec.scene_paths)
    for sc in spec.scenes:
        files += [Path(o.source) for o in sc.objects if not o.source.startswith("phantom:")]
        if sc.spectrum_spec.kind == "csv":
            files.append(Path(sc.spectrum_spec.csv))
    files += [s.path for s in spec.shapes.values()]
    for f in files:
        h.update(_sha256_file(f).encode())
    spec.inputs_sha256 = h.hexdigest()
    return spec
