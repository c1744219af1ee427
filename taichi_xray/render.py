"""Scene rendering for the command line and scripts: Scene -> :class:`RenderResult` (numpy).

:func:`render` runs the :class:`~taichi_xray.pipeline.Pipeline` of a scene
(per-material path lengths, nesting check, polychromatic Beer-Lambert) and adds
the output stage of the scene's ``[output]`` table: transmission, line
integral, seeded Poisson noise, windowing and the pixels of a PNG. Pass the
same ``pipeline=`` to render many frames of one scene (sweeps) without
rebuilding it.

Timings (ms, wall clock, GPU synchronised): ``rasterize`` (the projection
stage, including the nesting check on the first frame), ``physics``
(Beer-Lambert) and ``output`` (noise, windowing and the copies to numpy).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from . import runtime
from .camera import Camera
from .imageio import robust_window, to_uint
from .kernels.buffers import to_numpy
from .physics.materials import get_material
from .pipeline import NESTING_TOL_MM, NestingError, NestingWarning, Pipeline, _sync, material_key
from .scene import Scene, load_scene

__all__ = ["render", "RenderResult", "NestingError", "NestingWarning", "check_nesting", "memory_estimate", "use_arch",
           "NESTING_TOL_MM", "scene_pipeline"]

_ON_NESTING = {"raise": "raise", "warn": "warn", "ignore": "allow", "allow": "allow"}


@dataclass
class RenderResult:
    """Output of :func:`render`. Arrays are numpy, indexed [row, column].

    material_lengths : (C, H, W) float, mm: exclusive path length of each material
        (``channel_names``), the air between source and detector included when
        ``[output] air = true``.
    path_lengths : (P, H, W) float32 per object (``names``), only with ``per_object=True``.
    intensity : (H, W) float64, detector signal sum_E w(E) exp(-sum mu L) (w = photons x response).
    transmission : (H, W) float64, intensity / I0 (I0 = signal with nothing in the beam).
    line_integral : (H, W) float64, -ln(transmission).
    image : (H, W) float64, the quantity ``[output] kind`` selects (noisy when ``[output] noise``).
    pixels : (H, W) uint8 or uint16, ``image`` windowed (and inverted) for a PNG.
    window : (lo, hi) used for ``pixels``.
    I0 : float. camera : Camera. timings : {"rasterize", "physics", ["imaging",] "output"} in ms.
    nesting : messages about objects that break their nesting (empty when all is well).
    """

    material_lengths: np.ndarray
    channel_names: list
    intensity: np.ndarray
    transmission: np.ndarray
    line_integral: np.ndarray
    image: np.ndarray
    pixels: np.ndarray
    window: tuple
    I0: float
    camera: Camera
    names: list
    kind: str
    arch: str
    timings: dict = field(default_factory=dict)
    nesting: list = field(default_factory=list)
    path_lengths: np.ndarray | None = None
    pipeline: Pipeline | None = field(default=None, repr=False)  # reuse it for the next frame of the scene

    @property
    def total_ms(self) -> float:
        return float(sum(self.timings.values()))


_REQUESTED: dict = {}


def use_arch(arch: str | None = None) -> str:
    """Start Taichi on ``arch`` unless it already runs there (or was already asked for it).

    None keeps the running backend (or starts the default one); "auto" keeps a running
    backend. Returns the backend in use.
    """
    cur = runtime.arch()
    if arch is None or (cur is not None and (arch in ("auto", cur) or _REQUESTED.get("arch") == arch)):
        return runtime.ensure_init()
    got = runtime.init(arch)
    _REQUESTED["arch"] = arch
    return got


def check_nesting(L, names, parents, tol_mm: float = NESTING_TOL_MM) -> list[str]:
    """Messages for objects that extend outside their parent, from per-object path lengths.

    L : (P, H, W) path lengths (numpy or torch), mm, e.g. from :func:`taichi_xray.path_length`.
    For each child q of p, the pixels where ``L[q] > L[p] + tol_mm``; for each parent, also
    the pixels where its exclusive length ``L[p] - sum_children L[q]`` is below ``-tol_mm``
    although no single child exceeds it (children overlapping each other). This is a check
    on images; renders use the pipeline's check on the K-slot depth intervals
    (:meth:`Pipeline.check_nesting`), which also finds overlapping top-level objects.
    """
    Lt = torch.as_tensor(L)
    msgs = []
    children: dict[int, list[int]] = {}
    for q, p in enumerate(parents):
        if p >= 0:
            children.setdefault(p, []).append(q)
    for p, qs in children.items():
        any_child = torch.zeros(Lt.shape[1:], dtype=torch.bool, device=Lt.device)
        for q in qs:
            excess = Lt[q] - Lt[p]
            bad = excess > tol_mm
            n = int(bad.sum())
            if n:
                any_child |= bad
                msgs.append(f"object '{names[q]}' extends outside its parent '{names[p]}' on {n} pixels "
                            f"(by up to {float(excess.max()):.3g} mm)")
        excl = Lt[p] - Lt[qs].sum(0)
        bad = (excl < -tol_mm) & ~any_child
        n = int(bad.sum())
        if n:
            msgs.append(f"children of '{names[p]}' ({', '.join(repr(names[q]) for q in qs)}) overlap each other "
                        f"or leave it on {n} pixels (exclusive length of '{names[p]}' down to "
                        f"{float(excl.min()):.3g} mm)")
    return msgs


def scene_pipeline(scene: Scene, camera: Camera | None = None, spectrum=None, on_nesting: str = "raise",
                   nesting_tol_mm: float = NESTING_TOL_MM, dtype=None) -> Pipeline:
    """The :class:`Pipeline` of a scene for :func:`render`: float32 projection and float64
    physics (float32 on Vulkan/Metal, where float64 is not available everywhere)."""
    if on_nesting not in _ON_NESTING:
        raise ValueError(f"on_nesting must be 'raise', 'warn' or 'ignore', got {on_nesting!r}")
    if dtype is None:
        dtype = torch.float32 if runtime.ensure_init() in ("vulkan", "metal") else torch.float64
    return Pipeline.from_scene(scene, cameras=camera, spectrum=spectrum, overlap=_ON_NESTING[on_nesting],
                               nesting_tol_mm=nesting_tol_mm, dtype=torch.float32, physics_dtype=dtype)


def render(scene, camera: Camera | None = None, arch: str | None = None, *, spectrum=None,
           on_nesting: str = "raise", nesting_tol_mm: float = NESTING_TOL_MM, per_object: bool = False,
           pipeline: Pipeline | None = None) -> RenderResult:
    """Render a scene (a :class:`~taichi_xray.scene.Scene` or a path to a TOML scene file).

    camera : replaces the scene's camera. arch : Taichi backend ("cpu", "cuda", "vulkan",
    "auto"); initialises Taichi if it runs on another backend (None: keep / default).
    spectrum : replaces the scene's spectrum. on_nesting : "raise" (:class:`NestingError`),
    "warn" (:class:`NestingWarning`) or "ignore" (overlapping objects add up) when objects
    break their nesting (checked on the first frame of a pipeline). per_object : also
    return per-object path lengths (a second rasterization). pipeline : a pipeline of this
    scene from an earlier call (its camera and spectrum are replaced by this frame's).
    """
    if not isinstance(scene, Scene):
        scene = load_scene(scene)
    if on_nesting not in _ON_NESTING:
        raise ValueError(f"on_nesting must be 'raise', 'warn' or 'ignore', got {on_nesting!r}")
    backend = use_arch(arch)
    cam = scene.camera if camera is None else camera
    if not isinstance(cam, Camera):
        raise TypeError(f"camera must be a taichi_xray.Camera, got {type(cam).__name__}")
    spec = scene.spectrum if spectrum is None else spectrum
    out = scene.output
    if out.air and cam.pixel_spacing is None:
        raise ValueError("[output] air = true needs a camera with pixel_spacing (the detector's distance)")
    if pipeline is None:
        pipeline = scene_pipeline(scene, cam, spec, on_nesting, nesting_tol_mm)
    else:
        pipeline.set_cameras(cam)
        if spec is not pipeline.spectrum:
            pipeline.set_spectrum(spec)
    timings = {}

    t0 = time.perf_counter()
    V = pipeline.pack_vertices()
    st = pipeline.project(V, resident=runtime.resident() and pipeline.resident_ok())
    _sync()
    timings["rasterize"] = (time.perf_counter() - t0) * 1e3

    t0 = time.perf_counter()
    raw = pipeline.physics(st.L)
    _sync()
    timings["physics"] = (time.perf_counter() - t0) * 1e3

    t0 = time.perf_counter()
    _, _, I0 = pipeline.physics_tables(pipeline.physics_dtype, runtime.torch_device())
    if pipeline.imaging.active:  # source, scatter and detector model: the reading and its flat field
        with torch.no_grad():
            I = pipeline.output_image(raw, "intensity")[0].cpu().numpy().astype(np.float64)
            T = pipeline.output_image(raw, "transmission")[0].cpu().numpy().astype(np.float64)
        timings["imaging"] = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
    else:
        I = raw[0, 0].detach().cpu().numpy().astype(np.float64)
        T = I / I0
    if not np.isfinite(I).all() or not np.isfinite(T).all():  # never a silent NaN image
        raise FloatingPointError(f"{scene.label}: the rendered image has NaN or infinite values")
    if not pipeline.imaging.active and (I < 0).any():
        raise FloatingPointError(f"{scene.label}: the rendered intensity has negative values")
    if out.noise is not None:
        n0, seed = out.noise
        rng = np.random.default_rng(seed)
        T = rng.poisson(np.clip(T, 0.0, None) * n0) / n0
        I = T * I0
    with np.errstate(divide="ignore"):
        # a pixel with no counts gets the line integral of half a photon
        floor = 0.5 / out.noise[0] if out.noise is not None else np.finfo(np.float64).tiny
        if pipeline.imaging.active:  # a noisy reading can dip to or below the offset: floor at T = 1e-7
            floor = 1e-7 if pipeline.imaging.noise is not None else np.finfo(np.float64).tiny
        LI = -np.log(np.maximum(T, floor))
    image = {"line_integral": LI, "transmission": T, "intensity": I}[out.kind]
    window = robust_window(image) if out.window is None else tuple(out.window)
    pixels = to_uint(image, out.bits, window, out.invert)
    Lm = to_numpy(st.L)[0].copy()  # one download when the path lengths stayed on the device
    timings["output"] = (time.perf_counter() - t0) * 1e3
    per = None
    if per_object:
        from .rasterize import path_length

        per = path_length(scene.meshes, cam)
        per = per[None] if per.ndim == 2 else per
    return RenderResult(Lm, list(pipeline.channel_names), I, T, LI, image, pixels, window, I0, pipeline.cameras[0],
                        scene.names, out.kind, backend, timings, list(pipeline.nesting_messages), per, pipeline)


def memory_estimate(scene: Scene, camera: Camera | None = None) -> dict:
    """Rough peak memory (bytes) of :func:`render`: {"rasterize", "physics", "output", "total"}.

    rasterize: the per-material channel images (C, H, W) and, on the first frame (nesting
    check), the face count and K = 8 slots of (face id, depth) per pixel; physics: the
    intensity (H, W); output: five (H, W) float64 images and the PNG pixels. 8-byte floats
    (float64 on CPU and CUDA).
    """
    cam = scene.camera if camera is None else camera
    hw = cam.height * cam.width
    mats = {material_key(o.material) for o in scene.objects if o.material is not None}
    for o in scene.objects:
        if o.material is None:  # a tetrahedral mesh: its basis materials
            mats |= {material_key(get_material(b)) for b in o.mesh.basis}
    for v in scene.volumes:
        mats |= {material_key(m) for m in v.conversion.materials}
    C = len(mats) + int(scene.output.air)
    r = C * hw * 8 + hw * 4 + 8 * hw * (4 + 8)
    p = hw * 8
    o = 5 * hw * 8 + C * hw * 8 + hw * 2
    return {"rasterize": r, "physics": p, "output": o, "total": r + p + o}
