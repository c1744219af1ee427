"""Scene files: a TOML description of camera, spectrum, detector, materials, objects and output.

:func:`load_scene` reads and validates a scene file (``tomllib``) and returns a
:class:`Scene` with the meshes loaded, the materials built and the camera,
spectrum and detector constructed. Every error is a :class:`SceneError`
(a ``ValueError``; a missing mesh file is a :class:`SceneFileNotFoundError`,
also a ``FileNotFoundError``) whose message starts with the scene file and the
place of the offending key, e.g.::

    scenes/x.toml: [[object]] #3 'lungs': key 'material': unknown material 'lunge'; did you mean 'lung'? known: ...

The format is documented in ``docs/scene-format.md``. Units: mm, keV, degrees,
g/cm^3. Relative paths (meshes, spectrum CSV) are resolved against the folder
of the scene file. ``mesh = "phantom:thorax/lung_left"`` takes one object of a
built-in procedural phantom (:mod:`taichi_xray.phantoms`).
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import scene_sections as sections
from .camera import Camera
from .mesh import Mesh
from .physics.detector import Detector
from .physics.materials import Material, get_material, known_materials
from .physics.spectra import Spectrum

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Scene", "SceneObject", "CameraSpec", "SpectrumSpec", "OutputSpec", "SceneError",
           "SceneFileNotFoundError", "SceneIsADirectoryError", "MAX_DISTANCE_MM", "load_scene", "parse_scene", "OUTPUT_KINDS", "PHANTOMS"]

OUTPUT_KINDS = ("line_integral", "transmission", "intensity")
PHANTOMS = ("thorax", "pelvis")
PHANTOM_PREFIX = "phantom:"

_SECTIONS = ("scene", "camera", "spectrum", "detector", "materials", "object", "output", "source", "volume",
             "scatter")
_SCENE_KEYS = ("name", "description", "phantom_resolution")
_CARM_KEYS = ("sid", "sdd", "detector", "pixel_spacing", "lao", "cran", "isocenter", "radiological")
_MATRIX_KEYS = ("P", "width", "height", "pixel_spacing")
_SPECTRUM_KEYS = ("kvp", "filtration", "bin_width", "monochromatic", "csv", "model")
_DETECTOR_KEYS = ("kind", "scintillator") + sections.DETECTOR_MODEL_KEYS
_SCINT_KEYS = ("material", "thickness_mm")
_MATERIAL_KEYS = ("formula", "elements", "fractions", "composition", "density")
_OBJECT_KEYS = ("name", "mesh", "tetmesh", "basis", "material", "parent", "transform")
_TRANSFORM_KEYS = ("translate", "rotate_deg", "centre")
_OUTPUT_KEYS = ("kind", "bits", "window", "invert", "air", "noise")
_NOISE_KEYS = ("photons_per_pixel", "seed")


class SceneError(ValueError):
    """A scene file is malformed; the message names the file and the key."""


class SceneFileNotFoundError(SceneError, FileNotFoundError):
    """A file named by a scene (mesh, spectrum CSV) does not exist."""


class SceneIsADirectoryError(SceneError, IsADirectoryError):
    """A directory was given where a file (scene, mesh, spectrum CSV) is expected."""


# the largest source-isocentre / source-detector distance: the rasterizer works in float32
# (about 7 significant digits), so much farther sources make the depths of nearby surfaces
# indistinguishable (measured: objects 1e8 mm away break their nesting); 1e6 mm keeps a
# 100 m margin over any near-parallel-beam geometry
MAX_DISTANCE_MM = 1e6


# ----------------------------------------------------------------------------------------
# specs
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CameraSpec:
    """The [camera] table: either a C-arm (``kind = "c_arm"``) or a raw matrix (``kind = "matrix"``).

    C-arm: sid, sdd (mm), width, height (px), pixel_spacing (mm), lao, cran (deg),
    isocenter (3,) mm, radiological. Matrix: P (3, 4), width, height, pixel_spacing or None.
    """

    kind: str
    width: int
    height: int
    pixel_spacing: float | None = None
    sid: float | None = None
    sdd: float | None = None
    lao: float = 0.0
    cran: float = 0.0
    isocenter: tuple = (0.0, 0.0, 0.0)
    radiological: bool = True
    P: np.ndarray | None = None

    def build(self, *, lao: float | None = None, cran: float | None = None, size=None) -> Camera:
        """The :class:`Camera`, optionally with other C-arm angles or another detector size.

        ``size = (width, height)`` keeps the detector's physical width: the pixel
        spacing becomes ``pixel_spacing * old_width / width`` (square pixels), so
        the field of view across stays the same. For a raw matrix the pixel grid
        is rescaled the same way (``u' + 1/2 = (u + 1/2) * width'/width``).
        Angles can only be changed on a C-arm camera.
        """
        w, h = (self.width, self.height) if size is None else (int(size[0]), int(size[1]))
        if w <= 0 or h <= 0:
            raise ValueError(f"detector size must be positive, got {w}x{h}")
        if self.kind == "c_arm":
            ps = self.pixel_spacing * self.width / w
            return Camera.c_arm(sid=self.sid, sdd=self.sdd, width=w, height=h, pixel_spacing=ps,
                                lao=self.lao if lao is None else lao, cran=self.cran if cran is None else cran,
                                isocenter=self.isocenter, radiological=self.radiological)
        if lao is not None or cran is not None:
            raise ValueError("C-arm angles (lao/cran) cannot be changed on a camera given by a raw matrix P")
        sx, sy = w / self.width, h / self.height
        S = np.array([[sx, 0.0, (sx - 1) / 2], [0.0, sy, (sy - 1) / 2], [0.0, 0.0, 1.0]])
        ps = None if self.pixel_spacing is None else self.pixel_spacing / sx
        return Camera.from_projection_matrix(S @ self.P, w, h, pixel_spacing=ps)


@dataclass(frozen=True)
class SpectrumSpec:
    """The [spectrum] table: ``kind`` is "tungsten" (kvp, filtration {mat: mm}, bin_width keV),
    "monochromatic" (energy keV) or "csv" (path, absolute)."""

    kind: str
    kvp: float | None = None
    filtration: dict | None = None
    bin_width: float = 1.0
    energy: float | None = None
    csv: Path | None = None
    model: str = "tasmip"
    anode_angle_deg: float = 12.0

    def build(self, kvp: float | None = None) -> Spectrum:
        """The :class:`Spectrum`; ``kvp`` overrides the tube voltage (tungsten spectra only)."""
        if kvp is not None and self.kind != "tungsten":
            raise ValueError(f"a kVp can only be set for a tungsten spectrum ([spectrum] kvp = ...); "
                             f"this scene's spectrum is {self.kind}")
        if self.kind == "tungsten":
            return Spectrum.tungsten(self.kvp if kvp is None else float(kvp),
                                     filtration=dict(self.filtration or {}), bin_width=self.bin_width,
                                     model=self.model, anode_angle_deg=self.anode_angle_deg)
        if self.kind == "monochromatic":
            return Spectrum.monochromatic(self.energy)
        return Spectrum.from_csv(self.csv)


@dataclass(frozen=True)
class OutputSpec:
    """The [output] table.

    kind : "line_integral" | "transmission" | "intensity"; bits : 8 | 16;
    window : (lo, hi) or None (= "auto": 0.5..99.5 percentiles); invert : bool;
    air : bool (attenuation of the air between source and detector);
    noise : None or (photons_per_pixel, seed).
    """

    kind: str = "line_integral"
    bits: int = 8
    window: tuple | None = None
    invert: bool = False
    air: bool = False
    noise: tuple | None = None


@dataclass
class SceneObject:
    """One object: a closed mesh (transform applied), its material and its parent's name."""

    name: str
    mesh: Mesh
    material: Material
    material_name: str
    parent: str | None
    source: str  # mesh file path or "phantom:NAME/OBJECT"


@dataclass
class Scene:
    """A loaded scene. ``objects`` keep the file's order; ``parents`` gives indices (-1 = top level)."""

    path: Path | None
    name: str
    description: str
    camera_spec: CameraSpec
    spectrum_spec: SpectrumSpec
    camera: Camera
    spectrum: Spectrum
    detector: Detector
    materials: dict  # custom materials: name -> Material
    objects: list
    output: OutputSpec = field(default_factory=OutputSpec)
    volumes: list = field(default_factory=list)  # VolumeObject of each [[volume]]
    imaging: object = None  # Imaging: [source] and the detector model of [detector]
    detector_pitch_from_camera: bool = True

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def parents(self) -> list[int]:
        """Parent index of every object: -1 = top level, P + k = inside volume k (P = number of objects)."""
        idx = {o.name: i for i, o in enumerate(self.objects)}
        idx.update({v.name: len(self.objects) + k for k, v in enumerate(self.volumes)})
        return [-1 if o.parent is None else idx[o.parent] for o in self.objects]

    @property
    def meshes(self) -> list[Mesh]:
        return [o.mesh for o in self.objects]

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "<scene>"

    def with_overrides(self, *, kvp=None, lao=None, cran=None, size=None) -> "Scene":
        """A copy with another tube voltage, C-arm angles or detector size (see :meth:`CameraSpec.build`)."""
        import dataclasses

        s = copy.copy(self)
        if lao is not None or cran is not None or size is not None:
            s.camera = self.camera_spec.build(lao=lao, cran=cran, size=size)
            im = self.imaging
            if size is not None and im is not None and im.detector is not None and self.detector_pitch_from_camera \
                    and s.camera.pixel_spacing is not None:
                s.imaging = dataclasses.replace(im, detector=dataclasses.replace(
                    im.detector, pixel_pitch_mm=s.camera.pixel_spacing))
        if kvp is not None:
            s.spectrum = self.spectrum_spec.build(kvp=kvp)
            if s.imaging is not None and s.imaging.heel:
                s.imaging = dataclasses.replace(s.imaging, kvp=float(kvp))
        return s


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------
class _Ctx:
    """Builds error messages 'FILE: WHERE: key 'K': MSG'."""

    def __init__(self, label: str, where: str):
        self.label, self.where = label, where

    def sub(self, where: str) -> "_Ctx":
        return _Ctx(self.label, where)

    def err(self, key: str | None, msg: str, cls=SceneError) -> SceneError:
        k = f"key '{key}': " if key else ""
        return cls(f"{self.label}: {self.where}: {k}{msg}")

    def table(self, d, key: str | None = None) -> dict:
        if not isinstance(d, dict):
            raise self.err(key, f"must be a table, got {_tname(d)}")
        return d

    def keys(self, d: dict, allowed, prefix: str = ""):
        for k in d:
            if k not in allowed:
                close = difflib.get_close_matches(k, allowed, n=1, cutoff=0.5)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise self.err(prefix + k, f"unknown key{hint} allowed: {', '.join(allowed)}")

    def require(self, d: dict, key: str):
        if key not in d:
            raise self.err(key, "missing (required)")
        return d[key]

    def number(self, d: dict, key: str, default=None, *, positive=False, nonneg=False, required=False,
               name: str | None = None):
        name = name or key
        if key not in d:
            if required:
                raise self.err(name, "missing (required)")
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(name, f"must be a number, got {_tname(v)} {v!r}", SceneTypeError)
        v = float(v)
        if not math.isfinite(v):
            raise self.err(name, f"must be finite, got {v}")
        if positive and v <= 0:
            raise self.err(name, f"must be > 0, got {v:g}")
        if nonneg and v < 0:
            raise self.err(name, f"must be >= 0, got {v:g}")
        return v

    def integer(self, d: dict, key: str, default=None, *, choices=None, positive=False):
        if key not in d:
            return default
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(key, f"must be an integer, got {_tname(v)} {v!r}", SceneTypeError)
        if choices is not None and v not in choices:
            raise self.err(key, f"must be one of {', '.join(map(str, choices))}, got {v}")
        if positive and v <= 0:
            raise self.err(key, f"must be a positive integer, got {v}")
        return v

    def boolean(self, d: dict, key: str, default: bool) -> bool:
        if key not in d:
            return default
        v = d[key]
        if not isinstance(v, bool):
            raise self.err(key, f"must be true or false, got {_tname(v)} {v!r}", SceneTypeError)
        return v

    def string(self, d: dict, key: str, default=None, *, required=False, choices=None):
        if key not in d:
            if required:
                raise self.err(key, "missing (required)")
            return default
        v = d[key]
        if not isinstance(v, str):
            raise self.err(key, f"must be a string, got {_tname(v)} {v!r}", SceneTypeError)
        if choices is not None and v not in choices:
            close = difflib.get_close_matches(v, choices, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise self.err(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {v!r}{hint}")
        return v

    def vector(self, d: dict, key: str, n: int, default=None, *, name: str | None = None):
        name = name or key
        if key not in d:
            return default
        v = d[key]
        if (not isinstance(v, list) or len(v) != n
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v)):
            raise self.err(name, f"must be a list of {n} numbers, got {v!r}", SceneTypeError)
        if not all(math.isfinite(float(x)) for x in v):
            raise self.err(name, f"must be finite, got {v!r}")
        return tuple(float(x) for x in v)


class SceneTypeError(SceneError, TypeError):
    """A scene key has the wrong type."""


def _tname(v) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


# ----------------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------------
def _camera(ctx: _Ctx, d) -> CameraSpec:
    d = ctx.table(d)
    if "P" in d:
        ctx.keys(d, _MATRIX_KEYS)
        P = d["P"]
        try:
            arr = np.array(P, dtype=np.float64)
            ok = arr.shape == (3, 4) and not any(isinstance(x, bool) for row in P for x in row)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ctx.err("P", "must be a 3x4 array of numbers (3 rows of 4)", SceneTypeError)
        if not np.isfinite(arr).all():
            raise ctx.err("P", "contains NaN or infinity")
        width = ctx.integer(d, "width", positive=True)
        height = ctx.integer(d, "height", positive=True)
        for k, v in (("width", width), ("height", height)):
            if v is None:
                raise ctx.err(k, "missing (required with a raw matrix P)")
        ps = ctx.number(d, "pixel_spacing", positive=True)
        spec = CameraSpec("matrix", width, height, ps, P=arr)
    else:
        ctx.keys(d, _CARM_KEYS + ("P",))
        sid = ctx.number(d, "sid", positive=True, required=True)
        sdd = ctx.number(d, "sdd", positive=True, required=True)
        for k, v in (("sid", sid), ("sdd", sdd)):
            if v > MAX_DISTANCE_MM:
                raise ctx.err(k, f"{v:g} mm is too far: at most {MAX_DISTANCE_MM:g} mm (1 km). The renderer computes "
                                 "in float32 (about 7 significant digits), so from farther away the depths of the "
                                 "objects' surfaces can no longer be told apart and the projection degenerates")
        if sdd <= sid:
            raise ctx.err("sdd", f"must be larger than sid (source-detector {sdd:g} mm <= source-isocentre {sid:g} mm)")
        det = ctx.require(d, "detector")
        if (not isinstance(det, list) or len(det) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in det)):
            raise ctx.err("detector", f"must be [width, height] in pixels (two integers), got {det!r}",
                          SceneTypeError)
        if min(det) <= 0:
            raise ctx.err("detector", f"width and height must be positive, got {det!r}")
        ps = ctx.number(d, "pixel_spacing", positive=True, required=True)
        lao = ctx.number(d, "lao", 0.0)
        cran = ctx.number(d, "cran", 0.0)
        if abs(abs(cran) - 90.0) < 1e-6:
            raise ctx.err("cran", "±90 degrees puts the beam along the patient's long axis (image rows undefined)")
        iso = ctx.vector(d, "isocenter", 3, (0.0, 0.0, 0.0))
        rad = ctx.boolean(d, "radiological", True)
        spec = CameraSpec("c_arm", det[0], det[1], ps, sid=sid, sdd=sdd, lao=lao, cran=cran, isocenter=iso,
                          radiological=rad)
    try:
        spec.build()
    except (ValueError, TypeError) as exc:
        raise ctx.err(None, f"invalid camera: {exc}") from None
    return spec


def _spectrum(ctx: _Ctx, d, folder: Path, anode: float = 12.0) -> SpectrumSpec:
    d = ctx.table(d)
    ctx.keys(d, _SPECTRUM_KEYS)
    kinds = [k for k in ("kvp", "monochromatic", "csv") if k in d]
    if len(kinds) != 1:
        got = f"got {', '.join(kinds)}" if kinds else "got none"
        raise ctx.err(None, f"give exactly one of kvp (tungsten tube), monochromatic (keV) or csv (file); {got}")
    kind = kinds[0]
    if kind != "kvp":
        for k in ("filtration", "bin_width"):
            if k in d:
                raise ctx.err(k, f"only applies to a tungsten spectrum (kvp = ...), not to {kind}")
    model = ctx.string(d, "model", "tasmip", choices=("tasmip", "spekpy"))
    if model != "tasmip" and kind != "kvp":
        raise ctx.err("model", "only applies to a tungsten spectrum (kvp = ...)")
    if kind == "kvp":
        kvp = ctx.number(d, "kvp", positive=True)
        filt = d.get("filtration", {"Al": 2.5})
        filt = ctx.table(filt, "filtration")
        out = {}
        for mat, t in filt.items():
            name = f"filtration.{mat}"
            t = ctx.number(filt, mat, nonneg=True, name=name)
            try:
                get_material(mat)
            except (KeyError, ValueError, TypeError) as exc:
                raise ctx.err(name, f"unknown filter material {mat!r} ({_msg(exc)})") from None
            out[mat] = t
        bw = ctx.number(d, "bin_width", 1.0, positive=True)
        spec = SpectrumSpec("tungsten", kvp=kvp, filtration=out, bin_width=bw, model=model, anode_angle_deg=anode)
        key = "kvp"
    elif kind == "monochromatic":
        spec = SpectrumSpec("monochromatic", energy=ctx.number(d, "monochromatic", positive=True))
        key = "monochromatic"
    else:
        rel = ctx.string(d, "csv")
        p = (folder / rel) if not os.path.isabs(rel) else Path(rel)
        if p.is_dir():
            raise ctx.err("csv", f"{p} is a directory, not a spectrum file", SceneIsADirectoryError)
        if not p.is_file():
            raise ctx.err("csv", f"spectrum file not found: {p}", SceneFileNotFoundError)
        spec = SpectrumSpec("csv", csv=p)
        key = "csv"
    try:
        spec.build()
    except (ValueError, TypeError, KeyError) as exc:
        raise ctx.err(key, _msg(exc)) from None
    return spec


def _detector(ctx: _Ctx, d, materials: dict) -> Detector:
    d = ctx.table(d)
    ctx.keys(d, _DETECTOR_KEYS)
    kind = ctx.string(d, "kind", "energy", choices=("energy", "counting"))
    sc = None
    if "scintillator" in d:
        s = ctx.table(d["scintillator"], "scintillator")
        ctx.keys(s, _SCINT_KEYS, prefix="scintillator.")
        mat = ctx.string(s, "material", required=True)
        t = ctx.number(s, "thickness_mm", positive=True, required=True, name="scintillator.thickness_mm")
        sc = (materials.get(mat, mat), t)
    try:
        return Detector(kind, sc)
    except (KeyError, ValueError, TypeError) as exc:
        raise ctx.err("scintillator", _msg(exc)) from None


def _custom_material(ctx: _Ctx, name: str, d) -> Material:
    d = ctx.table(d)
    ctx.keys(d, _MATERIAL_KEYS)
    if name.strip().lower() in known_materials():
        raise ctx.err(None, f"'{name}' is a built-in material; give the custom material another name")
    density = ctx.number(d, "density", positive=True, required=True)
    forms = [k for k in ("formula", "elements", "composition") if k in d]
    if len(forms) != 1:
        raise ctx.err(None, "give exactly one of formula = \"CaCO3\", elements = [...] with fractions = [...], "
                            f"or composition = {{H = 0.11, O = 0.89}}; got {', '.join(forms) or 'none'}")
    form = forms[0]
    if "fractions" in d and form != "elements":
        raise ctx.err("fractions", "only goes with elements = [...]")
    try:
        if form == "formula":
            spec = ctx.string(d, "formula")
            m = get_material(spec, density=density)
        elif form == "elements":
            els = d["elements"]
            if not isinstance(els, list) or not all(isinstance(e, str) for e in els):
                raise ctx.err("elements", f"must be a list of element symbols, got {els!r}", SceneTypeError)
            fr = ctx.require(d, "fractions")
            if not isinstance(fr, list) or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in fr):
                raise ctx.err("fractions", f"must be a list of numbers (weight fractions), got {fr!r}",
                              SceneTypeError)
            m = get_material({"elements": els, "fractions": fr, "density": density, "name": name})
        else:
            comp = ctx.table(d["composition"], "composition")
            for k in comp:
                ctx.number(comp, k, nonneg=True, name=f"composition.{k}")
            m = get_material({"composition": comp, "density": density, "name": name})
    except SceneError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise ctx.err(form, _msg(exc)) from None
    return Material(name, m.composition, m.density, f"scene material ({form})")


def _msg(exc: BaseException) -> str:
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _rotation(deg) -> np.ndarray:
    """R = Rz @ Ry @ Rx for angles (x, y, z) in degrees (rotate about x first, then y, then z)."""
    ax, ay, az = np.deg2rad(deg)
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    Rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


class _PhantomCache:
    def __init__(self, resolution: str):
        self.resolution = resolution
        self._ph = {}

    def get(self, ctx: _Ctx, ref: str):
        from . import phantoms

        body = ref[len(PHANTOM_PREFIX):]
        if "/" not in body:
            raise ctx.err("mesh", f"phantom reference must be 'phantom:NAME/OBJECT' (NAME one of "
                                  f"{', '.join(PHANTOMS)}), got {ref!r}")
        pname, oname = body.split("/", 1)
        if pname not in PHANTOMS:
            close = difflib.get_close_matches(pname, PHANTOMS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ctx.err("mesh", f"unknown phantom {pname!r}{hint} known: {', '.join(PHANTOMS)}")
        if pname not in self._ph:
            self._ph[pname] = getattr(phantoms, pname)(self.resolution)
        ph = self._ph[pname]
        names = ph.names
        if oname not in names:
            close = difflib.get_close_matches(oname, names, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ctx.err("mesh", f"phantom {pname!r} has no object {oname!r}{hint} "
                                  f"(objects: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")
        return ph[oname]


def _objects(ctx: _Ctx, entries, folder: Path, materials: dict, resolution: str,
             volume_names=()) -> list[SceneObject]:
    if not isinstance(entries, list):
        raise ctx.sub("[[object]]").err(None, "objects must be an array of tables: write each as [[object]]")
    if not entries:
        raise ctx.sub("[[object]]").err(None, "the scene has no objects")
    cache = _PhantomCache(resolution)
    known = sorted(set(materials) | set(known_materials()))
    out, seen = [], {}
    for i, d in enumerate(entries, start=1):
        c = ctx.sub(f"[[object]] #{i}")
        c.table(d)
        if isinstance(d.get("name"), str):
            c = ctx.sub(f"[[object]] #{i} '{d['name']}'")
        c.keys(d, _OBJECT_KEYS)
        name = c.string(d, "name", required=True)
        if not name.strip():
            raise c.err("name", "must not be empty")
        if name in seen:
            raise c.err("name", f"duplicate object name {name!r} (also [[object]] #{seen[name]})")
        seen[name] = i
        if "tetmesh" in d:  # a tetrahedral mesh: its basis materials and densities come with it
            if "mesh" in d or "material" in d:
                raise c.err("tetmesh", "a tetrahedral object takes no 'mesh' or 'material' (its basis materials "
                                       "and densities are in the file; 'basis' names them when the file does not)")
            tm, source = sections.tetmesh(c, d, folder, name)
            out.append(SceneObject(name, tm, None, "+".join(tm.basis), c.string(d, "parent"), source))
            continue
        if "basis" in d:
            raise c.err("basis", "only applies to a tetrahedral mesh (tetmesh = ...)")
        ref = c.string(d, "mesh", required=True)
        # material
        pobj = None
        if ref.startswith(PHANTOM_PREFIX):
            pobj = cache.get(c, ref)
        mat_name = c.string(d, "material", default=None if pobj is None else pobj.material, required=pobj is None)
        if mat_name in materials:
            mat = materials[mat_name]
        else:
            try:
                mat = get_material(mat_name)
            except (KeyError, ValueError, TypeError):
                close = difflib.get_close_matches(mat_name, known, n=1, cutoff=0.6)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise c.err("material", f"unknown material {mat_name!r}{hint} known: {', '.join(known)} "
                                        "(or an element symbol, or a [materials.NAME] table)") from None
        parent = c.string(d, "parent")
        # mesh
        if pobj is not None:
            mesh = Mesh(pobj.vertices, pobj.faces, name)
            source = ref
        else:
            p = Path(ref) if os.path.isabs(ref) else folder / ref
            if p.is_dir():
                raise c.err("mesh", f"{p} is a directory, not a mesh file", SceneIsADirectoryError)
            if not p.is_file():
                raise c.err("mesh", f"mesh file not found: {p}" + (" (resolved against the scene file's folder)"
                                                                  if not os.path.isabs(ref) else ""),
                            SceneFileNotFoundError)
            try:
                mesh = Mesh.load(p, name=name)
            except (ValueError, TypeError) as exc:
                msg = str(exc)  # Mesh.load's messages name the file
                raise c.err("mesh", msg if str(p) in msg else f"cannot read {p}: {msg}") from None
            source = str(p)
        if "transform" in d:
            t = c.table(d["transform"], "transform")
            c.keys(t, _TRANSFORM_KEYS, prefix="transform.")
            tr = c.vector(t, "translate", 3, (0.0, 0.0, 0.0), name="transform.translate")
            rot = c.vector(t, "rotate_deg", 3, (0.0, 0.0, 0.0), name="transform.rotate_deg")
            ctr = c.vector(t, "centre", 3, (0.0, 0.0, 0.0), name="transform.centre")
            mesh = mesh.transformed(_rotation(rot), tr, ctr)
        out.append(SceneObject(name, mesh, mat, mat_name, parent, source))
    # parents
    names = [o.name for o in out]
    for i, o in enumerate(out, start=1):
        if o.parent is None:
            continue
        c = ctx.sub(f"[[object]] #{i} '{o.name}'")
        if o.parent == o.name:
            raise c.err("parent", "an object cannot be its own parent")
        if o.parent in volume_names:
            continue  # inside a volume: replaces its material along its path
        if o.parent not in seen:
            close = difflib.get_close_matches(o.parent, names + list(volume_names), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise c.err("parent", f"unknown parent {o.parent!r}{hint} (no object of that name)")
    by_name = {o.name: o for o in out}
    for i, o in enumerate(out, start=1):
        chain, cur = [o.name], o.parent
        while cur is not None and cur not in volume_names:
            if cur in chain:
                cyc = chain[chain.index(cur):] + [cur]
                raise ctx.sub(f"[[object]] #{i} '{o.name}'").err(
                    "parent", f"parent cycle: {' -> '.join(repr(n) for n in cyc)}")
            chain.append(cur)
            cur = by_name[cur].parent
    return out


def _output(ctx: _Ctx, d, camera: CameraSpec) -> OutputSpec:
    d = ctx.table(d)
    ctx.keys(d, _OUTPUT_KEYS)
    kind = ctx.string(d, "kind", "line_integral", choices=OUTPUT_KINDS)
    bits = ctx.integer(d, "bits", 8, choices=(8, 16))
    win = d.get("window", "auto")
    if win == "auto":
        window = None
    elif (isinstance(win, list) and len(win) == 2
          and all(not isinstance(x, bool) and isinstance(x, (int, float)) for x in win)):
        window = (float(win[0]), float(win[1]))
        if not (math.isfinite(window[0]) and math.isfinite(window[1]) and window[1] > window[0]):
            raise ctx.err("window", f"needs finite lo < hi, got {win!r}")
    else:
        raise ctx.err("window", f"must be \"auto\" or [lo, hi], got {win!r}", SceneTypeError)
    invert = ctx.boolean(d, "invert", False)
    air = ctx.boolean(d, "air", False)
    if air and camera.pixel_spacing is None:
        raise ctx.err("air", "air = true needs the detector's distance: give [camera] pixel_spacing")
    noise = None
    if "noise" in d:
        nz = ctx.table(d["noise"], "noise")
        ctx.keys(nz, _NOISE_KEYS, prefix="noise.")
        n0 = ctx.number(nz, "photons_per_pixel", positive=True, required=True, name="noise.photons_per_pixel")
        if "seed" not in nz:
            raise ctx.err("noise.seed", "missing (required: noise must be reproducible)")
        seed = nz["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ctx.err("noise.seed", f"must be a non-negative integer, got {seed!r}", SceneTypeError)
        noise = (n0, seed)
    return OutputSpec(kind, bits, window, invert, air, noise)


# ----------------------------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------------------------
def parse_scene(data: dict, path=None, folder=None) -> Scene:
    """Validate a scene given as a dict (the parsed TOML).

    ``path`` names the scene in messages; relative file names are resolved
    against ``folder`` (default: the folder of ``path``, else the working directory).
    """
    label = str(path) if path is not None else "<scene>"
    folder = Path(folder) if folder is not None else (Path(path).parent if path is not None else Path.cwd())
    top = _Ctx(label, "top level")
    top.table(data)
    top.keys(data, _SECTIONS)
    sc = _Ctx(label, "[scene]")
    meta = sc.table(data.get("scene", {}), "scene")
    sc.keys(meta, _SCENE_KEYS)
    name = sc.string(meta, "name", Path(label).stem)
    desc = sc.string(meta, "description", "")
    res = sc.string(meta, "phantom_resolution", "default", choices=("low", "default", "high"))
    for sec in ("camera", "spectrum"):
        if sec not in data:
            raise top.err(sec, f"missing section [{sec}]")
    cam = _camera(_Ctx(label, "[camera]"), data["camera"])
    src_kw = sections.source(_Ctx(label, "[source]"), data.get("source", {}))
    spec = _spectrum(_Ctx(label, "[spectrum]"), data["spectrum"], folder, src_kw["anode_angle_deg"])
    mats = {}
    mctx = _Ctx(label, "[materials]")
    for mname, md in mctx.table(data.get("materials", {}), "materials").items():
        mats[mname] = _custom_material(_Ctx(label, f"[materials.{mname}]"), mname, md)
    dctx = _Ctx(label, "[detector]")
    det = _detector(dctx, data.get("detector", {}), mats)
    model, noise, seed = sections.detector_model(dctx, data.get("detector", {}), cam, det.kind)
    vols = []
    ventries = data.get("volume", [])
    if not isinstance(ventries, list):
        raise top.err("volume", "volumes must be an array of tables: write each as [[volume]]")
    for i, vd in enumerate(ventries, start=1):
        vname = vd.get("name") if isinstance(vd, dict) else None
        vols.append(sections.volume(_Ctx(label, f"[[volume]] #{i}" + (f" '{vname}'" if isinstance(vname, str) else
                                                                       "")), vd, folder))
    vnames = [v.name for v in vols]
    if len(set(vnames)) != len(vnames):
        raise top.err("volume", f"duplicate volume names: {vnames}")
    if "object" not in data and not vols:
        raise top.err("object", "the scene has no [[object]] or [[volume]] entries")
    objs = _objects(top, data["object"], folder, mats, res, vnames) if "object" in data else []
    clash = set(vnames) & {o.name for o in objs}
    if clash:
        raise top.err("volume", f"a volume and an object share the name {sorted(clash)[0]!r}")
    out = _output(_Ctx(label, "[output]"), data.get("output", {}), cam)
    from .physics.imaging import Imaging

    kvp = spec.kvp if spec.kind == "tungsten" else None
    scat = None
    if "scatter" in data:
        pts = [np.asarray(o.mesh.vertices) for o in objs] + [v.volume.corners for v in vols]
        scat = sections.scatter(_Ctx(label, "[scatter]"), data["scatter"], kvp, cam,
                                np.concatenate(pts) if pts else None)
    try:
        imaging = Imaging(detector=model, noise=noise, seed=seed, kvp=kvp, scatter=scat, **src_kw)
    except (ValueError, TypeError) as exc:
        raise _Ctx(label, "[source]/[detector]").err(None, str(exc)) from None
    return Scene(Path(path) if path is not None else None, name, desc, cam, spec, cam.build(), spec.build(),
                 det, mats, objs, out, vols, imaging, "pixel_pitch_mm" not in data.get("detector", {}))


def load_scene(path) -> Scene:
    """Read, validate and load a TOML scene file (see ``docs/scene-format.md``)."""
    p = Path(path)
    if p.is_dir():
        raise SceneIsADirectoryError(f"{p}: is a directory, not a scene file")
    if not p.is_file():
        raise SceneFileNotFoundError(f"{p}: scene file not found")
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SceneError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SceneError(f"{p}: not valid TOML (not UTF-8 text: {exc})") from None
    return parse_scene(data, p)
