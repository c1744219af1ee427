"""Scene-file sections beyond meshes and materials: ``[source]``, the detector model keys of
``[detector]``, ``[[volume]]`` and tetrahedral objects (documented in docs/scene-format.md).

Each parser takes the validation context of :mod:`taichi_xray.scene` (``ctx``: error messages
that name the file, the section and the key) and returns the package object it describes.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SOURCE_KEYS = ("anode_angle_deg", "anode", "heel", "mAs", "focal_spot", "falloff")
FOCAL_KEYS = ("width_mm", "length_mm", "shape", "samples", "seed")
DETECTOR_MODEL_KEYS = ("preset", "mtf", "swank", "gain", "offset", "electronic_noise", "bits", "binning",
                       "thresholds_keV", "energy_fwhm_keV", "noise", "pixel_pitch_mm")
DETECTOR_NOISE_KEYS = ("seed", "method")
MTF_KEYS = ("points", "gaussian_sigma_mm", "exponential_b_mm")
VOLUME_KEYS = ("name", "path", "series_uid", "transform", "hu_conversion", "method", "step_mm")
SCATTER_KEYS = ("model", "air_gap_mm", "grid", "coarse_mm")
ANODES = ("top", "bottom", "left", "right")


def source(ctx, d) -> dict:
    """The [source] table -> keyword arguments of :class:`~taichi_xray.physics.imaging.Imaging`."""
    from .physics.source import FocalSpot

    d = ctx.table(d)
    ctx.keys(d, SOURCE_KEYS)
    kw = dict(anode=ctx.string(d, "anode", "top", choices=ANODES),
              anode_angle_deg=ctx.number(d, "anode_angle_deg", 12.0, positive=True),
              heel=ctx.boolean(d, "heel", False), falloff=ctx.boolean(d, "falloff", False),
              mAs=ctx.number(d, "mAs", None, positive=True))
    if kw["anode_angle_deg"] >= 90:
        raise ctx.err("anode_angle_deg", f"must be below 90 degrees, got {kw['anode_angle_deg']:g}")
    if "focal_spot" in d:
        f = ctx.table(d["focal_spot"], "focal_spot")
        ctx.keys(f, FOCAL_KEYS, prefix="focal_spot.")
        w = ctx.number(f, "width_mm", required=True, nonneg=True, name="focal_spot.width_mm")
        ln = ctx.number(f, "length_mm", w, nonneg=True, name="focal_spot.length_mm")
        shape = ctx.string(f, "shape", "uniform", choices=("uniform", "gaussian"))
        n = ctx.integer(f, "samples", 16, positive=True)
        seed = ctx.integer(f, "seed", None)
        try:
            kw["focal_spot"] = FocalSpot(w, ln, shape, kw["anode_angle_deg"])
        except (ValueError, TypeError) as exc:
            raise ctx.err("focal_spot", str(exc)) from None
        kw["focal_samples"], kw["focal_seed"] = n, seed
    return kw


def detector_model(ctx, d, camera_spec, kind: str):
    """The detector-model keys of [detector] -> (model or None, noise method, seed)."""
    from .physics.detector_model import MTF, DetectorModel, PhotonCountingModel

    if not any(k in d for k in DETECTOR_MODEL_KEYS):
        return None, None, 0
    pitch = ctx.number(d, "pixel_pitch_mm", camera_spec.pixel_spacing, positive=True)
    if pitch is None:
        raise ctx.err("pixel_pitch_mm", "a detector model needs the pixel pitch: give [camera] pixel_spacing or "
                                        "[detector] pixel_pitch_mm")
    mtf = None
    if "mtf" in d:
        m = d["mtf"]
        try:
            if isinstance(m, str):
                mtf = MTF.preset(m)
            else:
                m = ctx.table(m, "mtf")
                ctx.keys(m, MTF_KEYS, prefix="mtf.")
                if len(m) != 1:
                    raise ctx.err("mtf", f"give one of {', '.join(MTF_KEYS)}")
                if "points" in m:
                    pts = m["points"]
                    if (not isinstance(pts, list) or len(pts) < 1 or
                            any(not isinstance(p, list) or len(p) != 2 for p in pts)):
                        raise ctx.err("mtf.points", "must be [[lp_per_mm, mtf], ...]")
                    mtf = MTF.from_points({float(f): float(v) for f, v in pts})
                elif "gaussian_sigma_mm" in m:
                    mtf = MTF.gaussian(ctx.number(m, "gaussian_sigma_mm", positive=True, name="mtf.gaussian_sigma_mm"))
                else:
                    mtf = MTF.exponential(ctx.number(m, "exponential_b_mm", positive=True, name="mtf.exponential_b_mm"))
        except (KeyError, ValueError, TypeError) as exc:
            if type(exc).__name__.startswith("Scene"):
                raise
            raise ctx.err("mtf", exc.args[0] if isinstance(exc, KeyError) else str(exc)) from None
    binning = ctx.integer(d, "binning", 1, positive=True)
    noise, seed = None, 0
    if "noise" in d:
        nz = ctx.table(d["noise"], "noise")
        ctx.keys(nz, DETECTOR_NOISE_KEYS, prefix="noise.")
        if "seed" not in nz:
            raise ctx.err("noise.seed", "missing (required: noise must be reproducible)")
        seed = ctx.integer(nz, "seed", 0)
        noise = ctx.string(nz, "method", "gaussian", choices=("gaussian", "poisson"))
    try:
        if kind == "counting" or "thresholds_keV" in d:
            th = d.get("thresholds_keV")
            if not isinstance(th, list) or not th:
                raise ctx.err("thresholds_keV", "a photon-counting detector needs thresholds_keV = [e1, e2, ...]")
            model = PhotonCountingModel(pitch, tuple(float(x) for x in th), mtf,
                                        ctx.number(d, "energy_fwhm_keV", 0.0, nonneg=True), binning)
        else:
            kw = dict(pixel_pitch_mm=pitch, binning=binning)
            if mtf is not None:
                kw["mtf"] = mtf
            for k in ("swank", "gain", "offset", "electronic_noise"):
                if k in d:
                    kw[k] = ctx.number(d, k)
            if "bits" in d:
                kw["bits"] = ctx.integer(d, "bits", None, positive=True)
            if "preset" in d:
                model = DetectorModel.preset(ctx.string(d, "preset"), **kw)
            else:
                model = DetectorModel(**kw)
    except (KeyError, ValueError, TypeError) as exc:
        if type(exc).__name__.startswith("Scene"):
            raise
        raise ctx.err(None, exc.args[0] if isinstance(exc, KeyError) else str(exc)) from None
    return model, noise, seed


def transform(ctx, d):
    """The ``transform`` sub-table -> (rotation (3, 3), translate (3,), centre (3,))."""
    from .scene import _TRANSFORM_KEYS, _rotation

    t = ctx.table(d["transform"], "transform")
    ctx.keys(t, _TRANSFORM_KEYS, prefix="transform.")
    tr = ctx.vector(t, "translate", 3, (0.0, 0.0, 0.0), name="transform.translate")
    rot = ctx.vector(t, "rotate_deg", 3, (0.0, 0.0, 0.0), name="transform.rotate_deg")
    ctr = ctx.vector(t, "centre", 3, (0.0, 0.0, 0.0), name="transform.centre")
    return _rotation(rot), np.asarray(tr), np.asarray(ctr)


def volume(ctx, d, folder: Path):
    """A [[volume]] table -> :class:`~taichi_xray.pipeline.VolumeObject`."""
    from .objects.volume import Volume
    from .pipeline import VolumeObject
    from .scene import SceneFileNotFoundError

    d = ctx.table(d)
    ctx.keys(d, VOLUME_KEYS)
    name = ctx.string(d, "name", required=True)
    rel = ctx.string(d, "path", required=True)
    p = Path(rel) if os.path.isabs(rel) else folder / rel
    if not p.exists():
        raise ctx.err("path", f"volume not found: {p} (a NIfTI file, a DICOM series folder, or .npy/.npz)",
                      SceneFileNotFoundError)
    try:
        vol = Volume.load(p, series_uid=ctx.string(d, "series_uid"))
    except (ValueError, TypeError, OSError) as exc:
        raise ctx.err("path", f"cannot read {p}: {exc}") from None
    vol.name = name
    if "transform" in d:
        R, t, c = transform(ctx, d)
        vol = vol.transformed(R, t, c)
        vol.name = name
    hu = d.get("hu_conversion")
    method = ctx.string(d, "method", "siddon", choices=("siddon", "trilinear"))
    step = ctx.number(d, "step_mm", None, positive=True)
    try:
        return VolumeObject(vol, name, hu, method, step)
    except (KeyError, ValueError, TypeError) as exc:
        raise ctx.err("hu_conversion", exc.args[0] if isinstance(exc, KeyError) else str(exc)) from None


def tetmesh(ctx, d, folder: Path, name: str):
    """The ``tetmesh = "file.vtu"`` of an [[object]] (with optional ``basis``) -> TetMesh."""
    from .objects.tetmesh import TetMesh
    from .scene import SceneFileNotFoundError

    rel = ctx.string(d, "tetmesh", required=True)
    p = Path(rel) if os.path.isabs(rel) else folder / rel
    if not p.is_file():
        raise ctx.err("tetmesh", f"tetrahedral mesh file not found: {p}", SceneFileNotFoundError)
    basis = d.get("basis")
    if basis is not None and (not isinstance(basis, list) or not all(isinstance(b, str) for b in basis)):
        raise ctx.err("basis", f"must be a list of material names, got {basis!r}")
    try:
        tm = TetMesh.load(p, basis=basis, name=name)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        raise ctx.err("tetmesh", f"cannot read {p}: {exc}") from None
    if "transform" in d:
        R, t, c = transform(ctx, d)
        V = (np.asarray(tm.vertices) - c) @ R.T + c + t
        tm = TetMesh(V, tm.tets, tm.densities, basis=tm.basis, name=name, kind=tm.kind)
    return tm, str(p)


def scatter(ctx, d, kvp, camera_spec, points):
    """The [scatter] table -> a :class:`~taichi_xray.physics.scatter.KernelScatterModel` or None.

    air_gap_mm = "auto" (default): from the objects' far side (the deepest of ``points`` (n, 3): their
    vertices and volume corners) to the detector plane of the scene's camera.
    """
    from .physics.scatter import AntiScatterGrid, KernelScatterModel

    d = ctx.table(d)
    ctx.keys(d, SCATTER_KEYS)
    model = ctx.string(d, "model", "kernel", choices=("kernel", "none"))
    if model == "none":
        return None
    if kvp is None:
        raise ctx.err("model", "the scatter kernels are calibrated for tungsten spectra: give [spectrum] kvp")
    cam = camera_spec.build()
    if cam.pixel_spacing is None:
        raise ctx.err(None, "scatter needs [camera] pixel_spacing (the kernels are in mm)")
    gap = d.get("air_gap_mm", "auto")
    if gap == "auto":
        if points is None or not len(points):
            raise ctx.err("air_gap_mm", "no objects to measure the air gap from: give a number")
        _, w = cam.project(np.asarray(points, dtype=np.float64))
        gap = max(float(cam.detector_distance - w.max()), 0.0)
    else:
        gap = ctx.number(d, "air_gap_mm", nonneg=True)
    grid = None
    if "grid" in d:
        try:
            grid = AntiScatterGrid.from_dict(ctx.table(d["grid"], "grid"))
        except (KeyError, ValueError, TypeError) as exc:
            raise ctx.err("grid", exc.args[0] if isinstance(exc, KeyError) else str(exc)) from None
    try:
        return KernelScatterModel(kvp=kvp, air_gap_mm=gap, grid=grid, coarse_mm=ctx.number(d, "coarse_mm", 4.0,
                                                                                             positive=True),
                                  sdd_mm=cam.detector_distance)
    except (ValueError, TypeError) as exc:
        raise ctx.err(None, str(exc)) from None
