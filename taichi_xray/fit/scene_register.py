"""Register objects of a scene to X-ray images: the API under ``taichi-xray register``.

:func:`register_scene` estimates the rigid transform of some objects of a scene (moved as one
body; optionally also the coefficients of a shape model of them) that makes the scene's render
match one or more X-ray images, starting from the scene as given (plus an ``init`` offset). The
other objects stay where the scene puts them and are rendered too (the body around the bones).

Targets (:func:`load_target`): DICOM files (camera from their tags via
:func:`taichi_xray.io.read_xray`), PNG / NPY / TIFF files with ``IMAGE.P.txt`` beside them, images
without geometry (then the scene's camera, at the image's size, optionally at other C-arm
angles: ``view=(lao, cran)``), or in-memory :class:`Target` objects / arrays. Every target is
turned into the renderer's domain (the line integral ``-ln(I/I0)``) with a mask of its usable
(collimated) field.

Transform convention (the scene file's ``[object.transform]``): ``v' = R (v - c) + c + t`` with
``R = Rz(rz) Ry(ry) Rx(rx)`` (angles in degrees about x, y, z, applied x first), ``c`` the
rotation centre (default: the vertex centroid of the moving objects as the scene gives them;
with a moving CT volume the body centroid of the moving volumes,
:func:`~taichi_xray.fit.register.default_centre`) and ``t`` the translation in mm; as a 4 x 4
world matrix ``T = [[R, c + t - R c], [0, 0, 0, 1]]``.

Volumes: the moving set may name ``[[volume]]`` entries (a volume alone, meshes inside a volume,
or a volume and the meshes inside it; the meshes inside a named volume follow it). All move as
one rigid body (:func:`~taichi_xray.fit.register.register` converts the pose to each volume's
own centre). Indices of volumes are ``P + k`` (P = number of objects), as in ``Scene.parents``.

Polarity: ``polarity="auto"`` reads each file as :func:`~taichi_xray.io.read_xray` decides
(tags, else detection from the image), then checks the sign of the NGC between the initial
render and the target at the coarsest level; when it is negative and reading the file with the
other polarity gives a larger (positive) NGC, that reading is used, with a warning.
``"dense_bright"`` / ``"dense_dark"`` set it.

Masks: the target's mask (DICOM shutter tags, else the detected collimator field) is eroded by
``mask_margin_px`` full-resolution pixels (the blades' penumbra and the detector's blur reach a
little into the field) and then handed to :func:`~taichi_xray.fit.register`, which min-pools and
erodes it per level (docs/registration.md). ``use_mask=False`` uses every pixel.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..camera import Camera
from . import losses as _losses
from .register import LOSSES, RegistrationResult, default_centre, register, render_posed

__all__ = ["Target", "SceneRegistration", "collimator_mask", "load_target", "load_targets", "register_scene", "select_objects",
           "euler_from_matrix", "matrix_from_euler", "parse_schedule", "default_schedule", "write_registration",
           "registration_figure", "local_ngc_map", "object_names", "POLARITIES", "DEFAULT_LOSS"]

POLARITIES = ("auto", "dense_bright", "dense_dark")
DEFAULT_LOSS = "patch_ngc"
_PLAIN_SUFFIXES = (".png", ".npy", ".tif", ".tiff")


# ----------------------------------------------------------------------------- rotations
def matrix_from_euler(angles_deg) -> np.ndarray:
    """R = Rz @ Ry @ Rx (3, 3) for angles (x, y, z) in degrees: the scene file's ``rotate_deg``."""
    a = np.asarray(angles_deg, dtype=np.float64)
    if a.shape != (3,) or not np.isfinite(a).all():
        raise ValueError(f"rotation angles must be 3 finite numbers (degrees about x, y, z), got {angles_deg!r}")
    from ..scene import _rotation  # the one definition of the scene file's convention

    return _rotation(a)


def euler_from_matrix(R) -> np.ndarray:
    """Angles (x, y, z) in degrees with ``R = Rz Ry Rx`` (ry in [-90, 90]; at ry = +-90 deg, the
    gimbal lock, rx is set to 0)."""
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"R must be (3, 3), got {R.shape}")
    sy = -R[2, 0]
    ry = math.asin(max(-1.0, min(1.0, sy)))
    if abs(sy) < 1 - 1e-12:
        rx = math.atan2(R[2, 1], R[2, 2])
        rz = math.atan2(R[1, 0], R[0, 0])
    else:  # gimbal lock: only rz - +-rx is defined
        rx = 0.0
        rz = math.atan2(-R[0, 1], R[1, 1])
    return np.rad2deg([rx, ry, rz])


def _rotvec(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(R).as_rotvec()


def _matrix_from_rotvec(rv_rad) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(np.asarray(rv_rad, np.float64)).as_matrix()


def rigid_matrix(R, t, centre) -> np.ndarray:
    """4 x 4 world matrix of ``v' = R (v - centre) + centre + t``."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(centre, np.float64) + np.asarray(t, np.float64) - R @ np.asarray(centre, np.float64)
    return T


# ----------------------------------------------------------------------------- schedules
def parse_schedule(text) -> list[tuple[int, int, float]]:
    """'4:60:2,2:60:1,1:40:0.3' -> [(4, 60, 2.0), (2, 60, 1.0), (1, 40, 0.3)] (factor:iterations:lr)."""
    if not isinstance(text, str):
        return [tuple(x) for x in text]
    out = []
    for i, part in enumerate(p for p in text.replace(";", ",").split(",") if p.strip()):
        bits = part.strip().split(":")
        try:
            s, n, lr = int(bits[0]), int(bits[1]), float(bits[2])
            if len(bits) != 3:
                raise ValueError
        except (ValueError, IndexError):
            raise ValueError(f"schedule level {i + 1} must be FACTOR:ITERATIONS:LR (e.g. 4:60:2), got {part!r}") \
                from None
        out.append((s, n, lr))
    if not out:
        raise ValueError(f"schedule is empty: {text!r}")
    return out


def default_schedule(height: int, width: int, work_px: int = 256) -> list[tuple[int, int, float]]:
    """Coarse to fine at about work/4, work/2 and work pixels across (``f = round(max(H, W) / work)``):
    [(4f, 60, 2.0), (2f, 60, 1.0), (f, 40, 0.3)] (lr in deg / mm per Adam step); levels that would
    leave fewer than 16 pixels across are dropped. Measured in docs/registration.md."""
    f = max(1, int(round(max(height, width) / float(work_px))))
    levels = [(4 * f, 60, 2.0), (2 * f, 60, 1.0), (f, 40, 0.3)]
    kept = [lev for lev in levels if min(height, width) // lev[0] >= 16]
    return kept or [(1, 100, 0.5)]


# ----------------------------------------------------------------------------- collimator
def collimator_mask(line_integral, *, smooth: float = 1.5, min_step: float = 0.05, min_support: float = 0.65,
                    min_median_step: float = 0.2, offset_px: float = 4.0, return_info: bool = False):
    """The field of straight collimator blades in a line-integral image: (H, W) bool, True inside.

    Blades leave straight edges across the image with their shadow (higher ``L``) on the side away
    from the image centre. Method: Gaussian smoothing (``smooth`` px); Hough transform
    (:func:`skimage.transform.hough_line`, 0.25 deg steps) of the strongest 10 % of the gradient
    magnitudes; for each of up to 32 peak lines, the step ``L(+offset) - L(-offset)`` across the
    line is sampled every pixel of its length inside the image, and the line is a blade edge when
    the step exceeds ``min_step`` with the shadow away from the image centre
    on at least ``min_support`` of that length -- anatomy edges are curved or short (a femur's
    straight edge spans a third of the image), a body outline has its dense side toward the
    centre, a wire is a ridge, not a step -- and when the median step is at least
    ``min_median_step`` (blades stop the beam: theirs are the largest steps in the image). Steps
    are fractions of the image's 1..99 % range (so a log image of unknown scale works too). Each
    accepted line is refined to the steepest point of the step (a straight line fitted through
    the per-sample positions). Lines are applied from the largest step down, skipping a line that
    lies mostly in the shadow of those already applied (a scatter tail beyond a blade, a corner).
    The field is the intersection of the lines' centre sides; its edge lies about one pixel into the
    penumbra (erode it before use: :func:`register_scene` does, ``mask_margin_px``). Returns an
    all-True mask when no line qualifies (then ``info["found"]`` is False).

    Measured on 16 degraded pelvis-phantom images (256 px, AP and LAO 60, rectangles rotated up
    to 20 deg, SPR 0.5-1, 10^3-10^4 photons, a wire): IoU with the true field >= 0.98 (median
    0.984), no pixel more than 2 px outside the field; at 128 px median 0.969, one blade of 64
    missed. ``read_xray``'s ``shutter_mask`` on the same images: median IoU 0.14 (its local 50 %
    rule splits a field that holds air beside dense anatomy).
    """
    from scipy import ndimage
    from skimage.transform import hough_line, hough_line_peaks

    a = np.asarray(line_integral.detach().cpu() if isinstance(line_integral, torch.Tensor) else line_integral,
                   dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 16:
        raise ValueError(f"image must be 2-D and at least 16x16, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("image contains NaN or infinity")
    H, W = a.shape
    lo, hi = np.percentile(a, [1, 99])
    if not hi > lo:
        field = np.ones((H, W), bool)
        return (field, dict(found=False, reason="flat image", lines=[])) if return_info else field
    min_step = float(min_step) * (hi - lo)
    Ls = ndimage.gaussian_filter(a, smooth, mode="nearest")
    gm = np.hypot(ndimage.sobel(Ls, axis=0), ndimage.sobel(Ls, axis=1)) / 8.0  # L per pixel
    edges = gm > max(np.percentile(gm, 90), min_step / (4 * offset_px))
    hs, th, dd = hough_line(edges, theta=np.deg2rad(np.arange(-90.0, 90.0, 0.25)))
    _, pth, pdd = hough_line_peaks(hs, th, dd, num_peaks=32, min_distance=5, min_angle=5,
                                   threshold=0.1 * hs.max())
    centre = np.array([(W - 1) / 2.0, (H - 1) / 2.0])  # (x = column, y = row)
    s = np.arange(-(H + W), H + W, 1.0)
    field = np.ones((H, W), bool)
    yy, xx = np.mgrid[0:H, 0:W]
    lines, cands = [], []
    for t, d in zip(pth, pdd):
        n = np.array([math.cos(t), math.sin(t)])          # hough: x cos t + y sin t = d
        u = np.array([-math.sin(t), math.cos(t)])
        pts = d * n[None] + s[:, None] * u[None]
        pts = pts[(pts[:, 0] >= 0) & (pts[:, 0] <= W - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= H - 1)]
        if len(pts) < 0.25 * min(H, W):
            continue
        plus, minus = pts + offset_px * n, pts - offset_px * n
        Lp = ndimage.map_coordinates(Ls, [plus[:, 1], plus[:, 0]], order=1, mode="nearest")
        Lm = ndimage.map_coordinates(Ls, [minus[:, 1], minus[:, 0]], order=1, mode="nearest")
        side = -1.0 if centre @ n - d > 0 else 1.0       # the side away from the centre (shadow side)
        strong = side * (Lp - Lm) > min_step
        support = float(np.mean(strong))
        med_step = float(np.median(side * (Lp - Lm))) / (hi - lo)
        if support < min_support or med_step < min_median_step:
            continue
        # refine: the steepest point of the step along the normal, per sample; a line fitted through them
        dl = np.arange(-offset_px - 2, offset_px + 2.01, 0.25)
        q = pts[strong]
        prof = np.stack([ndimage.map_coordinates(Ls, [q[:, 1] + o * n[1], q[:, 0] + o * n[0]], order=1,
                                                 mode="nearest") for o in dl], 1)
        delta = dl[np.argmax(side * np.gradient(prof, axis=1), axis=1) if len(dl) > 1 else 0]
        sq = (q - d * n[None]) @ u
        ok = np.abs(delta - np.median(delta)) <= 2.0
        if ok.sum() >= 2 and np.ptp(sq[ok]) > 0:
            b, a0 = np.polyfit(sq[ok], delta[ok], 1)
            phi = -math.atan(b)                               # turn the line by phi, shift it by a0
            n = np.array([math.cos(t + phi), math.sin(t + phi)])
            d = float((d * np.array([math.cos(t), math.sin(t)]) + a0 * np.array([math.cos(t), math.sin(t)])) @ n)
            t = t + phi
        cands.append(dict(theta_deg=float(np.rad2deg(t)), dist=float(d), support=support, step=med_step,
                          n=n, side=side, pts=pts))
    for c in sorted(cands, key=lambda c: -c["step"]):  # the strongest edges first
        px = np.clip(np.round(c["pts"]).astype(int), 0, [W - 1, H - 1])
        if field[px[:, 1], px[:, 0]].mean() < 0.5:
            continue  # mostly in the shadow of a blade already found (a scatter tail, a corner)
        field &= c["side"] * (xx * c["n"][0] + yy * c["n"][1] - c["dist"]) < 0
        lines.append({k: c[k] for k in ("theta_deg", "dist", "support", "step")})
    info = dict(found=bool(lines) and field.any(), lines=lines)
    if not info["found"] or field.mean() < 0.05:
        info.update(found=False, reason="no straight blade edge" if not lines else "empty field")
        field = np.ones((H, W), bool)
    return (field, info) if return_info else field


# ----------------------------------------------------------------------------- targets
@dataclass
class Target:
    """One X-ray image in the renderer's domain.

    line_integral : (H, W) float64 ``-ln(I/I0)``. mask : (H, W) bool usable field, or None (all).
    camera : :class:`~taichi_xray.Camera` of size (W, H). source : file name or a label.
    polarity : "dense_bright" / "dense_dark" as read (None for arrays). meta : what the reader
    decided (polarity source, mask source, ...), plus ``path`` and the ``read_kw`` used.
    """

    line_integral: np.ndarray
    mask: np.ndarray | None
    camera: Camera
    source: str = "<array>"
    polarity: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.line_integral.shape


def _norm_polarity(p):
    if p is None:
        return "auto"
    q = str(p).replace("-", "_")
    if q not in POLARITIES:
        raise ValueError(f"polarity must be one of auto, dense-bright, dense-dark, got {p!r}")
    return q


def _scene_camera(scene, W: int, H: int, view=None) -> Camera:
    spec = scene.camera_spec
    lao, cran = (None, None) if view is None else (float(view[0]), float(view[1]))
    if (W, H) != (spec.width, spec.height) and W * spec.height != H * spec.width:
        raise ValueError(f"the image is {W}x{H} but the scene's detector is {spec.width}x{spec.height} "
                         "(another aspect ratio): give the image's geometry (DICOM tags or IMAGE.P.txt)")
    return spec.build(lao=lao, cran=cran, size=(W, H))


def load_target(path, scene=None, *, polarity="auto", view=None, use_mask: bool = True, isocenter=None) -> Target:
    """Read one target image (module docstring). ``view=(lao, cran)`` (degrees) places an image
    without geometry on the scene's C-arm at those angles (default: the scene's camera).

    Isocentre: no DICOM tag holds where the C-arm's isocentre lies in the patient frame. For a
    DICOM file whose geometry comes from the standard tags (no private projection matrix),
    ``isocenter`` (3,) mm is used when given, else the scene's C-arm isocentre (the scene's world
    frame is the registration's), else the origin (``read_xray``'s default)."""
    from ..io import read_xray, sidecar_path

    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"target {path} is a directory, not an image file")
    if not path.is_file():
        raise FileNotFoundError(f"target image {path} not found")
    pol = _norm_polarity(polarity)
    kw = dict(polarity=None if pol == "auto" else pol, shutter="auto" if use_mask else "none")
    plain = path.suffix.lower() in _PLAIN_SUFFIXES
    has_geo = (not plain) or sidecar_path(path).is_file()
    if view is not None and has_geo:
        raise ValueError(f"{path}: a view (lao, cran) was given but the image has its own geometry "
                         f"({'DICOM tags' if not plain else sidecar_path(path).name}); drop the view")
    if has_geo:
        if isocenter is not None and not plain:
            kw["isocenter"] = [float(x) for x in np.ravel(isocenter)]
            img = read_xray(path, **kw)
            img.meta["isocenter_source"] = "argument"
        else:
            img = read_xray(path, **kw)
            iso = None if scene is None or scene.camera_spec.kind != "c_arm" else \
                [float(x) for x in scene.camera_spec.isocenter]
            if not plain and img.meta.get("geometry_source") == "standard tags" and iso is not None and any(iso):
                kw["isocenter"] = iso
                img = read_xray(path, **kw)
                img.meta["isocenter_source"] = "the scene's C-arm isocentre (no DICOM tag holds it)"
        cam = img.camera
    else:
        if scene is None:
            raise ValueError(f"{path}: no geometry (no {sidecar_path(path).name} beside it) and no scene camera")
        img = read_xray(path, geometry=False, **kw)
        H, W = img.shape
        cam = _scene_camera(scene, W, H, view)
        img.meta["geometry_source"] = "the scene's camera" + ("" if view is None else f" at LAO {view[0]:g}, "
                                                                                      f"CRAN {view[1]:g}")
    meta = dict(img.meta)
    meta.update(path=str(path), read_kw=kw)
    mask = np.asarray(img.mask, bool) if use_mask else None
    if use_mask and str(meta.get("mask_source", "")).startswith("detect"):
        # no shutter tags: straight blade edges (see collimator_mask); the reader's own detection only
        # for a blanked border (exactly constant values: unambiguous) -- on these images it also
        # "finds" fields in clean exposures (docs/registration.md)
        m2, info = collimator_mask(img.line_integral, return_info=True)
        if info["found"]:
            mask = m2
            meta["mask_source"] = f"detected: {len(info['lines'])} straight blade edges (collimator_mask)"
        elif meta["mask_source"] == "detected" and meta.get("mask_detection", {}).get("blanked"):
            meta["mask_source"] = "detected: blanked border (read_xray)"
        else:
            mask = None
            meta["mask_source"] = "none: no collimator edge found"
    if mask is not None and mask.all():
        mask = None
        meta["mask_source"] = "none: the field covers the image"
    return Target(np.array(img.line_integral, np.float64), mask, cam, str(path), img.polarity, meta)


def load_targets(paths, scene=None, *, polarity="auto", views=None, use_mask: bool = True,
                 isocenter=None) -> list[Target]:
    """Read several targets; ``views`` is None or one (lao, cran) per target (for images without
    geometry); ``isocenter`` as in :func:`load_target`."""
    paths = list(paths)
    if not paths:
        raise ValueError("no target images given")
    if views is not None and len(views) != len(paths):
        raise ValueError(f"{len(views)} views for {len(paths)} targets: give one LAO:CRAN per target")
    out = [load_target(p, scene, polarity=polarity, view=None if views is None else views[i], use_mask=use_mask,
                       isocenter=isocenter) for i, p in enumerate(paths)]
    if sum(1 for t in out if t.meta.get("geometry_source", "").startswith("the scene")) > 1 and views is None:
        raise ValueError("several targets without geometry would all use the scene's camera: give their views "
                         "(--views LAO:CRAN,...) or their geometry (DICOM, IMAGE.P.txt)")
    return out


def _as_target(t, scene, i: int) -> Target:
    if isinstance(t, Target):
        return t
    if isinstance(t, (str, Path)):
        return load_target(t, scene)
    a = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"target {i} must be an (H, W) image, a file or a Target, got shape {a.shape}")
    if scene is None:
        raise ValueError(f"target {i} is an array without a camera: give a scene or a Target")
    H, W = a.shape
    return Target(a, None, _scene_camera(scene, W, H), f"<array {i}>", None, {})


# ----------------------------------------------------------------------------- objects
def object_names(scene) -> list[str]:
    """The names of the scene's objects, then of its volumes (index ``P + k`` = volume k)."""
    return list(scene.names) + [v.name for v in getattr(scene, "volumes", [])]


def select_objects(scene, objects, include_children: bool = True) -> list[int]:
    """Indices of the objects named by ``objects``: names, shell-style patterns (``femur_*``), or
    indices, as a list or one comma-separated string; volumes too (their index is ``P + k`` for
    volume k, P = number of objects). With ``include_children`` the objects nested in a selected
    object or volume are added (a child cannot stay put inside a moving parent)."""
    names = object_names(scene)
    n_obj = len(scene.names)
    if isinstance(objects, str):
        objects = [s.strip() for s in objects.split(",") if s.strip()]
    items = list(objects) if objects is not None else []
    if not items:
        raise ValueError("no objects to register: name at least one (e.g. objects=['femur_L'])")
    sel = []
    for it in items:
        if isinstance(it, (int, np.integer)) and not isinstance(it, bool):
            if not 0 <= int(it) < len(names):
                raise ValueError(f"object index {it} out of range (0..{len(names) - 1})")
            sel.append(int(it))
            continue
        if not isinstance(it, str):
            raise TypeError(f"objects must be names, patterns or indices, got {type(it).__name__}")
        hits = [i for i, n in enumerate(names) if fnmatch.fnmatchcase(n, it)]
        if not hits:
            import difflib

            close = difflib.get_close_matches(it, names, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            vols = f"; volumes: {', '.join(names[n_obj:])}" if len(names) > n_obj else ""
            what = "object or volume" if vols else "object"
            raise ValueError(f"no {what} named {it!r} in the scene{hint} "
                             f"(objects: {', '.join(names[:n_obj]) or 'none'}{vols})")
        sel += hits
    sel = sorted(set(sel))
    if include_children:
        parents = scene.parents
        changed = True
        while changed:
            changed = False
            for i, p in enumerate(parents):
                if p in sel and i not in sel:
                    sel.append(i)
                    changed = True
        sel.sort()
    if len(sel) == len(names):
        pass  # every object moves: fine (e.g. a scene of bones only)
    return sel


# ----------------------------------------------------------------------------- result
@dataclass
class SceneRegistration:
    """Outcome of :func:`register_scene`.

    objects : names of the moving objects and volumes; moving : their indices in the scene
        (``P + k`` for volume k).
    centre_mm (3,), rotation_deg (3,) (x, y, z; R = Rz Ry Rx), translation_mm (3,), transform (4, 4):
        the fitted transform of the moving objects relative to the scene as given.
    init_rotation_deg, init_translation_mm : the starting offset. result : the
    :class:`~taichi_xray.fit.register.RegistrationResult` (rotvec about ``centre_mm``).
    targets : the :class:`Target` list (after any polarity flip). renderer : the XRayRenderer used.
    scene : the scene. time_s : wall time of the whole call (reading excluded), s.
    schedule, loss : what was used. beta : shape coefficients or None. notes : messages (polarity).
    """

    objects: list
    moving: list
    centre_mm: np.ndarray
    rotation_deg: np.ndarray
    translation_mm: np.ndarray
    transform: np.ndarray
    init_rotation_deg: np.ndarray
    init_translation_mm: np.ndarray
    result: RegistrationResult
    targets: list
    renderer: object
    scene: object
    time_s: float
    schedule: list
    loss: str
    beta: np.ndarray | None = None
    shape_model: object = None
    notes: list = field(default_factory=list)

    @property
    def moving_meshes(self) -> list[int]:
        """Indices of the moving mesh objects (volumes left out)."""
        return [i for i in self.moving if i < len(self.scene.objects)]

    @property
    def moving_volumes(self) -> list[int]:
        """Indices k (into ``scene.volumes``) of the moving volumes."""
        P = len(self.scene.objects)
        return [i - P for i in self.moving if i >= P]

    @property
    def init_transform(self) -> np.ndarray:
        return rigid_matrix(matrix_from_euler(self.init_rotation_deg), self.init_translation_mm, self.centre_mm)

    def template_vertices(self) -> list[np.ndarray]:
        """The moving objects' vertices before the rigid transform (the shape model's instance
        with ``beta`` when there is one), in order."""
        verts = [np.asarray(self.scene.objects[i].mesh.vertices, np.float64) for i in self.moving_meshes]
        if self.shape_model is None:
            return verts
        allv = np.asarray(self.shape_model.vertices(self.beta), np.float64)
        return list(np.split(allv, np.cumsum([len(v) for v in verts])[:-1]))

    def posed_meshes(self, which: str = "final") -> dict:
        """name -> :class:`~taichi_xray.Mesh` of each moving object in the fitted ("final") or
        starting ("initial") pose, world mm."""
        from ..mesh import Mesh

        T = self.transform if which == "final" else self.init_transform
        verts = self.template_vertices() if which == "final" else \
            [np.asarray(self.scene.objects[i].mesh.vertices, np.float64) for i in self.moving_meshes]
        out = {}
        for i, v in zip(self.moving_meshes, verts):
            o = self.scene.objects[i]
            out[o.name] = Mesh(v @ T[:3, :3].T + T[:3, 3], o.mesh.faces, o.name)
        return out

    def posed_volumes(self, which: str = "final") -> dict:
        """name -> :class:`~taichi_xray.objects.volume.Volume` of each moving volume in the fitted
        ("final") or starting ("initial") pose (its affine moved; the HU values shared)."""
        T = self.transform if which == "final" else self.init_transform
        out = {}
        for k in self.moving_volumes:
            vo = self.scene.volumes[k]
            out[vo.name] = vo.volume.transformed(T[:3, :3], T[:3, 3], np.zeros(3), name=vo.name)
        return out

    def to_dict(self) -> dict:
        r = self.result
        lv = [None if not np.isfinite(x) else float(x) for x in r.level_losses]
        return {
            "objects": list(self.objects),
            "rotation_deg": [float(x) for x in self.rotation_deg],
            "rotation_convention": "R = Rz(rz) Ry(ry) Rx(rx), angles (rx, ry, rz) in degrees about x, y, z "
                                   "(the scene file's rotate_deg), applied about centre_mm, then translation_mm",
            "translation_mm": [float(x) for x in self.translation_mm],
            "centre_mm": [float(x) for x in self.centre_mm],
            "transform": [[float(x) for x in row] for row in self.transform],
            "transform_convention": "world mm (DICOM LPS), v' = T @ [v, 1]; relative to the scene as given",
            "rotation_vector_deg": [float(x) for x in r.rotvec_deg],
            "init_rotation_deg": [float(x) for x in self.init_rotation_deg],
            "init_translation_mm": [float(x) for x in self.init_translation_mm],
            "loss": float(r.loss),
            "loss_name": self.loss,
            "level_losses": lv,
            "schedule": [list(lev) for lev in self.schedule],
            "loss_history": [float(x) for x in r.loss_history],
            "level_history": [int(x) for x in r.level_history],
            "n_iterations": int(r.n_iterations),
            "n_evaluations": int(r.n_evaluations),
            "time_s": float(self.time_s),
            "registration_time_s": float(r.time_s),
            "beta": None if self.beta is None else [float(x) for x in self.beta],
            "targets": [{"source": t.source, "shape": list(t.shape), "polarity": t.polarity,
                         "polarity_source": t.meta.get("polarity_source"),
                         "polarity_flipped": bool(t.meta.get("polarity_flipped", False)),
                         "mask_source": t.meta.get("mask_source") if t.mask is not None else "none (all pixels)",
                         "mask_fraction": None if t.mask is None else float(np.mean(t.mask)),
                         "geometry_source": t.meta.get("geometry_source"),
                         "isocenter_source": t.meta.get("isocenter_source"),
                         "P": [[float(x) for x in row] for row in t.camera.P]} for t in self.targets],
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- registration
def _renderer(scene, cameras):
    from ..torch import XRayRenderer

    air = bool(scene.output.air) and all(c.pixel_spacing is not None for c in cameras)
    return XRayRenderer(scene.meshes, cameras, materials=[o.material for o in scene.objects], parents=scene.parents,
                        spectrum=scene.spectrum, detector=scene.detector, output="line_integral", air=air,
                        overlap="allow", names=scene.names, volumes=list(getattr(scene, "volumes", [])))


def _target_mask(t: Target, margin: int) -> np.ndarray | None:
    if t.mask is None:
        return None
    m = np.asarray(t.mask, bool)
    if margin > 0:
        from scipy import ndimage

        m = ndimage.binary_erosion(m, iterations=int(margin), border_value=1)
    if not m.any():
        raise ValueError(f"{t.source}: the mask leaves no pixel after the {margin}-pixel margin")
    return m


def _check_polarity(targets, renderer, verts, moving, rv0, t0, centre, factor, masks, notes):
    """Flip targets whose NGC with the initial render is negative when the other reading is better."""
    rend = renderer.at_scale(factor)
    img = render_posed(rend, verts, np.rad2deg(rv0), t0, centre, moving=moving).to(torch.float64)
    for v, t in enumerate(targets):
        if t.meta.get("polarity_fixed"):
            continue
        m = masks[v]
        mk = None if m is None else _losses.pool_mask(torch.as_tensor(m, dtype=torch.float64), factor)

        def score(L):
            a = torch.as_tensor(L, dtype=torch.float64)[None, None]
            a = torch.nn.functional.avg_pool2d(a, factor)[0, 0] if factor > 1 else a[0, 0]
            return float(_losses.ngc(img[v], a, mask=mk))

        s0 = score(t.line_integral)
        if s0 >= 0:
            t.meta["polarity_check_ngc"] = s0
            continue
        other = None
        if "path" in t.meta:
            from ..io import read_xray

            kw = dict(t.meta["read_kw"])
            kw["polarity"] = "dense_dark" if t.polarity == "dense_bright" else "dense_bright"
            geo = t.meta.get("geometry_source", "")
            img2 = read_xray(t.meta["path"], geometry=not geo.startswith("the scene"), **kw)
            other = (np.array(img2.line_integral, np.float64), img2.polarity)
        else:
            other = (-t.line_integral, None)
        s1 = score(other[0])
        t.meta["polarity_check_ngc"] = s0
        if s1 > -s0 * 0.5 and s1 > 0:
            msg = (f"{t.source}: NGC with the initial render is {s0:.3f} as read ({t.polarity or 'array'}, "
                   f"{t.meta.get('polarity_source', 'given')}); the other polarity gives {s1:.3f}: using it")
            warnings.warn(msg, UserWarning, stacklevel=3)
            notes.append(msg)
            t.line_integral = other[0]
            t.polarity = other[1]
            t.meta["polarity_flipped"] = True
            t.meta["polarity_source"] = "flipped: NGC with the initial render was negative"


def register_scene(scene, targets, objects, *, init=None, polarity="auto", use_mask: bool = True,
                   mask_margin_px: int = 2, schedule=None, loss=DEFAULT_LOSS, shape_model=None,
                   views=None, isocenter=None, n_starts: int = 1, optimizer: str = "adam",
                   patience: int | None = 15,
                   min_delta: float = 1e-5, seed: int = 0, progress: bool = True,
                   dtype=torch.float32, callback=None) -> SceneRegistration:
    """Register the named objects of a scene to X-ray images (module docstring).

    scene : a :class:`~taichi_xray.scene.Scene` or a scene file.
    targets : files, :class:`Target` objects or (H, W) line-integral arrays (arrays use the scene's
        camera), one per view; all of one size.
    objects : names / patterns / indices of the objects and volumes moved as one body (children
        follow; meshes inside a named volume too).
    init : (dx, dy, dz, rx, ry, rz): mm and degrees (R = Rz Ry Rx) about the centre (the moving
        meshes' vertex centroid, or the moving volumes' body centroid); default 0.
    polarity : "auto" | "dense_bright" | "dense_dark" (files only). use_mask : use the targets'
        collimator masks. mask_margin_px : their extra erosion at full resolution.
    schedule : list of (factor, iterations, lr) or a string "4:60:2,2:60:1,1:40:0.3"; default
        :func:`default_schedule` of the image size. loss : a name of
        :data:`taichi_xray.fit.register.LOSSES` (default "patch_ngc", measured in
        docs/registration.md) or a callable.
    shape_model : a :class:`~taichi_xray.fit.ssm.ShapeModel` (or an .npz file) over the moving
        objects' concatenated vertices: pose + shape.
    views : for file targets without geometry, one (lao, cran) per target.
    isocenter : (3,) mm, the C-arm isocentre for DICOM files read from their standard tags
        (default: the scene's C-arm isocentre; see :func:`load_target`).
    n_starts, optimizer, patience, min_delta, seed, progress, dtype, callback : passed to
        :func:`~taichi_xray.fit.register`.
    """
    from ..scene import Scene, load_scene

    t_all = time.perf_counter()
    if not isinstance(scene, Scene):
        scene = load_scene(scene)
    pol = _norm_polarity(polarity)
    tl = [targets] if isinstance(targets, (str, Path, Target)) or (
        isinstance(targets, np.ndarray) and targets.ndim == 2) else list(targets)
    if not tl:
        raise ValueError("no target images given")
    if any(isinstance(t, (str, Path)) for t in tl):
        files = [t for t in tl if isinstance(t, (str, Path))]
        if len(files) != len(tl):
            raise TypeError("give targets either all as files or as Target objects / arrays")
        tl = load_targets(files, scene, polarity=pol, views=views, use_mask=use_mask, isocenter=isocenter)
        if pol != "auto":
            for t in tl:
                t.meta["polarity_fixed"] = True
    else:  # copies: the polarity check and use_mask must not change the caller's targets
        tl = [dataclasses.replace(t, meta=dict(t.meta)) for t in (_as_target(t, scene, i) for i, t in enumerate(tl))]
        if not use_mask:
            for t in tl:
                t.mask = None
    shapes = {t.shape for t in tl}
    if len(shapes) != 1:
        raise ValueError(f"the targets have different sizes {sorted(shapes)}: register images of one size "
                         "(resample them, adjusting their geometry)")
    H, W = tl[0].shape
    for t in tl:
        if (t.camera.height, t.camera.width) != (H, W):
            raise ValueError(f"{t.source}: camera is {t.camera.width}x{t.camera.height}, image {W}x{H}")
        if not np.isfinite(t.line_integral).all():
            raise ValueError(f"{t.source}: the image has NaN or infinite values")
    moving = select_objects(scene, objects)
    names = object_names(scene)
    verts = [np.asarray(m.vertices, np.float64) for m in scene.meshes]
    centre = default_centre(verts, scene.volumes, moving)
    init = np.zeros(6) if init is None else np.asarray(init, np.float64)
    if init.shape != (6,) or not np.isfinite(init).all():
        raise ValueError(f"init must be 6 finite numbers dx,dy,dz (mm), rx,ry,rz (deg), got {init!r}")
    rv0 = _rotvec(matrix_from_euler(init[3:]))
    t0 = init[:3].copy()
    levels = default_schedule(H, W) if schedule is None else parse_schedule(schedule)
    if isinstance(loss, str) and loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {', '.join(sorted(LOSSES))}")
    ssm = shape_model
    if isinstance(ssm, (str, Path)):
        from .ssm import ShapeModel

        ssm = ShapeModel.load(ssm)
    mov_meshes = [i for i in moving if i < len(verts)]
    n_mov = sum(len(verts[i]) for i in mov_meshes)
    if ssm is not None and ssm.n_vertices != n_mov:
        raise ValueError(f"the shape model has {ssm.n_vertices} vertices, the moving meshes "
                         f"({', '.join(names[i] for i in mov_meshes) or 'none'}) have {n_mov}")
    renderer = _renderer(scene, [t.camera for t in tl])
    masks = [_target_mask(t, mask_margin_px) for t in tl]
    notes = []
    if pol == "auto":
        _check_polarity(tl, renderer, verts, moving, rv0, t0, centre, levels[0][0], masks, notes)
    target = np.stack([t.line_integral for t in tl])
    mask = None if all(m is None for m in masks) else np.stack(
        [np.ones((H, W), bool) if m is None else m for m in masks]).astype(np.float64)
    res = register(renderer, target, (rv0, t0), vertices=verts, moving=moving, centre=centre,
                   shape_model=ssm, mode="pose+shape" if ssm is not None else "pose", loss=loss,
                   optimizer=optimizer, schedule=levels, n_starts=n_starts, seed=seed, patience=patience,
                   min_delta=min_delta, mask=mask, progress=progress, dtype=dtype, callback=callback)
    R = res.matrix
    return SceneRegistration(
        objects=[names[i] for i in moving], moving=moving, centre_mm=centre, rotation_deg=euler_from_matrix(R),
        translation_mm=res.translation.copy(), transform=rigid_matrix(R, res.translation, centre),
        init_rotation_deg=init[3:].copy(), init_translation_mm=t0, result=res, targets=tl, renderer=renderer,
        scene=scene, time_s=time.perf_counter() - t_all, schedule=levels,
        loss=loss if isinstance(loss, str) else getattr(loss, "__name__", "callable"),
        beta=None if res.beta is None else res.beta.copy(), shape_model=ssm, notes=notes)


# ----------------------------------------------------------------------------- outputs
def local_ngc_map(a, b, sigma: float = 2.0) -> np.ndarray:
    """Local NGC (H, W): Gaussian-windowed (sigma px) correlation of the Sobel gradients of a and
    b, averaged over x and y; in [-1, 1] (the paper's Fig. 3 map)."""
    from scipy.ndimage import gaussian_filter, sobel

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = 0.0
    for ax in (0, 1):
        ga, gb = sobel(a, axis=ax), sobel(b, axis=ax)
        ma, mb = gaussian_filter(ga, sigma), gaussian_filter(gb, sigma)
        cov = gaussian_filter(ga * gb, sigma) - ma * mb
        va = gaussian_filter(ga * ga, sigma) - ma * ma
        vb = gaussian_filter(gb * gb, sigma) - mb * mb
        out = out + cov / np.sqrt(np.maximum(va * vb, 1e-12 * max(float(va.max() * vb.max()), 1e-300)))
    return 0.5 * out


def _window(img, mask):
    v = img[mask] if mask is not None and mask.any() else img.ravel()
    lo, hi = np.percentile(v, [0.5, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def _box_edges(corners, P):
    """The 12 edges of a box (corners (8, 3) in ``Volume.corners`` order) projected by P (3, 4):
    pairs of pixel points (u, v)."""
    x = np.c_[corners, np.ones(8)] @ np.asarray(P, np.float64).T
    uv = x[:, :2] / x[:, 2:3]
    return [(uv[i], uv[j]) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1]


def registration_figure(reg: SceneRegistration, path, max_views: int = 3) -> Path:
    """The paper's Fig. 3 for a registration: per view target, initial render, final render, the
    fitted (red) and initial (cyan, dashed) meshes' outlines over the target, the local NGC map
    (final render vs target, inside the mask); and the loss curve. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..rasterize import path_length

    r = reg.result
    verts = [np.asarray(m.vertices, np.float64) for m in reg.scene.meshes]
    kw = dict(moving=reg.moving)
    ini = render_posed(reg.renderer, verts, np.rad2deg(_rotvec(matrix_from_euler(reg.init_rotation_deg))),
                       reg.init_translation_mm, reg.centre_mm, **kw).numpy()
    if reg.shape_model is not None:
        fin = render_posed(reg.renderer, verts, r.rotvec_deg, r.translation, r.centre, shape_model=reg.shape_model,
                           beta=r.beta, **kw).numpy()
    else:
        fin = render_posed(reg.renderer, verts, r.rotvec_deg, r.translation, r.centre, **kw).numpy()
    fm, im = reg.posed_meshes("final"), reg.posed_meshes("initial")
    fv, iv = reg.posed_volumes("final"), reg.posed_volumes("initial")
    nv = min(len(reg.targets), max_views)
    fig, axs = plt.subplots(nv, 6, figsize=(19, 3.4 * nv), squeeze=False)
    for v in range(nv):
        t = reg.targets[v]
        L = t.line_integral
        lo, hi = _window(L, t.mask)
        ax = axs[v]
        ax[0].imshow(L, cmap="gray", vmin=lo, vmax=hi)
        ax[0].set_title(f"target {v}: {Path(t.source).name}", fontsize=8)
        for j, (img, title) in enumerate(((ini[v], "initial render"), (fin[v], "final render")), start=1):
            a, b = _window(img, t.mask)
            ax[j].imshow(img, cmap="gray", vmin=a, vmax=b)
            ax[j].set_title(title, fontsize=8)
        ax[3].imshow(L, cmap="gray", vmin=lo, vmax=hi)
        for vols, col, ls in ((iv, "cyan", "--"), (fv, "red", "-")):  # moving volumes: their box's edges
            for vol in vols.values():
                for a, b in _box_edges(vol.corners, t.camera.P):
                    ax[3].plot([a[0], b[0]], [a[1], b[1]], color=col, lw=0.6, ls=ls)
        for meshes, col, ls in ((im, "cyan", "--"), (fm, "red", "-")):
            if not meshes:
                continue
            pl = path_length(list(meshes.values()), t.camera)
            pl = pl[None] if pl.ndim == 2 else pl
            for p in pl:
                if p.max() > 0.5:
                    ax[3].contour(p, levels=[0.5], colors=col, linewidths=0.6, linestyles=ls)
        if t.mask is not None:
            ax[3].contour(t.mask.astype(float), levels=[0.5], colors="yellow", linewidths=0.5)
        ax[3].set_xlim(-0.5, L.shape[1] - 0.5)
        ax[3].set_ylim(L.shape[0] - 0.5, -0.5)
        ax[3].set_title("outlines: fitted (red), initial (cyan), mask (yellow)", fontsize=8)
        ngc_map = local_ngc_map(L, fin[v])
        if t.mask is not None:
            ngc_map = np.where(t.mask, ngc_map, np.nan)
        h = ax[4].imshow(ngc_map, cmap="coolwarm", vmin=-1, vmax=1)
        ax[4].set_title("local NGC (final render vs target)", fontsize=8)
        fig.colorbar(h, ax=ax[4], fraction=0.046)
        for a in ax[:5]:
            a.set_axis_off()
        if v == 0:
            ax[5].plot(r.loss_history, lw=1)
            for k in np.flatnonzero(np.diff(r.level_history)):
                ax[5].axvline(k + 0.5, color="grey", lw=0.5, ls=":")
            ax[5].set_xlabel("iteration (dotted: next level)", fontsize=8)
            ax[5].set_ylabel(f"loss ({reg.loss})", fontsize=8)
            ax[5].set_title(f"loss; final {r.loss:.4f}, {reg.time_s:.1f} s", fontsize=8)
            ax[5].tick_params(labelsize=7)
        else:
            ax[5].set_axis_off()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def output_paths(outdir, objects) -> list[Path]:
    """The files :func:`write_registration` writes for these object names."""
    out = Path(outdir)
    return [out / "result.json", out / "registration.png"] + [out / "meshes" / f"{n}.stl" for n in objects]


def write_registration(reg: SceneRegistration, outdir, *, force: bool = False, figure: bool = True) -> list[Path]:
    """Write ``OUTDIR/result.json``, ``OUTDIR/meshes/NAME.stl`` (fitted pose of each moving mesh;
    moving volumes have none: ``result.json``'s transform moves them) and ``OUTDIR/registration.png``;
    nothing is overwritten without ``force``. Returns the paths."""
    out = Path(outdir)
    paths = output_paths(out, [reg.scene.names[i] for i in reg.moving_meshes])
    if not figure:
        paths = [p for p in paths if p.name != "registration.png"]
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a directory")
    if not force:
        clash = [str(p) for p in paths if p.exists()]
        if clash:
            raise FileExistsError(f"{', '.join(clash)} exist(s); use --force (force=True) to overwrite")
    (out / "meshes").mkdir(parents=True, exist_ok=True)
    for name, m in reg.posed_meshes("final").items():
        m.save(out / "meshes" / f"{name}.stl", overwrite=True, binary=True)
    with open(out / "result.json", "w") as f:
        json.dump(reg.to_dict(), f, indent=1)
    if figure:
        registration_figure(reg, out / "registration.png")
    return paths
